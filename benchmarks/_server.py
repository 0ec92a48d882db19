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
    """Yield (url, stats); stats holds the server's ``pid``, the rest is filled in when the
    block ends."""
    with _server_process(_serve, options) as served:
        yield served


@contextmanager
def _server_process(target: Any, argument: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    """Run ``target(argument, pipe)`` in a spawned process: it sends its URL, waits for
    "stop", then sends its stats."""
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(target=target, args=(argument, child), daemon=True)
    process.start()
    stats: dict[str, Any] = {"pid": process.pid}
    try:
        url = parent.recv()
        yield url, stats
    finally:
        parent.send("stop")
        stats.update(parent.recv())
        process.join(10)


def _serve_lean(latency: float, pipe: Any) -> None:
    """A minimal Braze stand-in on one asyncio thread: reads each request, answers
    ``{"message": "success"}`` after ``latency`` seconds; counts requests and the objects
    in them (``"external_id"`` keys, one per member object), and notes when each arrived."""
    import asyncio
    import time

    answer = (
        b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n"
        b'Content-Length: 21\r\n\r\n{"message":"success"}'
    )
    served = objects = 0
    arrived: list[float] = []  # time.monotonic() of each request

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served, objects
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                body = await reader.readexactly(length)
                arrived.append(time.monotonic())
                objects += body.count(b'"external_id"')
                if latency:
                    await asyncio.sleep(latency)
                writer.write(answer)
                served += 1
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
        except asyncio.CancelledError:  # the server stopping: a quiet end, not a traceback
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024)
        port = server.sockets[0].getsockname()[1]
        pipe.send(f"http://127.0.0.1:{port}")
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, pipe.recv)  # wait for "stop"
        pipe.send({"status_counts": {201: served}, "objects_received": objects, "arrived": arrived})

    asyncio.run(main())


@contextmanager
def lean_fake_process(latency: float) -> Iterator[tuple[str, dict[str, Any]]]:
    """As :func:`fake_braze_process`, with :func:`_serve_lean`: a fake that costs this
    machine's cores as little as it can, so the client's figures are the client's."""
    with _server_process(_serve_lean, latency) as served:
        yield served


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` so far (Linux), else None."""
    import os

    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


if __name__ == "__main__":  # two servers for old-vs-new runs: 100 ms latency, and none
    import time

    from antavo_braze.testing import FakeBraze

    slow = FakeBraze(api_key="test-key", latency=0.1, record=False, validate=False).start()
    fast = FakeBraze(api_key="test-key", record=False, validate=False).start()
    print(f"BENCH_SERVERS={slow.url},{fast.url}", flush=True)
    while True:
        time.sleep(60)
