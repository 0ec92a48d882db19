"""Pacing under a rate limit: achieved request rate as a share of the limit, and 429s.

FakeBraze (own process) allows L requests per 1-second window on /users/track and answers
after 20 ms; the SDK syncs enough members for about 20 windows. Windows are fixed (aligned to
whole epoch seconds, as FakeBraze counts them), so a run that starts late in a window can beat L
over its own duration; the share of the capacity of the windows the run touched cannot exceed
100%. Prints figures; asserts nothing.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import MAPPING, machine, members
from _server import fake_braze_process

import antavo_braze as ab

LIMITS = [int(n) for n in os.environ.get("BENCH_LIMITS", "20,50,100").split(",")]
WINDOWS = 20


def main() -> None:
    print(f"rate limit: 1 s windows, 20 ms latency, max_in_flight=16; {machine()}")
    for limit in LIMITS:
        count = limit * WINDOWS * 75
        with (
            fake_braze_process(
                rate_limit=limit, rate_window=1.0, latency=0.02, record=False, validate=False
            ) as (url, stats),
            ab.BrazeClient(url, "test-key", max_in_flight=16) as client,
        ):
            started, wall_started = time.perf_counter(), time.time()
            report = ab.Syncer(client, MAPPING).sync_members(members(count))
            seconds, wall_ended = time.perf_counter() - started, time.time()
        windows = int(wall_ended) - int(wall_started) + 1
        total = sum(stats["status_counts"].values())
        limited = stats["status_counts"].get(429, 0)
        useful = stats["status_counts"].get(201, 0)
        print(
            f"  L={limit:>4}/s  N={count:>7,}  {useful / seconds:6.1f} accepted requests/s = "
            f"{useful / seconds / limit:5.1%} of L; {useful / (windows * limit):5.1%} of the "
            f"{windows} windows' capacity   429s {limited}/{total} = {limited / total:.2%}   "
            f"all delivered: {report.ok and report.succeeded == count}"
        )


if __name__ == "__main__":
    main()
