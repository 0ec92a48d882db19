"""Run accounting: replays, exact request counts, owned values, unreachable Braze, sinks."""

from __future__ import annotations

import itertools
import json
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import antavo_braze as ab
from antavo_braze._run.report import counted
from antavo_braze.testing import FakeBraze

from .conftest import in_threads
from .servers import CLOSE, RawServer

FAST = ab.RetryPolicy(attempts=2, wait_initial=0.001, wait_max=0.01, wait_jitter=0)
MAPPING = {
    "fields": [
        {"loyalty_field": "score", "remote_field": "points", "type": "number"},
        {"loyalty_field": "profile", "remote_field": "profile", "type": "object"},
    ]
}


def check(report: ab.SyncReport) -> None:
    """The report adds up and names each failed record once."""
    assert report.total == report.succeeded + report.failed + report.skipped
    assert len({f.index for f in report.failures}) == len(report.failures)


def test_three_replays_leave_one_line_with_replays_3(fake: FakeBraze, tmp_path: Path) -> None:
    """A record that keeps failing is one flat dead-letter line, its kind and record kept."""
    fake.inject(times=10_000, status=503)
    record = {"id": "a", "score": 1, "profile": {"tier": "Gold"}}
    with fake.client(retry=FAST) as client:
        paths = [tmp_path / f"dead{n}.jsonl" for n in range(4)]
        first = ab.Syncer(client, MAPPING, dead_letter=paths[0]).sync_members([record])
        check(first)
        for before, after in itertools.pairwise(paths):
            again = ab.Syncer(client, ab.Mapping(), dead_letter=after).replay(before)
            check(again)
            assert again.failed == 1
    lines = paths[3].read_text().splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert (entry["kind"], entry["replays"], entry["record_id"]) == ("member", 3, "a")
    assert entry["record"] == record
    assert len(lines[0]) < 2 * len(paths[0].read_text())  # no nesting


def test_sixteen_threads_report_exact_request_counts(fake: FakeBraze) -> None:
    """Threads sharing one client: their reports' requests add up to what Braze received."""
    reports: list[ab.SyncReport] = []
    lock = threading.Lock()
    with fake.client(max_in_flight=4) as client:

        def work(n: int) -> None:
            members = ({"id": f"t{n}-{i}", "score": i} for i in range(40 * (n % 4 + 1)))
            report = ab.Syncer(client, MAPPING).sync_members(members)
            with lock:
                reports.append(report)

        in_threads(work, 16)
    received = [r for r in fake.requests if r.path == "/users/track"]
    assert sum(r.requests for r in reports) == len(received)
    assert sorted(r.total for r in reports) == sorted(40 * (n % 4 + 1) for n in range(16))
    assert sum(r.succeeded for r in reports) == len(fake.profiles)


@pytest.mark.parametrize("wrap", ["generator", "record_source", "preview"])
def test_a_reused_input_dict_sends_each_member_s_own_values(fake: FakeBraze, wrap: str) -> None:
    """A generator mutating one nested dict between members (also behind a RecordSource of
    the caller's rows): each member keeps its values."""

    def reusing() -> Iterator[dict[str, Any]]:
        row: dict[str, Any] = {"profile": {}}
        for i in range(3):
            row["id"] = f"m{i}"
            row["score"] = i
            row["profile"]["tier"] = f"tier-{i}"
            yield row

    if wrap == "preview":
        syncer = ab.Syncer(None, MAPPING)
        bodies = syncer.preview_members(reusing())
        tiers = [o["profile"]["tier"] for body in bodies for o in body["attributes"]]
        assert tiers == ["tier-0", "tier-1", "tier-2"]
        return
    members = reusing() if wrap == "generator" else ab.RecordSource("rows", enumerate(reusing()))
    with fake.client() as client:
        report = ab.Syncer(client, MAPPING).sync_members(members)
    assert report.succeeded == 3
    assert {k: v["profile"]["tier"] for k, v in fake.profiles.items()} == {
        "m0": "tier-0",
        "m1": "tier-1",
        "m2": "tier-2",
    }


def test_a_list_s_members_are_sent_and_dead_lettered_as_they_were(fake: FakeBraze) -> None:
    """A list sharing one nested dict: each member's values go out, and the dead letter's
    objects stay as sent when the caller changes its input afterwards."""
    shared: dict[str, Any] = {"tier": "Gold"}
    members = [{"id": f"m{i}", "score": i, "profile": shared} for i in range(200)]
    members[7] = {"id": "blocked", "score": 7, "profile": shared}
    fake.block("blocked")
    entries: list[ab.DeadLetterEntry] = []

    class Collect:
        def write(self, entry: ab.DeadLetterEntry) -> None:
            entries.append(entry)

    with fake.client() as client:
        report = ab.Syncer(client, MAPPING, dead_letter=Collect()).sync_members(members)
    check(report)
    assert (report.succeeded, report.failed) == (199, 1)
    assert len(fake.profiles) == 199
    assert all(p["profile"] == {"tier": "Gold"} for p in fake.profiles.values())
    shared["tier"] = "changed afterwards"
    (entry,) = entries
    assert [o.object for o in entry.objects] == [
        {"external_id": "blocked", "points": 7, "profile": {"tier": "Gold"}}
    ]


def test_braze_unreachable_from_the_start_raises_at_once() -> None:
    """A closed port: TransportError after a few batches, not a full run of retries; its
    ``.report`` accounts for every record read (none succeeded, all failed retryable)."""
    with RawServer(lambda n: [CLOSE]) as server:
        url = server.url
    with ab.BrazeClient(url, "k", retry=FAST) as client:
        syncer = ab.Syncer(client, MAPPING, give_up_after=3)
        with pytest.raises(ab.TransportError, match="Braze unreachable") as info:
            syncer.sync_members({"id": f"m{i}", "score": i} for i in range(20_000))
    assert "none was ever answered (0 went out whole" in str(info.value)
    report = info.value.report
    assert report.succeeded == 0
    assert 0 < report.total == report.failed < 20_000
    assert all(f.retryable for f in report.failures)


def test_braze_lost_midway_fails_the_rest_as_not_sent(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Answers stop after one batch: the rest fails 'not sent', retryable, with one warning."""
    ok = b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: 22\r\n\r\n"
    answer = ok + b'{"message":"success"}\n'

    def script(n: int) -> list[bytes | float | None]:
        return [answer] if n == 0 else [CLOSE]

    dead = tmp_path / "dead.jsonl"
    caplog.set_level(logging.WARNING, logger="antavo_braze")
    with RawServer(script) as server, ab.BrazeClient(server.url, "k", retry=FAST) as client:
        syncer = ab.Syncer(client, MAPPING, give_up_after=3, dead_letter=dead)
        report = syncer.sync_members({"id": f"m{i}", "score": i} for i in range(3000))
        requests = server.requests
    check(report)
    assert report.succeeded == 75
    assert report.failed == 3000 - 75
    not_sent = [f for f in report.failures if f.outcome == "not_sent"]
    assert not_sent
    assert all(f.retryable for f in report.failures)
    assert all("Braze unreachable" in f.reason for f in not_sent)
    assert requests < 20  # it stopped sending
    warnings = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(warnings) == 1
    assert len(dead.read_text().splitlines()) == report.failed


def test_previews_and_dry_runs_leave_the_syncer_s_sink_alone(fake: FakeBraze) -> None:
    """A dry run beside a sync: the sync's failures still reach its dead letter."""
    sink = ab.MemoryDeadLetter()
    bad = [{"id": f"b{i}", "score": "x"} for i in range(200)]
    with fake.client() as client:
        syncer = ab.Syncer(client, MAPPING, dead_letter=sink)
        done: list[ab.SyncReport] = []
        thread = threading.Thread(target=lambda: done.append(syncer.sync_members(bad)))
        thread.start()
        for _ in range(20):
            syncer.dry_run("members", bad)
            syncer.preview_members(bad)
        thread.join()
        assert syncer.dead_letter is sink
        syncer.sync_members([{"id": "c", "score": "y"}])
    assert done[0].failed == 200
    assert len(sink.entries) == 201


def test_replay_refuses_to_write_into_its_own_input(fake: FakeBraze, tmp_path: Path) -> None:
    """An output that is the input (a symlink, a hard link) is refused before anything is sent."""
    dead = tmp_path / "dead.jsonl"
    fake.inject(times=100, status=503)
    with fake.client(retry=FAST) as client:
        ab.Syncer(client, MAPPING, dead_letter=dead).sync_members([{"id": "a", "score": 1}])
        link = tmp_path / "link.jsonl"
        os.symlink(dead, link)
        with pytest.raises(ab.ConfigurationError):
            ab.Syncer(client, ab.Mapping(), dead_letter=link).replay(dead)
        hard = tmp_path / "hard.jsonl"
        os.link(dead, hard)  # not a symlink: only samefile sees it
        with pytest.raises(ab.ConfigurationError, match="other than"):
            ab.Syncer(client, ab.Mapping(), dead_letter=hard).replay(dead)
    assert len(dead.read_text().splitlines()) == 1


@given(st.integers(min_value=0, max_value=10**9), st.sampled_from(["record", "request"]))
def test_counted_is_singular_for_one_only(count: int, noun: str) -> None:
    """One record, any other number records (0 included)."""
    text = counted(count, noun)
    assert text.startswith(f"{count} {noun}")
    assert text.endswith("s") == (count != 1)


def test_a_one_record_summary_reads_singular(fake: FakeBraze) -> None:
    """A run of one record in one request: "1 record ... 1 request", not "1 records"."""
    mapping = ab.Mapping.from_dict(
        {"fields": [{"loyalty_field": "score", "remote_field": "points", "type": "number"}]}
    )
    with fake.client() as client, ab.Syncer(client, mapping) as syncer:
        summary = syncer.sync_members([{"id": "m-1", "score": 1}]).summary()
    assert summary.startswith("1 record: 1 succeeded, 0 failed, 0 skipped; 1 request")
    assert "1 requests" not in summary
