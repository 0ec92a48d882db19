"""One sync in N processes on one machine (``workers=N``, ``--workers``): the same outcome as one
process, per-member order, one shared budget, Ctrl-C and --resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import antavo_braze as ab
from antavo_braze._run.checkpoint import Settled
from antavo_braze._scale.workers import (
    ELSEWHERE,
    _ListShare,
    _owners,
    _Share,
    merge_reports,
    worker_count,
)
from antavo_braze.testing import FakeBraze

MAPPING = {
    "fields": [
        {"loyalty_field": "score", "remote_field": "points", "type": "number"},
        {"loyalty_field": "tier", "remote_field": "tier", "type": "string"},
    ],
    "events": [{"action": "point_add", "name": "earned"}],
}


def _members(count: int) -> list[dict[str, Any]]:
    """Members with invalid values (every 7th) and no mapped field (every 11th)."""
    out: list[dict[str, Any]] = []
    for i in range(count):
        if i % 11 == 5:
            out.append({"id": f"m{i}", "unmapped": i})
        else:
            out.append({"id": f"m{i}", "score": "lots" if i % 7 == 3 else i, "tier": "Gold"})
    return out


def _write_jsonl(path: Path, rows: list[Any], broken: int | None = None) -> None:
    """Rows as JSON Lines; line ``broken`` (0-based) is not JSON."""
    lines = [json.dumps(row) for row in rows]
    if broken is not None:
        lines[broken] = "{not json"
    path.write_text("\n".join(lines) + "\n")


def _entries(path: Path) -> list[dict[str, Any]]:
    """Dead-letter entries without their time, in input order."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return sorted(({k: v for k, v in r.items() if k != "time"} for r in rows), key=_by_index)


def _by_index(entry: dict[str, Any]) -> int:
    return int(entry["index"])


def _same_outcome(one: ab.SyncReport, many: ab.SyncReport) -> None:
    """Everything but requests and timing is equal."""
    for name in ("total", "succeeded", "failed", "skipped", "attribute_values"):
        assert getattr(many, name) == getattr(one, name), name
    assert many.failures == one.failures
    assert many.fields == one.fields
    assert many.skipped_by_reason == one.skipped_by_reason


@pytest.mark.parametrize("workers", [2, 3])
def test_workers_report_and_dead_letter_equal_one_process(tmp_path: Path, workers: int) -> None:
    """N workers over a file give one process's report and dead letter, record for record."""
    source = tmp_path / "members.jsonl"
    _write_jsonl(source, _members(600), broken=17)
    with FakeBraze(api_key="test-key") as fake, fake.client() as client:
        one = ab.Syncer(client, MAPPING, dead_letter=tmp_path / "one.jsonl").sync_members(
            ab.read_records(source)
        )
        profiles = {k: dict(v) for k, v in fake.profiles.items()}
        fake.profiles.clear()
        syncer = ab.Syncer(client, MAPPING, dead_letter=tmp_path / "many.jsonl")
        many = syncer.sync_members(ab.read_records(source), workers=workers)
        assert fake.profiles == profiles
    assert one.failed > 50
    assert one.skipped > 40
    assert one.succeeded > 400
    assert any(f.stage == "input" and f.line == 18 for f in many.failures)
    _same_outcome(one, many)
    assert _entries(tmp_path / "many.jsonl") == _entries(tmp_path / "one.jsonl")
    assert oct((tmp_path / "many.jsonl").stat().st_mode & 0o777) == "0o600"
    assert not list(tmp_path.glob(".antavo-braze-workers-*"))  # the parts are gone


def test_progress_counts_the_whole_run() -> None:
    """The progress callback sees every worker's records added up, ending at the total."""
    seen: list[ab.Progress] = []
    members = _members(400)
    with FakeBraze(api_key="test-key", latency=0.01) as fake, fake.client() as client:
        limits = ab.BatchLimits(max_objects=5)
        report = ab.Syncer(client, MAPPING, progress=seen.append, limits=limits).sync_members(
            members, workers=2
        )
    assert seen
    assert all(0 <= p.done <= 400 and p.total == 400 for p in seen)
    last = seen[-1]
    assert (last.done, last.succeeded, last.failed) == (400, report.succeeded, report.failed)


def test_a_members_events_arrive_in_input_order() -> None:
    """Events of one member go through one worker, in input order; each arrives once."""
    events = [
        {
            "customer": f"c{(i * 7) % 23}",
            "action": "point_add",
            "timestamp": 1_700_000_000 + i,
            "data": {"n": i},
        }
        for i in range(900)
    ]
    with FakeBraze(api_key="test-key") as fake, fake.client(max_in_flight=4) as client:
        limits = ab.BatchLimits(max_objects=10)  # many requests: order across requests counts
        report = ab.Syncer(client, MAPPING, limits=limits).sync_events(events, workers=3)
        assert report.succeeded == 900
        seen = [(e["external_id"], e["properties"]["n"]) for e in fake.events]
    assert sorted(n for _, n in seen) == list(range(900))
    for customer in {c for c, _ in seen}:
        mine = [n for c, n in seen if c == customer]
        assert mine == sorted(mine), customer


def test_workers_share_one_budget_and_never_exceed_it() -> None:
    """Two workers with a budget of 40 requests per 0.5 s never get a 429 from a fake that
    allows exactly that."""
    members = [{"id": f"m{i}", "score": i} for i in range(200)]
    with FakeBraze(api_key="test-key", rate_limit=40, rate_window=0.5) as fake:
        pacer = ab.InProcessPacer(requests=40, per=0.5)
        limits = ab.BatchLimits(max_objects=1)  # one request per member
        with fake.client(max_in_flight=8, pacer=pacer, limits=limits) as client:
            report = ab.Syncer(client, MAPPING).sync_members(members, workers=2)
        assert report.succeeded == 200
        assert fake.status_counts[429] == 0
        assert sum(fake.status_counts.values()) == 200


def test_a_workers_error_reaches_the_caller() -> None:
    """Bad credentials in the workers raise AuthenticationError in the caller, as for one."""
    with FakeBraze(api_key="test-key") as fake:
        client = ab.BrazeClient(fake.url, "wrong-key")
        with pytest.raises(ab.AuthenticationError):
            ab.Syncer(client, MAPPING).sync_members(_members(50), workers=2)


def test_shared_memory_pacer_counts_every_process() -> None:
    """Slots taken in a forked child count against the parent's budget, and come back."""
    pacer = ab.SharedMemoryPacer(requests=5, per=60.0)
    assert pacer.try_acquire() == 0
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        ok = all(pacer.try_acquire() == 0 for _ in range(3))
        pacer.observe(200, {})
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert pacer.try_acquire() == 0  # the fifth
    assert pacer.try_acquire() > 0  # 2 in flight here, 2 in the child, 1 answered there
    pacer.observe(200, {})
    assert pacer.try_acquire() > 0  # an answer's slot comes back only `per` seconds later


def test_shared_memory_pacer_holds_every_process_after_a_429() -> None:
    """A 429's Retry-After seen by one process holds the others."""
    pacer = ab.SharedMemoryPacer(requests=None)
    assert pacer.try_acquire() == 0
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        pacer.observe(429, {"Retry-After": "30"})
        os._exit(0)
    os.waitpid(pid, 0)
    assert 25 < pacer.try_acquire() <= 30


def test_shared_memory_pacer_waits_for_the_reset_braze_announces() -> None:
    """What X-RateLimit-Remaining leaves, less the requests still in flight, is the budget
    until X-RateLimit-Reset; release() gives back slots that will never be answered."""
    pacer = ab.SharedMemoryPacer(requests=None)
    assert pacer.try_acquire() == 0
    assert pacer.try_acquire() == 0
    reset = str(int(time.time()) + 30)
    pacer.observe(200, {"X-RateLimit-Remaining": "1", "X-RateLimit-Reset": reset})
    assert "in_flight=1" in repr(pacer)
    assert pacer.try_acquire() > 20  # the one left is the one still in flight
    pacer.release()
    assert "in_flight=0" in repr(pacer)


def test_shared_memory_pacer_hourly_budget_and_bad_settings() -> None:
    """An hourly budget holds the rest of the hour; nonsense settings are refused."""
    pacer = ab.SharedMemoryPacer(requests=None, hourly=2)
    assert pacer.try_acquire() == 0
    assert pacer.try_acquire() == 0
    assert pacer.try_acquire() > 0
    for bad in ({"requests": 0}, {"hourly": 0}, {"per": 0}):
        with pytest.raises(ab.ConfigurationError):
            ab.SharedMemoryPacer(**bad)  # type: ignore[arg-type]


@settings(max_examples=50, deadline=None)
@given(
    customers=st.lists(st.integers(0, 30), max_size=60),
    count=st.integers(1, 5),
)
def test_every_record_has_exactly_one_worker_and_a_member_one_worker(
    customers: list[int], count: int
) -> None:
    """Split by member: each position is one worker's, a member's records all the same one."""
    records: list[Any] = [{"customer": f"c{c}", "action": "x"} for c in customers]
    records[len(records) // 2 : len(records) // 2 + 1] = [Settled(0)] if records else []
    owners: dict[int, int] = {}
    by_customer: dict[str, set[int]] = {}
    worked_out = _owners(records, count, "event")
    assert worked_out is not None
    for index in range(count):
        # A list's owners worked out before the fork split it as the shared reading does.
        listed = list(_ListShare(records, index, count, "event", worked_out))
        assert listed == list(_Share(records, index, count, "event"))
        share = _Share(records, index, count, "event")
        for position, record in enumerate(share):
            if record.__class__ is Settled and record.reason == ELSEWHERE:
                continue
            assert position not in owners
            owners[position] = index
            if isinstance(record, dict):
                by_customer.setdefault(record["customer"], set()).add(index)
        assert share.elsewhere == len(records) - sum(1 for o in owners.values() if o == index)
    assert sorted(owners) == list(range(len(records)))
    assert all(len(workers) == 1 for workers in by_customer.values())


def test_merge_takes_other_workers_records_out() -> None:
    """Merged reports count each record once (others' records were skipped by each worker)."""
    a = ab.SyncReport(10, 4, 1, 5, 2, skipped_by_reason={ELSEWHERE: 4, "unchanged": 1})
    b = ab.SyncReport(10, 3, 1, 6, 1, skipped_by_reason={ELSEWHERE: 6})
    merged = merge_reports([a, b], elapsed=1.0)
    assert (merged.total, merged.succeeded, merged.failed, merged.skipped) == (10, 7, 2, 1)
    assert merged.skipped_by_reason == {"unchanged": 1}
    assert merged.requests == 3


def test_worker_counts_and_one_shot_inputs() -> None:
    """'auto' is the cores; a bad count and a generator are clear errors."""
    assert worker_count("auto") >= 1
    assert worker_count(3) == 3
    with pytest.raises(ab.ConfigurationError, match="workers must be"):
        worker_count(0)
    syncer = ab.Syncer(ab.BrazeClient("http://127.0.0.1:1", "k"), MAPPING)
    with pytest.raises(ab.ConfigurationError, match="not an iterator or generator"):
        syncer.sync_members(iter([{"id": "a", "score": 1}]), workers=2)


# --- the command line ---------------------------------------------------------------------------


def _cli(fake: FakeBraze, *args: str) -> subprocess.Popen[str]:
    """``antavo-braze sync ARGS`` in the background, wired to the fake."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRAZE_")}
    env.update({"BRAZE_REST_ENDPOINT": fake.url, "BRAZE_API_KEY": fake.api_key})
    return subprocess.Popen(
        [sys.executable, "-m", "antavo_braze.cli", "sync", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _wait_for(condition: Any, timeout: float = 60.0) -> None:
    """Poll until ``condition()`` holds (bounded)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.01)


def test_cli_workers_interrupted_and_resumed_end_as_one_process(tmp_path: Path) -> None:
    """SIGINT to `sync --workers 2` exits 130 with a partial report; --resume --workers 2
    finishes; Braze then holds what one process's run gives it, each event once, and the
    dead letter holds what one process's holds."""
    mapping = tmp_path / "mapping.json"
    mapping.write_text(json.dumps(MAPPING))
    events = tmp_path / "events.jsonl"
    rows = [
        {
            "customer": f"c{i % 40}",
            "action": "point_add" if i % 13 else "unmapped_action",
            "timestamp": "2026-01-01T00:00:00Z" if i % 17 else "not a time",
            "data": {"n": i},
        }
        for i in range(3000)
    ]
    _write_jsonl(events, rows, broken=9)
    base = ["events", "--mapping", str(mapping), "--input", str(events), "--quiet"]
    base += ["--max-in-flight", "2", "--batch-size", "20"]
    with FakeBraze(api_key="test-key") as fake:
        one = _cli(fake, *base, "--dead-letter", str(tmp_path / "one.jsonl"))
        out, err = one.communicate(timeout=120)
        assert one.returncode == 1, err  # some records are invalid
        expected = sorted(e["properties"]["n"] for e in fake.events)
    dead = tmp_path / "many.jsonl"
    args = [*base, "--dead-letter", str(dead), "--workers", "2"]
    with FakeBraze(api_key="test-key", latency=0.02) as fake:
        proc = _cli(fake, *args)
        _wait_for(lambda: fake.objects_received >= 300)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err
        assert "--resume" in err
        read = int(out.split(" records:")[0])
        assert read < 3000
        assert dead.with_name(dead.name + ".checkpoint").exists()
        resumed = _cli(fake, *args, "--resume")
        out, err = resumed.communicate(timeout=120)
        assert resumed.returncode == 1, err
        assert out.startswith("3000 records:")
        got = [e["properties"]["n"] for e in fake.events]
    assert sorted(got) == expected  # every event once: none lost, none twice
    assert not dead.with_name(dead.name + ".checkpoint").exists()
    assert _entries(dead) == _entries(tmp_path / "one.jsonl")


def test_cli_workers_need_a_file_and_a_count(tmp_path: Path) -> None:
    """--workers with stdin, or a count that is not one, is a one-line usage error."""
    mapping = tmp_path / "mapping.json"
    mapping.write_text(json.dumps(MAPPING))
    with FakeBraze(api_key="test-key") as fake:
        proc = _cli(fake, "members", "--mapping", str(mapping), "--input", "-", "--workers", "2")
        _, err = proc.communicate("", timeout=60)
        assert proc.returncode == 2
        assert "read only once" in err
        assert "Traceback" not in err
        proc = _cli(fake, "members", "--mapping", str(mapping), "--input", "-", "--workers", "0")
        _out, err = proc.communicate("", timeout=60)
        assert proc.returncode == 2
        assert "--workers" in err


def test_the_reported_error_wins_over_a_stopped_workers_death() -> None:
    """A worker stopped by SIGTERM after another's failure is not blamed for the run."""
    from antavo_braze._scale.workers import _first_cause, _WorkerDiedError

    real = ab.AuthenticationError(401, "", "bad key")
    died = _WorkerDiedError("worker 0 ended without a report")
    assert _first_cause({0: died, 1: real}) is real
    assert _first_cause({1: died}) is died
    assert _first_cause({}) is None
