"""Run FakeBraze in its own process so the client being measured has a core to itself."""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def _serve(options: dict[str, Any], pipe: Any) -> None:
    from antavo_braze.testing import FakeBraze

    with FakeBraze(**options) as fake:
        pipe.send(fake.url)
        pipe.recv()  # wait for "stop"
        pipe.send(
            {"status_counts": dict(fake.status_counts), "objects_received": fake.objects_received}
        )


@contextmanager
def fake_braze_process(**options: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield (url, stats); stats is filled in when the block ends."""
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(target=_serve, args=(options, child), daemon=True)
    process.start()
    stats: dict[str, Any] = {}
    try:
        url = parent.recv()
        yield url, stats
    finally:
        parent.send("stop")
        stats.update(parent.recv())
        process.join(10)


if __name__ == "__main__":  # two servers for old-vs-new runs: 100 ms latency, and none
    import time

    from antavo_braze.testing import FakeBraze

    slow = FakeBraze(api_key="test-key", latency=0.1, record=False, validate=False).start()
    fast = FakeBraze(api_key="test-key", record=False, validate=False).start()
    print(f"BENCH_SERVERS={slow.url},{fast.url}", flush=True)
    while True:
        time.sleep(60)
