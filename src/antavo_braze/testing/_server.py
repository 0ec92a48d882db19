"""FakeBraze's socket shell: HTTP in, :class:`~._rules.Reply` out, around the pure rules.

The standard library parses requests (HTTP framing is never ours). A request goes: prefix,
injected fault (delay, dropped connection, status), the gate (key, route, permission), the
endpoint; the reply is written in one segment and recorded. The shell also counts connections,
keeps the idle keep-alive connections (``close_idle_connections``) and notices track requests
that touch a profile another request in flight is touching (``overlapping_requests``).
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from attrs import field, frozen

from .._json import dumps
from . import _rules as rules
from ._endpoints import ROUTES
from ._rules import Reply, Request
from ._serving import QuietServer

if TYPE_CHECKING:
    from ._fake import FakeBraze

__all__ = ["Fault", "RecordedRequest", "Shell", "make_server"]


@frozen
class RecordedRequest:
    """A request FakeBraze received (the Authorization header is not kept)."""

    method: str
    path: str
    query: Mapping[str, str]
    body: Any
    status: int
    key_valid: bool
    user_agent: str | None = None

    def __getitem__(self, key: str) -> Any:
        # Plain-data access too: request["body"] is request.body.
        if key not in _RECORDED_FIELDS:
            raise KeyError(key)
        return getattr(self, key)


_RECORDED_FIELDS = frozenset(
    {"method", "path", "query", "body", "status", "key_valid", "user_agent"}
)


@frozen
class Answer:
    """A reply and the request body to record with it."""

    reply: Reply
    recorded: Any = None


@frozen
class Fault:
    """What to do to a coming request instead of (or before) answering it normally."""

    status: int | None = None
    headers: Mapping[str, str] = field(factory=dict)
    body: Any = None  # JSON-ready data, or bytes sent as they are
    drop: bool = False
    delay: float = 0.0
    path: str | None = None


_REASONS = {status.value: status.phrase for status in HTTPStatus}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: without this, Nagle's algorithm and the
    # client's delayed ACK add ~40 ms to every keep-alive response.
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: tests read fake.requests instead

    def setup(self) -> None:
        super().setup()
        self.server.fake.shell.connected(self)

    def finish(self) -> None:
        self.server.fake.shell.busy(self)
        super().finish()

    def parse_request(self) -> bool:
        """The standard library parses the request line and headers (HTTP framing is never
        ours); a handler that has a request is no longer idle."""
        self.server.fake.shell.busy(self)
        return super().parse_request()

    def do_GET(self) -> None:
        self.server.fake.shell.serve(self, "GET")

    def do_POST(self) -> None:
        self.server.fake.shell.serve(self, "POST")


def _read_headers(handler: BaseHTTPRequestHandler) -> dict[str, str]:
    """The headers the oracle and the recording read, under lower-case names (the others are
    not copied: each read of the standard library's header object costs)."""
    headers = {}
    for name in _READ_HEADERS:
        value = handler.headers.get(name)
        if value is not None:
            headers[name] = value
    return headers


_READ_HEADERS = ("content-type", "authorization", "user-agent")


class _Server(QuietServer):
    request_queue_size = 256


def make_server(host: str, port: int) -> QuietServer:
    return _Server((host, port), _Handler)


class Shell:
    """Serves one FakeBraze's requests over its sockets."""

    def __init__(self, fake: FakeBraze) -> None:
        self.fake = fake
        self._idle: set[BaseHTTPRequestHandler] = set()
        self._in_flight_ids: dict[str, int] = {}

    def reset(self) -> None:
        self._in_flight_ids.clear()

    def connected(self, handler: BaseHTTPRequestHandler) -> None:
        with self.fake._lock:
            self.fake.connections += 1
            self._idle.add(handler)  # idle until a request line arrives

    def busy(self, handler: BaseHTTPRequestHandler) -> None:
        with self.fake._lock:
            self._idle.discard(handler)

    def close_idle(self) -> None:
        """Close every keep-alive connection waiting for its next request."""
        with self.fake._lock:
            idle = list(self._idle)
        for handler in idle:
            with contextlib.suppress(OSError):
                handler.connection.shutdown(socket.SHUT_RDWR)

    def serve(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        fake = self.fake
        parts = urlsplit(handler.path)
        length = int(handler.headers.get("Content-Length") or 0)
        request = Request(
            method,
            parts.path,
            {k: v[0] for k, v in parse_qs(parts.query).items()},
            _read_headers(handler),
            handler.rfile.read(length) if length else b"",
        )
        if fake.prefix:
            if not request.path.startswith(fake.prefix + "/"):
                self._reply(handler, request, Answer(rules.NOT_FOUND))
                return
            request = Request(
                method,
                request.path[len(fake.prefix) :],
                request.query,
                request.headers,
                request.body,
            )
        fault = fake._take_fault(request.path)
        if fault is not None and fault.delay:
            time.sleep(fault.delay)
        if fault is not None and fault.drop:
            fake._record(request, 0)
            handler.close_connection = True
            with contextlib.suppress(OSError):  # already closed by the peer
                handler.connection.shutdown(socket.SHUT_RDWR)
            return
        body: Any = rules.UNPARSED
        ids: set[str] = set()
        if request.path == "/users/track" and method == "POST":
            body = rules.loads_or_unparsed(request.body)
            ids = self._claim(body)
        try:
            self._reply(handler, request, self._answer(request, body, fault))
        finally:
            self._release(ids)

    def _answer(self, request: Request, body: Any, fault: Fault | None) -> Answer:
        fake = self.fake
        if fake.latency:
            time.sleep(fake.latency)
        if fault is not None and fault.status is not None:
            default = "success" if 200 <= fault.status < 300 else "injected fault"
            payload = fault.body if fault.body is not None else {"message": default}
            return Answer(Reply(fault.status, dict(fault.headers), payload))
        refused = rules.gate(request, fake._keys)
        if refused is not None:
            return Answer(refused)
        limited, rate_headers = fake.budgets.spend(request.path)
        if limited is not None:
            return Answer(limited)
        if request.path == "/users/export/ids":
            fake.store.apply_due()  # what Braze has applied by now
        verdict = ROUTES[request.method, request.path](request, fake.account(), fake.store, body)
        if verdict.accepted and verdict.reply.status == 201:
            received = sum(len(objects) for objects in verdict.accepted.values())
            with fake._lock:
                fake.objects_received += received
        fake.store.apply(verdict, store=fake.validate and fake.record)
        reply = verdict.reply
        if rate_headers:
            reply = Reply(reply.status, {**rate_headers, **reply.headers}, reply.body)
        return Answer(reply, verdict.body)

    def _claim(self, body: Any) -> set[str]:
        """Note which profiles this request touches, counting overlaps with requests in flight."""
        ids: set[str] = set()
        if type(body) is dict:
            for objects in body.values():
                if type(objects) is list:
                    ids.update(
                        [
                            external_id
                            for obj in objects
                            if type(obj) is dict
                            and type(external_id := obj.get("external_id")) is str
                        ]
                    )
        with self.fake._lock:
            overlap = ids & self._in_flight_ids.keys()
            self.fake.overlapping_requests += bool(overlap)
            for external_id in ids:
                self._in_flight_ids[external_id] = self._in_flight_ids.get(external_id, 0) + 1
        return ids

    def _release(self, ids: set[str]) -> None:
        with self.fake._lock:
            for external_id in ids:
                left = self._in_flight_ids[external_id] - 1
                if left:
                    self._in_flight_ids[external_id] = left
                else:
                    del self._in_flight_ids[external_id]

    def _reply(self, handler: BaseHTTPRequestHandler, request: Request, answer: Answer) -> None:
        reply = answer.reply
        self.fake._record(request, reply.status, answer.recorded)
        payload = reply.body
        data = payload if isinstance(payload, bytes) else dumps(payload)
        lines = [
            f"HTTP/1.1 {reply.status} {_REASONS.get(reply.status, '')}",
            f"Server: {handler.version_string()}",
            f"Date: {handler.date_time_string()}",
            "Content-Type: application/json",
            f"Content-Length: {len(data)}",
        ]
        headers: Mapping[str, str] = reply.headers
        for name, value in headers.items():
            lines.append(f"{name}: {value}")
            if name.lower() == "connection" and value.lower() == "close":
                handler.close_connection = True
        if not handler.close_connection:
            with self.fake._lock:  # idle before the client can have the answer and act on it
                self._idle.add(handler)
        # One write: status line, headers and body leave in the same segment.
        handler.wfile.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + data)
