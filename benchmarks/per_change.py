"""Per-change callers: `sync_members([m])` per change versus the BackgroundSender, same run.

16 threads submit CHANGES member changes against FakeBraze (own process) answering after
30 ms, at a steady total rate (RATE changes/s, so windows fill as they would in a service).
Printed per approach: requests sent (the sender's goal: <= 1.2 x ceil(changes / 75)), client
CPU per change (process time of this process, all threads), p50/p99 of the caller's wait
(for sync_members: the whole call; for the sender: submit_member returning), changes/s
delivered, and the same again under a 50 requests/s rate limit (fewer changes there: one
request per change at 50/s takes a while). Asserts nothing.
"""

from __future__ import annotations

import logging
import math
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from _common import MAPPING, machine, members
from _server import fake_braze_process

import antavo_braze as ab

THREADS = 16
CHANGES = int(os.environ.get("BENCH_CHANGES", "5000"))
LIMITED_CHANGES = int(os.environ.get("BENCH_LIMITED_CHANGES", "500"))
RATE = float(os.environ.get("BENCH_RATE", "1000"))  # changes per second, all threads together


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


def main() -> None:
    logging.getLogger("antavo_braze").setLevel(logging.ERROR)
    print(
        f"per change: {THREADS} threads, 30 ms latency, {RATE:.0f} changes/s offered, "
        f"max_in_flight=8; {machine()}"
    )
    run(f"{CHANGES} changes", CHANGES)
    run(f"{LIMITED_CHANGES} @ 50 req/s", LIMITED_CHANGES, rate_limit=50, rate_window=1.0)


if __name__ == "__main__":
    main()
