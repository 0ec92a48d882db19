"""A pull from Antavo versus a sync of the same members from a file, same run.

FakeAntavo and FakeBraze each run in their own process. MEMBERS generated members (the
ten-field mapping) are pulled with ``Syncer.pull_members``: each changed customer costs one
signed request (Antavo's list gives only ids) plus one list request per 90 customers.
Printed: members/s of
- a pull with no rate limit (the client's own cost: signing, requests, JSON);
- a pull at Antavo's shared-stack limit (1,500 requests per minute, enforced by the fake,
  paced by the client: 429s should stay at 0). The first minute's 1,500 requests go at once,
  then the pacer holds the client to the limit: LIMITED_MEMBERS beyond 1,500 show the
  steady state, about 25 members/s;
- a sync of the same members from a JSON Lines file (no Antavo at all).
Asserts nothing.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from _common import MAPPING, machine, members
from _server import fake_braze_process

import antavo_braze as ab

MEMBERS = int(os.environ.get("BENCH_MEMBERS", "3000"))
LIMITED_MEMBERS = int(os.environ.get("BENCH_LIMITED_MEMBERS", "2000"))
SHARED_STACK_LIMIT = 1500  # requests per minute (reference antavo-api.md section 5)
SINCE = 1_000_000_000


def _serve_antavo(count: int, rate_limit: int | None, pipe: Any) -> None:
    from antavo_braze.testing import FakeAntavo

    with FakeAntavo(rate_limit=rate_limit, rate_window=60.0, record=False) as fake:
        for number, member in enumerate(members(count)):
            fake.add_customer({**member, "updated_at": SINCE + 1 + number})
        pipe.send(fake.url)
        pipe.recv()  # "stop"
        pipe.send(dict(fake.status_counts))


@contextmanager
def fake_antavo_process(count: int, rate_limit: int | None) -> Iterator[tuple[str, dict[int, int]]]:
    """Yield (url, answers by status); the counts are filled in when the block ends."""
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(target=_serve_antavo, args=(count, rate_limit, child), daemon=True)
    process.start()
    statuses: dict[int, int] = {}
    try:
        yield parent.recv(), statuses
    finally:
        parent.send("stop")
        statuses.update(parent.recv())
        process.join(10)


def pull(
    braze_url: str, count: int, rate_limit: int | None
) -> tuple[float, ab.SyncReport, int, dict[int, int]]:
    """(seconds, report, Antavo requests, answers by status) of one pull."""
    with fake_antavo_process(count, rate_limit) as (antavo_url, statuses):
        reader = ab.AntavoClient(
            antavo_url,
            "test-key",
            "test-secret",
            stack="test",
            requests_per_minute=rate_limit or 1_000_000,
            lag=0,
        )
        with ab.BrazeClient(braze_url, "test-key") as client, reader:
            syncer = ab.Syncer(client, MAPPING, state=ab.MemoryStateStore())
            began = time.perf_counter()
            report = syncer.pull_members(reader, since=SINCE, until=SINCE + count + 10)
            seconds = time.perf_counter() - began
    return seconds, report, reader.requests, statuses


def from_file(braze_url: str, count: int) -> float:
    """Seconds to sync ``count`` members from a JSON Lines file."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "members.jsonl"
        path.write_text("".join(json.dumps(m) + "\n" for m in members(count)))
        with ab.BrazeClient(braze_url, "test-key") as client:
            syncer = ab.Syncer(client, MAPPING)
            began = time.perf_counter()
            report = syncer.sync_members(ab.read_records(path))
            assert report.succeeded == count, report
            return time.perf_counter() - began


def main() -> None:
    print(f"antavo_pull: {machine()}")
    with fake_braze_process(api_key="test-key", record=False, validate=False) as (url, _):
        for label, count, limit in (
            ("pull, no rate limit:       ", MEMBERS, None),
            ("pull, 1,500 requests/min:  ", LIMITED_MEMBERS, SHARED_STACK_LIMIT),
        ):
            seconds, report, requests, statuses = pull(url, count, limit)
            print(
                f"{label} {count:>6} members in {seconds:6.2f} s = "
                f"{count / seconds:8,.0f} members/s ({requests} Antavo requests, "
                f"{statuses.get(429, 0)} answered 429; {report.succeeded} sent to Braze)"
            )
        seconds = from_file(url, MEMBERS)
        print(
            f"sync from a file:           {MEMBERS:>6} members in {seconds:6.2f} s = "
            f"{MEMBERS / seconds:8,.0f} members/s"
        )


if __name__ == "__main__":
    main()
