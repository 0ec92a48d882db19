"""One keep-alive connection driven without blocking; h11 does every bit of HTTP/1.1 framing.

h11 (python-hyper's sans-I/O HTTP/1.1) reads status lines, headers (obs-fold and LF-only lines
included), 1xx interim answers, Content-Length, chunked bodies with extensions and trailers,
and bodies that end with the connection; it bounds an incomplete head. This module adds only
what h11 leaves to its user: how much we accept (:data:`MAX_RESPONSE_BYTES`, interim answers),
content codings (we ask for ``identity``; gzip/deflate are decoded within the same bound, any
other coding is refused), the socket, and pairing: an answer belongs to the request just
written, so a connection that has bytes before a request is written or after a complete
answer (a second answer, trailing data) is never used again. Empty lines (CRLF) around an
answer are ignored, as RFC 9112 asks of a robust recipient.
"""

from __future__ import annotations

import socket
import ssl
import time
import zlib
from typing import Any

import h11
from attrs import frozen
from urllib3.util.wait import wait_for_read

from .._braze.limits import MAX_INTERIM_RESPONSES, MAX_RESPONSE_BYTES, MAX_RESPONSE_HEAD_BYTES

__all__ = ["BrazeResponse", "Connection", "ProtocolError"]

_WOULD_BLOCK = (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError)
_RECV = 262_144
_BLANK = b"\r\n"  # bytes of the empty lines a robust client skips before a status line


class ProtocolError(OSError):
    """The server's bytes are not an acceptable HTTP/1.1 answer (or it ended mid-answer)."""


@frozen
class BrazeResponse:
    """An HTTP answer from Braze: status, headers (names lower-cased) and the decoded body."""

    status_code: int
    headers: dict[str, str]
    content: bytes

    @property
    def text(self) -> str:
        """The body decoded as UTF-8 (invalid bytes replaced)."""
        return self.content.decode("utf-8", "replace")


class _Decoder:
    """A bounded content-coding decoder (gzip, or deflate with or without its zlib header)."""

    __slots__ = ("_deflate", "_produced", "_zlib")

    def __init__(self, coding: str) -> None:
        self._deflate = coding == "deflate"
        self._produced = False
        wbits = 16 + zlib.MAX_WBITS if coding in ("gzip", "x-gzip") else zlib.MAX_WBITS
        self._zlib: Any = zlib.decompressobj(wbits)

    def decode(self, data: bytes, room: int) -> bytes:
        try:
            out: bytes = self._zlib.decompress(data, room + 1)
        except zlib.error:
            if not self._deflate or self._produced:
                raise ProtocolError(
                    "the body does not decode as its Content-Encoding says"
                ) from None
            self._deflate = False  # "deflate" sent raw, without the zlib header: it happens
            self._zlib = zlib.decompressobj(-zlib.MAX_WBITS)
            return self.decode(data, room)
        if len(out) > room or self._zlib.unconsumed_tail:
            raise ProtocolError(f"decoded response larger than {MAX_RESPONSE_BYTES} bytes")
        self._produced = self._produced or bool(out)
        return out

    def finish(self) -> None:
        if not self._zlib.eof:
            raise ProtocolError("the compressed body is cut off")


class Connection:
    """A socket with its h11 state: :meth:`start` a request, :meth:`write` it out as the socket
    takes it, :meth:`read` until the answer is complete, then take :attr:`response`."""

    __slots__ = (
        "_body",
        "_decoder",
        "_head",
        "_interim",
        "_out",
        "_size",
        "_started",
        "deadline",
        "h11",
        "response",
        "sent",
        "sock",
        "used",
    )

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_RESPONSE_HEAD_BYTES)
        self.deadline = 0.0
        self.response: BrazeResponse | None = None
        self.sent = False  # the whole request went out (its answer may now be lost)
        self.used = False  # it carried an answer before (a kept-alive connection)
        self._started = False  # a byte of this request's answer has arrived
        self._out = memoryview(b"")
        self._size = 0
        self._head: tuple[int, dict[str, str]] | None = None
        self._body = bytearray()
        self._decoder: _Decoder | None = None
        self._interim = 0

    def fileno(self) -> int:
        return self.sock.fileno()

    def usable(self) -> bool:
        """Whether the server has neither closed this idle connection nor sent anything on it
        (empty lines aside): bytes before a request would be read as that request's answer."""
        while wait_for_read(self.sock, timeout=0.0):
            try:
                data = self.sock.recv(_RECV)
            except _WOULD_BLOCK:  # TLS records without data (a session ticket)
                return True
            except OSError:
                return False
            if not data or data.strip(_BLANK):
                return False
        return True

    def start(
        self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes | None
    ) -> None:
        """Begin a request; nothing is sent until :meth:`write`."""
        conn = self.h11
        data = conn.send(h11.Request(method=method, target=target, headers=headers))
        if body:
            data += conn.send(h11.Data(data=body))
        data += conn.send(h11.EndOfMessage())
        self._out = memoryview(data)
        self._size = len(data)
        self.sent = False
        self._started = False
        self.response = None
        self._head = None
        self._body = bytearray()
        self._decoder = None
        self._interim = 0

    @property
    def writing(self) -> bool:
        return bool(self._out)

    @property
    def untouched(self) -> bool:
        """Not a byte of the request was taken by the socket (the server cannot have it)."""
        return len(self._out) == self._size

    @property
    def answering(self) -> bool:
        """A byte of the answer to the current request has arrived."""
        return self._started

    def write(self) -> bool:
        """Send what the socket takes now; ``True`` once the whole request is out."""
        while self._out:
            try:
                sent = self.sock.send(self._out)
            except _WOULD_BLOCK:
                return False
            self._out = self._out[sent:]
        self.sent = True
        return True

    def read(self) -> bool:
        """Take what has arrived; ``True`` once the answer is complete (see :attr:`response`).

        Raises :class:`TimeoutError` past :attr:`deadline` even while bytes keep arriving."""
        while True:
            try:
                data = self.sock.recv(_RECV)
            except _WOULD_BLOCK:
                return False
            if not self._started and data:
                data = data.lstrip(_BLANK)  # a stray CRLF after the previous answer
                if not data:
                    continue
                self._started = True
            try:
                self.h11.receive_data(data)
                if self._events():
                    return True
            except h11.RemoteProtocolError as exc:
                raise ProtocolError(f"malformed HTTP answer: {exc}") from None
            if not data:
                raise ProtocolError("the connection closed before the answer was complete")
            if time.monotonic() >= self.deadline:
                raise TimeoutError("the answer did not complete in time (still arriving)")

    def _events(self) -> bool:
        conn = self.h11
        while True:
            event = conn.next_event()
            cls = type(event)
            if cls is h11.Data:
                self._take(event.data)  # type: ignore[union-attr]
            elif event is h11.NEED_DATA:
                return False
            elif cls is h11.Response:
                self._begin(event)  # type: ignore[arg-type]
            elif cls is h11.EndOfMessage:
                self._finish()
                return True
            elif cls is h11.InformationalResponse:
                self._interim += 1
                if self._interim > MAX_INTERIM_RESPONSES:
                    raise ProtocolError(f"more than {MAX_INTERIM_RESPONSES} interim (1xx) answers")
            else:  # ConnectionClosed before an answer, or data after it (PAUSED)
                raise ProtocolError("the connection closed before the answer was complete")

    def _begin(self, event: h11.Response) -> None:
        headers: dict[str, str] = {}
        for name, value in event.headers:
            key = name.decode("latin-1")
            text = value.decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > MAX_RESPONSE_BYTES:
            raise ProtocolError(f"a {length}-byte answer is larger than we accept")
        coding = headers.get("content-encoding", "identity").strip().lower()
        if coding in ("gzip", "x-gzip", "deflate"):
            self._decoder = _Decoder(coding)
        elif coding not in ("identity", ""):
            raise ProtocolError(
                f"unsupported Content-Encoding {coding[:40]!r} (we ask for identity)"
            )
        self._head = (event.status_code, headers)

    def _take(self, data: bytes) -> None:
        room = MAX_RESPONSE_BYTES - len(self._body)
        if self._decoder is not None:
            data = self._decoder.decode(data, room)
        elif len(data) > room:
            raise ProtocolError(f"answer larger than {MAX_RESPONSE_BYTES} bytes")
        self._body += data

    def _finish(self) -> None:
        if self._decoder is not None:
            self._decoder.finish()
        assert self._head is not None
        status, headers = self._head
        self.response = BrazeResponse(status, headers, bytes(self._body))
        self._body = bytearray()

    def reusable(self) -> bool:
        """Whether the connection can carry the next request: both sides done, kept alive,
        and nothing after the answer (a second answer would pair with the next request)."""
        conn = self.h11
        if self._out or conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
            return False
        trailing, closed = conn.trailing_data
        if closed or trailing.strip(_BLANK):
            return False
        if trailing:  # only empty lines: start afresh without them
            self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_RESPONSE_HEAD_BYTES)
        else:
            conn.start_next_cycle()
        self.used = True
        return True

    def close(self) -> None:
        self.sock.close()
