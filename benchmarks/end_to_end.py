"""Latency-modelled end-to-end benchmark: members/s and requests/s through a real HTTP stack.

FakeBraze runs in its own process (no validation, no recording) and answers every request after
LATENCY seconds, like a real round trip; the SDK syncs generated members with max_in_flight
1, 8, 32 and 128. Without added latency the SDK is compared with a hand-written loop of
urllib3 posts on one kept-alive connection (no validation, one request at a time).

Run it under two installs to compare transports: `BENCH_ONLY=128` limits the latency runs to one
`max_in_flight` value, and `python benchmarks/end_to_end.py` under an older venv measures that
install (the script uses only public names that every release has). Prints figures; asserts nothing.

The members are generated before the clock starts (generating one costs more than syncing it)
and handed to the garbage collector's permanent generation (gc.freeze), where a streaming
source's records would never be: the figures are the SDK's and the HTTP stack's, not the
generator's. SDK and reference get the same list.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import urllib3

sys.path.insert(0, str(Path(__file__).parent))

from _common import MAPPING, machine, members, reference_bodies
from _server import fake_braze_process

import antavo_braze as ab
from antavo_braze import _json

N = int(os.environ.get("BENCH_N", "200000"))
ONLY = [int(n) for n in os.environ.get("BENCH_ONLY", "1,8,32,128").split(",")]
LATENCY = float(os.environ.get("BENCH_LATENCY", "0.1"))
# Old against new: both clients must talk to the same server (FakeBraze's own cost per request
# differs between versions, and at 128 in flight it is close to the ceiling). BENCH_SERVERS=
# "URL_WITH_LATENCY,URL_WITHOUT" uses servers started by `python benchmarks/_server.py`.
SERVERS = os.environ.get("BENCH_SERVERS", "").split(",") if os.environ.get("BENCH_SERVERS") else []


@contextlib.contextmanager
def server(latency: float) -> Iterator[str]:
    if SERVERS:
        yield SERVERS[0 if latency else 1]
        return
    with fake_braze_process(latency=latency, record=False, validate=False) as (url, _):
        yield url


def run_sdk(
    url: str, records: list[dict[str, object]], in_flight: int
) -> tuple[float, ab.SyncReport]:
    with ab.BrazeClient(url, "test-key", max_in_flight=in_flight) as client:
        syncer = ab.Syncer(client, MAPPING)
        started = time.perf_counter()
        report = syncer.sync_members(records)
        return time.perf_counter() - started, report


def run_reference(url: str, records: list[dict[str, object]]) -> float:
    pool = urllib3.PoolManager(maxsize=1)
    headers = {"Authorization": "Bearer test-key", "Content-Type": "application/json"}
    started = time.perf_counter()
    for body in reference_bodies(records):
        pool.request("POST", url + "/users/track", body=body, headers=headers, timeout=30.0)
    return time.perf_counter() - started


def row(label: str, count: int, seconds: float, requests_sent: int) -> None:
    print(
        f"  {label:34} N={count:>7,}  {requests_sent / seconds:>7,.0f} requests/s  "
        f"{count / seconds:>8,.0f} members/s  ({seconds:.1f} s)"
    )


def main() -> None:
    print(f"end-to-end: json={_json.BACKEND}, FakeBraze in its own process; {machine()}")
    records = list(members(N))
    gc.freeze()
    print(f" {N:,} members generated up front (untimed, frozen out of the GC)")
    print(f" latency {LATENCY * 1000:.0f} ms per request:")
    with server(LATENCY) as url:
        for in_flight in ONLY:
            # Few in flight at 100 ms would take minutes for 200,000 members: at most ~20 s of
            # round trips (max_in_flight 1: 15,000 members, 8: 120,000; 32 and 128: all).
            count = min(N, int(75 * in_flight / LATENCY * 20)) if LATENCY else N
            seconds, report = run_sdk(url, records[:count], in_flight)
            assert report.ok, report
            assert report.succeeded == count, report
            row(f"sdk max_in_flight={in_flight}", count, seconds, report.requests)
    print(" no added latency:")
    with server(0.0) as url:
        seconds = run_reference(url, records)
        row("hand-written urllib3 loop", N, seconds, -(-N // 75))
        for in_flight in (1, 4, 8):
            seconds, report = run_sdk(url, records, in_flight)
            assert report.ok, report
            row(f"sdk max_in_flight={in_flight}", N, seconds, report.requests)


if __name__ == "__main__":
    main()
