"""Audit throughput: members compared per second against FakeBraze paced at 40 requests/s.

FakeBraze (own process) answers /users/export/ids at most 40 times per second (429 beyond,
as Braze's default limit), after ``latency`` seconds. The members are first synced into it
over HTTP; then ``syncer.audit`` compares them all (50 ids per export request, the SDK pacing
itself under the endpoint's 40/s). The steady ceiling is 40 x 50 = 2,000 members/s; a run
of a few seconds also gets the first window's burst of 40, so it may show a little more.
Prints members/s, requests and 429s per latency; asserts nothing.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import MAPPING, machine, members
from _server import fake_braze_process

import antavo_braze as ab

COUNT = int(os.environ.get("BENCH_MEMBERS", "10000"))
LIMIT = 40
CEILING = LIMIT * 50


def run(latency: float) -> None:
    rows = list(members(COUNT))
    with (
        fake_braze_process(api_key="test-key", export_rate_limit=LIMIT, latency=latency) as (
            url,
            stats,
        ),
        ab.BrazeClient(url, "test-key", max_in_flight=8) as client,
    ):
        syncer = ab.Syncer(client, MAPPING)
        synced = syncer.sync_members(rows)
        assert synced.ok, synced
        start = time.perf_counter()
        report = syncer.audit(rows)
        elapsed = time.perf_counter() - start
    rate = report.members / elapsed
    print(
        f"latency {latency * 1000:>3.0f} ms: audited {report.members:,} members in {elapsed:.2f} s "
        f"= {rate:,.0f} members/s ({rate / CEILING:.0%} of the {CEILING:,}/s ceiling); "
        f"{report.requests} export requests, drifted {report.drifted}, "
        f"429s {stats['status_counts'].get(429, 0)}"
    )


def main() -> None:
    logging.getLogger("antavo_braze").setLevel(logging.ERROR)
    print(f"audit throughput, {COUNT:,} members, FakeBraze /users/export/ids at {LIMIT}/s")
    print(machine())
    for latency in (0.0, 0.05):
        run(latency)


if __name__ == "__main__":
    main()
