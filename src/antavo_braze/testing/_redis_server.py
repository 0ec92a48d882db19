"""A throwaway Redis server for tests and benchmarks of the shared pacer and state."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["RedisServerMissingError", "redis_server"]


class RedisServerMissingError(RuntimeError):
    """No ``redis-server`` program is installed (Debian/Ubuntu: ``apt-get install
    redis-server``)."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextmanager
def redis_server(binary: str | None = None) -> Iterator[str]:
    """Start ``redis-server`` on a free loopback port, without persistence; yield its URL
    (``redis://127.0.0.1:PORT/0``) and stop it when the block ends."""
    program = binary or shutil.which("redis-server")
    if program is None:
        raise RedisServerMissingError(
            "redis-server is not installed (Debian/Ubuntu: apt-get install redis-server)"
        )
    port = _free_port()
    with tempfile.TemporaryDirectory() as workdir:
        process = subprocess.Popen(
            [program, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", workdir],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 10
            while not _answers_ping(port):
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError(f"redis-server did not start on port {port}")
                time.sleep(0.05)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            process.terminate()
            process.wait(timeout=10)
