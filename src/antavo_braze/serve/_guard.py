"""What keeps ``antavo-braze serve`` answering before any request is authenticated: uvicorn's
HTTP/1.1 protocol (h11) with a deadline for each request's head and a cap on connections.

uvicorn alone has neither: a connection that sends nothing is held forever (its keep-alive
timer starts only after a first response), and ``limit_concurrency`` answers *every* request
``503`` once idle connections fill it — the attacker's idle sockets starve the real webhooks
(measured in ``benchmarks/serve_attack.py``; see docs/explanation.md). Here a connection must
send a complete request head within ``header_timeout`` seconds of connecting (or of its last
response), and when ``max_connections`` are open the oldest connection that has no request in
progress is closed to make room — a new client is turned away only when every held
connection is busy with a request. Request bodies are bounded by the app's ``body_timeout``.
The listening socket's backlog must be ``max_connections`` too: asyncio accepts up to a
backlog's worth of connections at once, before the guard sees any, and a burst larger than the
descriptors left stalls every accept (EMFILE) — 1,100 idle connections against 1,024
descriptors did, with uvicorn's default backlog of 2,048.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["HEADER_TIMEOUT", "MAX_CONNECTIONS", "ConnectionGuard", "guarded_protocol"]

HEADER_TIMEOUT = 5.0  # seconds to send a complete request head
MAX_CONNECTIONS = 256


class ConnectionGuard:
    """The connections of one server: how many are open, and which are waiting for a
    request head (oldest first), each with its deadline."""

    def __init__(self, max_connections: int, header_timeout: float) -> None:
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, not {max_connections}")
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        self.open = 0
        self.waiting: OrderedDict[Any, asyncio.TimerHandle] = OrderedDict()
        self.closed_idle = 0  # connections closed for sending no request in time
        self.evicted = 0  # idle connections closed to make room
        self.refused = 0  # connections closed at once: every held one was busy

    def wait_for_head(self, protocol: Any) -> None:
        """``protocol`` has no request in progress: it must send one in time."""
        self.busy(protocol)
        loop = asyncio.get_running_loop()
        self.waiting[protocol] = loop.call_later(self.header_timeout, self._expire, protocol)

    def busy(self, protocol: Any) -> None:
        """``protocol`` is handling a request (or is gone): no deadline, not evictable."""
        timer = self.waiting.pop(protocol, None)
        if timer is not None:
            timer.cancel()

    def _expire(self, protocol: Any) -> None:
        if self.waiting.pop(protocol, None) is not None:
            self.closed_idle += 1
            protocol.transport.close()

    def admit(self, protocol: Any) -> bool:
        """Count a new connection; make room by closing the oldest idle one when full.
        ``False``: every held connection is busy, this one is to be closed."""
        self.open += 1
        if self.open <= self.max_connections:
            return True
        if self.waiting:
            oldest, timer = self.waiting.popitem(last=False)
            timer.cancel()
            self.evicted += 1
            oldest.transport.close()
            return True
        self.refused += 1
        return False

    def release(self, protocol: Any) -> None:
        self.busy(protocol)
        self.open -= 1


def guarded_protocol(guard: ConnectionGuard) -> type[H11Protocol]:
    """uvicorn's h11 protocol, held to ``guard``'s deadline and connection cap (pass it as
    ``uvicorn.Config(http=...)``)."""

    class GuardedH11Protocol(H11Protocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if guard.admit(self):
                guard.wait_for_head(self)
            else:
                transport.close()

        def connection_lost(self, exc: Exception | None) -> None:
            guard.release(self)
            super().connection_lost(exc)

        def _track(self) -> None:
            if self.transport.is_closing():
                guard.busy(self)
            elif self.cycle is not None and not self.cycle.response_complete:
                guard.busy(self)  # a request head arrived: the app bounds the rest
            elif self not in guard.waiting:
                guard.wait_for_head(self)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._track()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and (
                self.cycle is None or self.cycle.response_complete
            ):
                guard.wait_for_head(self)  # the next request's head has its own deadline
            else:
                self._track()

    return GuardedH11Protocol
