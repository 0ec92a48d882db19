"""Ctrl-C and SIGTERM from Python: real signals to this process; every record is accounted."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import antavo_braze as ab
from antavo_braze.testing import FakeBraze

from .servers import RawServer

MAPPING = {"fields": [{"loyalty_field": "score", "remote_field": "points", "type": "number"}]}
EVENTS = {"events": [{"action": "point_add", "name": "points_earned"}]}


def members(n: int) -> Iterator[dict[str, Any]]:
    """n members with a score."""
    for i in range(n):
        yield {"id": f"m{i}", "score": i}


def signal_when(condition: Any, signum: int = signal.SIGINT, times: int = 1) -> threading.Thread:
    """Send ``signum`` to this process (``times`` times, 50 ms apart) once ``condition()``."""

    def wait_and_signal() -> None:
        deadline = time.monotonic() + 30
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.005)
        for _ in range(times):
            os.kill(os.getpid(), signum)
            time.sleep(0.05)

    thread = threading.Thread(target=wait_and_signal, daemon=True)
    thread.start()
    return thread


def assert_accounted(report: ab.SyncReport, fake: FakeBraze) -> None:
    """Every record read is in the report once; a success is at the fake."""
    assert report.total == report.succeeded + report.failed + report.skipped
    indexes = [f.index for f in report.failures]
    assert len(indexes) == len(set(indexes))
    assert all(f.retryable for f in report.failures if f.stage == "interrupted")


@pytest.mark.parametrize(
    ("signum", "name"), [(signal.SIGINT, "SIGINT"), (signal.SIGTERM, "SIGTERM")]
)
def test_signal_mid_sync_raises_sync_interrupted_with_the_report(signum: int, name: str) -> None:
    """A signal stops reading, lets in-flight requests finish, and raises with a full report."""
    dead = ab.MemoryDeadLetter()
    with FakeBraze(api_key="k", latency=0.02) as fake, fake.client(max_in_flight=2) as client:
        syncer = ab.Syncer(client, MAPPING, dead_letter=dead)
        signal_when(lambda: fake.objects_received >= 150, signum)
        with pytest.raises(ab.SyncInterrupted) as caught:
            syncer.sync_members(members(5000))
    report = caught.value.report
    assert caught.value.signal == signum
    assert isinstance(caught.value, KeyboardInterrupt)
    assert_accounted(report, fake)
    assert 150 <= report.succeeded == len(fake.profiles)
    assert report.total < 5000  # it stopped reading
    assert {e.record_id for e in dead.entries} == {f.record_id for f in report.failures}
    assert all(name in f.reason for f in report.failures)
    assert signal.getsignal(signum) in (signal.default_int_handler, signal.SIG_DFL)


def test_keyboard_interrupt_from_the_input_is_accounted() -> None:
    """Ctrl-C raised while the input is read (a notebook cell) still yields a report."""

    def interrupted_input() -> Iterator[dict[str, Any]]:
        yield from members(200)
        raise KeyboardInterrupt

    with FakeBraze(api_key="k") as fake, fake.client() as client:
        syncer = ab.Syncer(client, MAPPING, handle_signals=False)
        with pytest.raises(ab.SyncInterrupted) as caught:
            syncer.sync_members(interrupted_input())
    report = caught.value.report
    assert_accounted(report, fake)
    assert report.total == 200
    assert report.succeeded + report.failed == 200
    assert report.succeeded == len(fake.profiles)


def test_a_batch_waiting_to_be_retried_fails_as_interrupted() -> None:
    """A 503 with a long Retry-After: the interrupt does not wait it out."""
    with FakeBraze(api_key="k") as fake, fake.client(max_in_flight=1) as client:
        fake.inject(times=100, status=503, headers={"Retry-After": "20"})
        syncer = ab.Syncer(client, MAPPING, interrupt_grace=1.0)
        signal_when(lambda: len(fake.requests) >= 1)
        started = time.monotonic()
        with pytest.raises(ab.SyncInterrupted) as caught:
            syncer.sync_members(members(10))
        waited = time.monotonic() - started
    report = caught.value.report
    assert_accounted(report, fake)
    assert report.failed == 10
    assert {f.stage for f in report.failures} == {"interrupted"}
    assert waited < 15, waited  # not the 20 s Retry-After (a bound, not a timing claim)


def test_second_signal_abandons_in_flight_events_as_unknown() -> None:
    """Two Ctrl-C: a request that never answers is not waited for; its events are unknown."""
    with RawServer(lambda n: [20.0]) as server:
        client = ab.BrazeClient(server.url, "k", max_in_flight=1, timeout=60)
        with client:
            syncer = ab.Syncer(client, EVENTS, interrupt_grace=30.0)
            events = [
                {"customer": f"m{i}", "action": "point_add", "timestamp": "2026-01-01T00:00:00Z"}
                for i in range(5)
            ]
            signal_when(lambda: server.requests >= 1, times=2)
            started = time.monotonic()
            with pytest.raises(ab.SyncInterrupted) as caught:
                syncer.sync_events(events)
            waited = time.monotonic() - started
    report = caught.value.report
    assert report.total == report.failed == 5
    assert {f.outcome for f in report.failures} == {"unknown"}
    assert all("may have applied it" in f.reason for f in report.failures)
    assert waited < 15, waited  # neither the 30 s grace nor the 20 s answer was waited out


def test_a_server_s_own_handler_is_left_alone() -> None:
    """Where the application installed its own SIGTERM handler, the SDK does not replace it."""
    seen: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        with FakeBraze(api_key="k", latency=0.01) as fake, fake.client() as client:
            syncer = ab.Syncer(client, MAPPING)
            signal_when(lambda: fake.objects_received >= 1, signal.SIGTERM)
            report = syncer.sync_members(members(300))
            time.sleep(0.2)
        assert report.succeeded == 300
        assert seen == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)
