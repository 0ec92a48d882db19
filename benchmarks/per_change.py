"""Per-change callers: `sync_members([m])` per change versus the BackgroundSender, same run.

16 threads submit CHANGES member changes against FakeBraze (own process) answering after
30 ms, at a steady total rate (RATE changes/s, so windows fill as they would in a service).
Printed per approach: requests sent (the sender's goal: <= 1.2 x ceil(changes / 75)), client
CPU per change (process time of this process, all threads), p50/p99 of the caller's wait
(for sync_members: the whole call; for the sender: submit_member returning), changes/s
delivered, and the same again under a 50 requests/s rate limit (fewer changes there: one
request per change at 50/s takes a while).

Then service mode, old and new side by side (old: the package at BENCH_OLD_SRC, a worktree
of commit BENCH_OLD_REV, by default ddbe6da — ``git worktree add /tmp/i25_old ddbe6da``):
submit latency p50/p99 of a spooled sender with 16 threads, Braze requests per 10,000 mixed
changes (member records and events of different members), and webhooks/s through
``antavo-braze serve`` with and without a spool (and their ratio: issue 25 asks >= 0.8x),
with the spool's size once everything is sent. Asserts nothing.
"""

from __future__ import annotations

import json
import logging
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import urllib3

sys.path.insert(0, str(Path(__file__).parent))

from _common import MAPPING, machine, members
from _server import fake_braze_process

import antavo_braze as ab

THREADS = 16
CHANGES = int(os.environ.get("BENCH_CHANGES", "5000"))
LIMITED_CHANGES = int(os.environ.get("BENCH_LIMITED_CHANGES", "500"))
RATE = float(os.environ.get("BENCH_RATE", "1000"))  # changes per second, all threads together
OLD_SRC = os.environ.get("BENCH_OLD_SRC", "/tmp/i25_old/src")
OLD_REV = os.environ.get("BENCH_OLD_REV", "ddbe6da")  # the commit BENCH_OLD_SRC holds
SUBMITS = int(os.environ.get("BENCH_SUBMITS", "8000"))  # spooled submits, 16 threads
MIXED = int(os.environ.get("BENCH_MIXED", "10000"))  # mixed changes (half events)
WEBHOOKS = int(os.environ.get("BENCH_WEBHOOKS", "20000"))  # through serve, 16 clients
SERVICE_MAPPING = {**MAPPING, "events": [{"action": "*"}]}
SERVE_RATES: dict[bool, float] = {}  # webhooks/s through serve, by "with a spool"


def drive(count: int, rate: float, call: Any) -> tuple[list[float], float, float]:
    """``call(member)`` from 16 threads at ``rate`` changes/s in total; (waits, cpu, wall)."""
    data = list(members(count))
    waits: list[float] = []
    lock = threading.Lock()
    interval = THREADS / rate

    def work(thread: int) -> None:
        mine = []
        start = time.perf_counter()
        for n, member in enumerate(data[thread::THREADS]):
            due = start + n * interval
            pause = due - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            began = time.perf_counter()
            call(member)
            mine.append(time.perf_counter() - began)
        with lock:
            waits.extend(mine)

    cpu, wall = time.process_time(), time.perf_counter()
    threads = [threading.Thread(target=work, args=(n,)) for n in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return waits, time.process_time() - cpu, time.perf_counter() - wall


def quantile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q * 100) - 1] if len(values) > 1 else values[0]


def per_call(syncer: ab.Syncer, count: int) -> tuple[list[float], float, int, str]:
    """Every change its own ``sync_members([m])`` call."""
    outcomes: list[bool] = []
    waits, cpu, wall = drive(count, RATE, lambda m: outcomes.append(syncer.sync_members([m]).ok))
    return waits, cpu, outcomes.count(False), f"all delivered in {wall:5.1f} s"


def background(syncer: ab.Syncer, count: int) -> tuple[list[float], float, int, str]:
    """Every change submitted to one BackgroundSender; closing it sends the last window."""
    sender = ab.BackgroundSender(syncer)
    submissions: list[ab.Submission] = []
    waits, cpu, _ = drive(count, RATE, lambda m: submissions.append(sender.submit_member(m)))
    cpu0, wall0 = time.process_time(), time.perf_counter()
    sender.close()
    cpu += time.process_time() - cpu0
    failed = sum(not s.result(0).ok for s in submissions)
    return waits, cpu, failed, f"last window out {time.perf_counter() - wall0:4.2f} s after"


def run(label: str, count: int, **fake: Any) -> None:
    for approach, send in (("sync_members([m])", per_call), ("BackgroundSender", background)):
        with (
            fake_braze_process(latency=0.03, record=False, validate=False, **fake) as (url, stats),
            ab.BrazeClient(url, "test-key", max_in_flight=8) as client,
        ):
            waits, cpu, failed, done = send(ab.Syncer(client, MAPPING, handle_signals=False), count)
        requests = sum(stats["status_counts"].values())
        limited = stats["status_counts"].get(429, 0)
        goal = math.ceil(count / 75)
        print(
            f"  {label:<16} {approach:<18} requests {requests:>5} ({requests / goal:4.1f}x "
            f"ceil(n/75)) 429s {limited:>4}  CPU {cpu / count * 1e3:6.3f} ms/change  "
            f"wait p50 {quantile(waits, 0.5) * 1e3:7.2f} ms p99 "
            f"{quantile(waits, 0.99) * 1e3:7.2f} ms  failed {failed}  {done}"
        )


def spooled_submit_latency() -> str:
    """p50/p99 of submit_member into a spool, 16 threads at once, unthrottled."""
    data = list(members(SUBMITS))
    waits: list[float] = []
    lock = threading.Lock()
    with (
        tempfile.TemporaryDirectory() as tmp,
        fake_braze_process(latency=0.0, record=False, validate=False) as (url, _),
        ab.BrazeClient(url, "test-key") as client,
    ):
        sender = ab.BackgroundSender(ab.Syncer(client, MAPPING), spool=f"{tmp}/spool.db")

        def work(thread: int) -> None:
            mine = []
            for member in data[thread::THREADS]:
                began = time.perf_counter()
                sender.submit_member(member)
                mine.append(time.perf_counter() - began)
            with lock:
                waits.extend(mine)

        started = time.perf_counter()
        threads = [threading.Thread(target=work, args=(n,)) for n in range(THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - started
        sender.close()
    return (
        f"spooled submit, {THREADS} threads: p50 {quantile(waits, 0.5) * 1e3:6.2f} ms  "
        f"p99 {quantile(waits, 0.99) * 1e3:6.2f} ms  ({len(waits) / wall:7.0f} submits/s)"
    )


def mixed_requests() -> str:
    """Braze requests for MIXED changes, member records and events (each of its own member),
    offered at 1,000 changes/s."""
    with (
        fake_braze_process(latency=0.01, record=False, validate=False) as (url, stats),
        ab.BrazeClient(url, "test-key") as client,
        ab.BackgroundSender(ab.Syncer(client, SERVICE_MAPPING)) as sender,
    ):
        for number, member in enumerate(members(MIXED // 2)):
            sender.submit_member(member)
            event = {"customer": f"event-member-{number}", "action": "opt_in"}
            sender.submit_event({**event, "id": f"e{number}"})
            if number % 50 == 49:
                time.sleep(0.1)  # 1,000 changes/s offered, as a service receives them
        sender.flush()
    requests = sum(stats["status_counts"].values())
    return f"{MIXED} mixed changes: {requests} requests (ideal {math.ceil(MIXED / 75)})"


def serve_rate(spool: bool) -> str:
    """Webhooks/s through ``antavo-braze serve`` from 16 keep-alive clients; with a spool,
    its size once everything is sent."""
    with (
        tempfile.TemporaryDirectory() as tmp,
        fake_braze_process(latency=0.0, record=False, validate=False) as (url, _),
    ):
        Path(tmp, "mapping.json").write_text(json.dumps(MAPPING))
        port = 18000 + os.getpid() % 10000
        command = [sys.executable, "-m", "antavo_braze.cli", "serve", "--mapping",
                   "mapping.json", "--port", str(port)]  # fmt: skip
        if spool:
            command += ["--spool", "spool.db"]
        env = {**os.environ, "BRAZE_REST_ENDPOINT": url, "BRAZE_API_KEY": "test-key"}
        server = subprocess.Popen(command, cwd=tmp, env=env, stderr=subprocess.DEVNULL)
        data = [json.dumps(m).encode() for m in members(WEBHOOKS)]
        base = f"http://127.0.0.1:{port}"
        with urllib3.PoolManager(
            maxsize=THREADS, retries=urllib3.Retry(10, backoff_factor=0.1)
        ) as http:
            http.request("GET", f"{base}/healthz")

            def work(thread: int) -> None:
                for body in data[thread::THREADS]:
                    http.request("POST", f"{base}/antavo/members", body=body)

            started = time.perf_counter()
            threads = [threading.Thread(target=work, args=(n,)) for n in range(THREADS)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            rate = SERVE_RATES[spool] = WEBHOOKS / (time.perf_counter() - started)
            while json.loads(http.request("GET", f"{base}/healthz").data)["queued"]:
                time.sleep(0.2)
        server.terminate()
        server.wait(timeout=60)
        size = sum(p.stat().st_size for p in Path(tmp).glob("spool.db*"))
    kept = (
        f", spool {size / 1e6:5.2f} MB after {WEBHOOKS} webhooks, nothing pending" if spool else ""
    )
    ratio = (
        f" ({rate / SERVE_RATES[False]:4.2f}x without)" if spool and False in SERVE_RATES else ""
    )
    return f"serve {'with' if spool else 'without'} a spool: {rate:6.0f} webhooks/s{ratio}{kept}"


def order_cost() -> str:
    """Wall time per change through a sender with and without a RedisOrder (new only)."""
    if not hasattr(ab, "RedisOrder"):
        return "RedisOrder: not in this version"
    from antavo_braze.testing import redis_server

    timings = {}
    with (
        redis_server() as redis_url,
        fake_braze_process(latency=0.0, record=False, validate=False) as (url, _),
        ab.BrazeClient(url, "test-key") as client,
    ):
        for label in ("without", "with"):
            order = ab.RedisOrder(redis_url) if label == "with" else None
            sender = ab.BackgroundSender(ab.Syncer(client, MAPPING), order=order)
            started = time.perf_counter()
            for member in members(SUBMITS):
                sender.submit_member(member)
            sender.close()
            timings[label] = (time.perf_counter() - started) / SUBMITS
    extra = (timings["with"] - timings["without"]) * 1e6
    return (
        f"RedisOrder: {timings['without'] * 1e6:6.1f} -> {timings['with'] * 1e6:6.1f} us per "
        f"change submitted and sent (+{extra:5.1f} us: one INCRBY per submit, a claim and a "
        "release per window)"
    )


def service() -> None:
    """The service figures of the package this interpreter imports (one side of the table)."""
    logging.getLogger("antavo_braze").setLevel(logging.ERROR)
    for figure in (spooled_submit_latency, mixed_requests, lambda: serve_rate(False),
                   lambda: serve_rate(True), order_cost):  # fmt: skip
        print(f"    {figure()}", flush=True)


def side_by_side() -> None:
    """The service figures for the old package and this one, each in its own interpreter."""
    here = str(Path(__file__).parents[1] / "src")
    for label, src in ((f"old ({OLD_REV})", OLD_SRC), ("new", here)):
        print(f"  {label}:", flush=True)
        if not Path(src, "antavo_braze").is_dir():
            print(f"    no package at {src} (git worktree add {OLD_SRC[:-4]} {OLD_REV})")
            continue
        env = {**os.environ, "PYTHONPATH": src}
        subprocess.run([sys.executable, __file__, "--service"], env=env, check=False)


def main() -> None:
    if "--service" in sys.argv:
        service()
        return
    logging.getLogger("antavo_braze").setLevel(logging.ERROR)
    print(
        f"per change: {THREADS} threads, 30 ms latency, {RATE:.0f} changes/s offered, "
        f"max_in_flight=8; {machine()}"
    )
    run(f"{CHANGES} changes", CHANGES)
    run(f"{LIMITED_CHANGES} @ 50 req/s", LIMITED_CHANGES, rate_limit=50, rate_window=1.0)
    print("service mode, old and new:")
    side_by_side()


if __name__ == "__main__":
    main()
