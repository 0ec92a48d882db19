"""The clear guard, id_field and split, used through the API the way a user would."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import antavo_braze as ab
from antavo_braze._run.filecheck import _hint, _kind
from antavo_braze._run.tally import CLEAR_GUARD_FROM, ClearGuard, is_mass_clear
from antavo_braze.testing import FakeBraze

from .servers import free_port


def tier_mapping(path: str = "tiers.0.name", **top: Any) -> ab.Mapping:
    """Points and a tier that is cleared when it is gone (the tutorial's advice)."""
    return ab.Mapping.from_dict(
        {
            "fields": [
                {"loyalty_field": "score", "remote_field": "loyalty_points", "type": "number"},
                {"loyalty_field": path, "remote_field": "loyalty_tier", "when_missing": "clear"},
            ],
            **top,
        }
    )


def gold_members(count: int) -> list[dict[str, Any]]:
    """Members with points and a Gold tier."""
    return [{"id": f"m-{n}", "score": n, "tiers": [{"name": "Gold"}]} for n in range(count)]


def seeded(fake: FakeBraze, client: ab.BrazeClient, count: int) -> None:
    """Braze holds a Gold tier for ``count`` members."""
    report = ab.Syncer(client, tier_mapping()).sync_members(gold_members(count))
    assert report.succeeded == count
    assert sum("loyalty_tier" in p for p in fake.profiles.values()) == count


def test_a_misspelled_path_clears_nothing_and_is_reported(
    fake: FakeBraze, client: ab.BrazeClient
) -> None:
    """A typo in the path's first key (tier.0.name) clears no tier, and the report names it."""
    seeded(fake, client, 193)
    report = ab.Syncer(client, tier_mapping("tier.0.name")).sync_members(gold_members(193))
    assert report.succeeded == 193
    assert sum("loyalty_tier" in p for p in fake.profiles.values()) == 193
    assert report.fields["loyalty_tier"].cleared == 0
    assert "tier.0.name (-> loyalty_tier)" in str(report)


def test_a_partial_change_keeps_the_tier(fake: FakeBraze, client: ab.BrazeClient) -> None:
    """The README's per-change example, submit_member({"id", "score"}), keeps Gold."""
    seeded(fake, client, 1)
    with ab.BackgroundSender(ab.Syncer(client, tier_mapping())) as sender:
        outcome = sender.submit_member({"id": "m-0", "score": "125"}).result(30)
    assert outcome.ok
    assert fake.profiles["m-0"] == {"loyalty_points": 125, "loyalty_tier": "Gold"}


def test_a_real_downgrade_still_clears(fake: FakeBraze, client: ab.BrazeClient) -> None:
    """tiers became []: the tier is removed in Braze (also when it is the only change)."""
    seeded(fake, client, 2)
    report = ab.Syncer(client, tier_mapping()).sync_members(
        [{"id": "m-0", "score": 5, "tiers": []}, {"id": "m-1", "tiers": None}]
    )
    assert (report.succeeded, report.fields["loyalty_tier"].cleared) == (2, 2)
    assert "loyalty_tier" not in fake.profiles["m-0"]
    assert "loyalty_tier" not in fake.profiles["m-1"]


def test_the_guard_stops_a_mass_clear(fake: FakeBraze, client: ab.BrazeClient) -> None:
    """A run that would clear most members' tier stops clearing it, and says so."""
    seeded(fake, client, 300)
    changed = [{"id": f"m-{n}", "score": n, "tiers": []} for n in range(300)]
    report = ab.Syncer(client, tier_mapping()).sync_members(changed)
    assert report.succeeded == 300
    assert report.clears_stopped == {"loyalty_tier": (CLEAR_GUARD_FROM, CLEAR_GUARD_FROM)}
    assert report.guard_stopped
    assert sum("loyalty_tier" in p for p in fake.profiles.values()) == 300  # none cleared
    assert "STOPPED clearing loyalty_tier" in str(report)
    allowed = ab.Syncer(client, tier_mapping(), max_clear_ratio=None).sync_members(changed)
    assert (allowed.fields["loyalty_tier"].cleared, dict(allowed.clears_stopped)) == (300, {})
    assert not any("loyalty_tier" in p for p in fake.profiles.values())


def test_a_few_downgrades_among_many_members_clear(client: ab.BrazeClient) -> None:
    """Clears below the ratio go through, the held-back first 100 included."""
    members = gold_members(250)
    for n in range(0, 250, 10):
        members[n]["tiers"] = []
    report = ab.Syncer(client, tier_mapping()).sync_members(members)
    assert (report.succeeded, report.fields["loyalty_tier"].cleared) == (250, 25)
    assert not report.clears_stopped


@given(
    seen=st.integers(min_value=0, max_value=10_000),
    cleared=st.integers(min_value=0, max_value=10_000),
    ratio=st.floats(min_value=0, max_value=1),
)
def test_mass_clear_rule(seen: int, cleared: int, ratio: float) -> None:
    """A mass clear needs 100 members seen and a share above the ratio; None never stops."""
    cleared = min(cleared, seen)
    assert is_mass_clear(seen, cleared, ratio) == (seen >= 100 and cleared > ratio * seen)
    assert not is_mass_clear(seen, cleared, None)


@given(st.lists(st.booleans(), max_size=400))
def test_guard_holds_until_it_can_judge(clears: list[bool]) -> None:
    """The guard holds records back until the 100th member; a stopped field stays stopped."""
    guard = ClearGuard(0.5)
    stopped_at = None
    for number, clear in enumerate(clears, start=1):
        guard.observe(["tier"] if clear else [])
        assert guard.holding == (number < CLEAR_GUARD_FROM)
        if stopped_at is None and "tier" in guard.stopped:
            stopped_at = number
    if stopped_at is not None:
        assert "tier" in guard.stopped
        assert stopped_at >= CLEAR_GUARD_FROM


def test_stopped_while_held_adds_up(client: ab.BrazeClient) -> None:
    """Records the guard held back when the run stops are failed as interrupted (not sent)."""
    syncer = ab.Syncer(client, tier_mapping())
    run = syncer._new_run("member", None, None)
    groups = syncer._member_builder()(run.admitted(iter(gold_members(150))), run)
    first = next(groups)  # released once the 100th member was seen
    assert first[0].record == 0
    groups.close()
    assert (run.total, run.failed, run.skipped) == (100, 99, 0)
    assert {f.stage for f in run.failures} == {"interrupted"}
    assert all(f.retryable and f.outcome == "not_sent" for f in run.failures)


def test_id_field_and_split(fake: FakeBraze, client: ab.BrazeClient) -> None:
    """id_field names the member's id key; split reads a CSV cell as an array."""
    mapping = ab.Mapping.from_dict(
        {
            "id_field": "_id",
            "fields": [{"loyalty_field": "tags", "remote_field": "tags", "split": ","}],
        }
    )
    report = ab.Syncer(client, mapping).sync_members([{"_id": "m-9", "tags": "a, b,,a"}])
    assert report.succeeded == 1
    assert fake.profiles["m-9"] == {"tags": ["a", "b"]}
    assert ab.Mapping.from_dict(mapping.to_dict()) == mapping
    entry = {"loyalty_field": "t", "remote_field": "t", "type": "number", "split": "/"}
    with pytest.raises(ab.MappingError, match=r"fields\[0\].split: .*must be 'array'"):
        ab.Mapping.from_dict({"fields": [entry]})


def test_an_id_under_another_name_or_an_event_file_gets_a_hint(client: ab.BrazeClient) -> None:
    """Members with _id, or events given to sync_members, fail with the fix in the reason."""
    syncer = ab.Syncer(client, tier_mapping())
    report = syncer.sync_members(
        [{"_id": "m-1", "score": 1}, {"customer": "m-1", "action": "opt_in", "data": {}}]
    )
    reasons = [f.reason for f in report.failures]
    assert "set \"id_field\": '_id' in the mapping" in reasons[0]
    assert "looks like an event" in reasons[1]
    assert "sync events" in reasons[1]
    events = syncer.sync_events([{"id": "m-1", "score": 1}])
    assert "looks like a member" in events.failures[0].reason


@given(st.integers(min_value=1_000_000_000, max_value=4_000_000_000))
def test_unix_seconds_are_dates_as_numbers_and_as_text(seconds: int) -> None:
    """A unix-seconds value reads as a date whether JSON wrote a number or CSV wrote text."""
    assert _kind(seconds) == _kind(str(seconds)) == "unix seconds"


@given(st.integers(min_value=0, max_value=10**6), st.integers(min_value=0, max_value=10**6))
def test_decimal_commas_are_named(whole: int, fraction: int) -> None:
    """'12,5' is a decimal comma to the advice, the hint and the coercion error alike."""
    text = f"{whole},{fraction}"
    assert _kind(text) == "decimal comma"
    assert "decimal comma" in (_hint(text) or "")
    with pytest.raises(ab.CoercionError, match="decimal comma"):
        ab.coerce(text, "number")


def test_the_guard_works_on_iterators_too(fake: FakeBraze, client: ab.BrazeClient) -> None:
    """From a generator (objects encoded as built) the stopped clears are taken out as well."""
    seeded(fake, client, 150)
    changed = ({"id": f"m-{n}", "score": n, "tiers": []} for n in range(150))
    report = ab.Syncer(client, tier_mapping()).sync_members(changed)
    assert (report.succeeded, report.fields["loyalty_tier"].cleared) == (150, 0)
    assert "loyalty_tier" in report.clears_stopped
    assert fake.profiles["m-7"] == {"loyalty_points": 7, "loyalty_tier": "Gold"}
    only_clears = ({"id": f"m-{n}", "tiers": []} for n in range(150))
    skipped = ab.Syncer(client, tier_mapping()).sync_members(only_clears)
    assert skipped.skipped_by_reason == {"nothing to send but a mass clear the guard stopped": 150}


def test_check_file_from_python() -> None:
    """What `validate --input` prints is ab.check_file's result, reachable from Python."""
    mapping = ab.Mapping.from_dict(
        {"fields": [{"loyalty_field": "score", "remote_field": "p", "type": "number"}]}
    )
    check = ab.check_file(mapping, [{"id": "a", "score": "1,5"}, {"id": "b", "score": 2}])
    assert not check.ok
    (score,) = check.fields
    assert (score.found, score.valid, score.invalid) == (2, 1, 1)
    assert score.examples[0].startswith("record 1: '1,5'")


@given(
    succeeded=st.integers(min_value=0, max_value=5),
    failed=st.integers(min_value=0, max_value=5),
    reasons=st.dictionaries(
        st.sampled_from(
            [
                "no mapped field present",
                "no mapping for action 'x'",
                "unchanged since Braze last accepted it",
                "already sent",
            ]
        ),
        st.integers(min_value=1, max_value=5),
        max_size=3,
    ),
    stopped=st.booleans(),
)
def test_exit_code_rule(
    succeeded: int, failed: int, reasons: dict[str, int], stopped: bool
) -> None:
    """1 for failures or a stopped guard; 4 only when nothing was sent and every skip needs
    a look; 0 otherwise."""
    from antavo_braze.cli import exit_code

    skipped = sum(reasons.values())
    report = ab.SyncReport(
        total=succeeded + failed + skipped,
        succeeded=succeeded,
        failed=failed,
        skipped=skipped,
        requests=0,
        skipped_by_reason=reasons,
        clears_stopped={"tier": (100, 100)} if stopped else {},
    )
    look = {"no mapped field present", "no mapping for action 'x'"}
    if failed or stopped:
        assert exit_code(report) == 1
    elif not succeeded and reasons and set(reasons) <= look:
        assert exit_code(report) == 4
    else:
        assert exit_code(report) == 0


def test_replay_marks_what_it_resent(tmp_path: Path) -> None:
    """A resent entry is marked in the file read; if it fails again, the retry lives on,
    unmarked, in the new dead letter; a second replay skips marked entries."""
    from antavo_braze._run.deadletter import DeadLetterEntry, DeadLetterObject, entry_to_json

    source, output = tmp_path / "dead.jsonl", tmp_path / "out.jsonl"
    event = {"external_id": "m-1", "name": "earned", "time": "2026-01-01T00:00:00Z"}
    entry = DeadLetterEntry(
        kind="event", index=0, record_id="m-1", stage="braze", reason="HTTP 503",
        retryable=True, objects=(DeadLetterObject("events", event),),
    )  # fmt: skip
    source.write_text(entry_to_json(entry) + "\n")
    source.chmod(0o600)  # as the SDK writes dead letters (it is rewritten, marked)
    down = ab.BrazeClient(f"http://127.0.0.1:{free_port()}", "k", retry=ab.RetryPolicy(attempts=1))
    with down:
        failed = ab.Syncer(down, ab.Mapping(), dead_letter=output).replay(source)
    assert failed.failed == 1
    assert all(e.replayed_at for e in ab.read_dead_letters(source))
    (carried,) = ab.read_dead_letters(output)
    assert (carried.replays, carried.replayed_at) == (1, None)
    with FakeBraze() as fake, fake.client() as client:
        syncer = ab.Syncer(client, ab.Mapping(), dead_letter=tmp_path / "out2.jsonl")
        assert syncer.replay(source).skipped_by_reason == {
            "already replayed (again=True / --again resends it)": 1
        }
        assert syncer.replay(output).succeeded == 1
        assert syncer.replay(output).succeeded == 0  # marked now
        assert syncer.replay(source, again=True).succeeded == 1
        assert len(fake.events) == 2
