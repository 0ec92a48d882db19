"""The Syncer end to end against FakeBraze: one outcome per record, dead letters, state."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import antavo_braze as ab
from antavo_braze._demo import DEMO_MAPPING, sample_events, sample_members
from antavo_braze._run.tally import fingerprint
from antavo_braze.testing import FakeBraze

from .conftest import in_threads, load


def check_invariant(report: ab.SyncReport) -> None:
    """total always equals succeeded + failed + skipped, and failures match failed."""
    assert report.total == report.succeeded + report.failed + report.skipped
    assert len(report.failures) == report.failed
    assert report.ok is (report.failed == 0)


def test_members_end_to_end(
    fake: FakeBraze, client: ab.BrazeClient, full_mapping: ab.Mapping
) -> None:
    """The sample member lands in Braze exactly as mapped."""
    report = ab.Syncer(client, full_mapping).sync_members([load("member.json")])
    check_invariant(report)
    assert (report.total, report.succeeded, report.requests) == (1, 1, 1)
    expected = load("member_expected.json")
    member_id = expected.pop("external_id")
    assert fake.profiles[member_id] == expected
    assert report.attribute_values == len(expected)


def test_bad_record_fails_alone(
    fake: FakeBraze, client: ab.BrazeClient, mapping: ab.Mapping
) -> None:
    """A record that fails validation fails alone; its batch-mates are delivered."""
    members = [{"id": f"m-{i}", "score": i} for i in range(10)]
    members[4] = {"id": "m-4", "score": "lots"}
    members.append({"score": 1})
    members.append("not a member")
    report = ab.Syncer(client, mapping).sync_members(members)
    check_invariant(report)
    assert (report.total, report.succeeded, report.failed) == (12, 9, 3)
    first = report.failures[0]
    assert (first.index, first.record_id, first.stage) == (4, "m-4", "validation")
    assert first.reason == "score: cannot coerce 'lots' to number: not a numeric string"
    assert (first.field, first.value) == ("score", "'lots'")
    assert report.failures[1].index == 10
    assert report.failures[2].index == 11
    assert len(fake.profiles) == 9


def test_braze_rejections_fail_their_records(
    fake: FakeBraze, client: ab.BrazeClient, mapping: ab.Mapping
) -> None:
    """Objects Braze rejects fail their records with stage 'braze'."""
    fake.block("m-2")
    report = ab.Syncer(client, mapping).sync_members({"id": f"m-{i}", "score": i} for i in range(5))
    check_invariant(report)
    assert [(f.index, f.record_id, f.stage) for f in report.failures] == [(2, "m-2", "braze")]
    assert "BLACKLISTED" in report.failures[0].reason


def test_request_failures_fail_every_record_in_it(
    fake: FakeBraze, mapping: ab.Mapping, tmp_path: Path
) -> None:
    """A request that fails after retries fails its records (retryable), others succeed."""
    fake.inject(times=5, status=503)
    dead = tmp_path / "dead.jsonl"
    with fake.client(max_in_flight=1) as client:
        report = ab.Syncer(client, mapping, dead_letter=dead).sync_members(
            {"id": f"m-{i}", "score": i} for i in range(100)
        )
    check_invariant(report)
    assert (report.succeeded, report.failed) == (25, 75)
    assert {f.stage for f in report.failures} == {"braze"}
    assert all(f.retryable for f in report.failures)
    entries = [json.loads(line) for line in dead.read_text().splitlines()]
    assert len(entries) == 75
    assert entries[0]["objects"] == [
        {"array": "attributes", "object": {"external_id": "m-0", "loyalty_points": 0}}
    ]
    assert "test-key" not in dead.read_text()


def test_replay_resends_retryable_records(
    fake: FakeBraze, mapping: ab.Mapping, tmp_path: Path
) -> None:
    """replay() resends retryable dead letters; validation failures are skipped."""
    dead = tmp_path / "dead.jsonl"
    fake.inject(times=5, drop=True)
    with fake.client(max_in_flight=1) as client:
        first = ab.Syncer(client, mapping, dead_letter=dead).sync_members(
            [{"id": "a", "score": 1}, {"id": "b", "score": "bad"}]
        )
    assert [f.stage for f in first.failures] == ["transport", "validation"]
    assert "a" not in fake.profiles
    with fake.client() as client:
        again = ab.Syncer(client, mapping, dead_letter=tmp_path / "again.jsonl").replay(dead)
        check_invariant(again)
        assert (again.total, again.succeeded, again.skipped) == (2, 1, 1)
        assert fake.profiles["a"] == {"loyalty_points": 1}
        with pytest.raises(ab.ConfigurationError, match="other than"):
            ab.Syncer(client, mapping, dead_letter=dead).replay(dead)


def test_dead_letter_sink_object(client: ab.BrazeClient, mapping: ab.Mapping) -> None:
    """Any object with write() is a sink; entries carry stage, reason, time and the record."""
    sink = ab.MemoryDeadLetter()
    ab.Syncer(client, mapping, dead_letter=sink).sync_members(
        [ab.LoyaltyMember("m", {"score": "x"})]
    )
    (entry,) = sink.entries
    assert isinstance(entry, ab.DeadLetterEntry)
    assert (entry.kind, entry.stage, entry.field, entry.retryable) == (
        "member",
        "validation",
        "score",
        False,
    )
    assert entry.record == {"score": "x", "id": "m"}
    assert entry.time.endswith("Z")
    with pytest.raises(ab.ConfigurationError):
        ab.Syncer(client, mapping, dead_letter=42)  # type: ignore[arg-type]


def test_events_end_to_end(
    fake: FakeBraze, client: ab.BrazeClient, full_mapping: ab.Mapping
) -> None:
    """Events, purchases and trigger attributes all arrive; unmapped actions are skipped."""
    report = ab.Syncer(client, full_mapping).sync_events(load("events.json"))
    check_invariant(report)
    assert (report.total, report.succeeded, report.skipped) == (11, 5, 6)
    assert [e["name"] for e in fake.events] == [
        "loyalty_enrolled",
        "loyalty_purchase",
        "loyalty_points_earned",
    ]
    assert fake.purchases[0]["product_id"] == "coupon_redeem"
    assert fake.profiles["m-1"] == {
        "last_purchase_total": 129.9,
        "last_purchase_at": "2025-11-01T12:26:40Z",
        "loyalty_status_change": "opt_out",
    }


def test_event_fails_if_any_of_its_objects_fails(fake: FakeBraze, client: ab.BrazeClient) -> None:
    """An event whose trigger attributes are rejected counts as one failed record."""
    mapping = ab.Mapping.from_dict(
        {
            "events": [{"action": "checkout", "as": "purchase"}],
            "triggers": [
                {
                    "when": {"action": "checkout"},
                    "attributes": [{"loyalty_field": "data.total", "remote_field": "t"}],
                }
            ],
        }
    )
    fake.inject(
        status=201,
        body={
            "message": "success",
            "errors": [{"type": "odd", "input_array": "purchases", "index": 1}],
        },
    )
    event = {
        "customer": "m",
        "action": "checkout",
        "timestamp": 0,
        "data": {
            "total": 3,
            "currency": "EUR",
            "items": [{"product_id": "a", "price": 1}, {"product_id": "b", "price": 2}],
        },
    }
    report = ab.Syncer(client, mapping).sync_events([event])
    assert (report.total, report.failed) == (1, 1)
    assert report.failures[0].reason == "odd"


def test_sync_attributes(fake: FakeBraze, client: ab.BrazeClient, mapping: ab.Mapping) -> None:
    """A one-off attribute sync outside the mapping."""
    syncer = ab.Syncer(client, mapping)
    report = syncer.sync_attributes(
        "m-1", {"last_purchase_sku": "S1", "vip": "yes"}, types={"vip": "boolean"}
    )
    assert (report.total, report.succeeded) == (1, 1)
    assert fake.profiles["m-1"] == {"last_purchase_sku": "S1", "vip": True}
    bad = syncer.sync_attributes("m-1", {"vip": "perhaps"}, types={"vip": "boolean"})
    assert bad.failures[0].record_id == "m-1"


def test_sync_attributes_takes_any_id_the_mapper_judges(
    fake: FakeBraze, client: ab.BrazeClient, mapping: ab.Mapping
) -> None:
    """A one-off attribute sync with an integer id sends it as text; a boolean or null id
    fails its one record with the reason (the same in the compiled build)."""
    syncer = ab.Syncer(client, mapping)
    assert syncer.sync_attributes(123, {"tag": "x"}).succeeded == 1  # type: ignore[arg-type]
    assert fake.profiles["123"] == {"tag": "x"}
    for bad in (True, None):
        report = syncer.sync_attributes(bad, {"tag": "x"})  # type: ignore[arg-type]
        assert (report.total, report.failed) == (1, 1), report
        assert "expected a string id" in report.failures[0].reason


def test_preview_is_offline(fake: FakeBraze, client: ab.BrazeClient, mapping: ab.Mapping) -> None:
    """preview_* return the bodies that would be sent and send nothing."""
    syncer = ab.Syncer(client, mapping)
    bodies = syncer.preview_members(
        [{"id": f"m-{i}", "score": i} for i in range(80)] + [{"id": "bad", "score": "x"}]
    )
    assert [len(b["attributes"]) for b in bodies] == [75, 5]
    assert bodies[0]["attributes"][1] == {"external_id": "m-1", "loyalty_points": 1}
    events = syncer.preview_events(load("events.json"))
    assert events[0]["events"][0]["name"] == "loyalty_enrolled"
    report = syncer.dry_run("members", [{"id": "a", "score": 1}, {"id": "b", "score": "x"}])
    assert (report.succeeded, report.failed, report.requests) == (1, 1, 1)
    assert fake.requests == []


def test_auth_errors_raise_at_once(fake: FakeBraze, mapping: ab.Mapping) -> None:
    """Bad credentials or a missing permission raise instead of failing every record."""
    with fake.client(api_key="wrong") as client, pytest.raises(ab.AuthenticationError):
        ab.Syncer(client, mapping).sync_members([{"id": "a", "score": 1}])
    fake.add_key("reader", ["events.list"])
    with fake.client(api_key="reader") as client, pytest.raises(ab.PermissionDeniedError):
        ab.Syncer(client, mapping).sync_members([{"id": "a", "score": 1}])


def test_state_skips_unchanged_members(
    fake: FakeBraze, client: ab.BrazeClient, mapping: ab.Mapping, tmp_path: Path
) -> None:
    """With a state store, unchanged members are skipped on the next sync."""
    state = ab.SqliteStateStore(tmp_path / "state.db")
    syncer = ab.Syncer(client, mapping, state=state)
    members = [{"id": f"m-{i}", "score": i, "tiers": [{"name": "Gold"}]} for i in range(10)]
    first = syncer.sync_members(members)
    assert first.succeeded == 10
    members[3]["score"] = 300
    second = syncer.sync_members(members)
    check_invariant(second)
    assert (second.succeeded, second.skipped) == (1, 9)
    assert second.attribute_values == 2  # full mode: every mapped field of the changed member
    assert second.attribute_values_saved == 18
    last = fake.requests[-1].body["attributes"]
    assert last == [{"external_id": "m-3", "loyalty_points": 300, "loyalty_tier": "Gold"}]


def test_changed_mode_sends_only_changed_fields(
    fake: FakeBraze, client: ab.BrazeClient, mapping: ab.Mapping
) -> None:
    """send='changed' sends just the fields whose values changed."""
    state = ab.MemoryStateStore()
    syncer = ab.Syncer(client, mapping, state=state, send="changed")
    syncer.sync_members([{"id": "m", "score": 1, "tiers": [{"name": "Gold"}]}])
    report = syncer.sync_members([{"id": "m", "score": 2, "tiers": [{"name": "Gold"}]}])
    assert fake.requests[-1].body["attributes"] == [{"external_id": "m", "loyalty_points": 2}]
    assert (report.attribute_values, report.attribute_values_saved) == (1, 1)
    # True is not 1: a type change is a change
    syncer.sync_members([{"id": "m", "score": 1}])
    syncer.sync_members([{"id": "m", "score": 1.0}])
    assert fake.requests[-1].body["attributes"] == [{"external_id": "m", "loyalty_points": 1.0}]


def test_state_only_records_accepted_members(
    fake: FakeBraze, client: ab.BrazeClient, mapping: ab.Mapping
) -> None:
    """A member Braze rejected is not remembered, so it is sent again next time."""
    state = ab.MemoryStateStore()
    syncer = ab.Syncer(client, mapping, state=state)
    fake.block("m-1")
    syncer.sync_members([{"id": "m-0", "score": 1}, {"id": "m-1", "score": 1}])
    assert state.get("m-1") is None
    assert state.get("m-0") == {"loyalty_points": fingerprint(1, state.secret)}
    assert "1" not in state.get("m-0").values()  # a keyed hash, never the value
    assert len(state) == 1


def test_changed_mode_needs_state(client: ab.BrazeClient, mapping: ab.Mapping) -> None:
    """send='changed' without a state store, or an unknown mode, is a configuration error."""
    with pytest.raises(ab.ConfigurationError):
        ab.Syncer(client, mapping, send="changed")
    with pytest.raises(ab.ConfigurationError):
        ab.Syncer(client, mapping, send="some")  # type: ignore[arg-type]


def test_mapping_may_be_dict_or_path(client: ab.BrazeClient, tmp_path: Path) -> None:
    """The Syncer accepts a Mapping, a config dict or a file path."""
    path = tmp_path / "m.json"
    path.write_text(json.dumps(DEMO_MAPPING))
    assert ab.Syncer(client, path).mapping == ab.Syncer(client, DEMO_MAPPING).mapping
    assert "fields=12" in repr(ab.Syncer(client, path))


def test_streaming_input_is_consumed_lazily(fake: FakeBraze, mapping: ab.Mapping) -> None:
    """A generator is pulled only as batches go out: records in flight stay bounded."""
    pulled = 0
    most_ahead = 0

    def members() -> Iterator[dict[str, Any]]:
        nonlocal pulled, most_ahead
        for i in range(3000):
            pulled += 1
            most_ahead = max(most_ahead, pulled - fake.objects_received)
            yield {"id": f"m-{i}", "score": i}

    with fake.client(max_in_flight=2) as client:
        report = ab.Syncer(client, mapping).sync_members(members())
    assert report.succeeded == 3000
    assert most_ahead <= 75 * (2 + 2)  # batch size x (in flight + one being built + one waiting)


def test_progress_callback(client: ab.BrazeClient, mapping: ab.Mapping) -> None:
    """The progress callback sees the final counts."""
    seen: list[ab.Progress] = []
    ab.Syncer(client, mapping, progress=seen.append).sync_members(
        {"id": f"m-{i}", "score": i} for i in range(200)
    )
    assert seen[-1].done == 200
    assert seen[-1].succeeded == 200
    assert seen[-1].rate > 0
    assert "200 records" in seen[-1].line()


def test_progress_true_without_tqdm(
    client: ab.BrazeClient, mapping: ab.Mapping, capsys: pytest.CaptureFixture[str]
) -> None:
    """progress=True shows a bar (tqdm) or, without tqdm, a line on stderr."""
    ab.Syncer(client, mapping, progress=True).sync_members([{"id": "a", "score": 1}])
    assert "1" in capsys.readouterr().err


def test_report_renderings(client: ab.BrazeClient, mapping: ab.Mapping) -> None:
    """Reports read well as text, HTML and rows."""
    report = ab.Syncer(client, mapping).sync_members(
        [{"id": "a", "score": 1}] + [{"id": f"b{i}", "score": "x"} for i in range(25)]
    )
    text = str(report)
    assert text.startswith("26 records: 1 succeeded, 25 failed, 0 skipped")
    # One fault hitting every record is one group with its count and an example.
    assert "25 x [validation] score: cannot coerce … to number" in text
    assert "(e.g. #1 b0, value 'x')" in text
    assert "<table>" in report._repr_html_()
    assert report.failures_table()[0]["stage"] == "validation"
    ok = ab.Syncer(client, mapping).sync_members([{"id": "a", "score": 1}])
    assert "<th>reason</th>" not in ok._repr_html_()
    assert "<th>present</th>" in ok._repr_html_()


def test_demo_data_syncs_cleanly(fake: FakeBraze, client: ab.BrazeClient) -> None:
    """The demo's generated members and events all succeed or skip."""
    syncer = ab.Syncer(client, DEMO_MAPPING)
    members = syncer.sync_members(sample_members(300))
    events = syncer.sync_events(sample_events(200))
    assert members.ok
    assert events.ok
    assert members.succeeded == 300
    assert events.skipped == 50


def test_concurrent_syncers_share_a_client(fake: FakeBraze, mapping: ab.Mapping) -> None:
    """Several threads syncing through one client account for every record."""
    reports: list[ab.SyncReport] = []
    with fake.client(max_in_flight=4) as client:

        def work(n: int) -> None:
            reports.append(
                ab.Syncer(client, mapping).sync_members(
                    {"id": f"t{n}-{i}", "score": i} for i in range(300)
                )
            )

        in_threads(work, 4)
    assert sum(r.succeeded for r in reports) == 1200
    assert len(fake.profiles) == 1200


def test_a_dataframe_syncs_with_nan_absent_and_numpy_values(fake: FakeBraze) -> None:
    """pandas rows: NaN cells are absent fields; numpy ints and Timestamps are coerced."""
    import pandas as pd

    frame = pd.DataFrame(
        {
            "id": ["a", "b"],
            "score": [1200, 7],
            "joined": [pd.Timestamp("2026-01-02T03:04:05Z"), pd.NaT],
            "tier": ["Gold", float("nan")],
        }
    )
    mapping = ab.Mapping.from_dict(
        {
            "fields": [
                {"loyalty_field": "score", "remote_field": "points", "type": "number"},
                {"loyalty_field": "joined", "remote_field": "joined_at", "type": "date"},
                {"loyalty_field": "tier", "remote_field": "tier", "type": "string"},
            ]
        }
    )
    with fake.client() as client:
        report = ab.Syncer(client, mapping).sync_members(frame)
    assert report.succeeded == 2, report
    assert fake.profiles["a"] == {
        "points": 1200,
        "joined_at": "2026-01-02T03:04:05Z",
        "tier": "Gold",
    }
    assert fake.profiles["b"] == {"points": 7}
    assert report.fields["tier"].absent == 1
