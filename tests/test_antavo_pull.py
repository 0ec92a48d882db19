"""Pulls from FakeAntavo into FakeBraze, the watermark, and the event ledger (each event once)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytest

import antavo_braze as ab
from antavo_braze.testing import FakeAntavo, FakeBraze

MAPPING = {
    "fields": [{"loyalty_field": "score", "remote_field": "loyalty_points", "type": "number"}],
    "events": [
        {"action": "point_add", "name": "loyalty_points_earned"},
        {"action": "opt_in", "name": "loyalty_enrolled"},
    ],
}
T0 = 1_780_000_000  # a moment in 2026


@pytest.fixture
def antavo() -> Any:
    with FakeAntavo() as server:
        yield server


def add_events(fake: FakeAntavo, count: int, start: int = T0) -> None:
    for number in range(count):
        fake.add_event(
            {
                "customer": f"c-{number % 10}",
                "action": "point_add",
                "timestamp": start + number,
                "data": {"points": number},
            }
        )


def test_pull_members_250_over_three_pages_then_only_what_changed(
    antavo: FakeAntavo, fake: FakeBraze
) -> None:
    """A first pull sends 250 customers read over three pages; the next pull, from the
    watermark, sends only the customer changed since."""
    for number in range(250):
        antavo.add_customer({"id": f"c-{number:03d}", "score": number, "updated_at": T0 + number})
    state = ab.MemoryStateStore()
    with fake.client() as braze, antavo.client() as reader:
        syncer = ab.Syncer(braze, MAPPING, state=state)
        first = syncer.pull_members(reader, since=T0 - 1, until=T0 + 300)
        assert (first.total, first.succeeded) == (250, 250)
        assert first.watermark == "2026-05-28T20:31:40Z"
        assert state.get_watermark("members") == first.watermark
        assert len([r for r in antavo.requests if r.path == "/customers"]) == 3
        antavo.update_customer("c-007", score=1000, updated_at=T0 + 400)
        second = syncer.pull_members(reader, until=T0 + 500)
    assert (second.total, second.succeeded) == (1, 1)
    assert fake.profiles["c-007"]["loyalty_points"] == 1000
    assert fake.profiles["c-249"]["loyalty_points"] == 249


def test_pull_needs_a_start(antavo: FakeAntavo, fake: FakeBraze) -> None:
    """Without a state store and without since, or with a store that has no watermark yet,
    a pull refuses with a clear ConfigurationError."""
    with fake.client() as braze, antavo.client() as reader:
        with pytest.raises(ab.ConfigurationError, match="since= or a state store"):
            ab.Syncer(braze, MAPPING).pull_events(reader)
        stateful = ab.Syncer(braze, MAPPING, state=ab.MemoryStateStore())
        with pytest.raises(ab.ConfigurationError, match="no watermark for events yet"):
            stateful.pull_events(reader)
    assert antavo.requests == []


def test_two_overlapping_pulls_send_each_event_once(antavo: FakeAntavo, fake: FakeBraze) -> None:
    """Windows [T0, T0+60) and [T0+30, T0+90) overlap: every event reaches Braze once, the
    overlap is skipped as 'already sent'."""
    add_events(antavo, 90)
    with fake.client() as braze, antavo.client() as reader:
        syncer = ab.Syncer(braze, MAPPING, state=ab.MemoryStateStore())
        first = syncer.pull_events(reader, since=T0, until=T0 + 60)
        second = syncer.pull_events(reader, since=T0 + 30, until=T0 + 90)
    assert first.succeeded == 60
    assert (second.succeeded, second.skipped) == (30, 30)
    assert second.skipped_by_reason == {"already sent": 30}
    assert sorted(e["properties"]["points"] for e in fake.events) == list(range(90))


def test_events_pulled_from_the_watermark_follow_on(antavo: FakeAntavo, fake: FakeBraze) -> None:
    """Pulls from the watermark read consecutive windows: nothing twice, nothing missed."""
    add_events(antavo, 40)
    state = ab.MemoryStateStore()
    with fake.client() as braze, antavo.client() as reader:
        syncer = ab.Syncer(braze, MAPPING, state=state)
        syncer.pull_events(reader, since=T0, until=T0 + 20)
        report = syncer.pull_events(reader, until=T0 + 40)
    assert (report.total, report.skipped) == (20, 0)
    assert len(fake.events) == 40


def test_watermark_stays_when_a_record_failed_without_a_dead_letter(
    antavo: FakeAntavo, fake: FakeBraze, tmp_path: Path
) -> None:
    """A failed record with no dead letter leaves the window unsettled: the watermark stays;
    with a dead letter the failure is settled there and the watermark moves."""
    add_events(antavo, 5)
    state = ab.MemoryStateStore()
    state.set_watermark("events", "2026-05-28T20:26:40Z")  # T0
    fake.inject(times=5, status=400, body={"message": "bad"})
    with fake.client() as braze, antavo.client() as reader:
        report = ab.Syncer(braze, MAPPING, state=state).pull_events(reader, until=T0 + 10)
        assert report.failed == 5
        assert report.watermark == "2026-05-28T20:26:40Z"
        assert state.get_watermark("events") == "2026-05-28T20:26:40Z"
        fake.inject(times=5, status=400, body={"message": "bad"})
        dead = tmp_path / "dead.jsonl"
        with ab.Syncer(braze, MAPPING, state=state, dead_letter=dead) as syncer:
            again = syncer.pull_events(reader, until=T0 + 10)
    assert again.failed == 5
    assert state.get_watermark("events") == again.watermark == "2026-05-28T20:26:50Z"
    assert len(dead.read_text().splitlines()) == 5


def test_an_unsettled_pull_without_a_state_store_says_where_to_pull_from(
    antavo: FakeAntavo, fake: FakeBraze, caplog: pytest.LogCaptureFixture
) -> None:
    """Without a state store no watermark is kept: the warning of an unsettled window says to
    pull again from its start, not that a watermark "stays"."""
    add_events(antavo, 5)
    fake.inject(times=5, status=400, body={"message": "bad"})
    with (
        caplog.at_level(logging.WARNING, logger="antavo_braze"),
        fake.client() as braze,
        antavo.client() as reader,
    ):
        report = ab.Syncer(braze, MAPPING).pull_events(reader, since=T0, until=T0 + 10)
    assert report.failed == 5
    (warning,) = [r.getMessage() for r in caplog.records if "not settled" in r.getMessage()]
    assert "pull again from 2026-05-28T20:26:40Z (no state store keeps a watermark)" in warning
    assert "watermark stays" not in warning


def test_antavo_failing_mid_pull_raises_with_the_partial_report(
    antavo: FakeAntavo, fake: FakeBraze
) -> None:
    """Antavo failing on page two: what was read is sent and reported on the error, and
    the watermark does not move; the next pull sends the rest, each event once."""
    add_events(antavo, 150)
    state = ab.MemoryStateStore()
    state.set_watermark("events", "2026-05-28T20:26:40Z")
    policy = ab.RetryPolicy(attempts=2, wait_initial=0, wait_jitter=0)
    with fake.client() as braze, antavo.client(retry=policy) as reader:
        syncer = ab.Syncer(braze, MAPPING, state=state)
        antavo.on_request = lambda path: (
            antavo.fail_next(503, count=2)
            if len([r for r in antavo.requests if r.path == path]) == 1
            else None
        )
        with pytest.raises(ab.ServerError) as caught:
            syncer.pull_events(reader, until=T0 + 200)
        antavo.on_request = None
        partial = caught.value.report  # type: ignore[attr-defined]
        assert (partial.total, partial.succeeded) == (100, 100)
        assert state.get_watermark("events") == "2026-05-28T20:26:40Z"
        rest = syncer.pull_events(reader, until=T0 + 200)
    assert (rest.succeeded, rest.skipped) == (50, 100)
    assert len(fake.events) == 150


def test_two_replays_of_one_dead_letter_send_each_event_once(
    antavo: FakeAntavo, fake: FakeBraze, tmp_path: Path
) -> None:
    """Events that failed (5xx) into a dead letter, replayed twice with the state store:
    Braze receives each event once."""
    add_events(antavo, 30)
    dead = tmp_path / "dead.jsonl"
    state = ab.SqliteStateStore(tmp_path / "state.db")
    policy = ab.RetryPolicy(attempts=1)
    with fake.client(retry=policy) as braze, antavo.client() as reader:
        fake.inject(times=1, status=500)
        with ab.Syncer(braze, MAPPING, state=state, dead_letter=dead) as syncer:
            first = syncer.pull_events(reader, since=T0, until=T0 + 30)
        assert first.failed == 30
        assert fake.events == []
        reports = []
        for number in range(2):
            with ab.Syncer(
                braze, MAPPING, state=state, dead_letter=tmp_path / f"replay{number}.jsonl"
            ) as syncer:
                reports.append(syncer.replay(dead))
    assert reports[0].succeeded == 30
    assert (reports[1].succeeded, reports[1].skipped_by_reason) == (0, {"already sent": 30})
    assert len(fake.events) == 30


def test_an_event_repeated_in_one_input_goes_once(fake: FakeBraze) -> None:
    """The same event id twice in one sync (with a ledger): the repeat is skipped."""
    event = {"id": "e-1", "customer": "c-1", "action": "opt_in", "timestamp": T0}
    with fake.client() as braze:
        syncer = ab.Syncer(braze, MAPPING, state=ab.MemoryStateStore())
        report = syncer.sync_events([event, dict(event)])
    assert (report.succeeded, report.skipped) == (1, 1)
    assert len(fake.events) == 1


def test_events_without_an_id_are_always_sent(fake: FakeBraze) -> None:
    """An event without an id has no ledger entry: sent every time, as before."""
    event = {"customer": "c-1", "action": "opt_in", "timestamp": T0}
    with fake.client() as braze:
        syncer = ab.Syncer(braze, MAPPING, state=ab.MemoryStateStore())
        syncer.sync_events([event])
        syncer.sync_events([event])
    assert len(fake.events) == 2


def test_sqlite_ledger_survives_a_new_store_and_forgets_after_its_horizon(tmp_path: Path) -> None:
    """Ids and watermarks persist in the SQLite file; ids past ledger_days are forgotten."""
    path = tmp_path / "state.db"
    store = ab.SqliteStateStore(path)
    store.record_sent(["e-1", "e-2"])
    store.set_watermark("events", "2026-12-06T09:00:00Z")
    again = ab.SqliteStateStore(path)
    assert again.sent_events(["e-1", "e-3", "e-2"]) == {"e-1", "e-2"}
    assert again.get_watermark("events") == "2026-12-06T09:00:00Z"
    assert again.get_watermark("members") is None
    short = ab.SqliteStateStore(path, ledger_days=0.5 / 86_400)  # half a second
    time.sleep(0.6)
    assert short.sent_events(["e-1"]) == set()
    short.record_sent(["e-9"])  # prunes what is past the horizon
    assert ab.SqliteStateStore(path).sent_events(["e-1", "e-9"]) == {"e-9"}
    assert path.stat().st_mode & 0o077 == 0


def test_memory_ledger_forgets_after_its_horizon() -> None:
    """MemoryStateStore keeps ids for ledger_days too."""
    store = ab.MemoryStateStore(ledger_days=0.2 / 86_400)
    store.record_sent(["e-1"])
    assert store.sent_events(["e-1"]) == {"e-1"}
    time.sleep(0.3)
    assert store.sent_events(["e-1"]) == set()


def test_redis_ledger_and_watermark_are_shared(redis_db: Any) -> None:
    """Two RedisStateStores on one prefix share the ledger and the watermarks; the ids
    expire after ledger_days."""
    first = ab.RedisStateStore(redis_db, prefix="t")
    second = ab.RedisStateStore(redis_db, prefix="t")
    first.record_sent(["e-1"])
    first.set_watermark("members", "2026-12-06T09:00:00Z")
    assert second.sent_events(["e-1", "e-2"]) == {"e-1"}
    assert second.get_watermark("members") == "2026-12-06T09:00:00Z"
    ttl = redis_db.ttl("t:sent:e-1")
    assert 29 * 86_400 < ttl <= 30 * 86_400


def test_pull_with_redis_state_sends_each_event_once_across_workers(
    antavo: FakeAntavo, fake: FakeBraze, redis_db: Any
) -> None:
    """Two workers sharing Redis state pull the same window: Braze gets each event once."""
    add_events(antavo, 20)
    with fake.client() as braze, antavo.client() as reader:
        for _ in range(2):
            store = ab.RedisStateStore(redis_db, prefix="w")
            ab.Syncer(braze, MAPPING, state=store).pull_events(reader, since=T0, until=T0 + 20)
    assert len(fake.events) == 20


def test_events_of_this_very_second_are_pulled_with_no_lag(
    antavo: FakeAntavo, fake: FakeBraze
) -> None:
    """Against the fake (lag 0) an event added just now is in the default window."""
    antavo.add_event({"customer": "c-1", "action": "opt_in"})  # timestamp: now
    with fake.client() as braze, antavo.client() as reader:
        report = ab.Syncer(braze, MAPPING).pull_events(reader, since=T0)
    assert report.succeeded == 1


class _PlainStore:
    """A user's own state store: change detection only, no watermark, no ledger."""

    def __init__(self) -> None:
        self.data: dict[str, dict[str, str]] = {}

    def get(self, member_id: str) -> dict[str, str] | None:
        return self.data.get(member_id)

    def put_many(self, updates: Any) -> None:
        for member_id, fields in updates:
            self.data.setdefault(member_id, {}).update(fields)


def test_a_store_without_watermark_or_ledger(antavo: FakeAntavo, fake: FakeBraze) -> None:
    """A store of your own without watermarks: a pull needs since=; without a ledger an
    event is sent each time it is synced."""
    add_events(antavo, 2)
    with fake.client() as braze, antavo.client() as reader:
        syncer = ab.Syncer(braze, MAPPING, state=_PlainStore())
        with pytest.raises(ab.ConfigurationError, match="keeps no watermark"):
            syncer.pull_events(reader)
        syncer.pull_events(reader, since=T0, until=T0 + 2)
        syncer.pull_events(reader, since=T0, until=T0 + 2)
    assert len(fake.events) == 4


def test_memory_store_watermarks() -> None:
    """MemoryStateStore keeps one watermark per kind."""
    store = ab.MemoryStateStore()
    assert store.get_watermark("events") is None
    store.set_watermark("events", "2026-12-06T09:00:00Z")
    store.set_watermark("members", "2026-12-06T08:00:00Z")
    assert store.get_watermark("events") == "2026-12-06T09:00:00Z"
    assert store.get_watermark("members") == "2026-12-06T08:00:00Z"


def test_an_interrupted_pull_keeps_the_watermark(antavo: FakeAntavo, fake: FakeBraze) -> None:
    """SIGINT while page two is read: SyncInterrupted with the partial report, whose
    watermark is the window's start; the stored watermark does not move."""
    import os
    import signal

    add_events(antavo, 150)
    state = ab.MemoryStateStore()
    state.set_watermark("events", "2026-05-28T20:26:40Z")
    pages = []

    def interrupt(path: str) -> None:
        pages.append(path)
        if len(pages) == 2:
            os.kill(os.getpid(), signal.SIGINT)

    antavo.on_request = interrupt
    with fake.client() as braze, antavo.client() as reader:
        syncer = ab.Syncer(braze, MAPPING, state=state)
        with pytest.raises(ab.SyncInterrupted) as caught:
            syncer.pull_events(reader, until=T0 + 200)
    report = caught.value.report
    assert report.watermark == "2026-05-28T20:26:40Z"
    assert report.total == report.succeeded + report.failed + report.skipped
    assert state.get_watermark("events") == "2026-05-28T20:26:40Z"
