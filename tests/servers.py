"""Real servers for tests: a scripted raw HTTP server, a forward-proxy process, free ports."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import h11


def free_port() -> int:
    """A free loopback port (released before use: a server or a test binds it, or nothing
    listens there)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# An action of a script: bytes to send, seconds to pause, or CLOSE.
CLOSE = None
Script = Callable[[int], "list[bytes | float | None]"]


class RawServer:
    """A TCP server on 127.0.0.1 that answers request number ``n`` with ``script(n)``, byte
    for byte (requests are read with h11, answers are whatever the script says).

    ``greeting``: bytes sent on every new connection before any request is read; ``tls``:
    the TLS context for connection number ``n`` (``None``: plain TCP for that one)."""

    def __init__(
        self,
        script: Script,
        *,
        greeting: bytes = b"",
        tls: Callable[[int], ssl.SSLContext | None] | None = None,
    ) -> None:
        self.script = script
        self.greeting = greeting
        self.tls = tls
        self.requests = 0
        self.connections = 0
        self.bodies: list[bytes] = []
        self._lock = threading.Lock()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.2)
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> RawServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                continue
            with self._lock:
                number = self.connections
                self.connections += 1
            threading.Thread(target=self._serve, args=(conn, number), daemon=True).start()

    def _read_request(self, conn: socket.socket) -> bool:
        parser = h11.Connection(h11.SERVER)
        body = b""
        while True:
            event = parser.next_event()
            if event is h11.NEED_DATA:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return False
                parser.receive_data(data)
                continue
            if isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                with self._lock:
                    self.bodies.append(body)
                return True
            elif isinstance(event, h11.ConnectionClosed):
                return False

    def _serve(self, conn: socket.socket, number: int) -> None:
        conn.settimeout(30)
        context = self.tls(number) if self.tls is not None else None
        if context is not None:
            try:
                conn = context.wrap_socket(conn, server_side=True)
            except (OSError, ssl.SSLError):
                conn.close()
                return  # the client refused the handshake: what the test is about
        with conn:
            if self.greeting:
                conn.sendall(self.greeting)
            while not self._stop.is_set():
                if not self._read_request(conn):
                    return
                with self._lock:
                    number = self.requests
                    self.requests += 1
                try:
                    for action in self.script(number):
                        if action is CLOSE:
                            return
                        if isinstance(action, float):
                            time.sleep(action)
                        else:
                            conn.sendall(action)
                except OSError:
                    return  # the client gave up (a timeout): normal here


# --- the forward proxy, as a real process ------------------------------------------------------


class ProxyProcess:
    """``tests/proxy.py`` running in its own process; ``tunnels`` reads what it did."""

    def __init__(self, process: subprocess.Popen[str], port: int, log: Path) -> None:
        self.process = process
        self.port = port
        self.log = log

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def events(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines() if line]


@contextlib.contextmanager
def proxy_process(
    tmp: Path,
    *,
    auth: str | None = None,
    hosts: dict[str, str] | None = None,
    refuse_connect: int | None = None,
) -> Iterator[ProxyProcess]:
    """Start the test suite's forward proxy (CONNECT and absolute-form) as a subprocess."""
    log = tmp / f"proxy-{time.monotonic_ns()}.jsonl"
    command = [sys.executable, str(Path(__file__).with_name("proxy.py")), "--log", str(log)]
    if auth:
        command += ["--auth", auth]
    if refuse_connect is not None:
        command += ["--refuse-connect", str(refuse_connect)]
    for name, target in (hosts or {}).items():
        command += ["--host", f"{name}={target}"]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        port = int(line.split()[-1])
        yield ProxyProcess(process, port, log)
    finally:
        process.terminate()
        process.wait(10)
        if process.stdout is not None:
            process.stdout.close()


def wait_until_serving(process: subprocess.Popen[str], port: int, timeout: float = 30) -> None:
    """Return once ``antavo-braze serve`` answers ``/healthz`` on ``port``; fail with its
    stderr if it exits or does not answer within ``timeout`` seconds."""
    import urllib3

    deadline = time.monotonic() + timeout
    with urllib3.PoolManager(retries=False) as http:
        while True:
            try:
                if http.request("GET", f"http://127.0.0.1:{port}/healthz").status == 200:
                    return
            except urllib3.exceptions.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                _out, err = process.communicate()
                raise AssertionError(f"serve did not start: {err}")
            time.sleep(0.1)
