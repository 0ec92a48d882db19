"""Four workers, one Braze budget: InProcessPacer versus RedisPacer, in the same run.

FakeBraze (own process) allows L requests per 1-second window on /users/track (fixed windows,
as it counts them) and answers after 20 ms. Four worker processes each sync their shard
(``shard_of``) of the same members, enough for about WINDOWS windows at L. With
``InProcessPacer`` every worker believes it owns the whole budget (it learns only from its own
answers' headers); with ``RedisPacer(requests=L, per=1)`` they draw on one budget in a Redis
server started here. Prints achieved accepted requests/s as a share of L and the share of
requests answered 429; asserts nothing.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from _common import MAPPING, machine, members
from _server import fake_braze_process

import antavo_braze as ab
from antavo_braze.testing import redis_server

LIMIT = int(os.environ.get("BENCH_LIMIT", "40"))
WORKERS = 4
WINDOWS = int(os.environ.get("BENCH_WINDOWS", "15"))


def _worker(url: str, shard: int, count: int, pacing: str, redis_url: str, out: Any) -> None:
    logging.getLogger("antavo_braze").setLevel(logging.ERROR)  # the 429s are counted below
    pacer: ab.Pacer | None = None
    if pacing == "redis":
        pacer = ab.RedisPacer(redis_url, key="bench", requests=LIMIT, per=1.0)
    mine = (m for m in members(count) if ab.shard_of(m["id"], WORKERS) == shard)
    with ab.BrazeClient(url, "test-key", max_in_flight=8, pacer=pacer) as client:
        report = ab.Syncer(client, MAPPING).sync_members(mine)
    out.put((report.succeeded, report.failed))


def run(pacing: str, redis_url: str) -> None:
    count = LIMIT * WINDOWS * 75
    context = multiprocessing.get_context("spawn")
    with fake_braze_process(
        rate_limit=LIMIT, rate_window=1.0, latency=0.02, record=False, validate=False
    ) as (url, stats):
        if pacing == "redis":
            ab.RedisPacer(redis_url, key="bench").reset()
        out = context.Queue()
        workers = [
            context.Process(target=_worker, args=(url, n, count, pacing, redis_url, out))
            for n in range(WORKERS)
        ]
        started = time.perf_counter()
        for worker in workers:
            worker.start()
        results = [out.get(timeout=600) for _ in workers]
        for worker in workers:
            worker.join()
        seconds = time.perf_counter() - started
    total = sum(stats["status_counts"].values())
    limited = stats["status_counts"].get(429, 0)
    accepted = stats["status_counts"].get(201, 0)
    delivered = sum(s for s, _ in results)
    print(
        f"  {pacing:<10} {accepted / seconds:6.1f} accepted requests/s = "
        f"{accepted / seconds / LIMIT:6.1%} of L   429s {limited:>5}/{total:<5} = "
        f"{limited / max(total, 1):6.2%}   {seconds:5.1f} s   "
        f"delivered {delivered:,}/{count:,}"
    )


def main() -> None:
    print(
        f"shared budget: {WORKERS} worker processes, L={LIMIT} requests per 1 s window, "
        f"20 ms latency, max_in_flight=8 each; {machine()}"
    )
    with redis_server() as redis_url:
        for pacing in ("in-process", "redis"):
            run(pacing, redis_url)


if __name__ == "__main__":
    main()
