"""Antavo's rule in service mode (BackgroundSender(antavo=...), serve --antavo) and the
ledger against redelivered webhooks."""

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
import urllib3

import antavo_braze as ab
from antavo_braze.testing import FakeAntavo, FakeBraze

from .servers import free_port, wait_until_serving

MAPPING = {
    "fields": [{"loyalty_field": "score", "remote_field": "loyalty_points", "type": "number"}],
    "events": [{"action": "point_add", "name": "loyalty_points_earned"}],
}
T0 = 1_780_000_000


def event(customer: str, number: int, event_id: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "customer": customer,
        "action": "point_add",
        "timestamp": T0 + number,
        "data": {"points": number},
    }
    if event_id is not None:
        body["id"] = event_id
    return body


@pytest.fixture
def antavo() -> Any:
    with FakeAntavo() as server:
        yield server


def test_sender_reads_each_member_once_per_window_and_sends_its_fields(
    antavo: FakeAntavo, fake: FakeBraze
) -> None:
    """Three events of two members in one window: each member is read from Antavo once,
    its mapped fields reach Braze, and every event goes."""
    antavo.add_customer({"id": "c-1", "score": 100})
    antavo.add_customer({"id": "c-2", "score": 200})
    with fake.client() as braze, antavo.client() as reader:
        syncer = ab.Syncer(braze, MAPPING)
        with ab.BackgroundSender(syncer, antavo=reader, flush_interval=5.0) as sender:
            submissions = [sender.submit_event(event(f"c-{c}", n)) for n, c in enumerate("112")]
            assert sender.flush(timeout=30)
            stats = sender.stats()
    assert all(s.result(timeout=5).status == "succeeded" for s in submissions)
    reads = sorted(r.path for r in antavo.requests if r.path.startswith("/customers/"))
    assert reads == ["/customers/c-1", "/customers/c-2"]
    assert fake.profiles["c-1"]["loyalty_points"] == 100
    assert fake.profiles["c-2"]["loyalty_points"] == 200
    assert len(fake.events) == 3
    assert (stats.refreshed, stats.refresh_failed) == (2, 0)
    tracks = [r for r in fake.requests if r.path == "/users/track"]
    assert len(tracks) == 1  # the members' fields travel in the events' request
    assert len(tracks[0].body["attributes"]) == 2
    assert len(tracks[0].body["events"]) == 3


def test_a_refreshed_member_braze_cannot_take_fails_alone(
    antavo: FakeAntavo, fake: FakeBraze, tmp_path: Path
) -> None:
    """Antavo gives a member whose score is not a number: its events go, the member alone
    fails (a member entry in the dead letter); with a state store an unchanged member is
    not sent again in the next window."""
    antavo.add_customer({"id": "c-1", "score": "lots"})
    antavo.add_customer({"id": "c-2", "score": 7})
    dead = tmp_path / "dead.jsonl"
    with (
        fake.client() as braze,
        antavo.client() as reader,
        ab.Syncer(braze, MAPPING, dead_letter=dead, state=ab.MemoryStateStore()) as syncer,
        ab.BackgroundSender(syncer, antavo=reader, flush_interval=5.0) as sender,
    ):
        first = [sender.submit_event(event(c, n)) for n, c in enumerate(["c-1", "c-2"])]
        assert sender.flush(timeout=30)
        again = sender.submit_event(event("c-2", 9))
        assert sender.flush(timeout=30)
        stats = sender.stats()
    assert [s.result(timeout=5).status for s in [*first, again]] == ["succeeded"] * 3
    assert len(fake.events) == 3
    assert fake.profiles["c-2"]["loyalty_points"] == 7
    entries = list(ab.read_dead_letters(dead))
    assert [(e.kind, e.record_id, e.stage) for e in entries] == [("member", "c-1", "validation")]
    assert (stats.refreshed, stats.refresh_failed) == (2, 1)  # c-2 twice (then unchanged)
    attributes = [
        a for r in fake.requests if r.path == "/users/track" for a in r.body.get("attributes", [])
    ]
    assert [a["external_id"] for a in attributes] == ["c-2"]


def test_antavo_down_the_events_still_go_and_the_refresh_fails_alone(
    fake: FakeBraze, tmp_path: Path
) -> None:
    """Antavo unreachable: the events reach Braze; each member's refresh fails alone
    (stage antavo, retryable, in the dead letter)."""
    dead = tmp_path / "dead.jsonl"
    policy = ab.RetryPolicy(attempts=2, wait_initial=0, wait_jitter=0)
    reader = ab.AntavoClient(
        f"http://127.0.0.1:{free_port()}", "k", "s", stack="test", retry=policy
    )
    with (
        fake.client() as braze,
        ab.Syncer(braze, MAPPING, dead_letter=dead) as syncer,
        ab.BackgroundSender(syncer, antavo=reader) as sender,
    ):
        outcome = sender.submit_event(event("c-1", 1)).result(timeout=30)
        stats = sender.stats()
    assert outcome.status == "succeeded"
    assert len(fake.events) == 1
    assert stats.refresh_failed == 1
    entries = list(ab.read_dead_letters(dead))
    assert [(e.stage, e.retryable, e.record_id) for e in entries] == [("antavo", True, "c-1")]
    assert "refresh from Antavo" in entries[0].reason


def test_webhook_redelivered_after_the_ledger_recorded_it(fake: FakeBraze, tmp_path: Path) -> None:
    """An event Braze accepted, delivered again to another sender (a second serve process)
    sharing the state: skipped as 'already sent', Braze holds it once."""
    state_path = tmp_path / "state.db"
    outcomes = []
    with fake.client() as braze:
        for _ in range(2):  # two processes, one after the other, one state file
            syncer = ab.Syncer(braze, MAPPING, state=ab.SqliteStateStore(state_path))
            with ab.BackgroundSender(syncer) as sender:
                outcomes.append(sender.submit_event(event("c-1", 1, "e-1")).result(timeout=30))
    assert [o.status for o in outcomes] == ["succeeded", "skipped"]
    assert outcomes[1].reason == "already sent"
    assert len(fake.events) == 1


def serve(
    fake: FakeBraze, antavo_url: str, tmp_path: Path, *extra: str
) -> tuple[subprocess.Popen[str], int]:
    """Start `antavo-braze serve --antavo` and wait for /healthz."""
    port = free_port()
    mapping = tmp_path / "mapping.json"
    mapping.write_text(json.dumps(MAPPING))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTAVO_")}
    env.update(
        BRAZE_REST_ENDPOINT=fake.url,
        BRAZE_API_KEY=fake.api_key,
        ANTAVO_API_URL=antavo_url,
        ANTAVO_STACK="test",
        ANTAVO_API_KEY="test-key",
        ANTAVO_API_SECRET="test-secret",
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "antavo_braze.cli", "serve", "--antavo", "--mapping",
         str(mapping), "--port", str(port), *extra],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    wait_until_serving(process, port)
    return process, port


def post_and_stop(
    process: subprocess.Popen[str], port: int, fake: FakeBraze, body: dict[str, Any]
) -> tuple[int, str]:
    """POST one event webhook, wait for it at FakeBraze, stop serve; (status, stderr)."""
    try:
        with urllib3.PoolManager(retries=False) as http:
            answer = http.request(
                "POST",
                f"http://127.0.0.1:{port}/antavo/events",
                body=json.dumps(body),
                headers={"Content-Type": "application/json"},
            )
        deadline = time.monotonic() + 60
        while not fake.events and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGTERM)
        _out, err = process.communicate(timeout=60)
    return answer.status, err


def test_serve_antavo_sends_the_members_fields_with_its_event(
    antavo: FakeAntavo, fake: FakeBraze, tmp_path: Path
) -> None:
    """serve --antavo: a webhook event brings the member's current fields from Antavo."""
    antavo.add_customer({"id": "c-9", "score": 900})
    process, port = serve(fake, antavo.url, tmp_path)
    status, err = post_and_stop(process, port, fake, event("c-9", 1, "e-9"))
    assert status == 202
    assert process.returncode == 0, err
    assert [e["external_id"] for e in fake.events] == ["c-9"]
    assert fake.profiles["c-9"]["loyalty_points"] == 900
    assert [r.path for r in antavo.requests] == ["/customers/c-9"]


def test_serve_antavo_with_antavo_down(fake: FakeBraze, tmp_path: Path) -> None:
    """serve --antavo while Antavo is unreachable: the event is still sent, the refresh
    fails alone into the dead letter (stage antavo), serve keeps running and stops cleanly."""
    dead = tmp_path / "dead.jsonl"
    down = f"http://127.0.0.1:{free_port()}"
    process, port = serve(fake, down, tmp_path, "--dead-letter", str(dead))
    status, err = post_and_stop(process, port, fake, event("c-1", 1, "e-1"))
    assert status == 202
    assert process.returncode == 0, err
    assert [e["external_id"] for e in fake.events] == ["c-1"]
    entries = list(ab.read_dead_letters(dead))
    assert [(e.stage, e.retryable) for e in entries] == [("antavo", True)]


def test_two_serve_processes_sharing_redis_state_send_a_redelivered_event_once(
    fake: FakeBraze, tmp_path: Path, redis_url: str, redis_db: Any
) -> None:
    """Two `serve --state redis://…` processes: an event delivered to the first, then
    redelivered (same Antavo id) to the second, reaches Braze once; the second skips it as
    already sent."""
    from .test_serve import serve_process

    body = json.dumps(event("c-1", 1, "e-1"))
    processes = [serve_process(fake, tmp_path, "--state", redis_url) for _ in range(2)]
    answers = []
    try:
        with urllib3.PoolManager(retries=False) as http:
            for number, (_process, port) in enumerate(processes):
                answers.append(
                    http.request(
                        "POST",
                        f"http://127.0.0.1:{port}/antavo/events",
                        body=body,
                        headers={"Content-Type": "application/json"},
                    ).status
                )
                if number == 0:  # Braze accepted it and the first process recorded that
                    deadline = time.monotonic() + 60
                    while not redis_db.exists("antavo_braze:state:sent:e-1"):
                        assert time.monotonic() < deadline, "the ledger never recorded e-1"
                        time.sleep(0.05)
    finally:
        errors = []
        for process, _port in processes:
            process.send_signal(signal.SIGTERM)
            errors.append(process.communicate(timeout=60)[1])
    assert answers == [202, 202]
    assert [p.returncode for p, _ in processes] == [0, 0], errors
    assert "1 changes received, 1 succeeded, 0 failed, 0 skipped" in errors[0]
    assert "1 changes received, 0 succeeded, 0 failed, 1 skipped" in errors[1]
    assert [(e["external_id"], e["name"]) for e in fake.events] == [
        ("c-1", "loyalty_points_earned")
    ]
