"""One sync in N processes (``workers=N``) against a fake Braze in another process.

Two fakes, each in its own process, answering every request after LATENCY seconds (100 ms, a
real round trip): FakeBraze (no validation, no recording; still ~0.65 ms of CPU per request,
a thread per connection) and a lean asyncio stand-in (~0.1 ms per request) — on a 2-core
machine the fake's CPU is taken from the client's, so the lean fake's rows are the closer to
what the client does against Braze. The same generated members (10-field mapping) are synced
by one process, one forked worker (``run_in_workers(..., 1)``: what fork and copy-on-write
cost alone), then 2 and N workers (``Syncer.sync_members(..., workers=N)``) with
MAX_IN_FLIGHT requests in flight in all (split between the workers, so the server sees the
same load), and 2 workers with MAX_IN_FLIGHT each (what each worker inherits from the
client); all in the same run, against the same server. CPU us/member and ms/request count
this process and its workers; ``fake`` is the fake's own CPU per request.
With ``BENCH_OLD=/path/to/old/src`` the one-process figure of that older tree is printed too
(same server, same members). Then sustained runs under Braze's own budget (3,000 requests per
3 s), long enough for it to bind (SUSTAINED_N members, 12,000 requests): one process and 2
workers against the lean fake, with the most requests the fake saw in any 3 s (the budget is
reached, never passed: the client, not its CPU, is then the limit). Then the budget: with 100
requests/s configured
(``InProcessPacer(requests=100, per=1)``, shared by the workers) and a fake that answers 429
beyond 100 requests per 1-second window, the workers' achieved rate and the 429s the fake
counted. Prints figures; asserts nothing but the accounting.

Braze's ceiling is 1,000 requests/s (3,000 per 3 s), 75,000 members/s.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from _common import MAPPING, machine, members
from _server import cpu_seconds, fake_braze_process, lean_fake_process

import antavo_braze as ab
from antavo_braze import _json
from antavo_braze._scale.workers import run_in_workers

N = int(os.environ.get("BENCH_N", "100000"))
LATENCY = float(os.environ.get("BENCH_LATENCY", "0.1"))
MAX_IN_FLIGHT = int(os.environ.get("BENCH_IN_FLIGHT", "128"))
# 2, every core ("auto"), and 4 (more workers than this 2-core machine has cores).
WORKERS = sorted(
    {int(n) for n in os.environ.get("BENCH_WORKERS", f"2,{os.cpu_count() or 2},4").split(",")}
)
BUDGET = int(os.environ.get("BENCH_BUDGET", "100"))
# Long enough for Braze's budget to bind: 12,000 requests, 12 s at 1,000 requests/s.
SUSTAINED_N = int(os.environ.get("BENCH_SUSTAINED_N", "900000"))
BUDGET_SECONDS = float(os.environ.get("BENCH_BUDGET_SECONDS", "10"))
OLD = os.environ.get("BENCH_OLD")


def sync(
    url: str, records: Any, workers: int, in_flight: int
) -> tuple[float, float, ab.SyncReport]:
    """``(seconds, CPU seconds of this process and its workers, report)``; ``in_flight`` per
    process (each worker inherits the client's ``max_in_flight``)."""
    with ab.BrazeClient(url, "test-key", max_in_flight=in_flight) as client:
        syncer = ab.Syncer(client, MAPPING)
        before = os.times()
        started = time.perf_counter()
        if workers == 0:  # one process, the plain call
            report = syncer.sync_members(records)
        elif workers == 1:  # one forked worker: what fork and copy-on-write cost alone
            report = run_in_workers(syncer, "member", records, 1)
        else:
            report = syncer.sync_members(records, workers=workers)
        seconds = time.perf_counter() - started
        after = os.times()
    cpu = sum(after[:4]) - sum(before[:4])  # user + system, this process and its children
    return seconds, cpu, report


def row(
    label: str,
    count: int,
    seconds: float,
    requests: int,
    cpu: float | None,
    note: str = "",
    server_cpu: float | None = None,
) -> None:
    spent = "" if cpu is None else f"  {cpu * 1e6 / count:5.1f} CPU us/member"
    if cpu is not None:
        spent += f" ({cpu * 1e3 / requests:4.2f} ms/request"
        if server_cpu is not None:
            spent += f", fake {server_cpu * 1e3 / requests:4.2f}"
        spent += ")"
    print(
        f"  {label:38} {requests / seconds:>7,.0f} requests/s  {count / seconds:>8,.0f} "
        f"members/s  ({seconds:5.1f} s){spent}{note}"
    )


def old_tree(url: str) -> None:
    """The one-process figure of an older source tree, in a child process."""
    code = (
        "import sys, time; sys.path.insert(0, sys.argv[1]); sys.path.insert(1, sys.argv[2]);"
        "import gc; from _common import MAPPING, members; import antavo_braze as ab;"
        "records = list(members(int(sys.argv[3]))); gc.freeze();"
        "client = ab.BrazeClient(sys.argv[4], 'test-key', max_in_flight=int(sys.argv[5]));"
        "t = time.perf_counter(); r = ab.Syncer(client, MAPPING).sync_members(records);"
        "s = time.perf_counter() - t; assert r.succeeded == len(records), r;"
        "print(s, r.requests)"
    )
    args = [OLD, str(Path(__file__).parent), str(N), url, str(MAX_IN_FLIGHT)]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, check=True
    )
    seconds, requests = done.stdout.split()
    row("old tree, one process", N, float(seconds), int(requests), None, f"  [{OLD}]")


def sustained(workers: int) -> None:
    """One process or ``workers`` under Braze's own budget (3,000 requests per 3 s; one
    SharedMemoryPacer for the workers), against the lean fake, for long enough that the budget
    binds (SUSTAINED_N members): the rate over the whole run and between the first and last
    request the fake saw, the most requests the fake saw in any 3 s, every object received
    once."""
    records = list(members(SUSTAINED_N))
    gc.freeze()
    with lean_fake_process(LATENCY) as (url, stats):
        pacer = ab.InProcessPacer(requests=3000, per=3.0)
        with ab.BrazeClient(url, "test-key", max_in_flight=MAX_IN_FLIGHT, pacer=pacer) as client:
            before = os.times()
            started = time.perf_counter()
            report = ab.Syncer(client, MAPPING).sync_members(records, workers=workers)
            seconds = time.perf_counter() - started
            after = os.times()
    del records
    gc.unfreeze()
    assert report.succeeded == SUSTAINED_N, report
    assert stats["objects_received"] == SUSTAINED_N, stats["objects_received"]
    arrived = stats["arrived"]
    most = first = 0  # the most requests that arrived within 3 s of one another
    for last, moment in enumerate(arrived):
        while moment - arrived[first] >= 3.0:
            first += 1
        most = max(most, last - first + 1)
    cpu = sum(after[:4]) - sum(before[:4])
    print(
        f"  {'one process' if workers == 1 else f'{workers} workers'}, {MAX_IN_FLIGHT} in "
        f"flight{' each' if workers > 1 else ''}: {report.requests / seconds:,.0f} requests/s "
        "over the whole run "
        f"({report.requests / (arrived[-1] - arrived[0]):,.0f} first to last request), "
        f"{SUSTAINED_N:,} members in {seconds:.1f} s, each object received once; most "
        f"requests in any 3 s: {most:,}; {cpu * 1e3 / report.requests:.2f} ms CPU/request"
    )


def budget() -> None:
    """Workers under a configured budget, against a fake that enforces it."""
    count = int(BUDGET * BUDGET_SECONDS * 75)
    records = list(members(count))
    with fake_braze_process(
        rate_limit=BUDGET, rate_window=1.0, latency=0.02, record=False, validate=False
    ) as (url, stats):
        pacer = ab.InProcessPacer(requests=BUDGET, per=1.0)
        with ab.BrazeClient(url, "test-key", max_in_flight=32, pacer=pacer) as client:
            started = time.perf_counter()
            report = ab.Syncer(client, MAPPING).sync_members(records, workers=2)
            seconds = time.perf_counter() - started
    assert report.succeeded == count, report
    limited = stats["status_counts"].get(429, 0)
    answered = sum(stats["status_counts"].values())
    print(
        f"  budget {BUDGET}/s, 2 workers: {report.requests / seconds:6.1f} requests/s "
        f"({report.requests / seconds / BUDGET:.0%} of the budget), 429s {limited}/{answered}, "
        f"{count:,} members in {seconds:.1f} s"
    )


def main() -> None:
    logging.getLogger("antavo_braze").setLevel(logging.ERROR)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"workers: json={_json.BACKEND}, FakeBraze in its own process, latency "
        f"{LATENCY * 1000:.0f} ms, {MAX_IN_FLIGHT} requests in flight in all, N={N:,}; "
        f"{machine()}; load average {load:.1f} at start"
    )
    records = list(members(N))
    gc.freeze()  # generated up front, out of the GC's way (as in end_to_end.py)
    fakes = {
        "FakeBraze": lambda: fake_braze_process(latency=LATENCY, record=False, validate=False),
        "lean fake": lambda: lean_fake_process(LATENCY),
    }
    for name, start in fakes.items():
        print(f" {name}:")
        with start() as (url, stats):
            # (workers, in flight per process): MAX_IN_FLIGHT in all, split between the
            # workers; then MAX_IN_FLIGHT each (what a worker inherits from the client).
            runs = [(0, MAX_IN_FLIGHT), (1, MAX_IN_FLIGHT)]
            runs += [(w, MAX_IN_FLIGHT // w) for w in WORKERS]
            runs += [(w, MAX_IN_FLIGHT) for w in WORKERS if w == 2]
            for workers, in_flight in runs:
                server_before = cpu_seconds(stats["pid"])
                seconds, cpu, report = sync(url, records, workers, in_flight)
                server_after = cpu_seconds(stats["pid"])
                server = (
                    None
                    if server_before is None or server_after is None
                    else server_after - server_before
                )
                assert report.succeeded == N, report
                label = {0: "one process", 1: "1 forked worker"}.get(workers, f"{workers} workers")
                label += f", {in_flight} in flight" + (" each" if workers > 1 else "")
                row(label, N, seconds, report.requests, cpu, server_cpu=server)
            if OLD:
                old_tree(url)
            if name != "FakeBraze":
                continue
            # From a file, as the CLI reads it: every worker parses the whole file (no shared
            # in-memory list whose pages each forked worker copies as it touches them).
            with tempfile.TemporaryDirectory() as folder:
                path = Path(folder) / "members.jsonl"
                path.write_text("".join(json.dumps(r) + "\n" for r in records))
                for workers in (0, 2):
                    in_flight = MAX_IN_FLIGHT // max(workers, 1)
                    seconds, cpu, report = sync(url, ab.read_records(path), workers, in_flight)
                    assert report.succeeded == N, report
                    label = "one process" if workers == 0 else f"{workers} workers"
                    row(f"{label}, from a file", N, seconds, report.requests, cpu)
    print(f" sustained, Braze's budget (3,000 requests per 3 s), lean fake, N={SUSTAINED_N:,}:")
    for workers in (1, 2):
        sustained(workers)
    budget()


if __name__ == "__main__":
    main()
