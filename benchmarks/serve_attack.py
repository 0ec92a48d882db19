"""The idle-connection attack on the webhook receiver, before any authentication.

The receiver runs in its own process (open-file limit 1024, a common default) with FakeBraze;
the attacker opens N connections that send nothing, plus one client that sends a request head
and then trickles its body a byte at a time. Meanwhile a valid webhook is posted every 50 ms on
a fresh connection (as Antavo does), each with a 5 s timeout. Printed per server:

- idle connections still held at the end, and when the held ones were closed by the server
  (seconds after they were opened; "never" = still open after the whole run);
- when the slow-body client was answered or cut off;
- valid webhooks: how many got 202, p50 / p99 / max latency (a timeout counts as 5 s; after 10
  unanswered in a row the rest count as unanswered too).

Servers: main's `serve` (uvicorn defaults; needs BENCH_OLD_SRC=<a checkout of main>/src),
uvicorn with its own bounds (limit_concurrency=256, timeout_keep_alive=5), hypercorn when it
is installed (read_timeout=5, keep_alive_timeout=5, backlog=256; it has no connection cap), and
this branch's guarded uvicorn (header deadline 5 s, --max-connections 256 and backlog 256,
body timeout 10 s).
Prints figures; asserts nothing. BENCH_ATTACK="300,1100" sets the idle connection counts.
"""

from __future__ import annotations

import importlib.util
import json
import os
import select
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import machine

ROOT = Path(__file__).resolve().parent.parent
ATTACKS = [int(n) for n in os.environ.get("BENCH_ATTACK", "300,1100").split(",")]
WEBHOOKS = 60
GIVE_UP = 10  # consecutive webhooks without an answer: the rest count as lost too
WEBHOOK_TIMEOUT = 5.0
OBSERVE = 20.0  # seconds the idle connections are watched

SERVER = """
import resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))
sys.path.insert(0, sys.argv[1])
import uvicorn
import antavo_braze as ab
from antavo_braze.serve import create_app
from antavo_braze.testing import FakeBraze
mode, port, mapping = sys.argv[2], int(sys.argv[3]), sys.argv[4]
fake = FakeBraze().start()
client = fake.client()
sender = ab.BackgroundSender(ab.Syncer(client, mapping), flush_interval=0.05)
app = create_app(sender, auth=None)
options = dict(host="127.0.0.1", port=port, log_level="warning", access_log=False)
if mode == "bounded":
    options.update(limit_concurrency=256, timeout_keep_alive=5)
elif mode == "guarded":
    from antavo_braze.serve._guard import ConnectionGuard, guarded_protocol
    options.update(http=guarded_protocol(ConnectionGuard(256, 5.0)), timeout_keep_alive=5,
                   backlog=256)
print("ready", flush=True)
if mode == "hypercorn":
    import asyncio
    from hypercorn.asyncio import serve
    from hypercorn.config import Config
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.keep_alive_timeout = 5
    config.read_timeout = 5
    config.backlog = 256
    asyncio.run(serve(app, config))
else:
    uvicorn.run(app, **options)
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def post(port: int, body: bytes) -> tuple[int, float]:
    """One webhook on a fresh connection: (status or 0, seconds)."""
    started = time.perf_counter()
    head = (
        f"POST /antavo/events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=WEBHOOK_TIMEOUT) as sock:
            sock.sendall(head + body)
            answer = sock.recv(64)
        status = int(answer.split(b" ")[1]) if answer.startswith(b"HTTP/1.1 ") else 0
    except OSError:
        status = 0
    return status, min(time.perf_counter() - started, WEBHOOK_TIMEOUT)


def slow_body(port: int, result: dict[str, str]) -> None:
    """A request head, then one byte every 0.5 s of a 100 kB body."""
    started = time.perf_counter()
    head = (
        b"POST /antavo/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100000\r\n\r\n"
    )
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(head)
            while time.perf_counter() - started < OBSERVE:
                try:
                    sock.sendall(b" ")
                    data = sock.recv(64)
                except TimeoutError:
                    continue
                answer = data.split(b"\r\n")[0].decode() or "closed"
                result["slow"] = f"{answer} after {time.perf_counter() - started:.1f} s"
                return
    except OSError as exc:
        result["slow"] = f"{type(exc).__name__} after {time.perf_counter() - started:.1f} s"
        return
    result["slow"] = f"still open after {OBSERVE:.0f} s"


def attack(mode: str, src: Path, count: int) -> str:
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-c",
            SERVER,
            str(src),
            mode,
            str(port),
            str(ROOT / "tests/data/mapping.json"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert server.stdout is not None
        server.stdout.readline()
        deadline = time.monotonic() + 20
        while post(port, b"[]")[0] == 0:  # listening (400: an empty list)
            if time.monotonic() > deadline:
                return f"{mode}: did not start"
            time.sleep(0.1)
        opened = time.perf_counter()
        idle = []
        for _ in range(count):
            try:
                idle.append(socket.create_connection(("127.0.0.1", port), timeout=2))
            except OSError:
                break
        closed_at: dict[int, float] = {}
        stop = threading.Event()

        def watch() -> None:
            poller = select.poll()  # select() cannot watch descriptors above 1023
            by_fd = {sock.fileno(): sock for sock in idle}
            for fd in by_fd:
                poller.register(fd, select.POLLIN)
            while not stop.is_set() and len(closed_at) < len(idle):
                for fd, _ in poller.poll(200):
                    try:
                        data = by_fd[fd].recv(1)
                    except OSError:
                        data = b""
                    if not data:
                        closed_at[fd] = time.perf_counter() - opened
                        poller.unregister(fd)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        result: dict[str, str] = {}
        trickler = threading.Thread(target=slow_body, args=(port, result), daemon=True)
        trickler.start()
        latencies, statuses = [], []
        for n in range(WEBHOOKS):
            if statuses[-GIVE_UP:] == [0] * GIVE_UP:
                statuses.append(0)
                latencies.append(WEBHOOK_TIMEOUT)
                continue
            body = json.dumps({"customer": f"m{n}", "action": "visit", "timestamp": 1.8e9}).encode()
            status, seconds = post(port, body)
            statuses.append(status)
            latencies.append(seconds)
            time.sleep(0.05)
        while time.perf_counter() - opened < OBSERVE and len(closed_at) < len(idle):
            time.sleep(0.2)
        stop.set()
        watcher.join(5)
        trickler.join(OBSERVE)
        held = len(idle) - len(closed_at)
        times = sorted(closed_at.values())
        closing = (
            f"closed {len(times)} after {times[0]:.1f}-{times[-1]:.1f} s"
            if times
            else "none closed"
        )
        latencies.sort()
        p50 = latencies[len(latencies) // 2]
        p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
        accepted = statuses.count(202)
        for sock in idle:
            sock.close()
        return (
            f"{mode:>8} | {count:>5} opened, {len(idle):>5} connected, {held:>5} held after "
            f"{OBSERVE:.0f} s ({closing}) | slow body: {result.get('slow', '?')} | webhooks: "
            f"{accepted}/{WEBHOOKS} got 202, p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, "
            f"max {latencies[-1] * 1000:.0f} ms"
        )
    finally:
        server.kill()
        _, err = server.communicate()
        if os.environ.get("BENCH_DEBUG"):
            print(err.decode()[-3000:])


def main() -> None:
    print(
        f"serve under an idle-connection attack (server open-file limit 1024); {machine()}",
        flush=True,
    )
    old = os.environ.get("BENCH_OLD_SRC")
    servers = [("old", Path(old))] if old else []
    servers += [("bounded", ROOT / "src"), ("guarded", ROOT / "src")]
    if importlib.util.find_spec("hypercorn"):
        servers.insert(-1, ("hypercorn", ROOT / "src"))
    for count in ATTACKS:
        for mode, src in servers:
            print(attack(mode, src, count), flush=True)


if __name__ == "__main__":
    main()
