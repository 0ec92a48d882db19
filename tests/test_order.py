"""Per-member order across processes (RedisOrder): an older snapshot never overwrites a newer
one, no two processes send one member at once, and Redis going away loses nothing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import antavo_braze as ab
from antavo_braze.testing import FakeBraze, redis_server

from .servers import free_port

MAPPING = {"fields": [{"loyalty_field": "score", "remote_field": "points", "type": "number"}]}


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A throwaway redis-server."""
    with redis_server() as url:
        yield url


def test_claims_skip_stale_snapshots_and_hold_busy_members(redis_url: str) -> None:
    """A member another process holds is busy; a snapshot older than the one sent is stale."""
    first, second = ab.RedisOrder(redis_url), ab.RedisOrder(redis_url)
    try:
        old, new = first.stamp(2)
        assert new == old + 1
        assert first.claim([("m1", new)]) == ["send"]
        assert second.claim([("m1", old), ("m2", 0)]) == ["busy", "send"]
        first.release([("m1", new)])
        second.release([("m2", 0)])
        assert second.claim([("m1", old)]) == ["stale"]
        assert second.claim([("m1", new + 1), ("m1-events", 0)]) == ["send", "send"]
    finally:
        first.close()
        second.close()


def test_a_sender_skips_a_snapshot_another_process_superseded(
    fake: FakeBraze, redis_url: str
) -> None:
    """A change stamped before another process's newer snapshot of that member was sent ends
    skipped ("superseded"), and Braze keeps the newer value."""
    order = ab.RedisOrder(redis_url)
    other = ab.RedisOrder(redis_url)
    with (
        fake.client() as client,
        ab.BackgroundSender(ab.Syncer(client, MAPPING), order=order, flush_interval=3600) as sender,
    ):
        older = sender.submit_member({"id": "m1", "score": 1})  # stamped, waiting in the queue
        (newer,) = other.stamp(1)  # another process receives a newer snapshot and sends it
        assert other.claim([("m1", newer)]) == ["send"]
        fake.profiles["m1"] = {"points": 2}
        other.release([("m1", newer)])
        assert sender.flush(timeout=30)
        outcome = older.result(0)
    assert outcome.status == "skipped"
    assert "superseded" in (outcome.reason or "")
    assert fake.profiles["m1"]["points"] == 2
    order.close()
    other.close()


WORKER = """
import json, sys
import antavo_braze as ab
url, braze, flush_interval = sys.argv[1], sys.argv[2], float(sys.argv[3])
client = ab.BrazeClient(braze, "test-key")
syncer = ab.Syncer(client, {"fields": [{"loyalty_field": "score", "remote_field": "points",
                                        "type": "number"}]})
sender = ab.BackgroundSender(syncer, order=ab.RedisOrder(url), flush_interval=flush_interval)
for line in sys.stdin:
    if line.strip() == "flush":
        break
    sender.submit_member(json.loads(line))
    print("ok", flush=True)
assert sender.flush(timeout=240)
stats = sender.stats()
sender.close()
print(json.dumps({"succeeded": stats.succeeded, "skipped": stats.skipped,
                  "failed": stats.failed}), flush=True)
"""


def run_workers(fake: FakeBraze, url: str, versions: int, members: int) -> list[dict[str, int]]:
    """Four worker processes with different windows; the webhooks of ``members`` hot members
    (``versions`` each) go round robin, one after the other (each accepted before the next
    is sent, as from one webhook source behind a load balancer). Their final counts."""
    intervals = ["0.01", "0.3", "0.05", "0.8"]
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(WORKER), url, fake.url, interval],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for interval in intervals
    ]
    try:
        for n in range(versions * members):
            worker = workers[(n + n // members) % len(workers)]  # each member meets all four
            assert worker.stdin is not None
            assert worker.stdout is not None
            member = {"id": f"hot-{n % members}", "score": n // members}
            worker.stdin.write(json.dumps(member) + "\n")
            worker.stdin.flush()
            assert worker.stdout.readline().strip() == "ok"
        return [json.loads(w.communicate("flush\n", timeout=300)[0]) for w in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.communicate()


@pytest.mark.slow
def test_four_processes_sharing_redis_leave_no_member_stale(
    fake: FakeBraze, redis_url: str
) -> None:
    """4 processes, 32 hot members, 960 snapshots: every member ends with its last value in
    Braze, every change is accounted for (sent or superseded), and no two requests for one
    member overlapped."""
    fake.latency = 0.02
    counts = run_workers(fake, redis_url, versions=30, members=32)
    stale = [m for m in range(32) if fake.profiles[f"hot-{m}"]["points"] != 29]
    assert stale == []
    assert sum(c["succeeded"] + c["skipped"] for c in counts) == 960
    assert sum(c["failed"] for c in counts) == 0
    assert fake.overlapping_requests == 0


def start_redis(port: int, workdir: Path) -> subprocess.Popen[bytes]:
    """A redis-server on ``port`` (no persistence), answering when this returns."""
    program = shutil.which("redis-server")
    if program is None:
        pytest.skip("redis-server is not installed")
    server = subprocess.Popen(
        [program, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
         "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    client = ab.RedisOrder(f"redis://127.0.0.1:{port}/0").redis
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    client.close()
    return server


@pytest.mark.slow
def test_redis_restarted_mid_run_loses_nothing(fake: FakeBraze, tmp_path: Path) -> None:
    """Redis stops while a sender with RedisOrder is submitting and sending, and comes back
    2 s later (empty): every change is delivered, none failed, the sender never dies."""
    port = free_port()
    server = start_redis(port, tmp_path)
    order = ab.RedisOrder(f"redis://127.0.0.1:{port}/0")
    submissions = []
    try:
        with (
            fake.client() as client,
            ab.BackgroundSender(
                ab.Syncer(client, MAPPING), order=order, flush_interval=0.01
            ) as sender,
        ):
            for n in range(100):
                submissions.append(sender.submit_member({"id": f"m{n % 10}", "score": n}))
            server.terminate()
            server.wait(timeout=10)
            for n in range(100, 200):
                submissions.append(sender.submit_member({"id": f"m{n % 10}", "score": n}))
            time.sleep(2)
            server = start_redis(port, tmp_path)
            for n in range(200, 300):
                submissions.append(sender.submit_member({"id": f"m{n % 10}", "score": n}))
            assert sender.flush(timeout=120)
    finally:
        server.terminate()
        server.wait(timeout=10)
        order.close()
    assert {s.result(0).status for s in submissions} <= {"succeeded", "skipped"}
    assert [fake.profiles[f"m{m}"]["points"] for m in range(10)] == list(range(290, 300))


def test_serve_order_option_sends_in_order_and_loses_nothing(
    fake: FakeBraze, redis_url: str, tmp_path: Path
) -> None:
    """antavo-braze serve --order redis://...: 40 webhooks answered 202, SIGTERM at once,
    all delivered; the order's counter in Redis moved with them."""
    from .test_service_servers import WEBHOOKS, deliver_then_sigterm

    (tmp_path / "mapping.json").write_text(json.dumps(MAPPING))
    command = [sys.executable, "-m", "antavo_braze.cli", "serve", "--mapping", "mapping.json",
               "--port", "{port}", "--order", redis_url]  # fmt: skip
    deliver_then_sigterm(fake, command, tmp_path)
    assert {f"m{n}" for n in range(WEBHOOKS)} <= set(fake.profiles)
    order = ab.RedisOrder(redis_url)
    assert int(order.redis.get("antavo_braze:order:seq")) == WEBHOOKS
    order.close()


@pytest.mark.slow
def test_a_redis_state_store_rides_out_a_redis_restart(tmp_path: Path) -> None:
    """RedisStateStore reads and writes while Redis restarts (2 s away): they wait for it and
    succeed, never raise."""
    import threading

    port = free_port()
    server = start_redis(port, tmp_path)
    store = ab.RedisStateStore(f"redis://127.0.0.1:{port}/0")
    try:
        store.put_many([("m1", {"points": "h1"})])
        server.terminate()
        server.wait(timeout=10)
        restarted: list[subprocess.Popen[bytes]] = []
        timer = threading.Timer(2.0, lambda: restarted.append(start_redis(port, tmp_path)))
        timer.start()
        store.put_many([("m2", {"points": "h2"})])  # waits for Redis, then writes
        timer.join()
        assert store.get_many(["m2"]) == {"m2": {"points": "h2"}}
        server = restarted[0]
    finally:
        server.terminate()
        server.wait(timeout=10)
        store.close()


def test_a_hostile_redis_hold_is_capped_at_max_wait(redis_url: str) -> None:
    """A hold of ten years written into Redis makes the pacer wait at most max_wait at once."""
    pacer = ab.RedisPacer(redis_url, key="hostile", max_wait=300.0)
    ten_years_ms = int((time.time() + 10 * 365 * 24 * 3600) * 1000)
    pacer.redis.set("hostile:hold", ten_years_ms)
    assert 0 < pacer.try_acquire() <= 300.0


def test_cli_says_redis_is_unreachable_in_one_line_and_exits_2(
    fake: FakeBraze, tmp_path: Path
) -> None:
    """sync members --state redis:// with nothing listening: one line on stderr, exit 2 (an
    infrastructure error, not "some records failed"), no traceback."""
    (tmp_path / "mapping.json").write_text(json.dumps(MAPPING))
    (tmp_path / "members.jsonl").write_text('{"id": "m1", "score": 1}\n')
    port = free_port()
    result = subprocess.run(
        [sys.executable, "-m", "antavo_braze.cli", "sync", "members", "--mapping",
         "mapping.json", "--input", "members.jsonl", "--state", f"redis://127.0.0.1:{port}/0"],
        cwd=tmp_path,
        env={**os.environ, "BRAZE_REST_ENDPOINT": fake.url, "BRAZE_API_KEY": fake.api_key},
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "Redis unreachable" in lines[0]
