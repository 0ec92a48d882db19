"""The one send loop: every request of the client goes through here. (Hot.)

Many requests in flight on one thread: the thread that builds requests (mapping records)
also drives non-blocking keep-alive connections with ``selectors`` — measured cheaper than a
thread per request, whose answers wait for the GIL the mapping thread holds. ``max_in_flight``
is only the number of slots: one slot is the same loop.

Per attempt: a pacer slot, then a whole-request deadline (connect + send + the complete
answer). Per ended attempt the call's :class:`~.judge.AttemptJudge` says retry (a timer in the
loop) or stop. Only a 2xx whose body is Braze's answer counts as answered (:func:`braze_answer`).
The loop pulls its work: :meth:`Source.next_ready` builds the next request (maps its records).
Never two requests in flight for one profile (``keys``), also across loops of threads that
share a client. A fatal result (:meth:`SendLoop.halt`) stops the loop taking new work: what
follows ends ``not_sent``, so the caller can account for every request.
"""

from __future__ import annotations

import contextlib
import heapq
import math
import selectors
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Mapping
from concurrent.futures import CancelledError, Future
from typing import Protocol

from .._fork import reset_after_fork
from .._telemetry import Active
from .connection import Connection, ProtocolError
from .exchange import DEFAULT_GRACE, CallOptions, CallStats, Exchange, Result
from .judge import TRACK, AttemptJudge, Verdict, braze_answer
from .pacing import NonBlockingPacer, Pacer
from .pool import ConnectionPool
from .retry import RetryPolicy

__all__ = [
    "DEFAULT_GRACE",
    "CallOptions",
    "CallStats",
    "Exchange",
    "Interrupt",
    "IterSource",
    "KeyRegistry",
    "Result",
    "SendLoop",
    "Source",
    "braze_answer",
]

_BUSY_POLL = 0.005  # seconds: a profile busy in another thread's loop is looked at again


class KeyRegistry:
    """The profiles in flight on one client, across all the loops of its threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._busy: set[str] = set()
        reset_after_fork(self)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        self._busy = set()

    def claim(self, keys: frozenset[str]) -> bool:
        """Mark ``keys`` in flight, unless one of them already is."""
        with self._lock:
            if not self._busy.isdisjoint(keys):
                return False
            self._busy |= keys
            return True

    def release(self, keys: frozenset[str]) -> None:
        with self._lock:
            self._busy -= keys


class Interrupt:
    """A stop request from a signal handler: the loop sees it at once (a byte on a socket
    wakes its ``select``), then drains in-flight requests within the grace."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._read, self._write = socket.socketpair()
        self._read.setblocking(False)
        self._write.setblocking(False)

    def fileno(self) -> int:
        return self._read.fileno()

    def request(self, signum: int) -> None:
        """Ask every loop watching this to stop (safe in a signal handler)."""
        if self.signal is None:
            self.signal = signum
        with contextlib.suppress(OSError):  # a full buffer: the loop is woken already
            self._write.send(b"!")

    def close(self) -> None:
        self._read.close()
        self._write.close()


class Source(Protocol):
    """Where the loop's exchanges come from. The loop pulls: :meth:`next_ready` is where the
    work of building the next request happens (for a sync, the mapper runs there, on the
    loop's thread, for the records of the next batch)."""

    def next_ready(self) -> float | None:
        """Make the next exchange ready: this runs the mapper for the next batch (it pulls
        the source's iterator). 0: an exchange is ready (its profiles are claimed); ``t > 0``:
        look again within ``t`` seconds; ``None``: there will be no more."""

    def take(self) -> Exchange:
        """The ready exchange (only after :meth:`next_ready` said 0)."""

    def pending(self) -> list[Exchange]:
        """Exchanges ready but not taken (handed back when the loop stops early)."""


class IterSource:
    """A source over an iterable of exchanges, pulled lazily (memory stays bounded)."""

    def __init__(self, exchanges: Iterable[Exchange], registry: KeyRegistry) -> None:
        self._iter = iter(exchanges)
        self._registry = registry
        self._next: Exchange | None = None
        self._claimed = False
        self.exhausted = False

    def next_ready(self) -> float | None:
        """Pull the next exchange (building it runs the caller's generator: the mapper, the
        packer) and claim its profiles; see :meth:`Source.next_ready`."""
        if self._next is None:
            if self.exhausted:
                return None
            self._next = next(self._iter, None)
            if self._next is None:
                self.exhausted = True
                return None
        if not self._claimed:
            if not self._registry.claim(self._next.keys):
                return _BUSY_POLL  # same profile in flight: wait for it
            self._claimed = True
        return 0.0

    def take(self) -> Exchange:
        exchange, self._next, self._claimed = self._next, None, False
        assert exchange is not None
        return exchange

    def pending(self) -> list[Exchange]:
        exchange, self._next = self._next, None
        if exchange is not None and self._claimed:
            self._registry.release(exchange.keys)
        self._claimed = False
        self.exhausted = True
        return [] if exchange is None else [exchange]


class SendLoop:
    """Runs exchanges to their results (see the module docstring); its :class:`AttemptJudge`
    decides what each ended attempt means, ``redact`` keeps the API key out of its messages."""

    def __init__(
        self,
        pool: ConnectionPool,
        pacer: Pacer,
        policy: RetryPolicy,
        options: CallOptions,
        *,
        headers: list[tuple[bytes, bytes]],
        max_in_flight: int,
        registry: KeyRegistry,
        redact: Callable[[str], str],
        telemetry: Active | None = None,
    ) -> None:
        self.pool = pool
        self.telemetry = telemetry
        self.pacer = pacer
        self.options = options
        self.timeout = options.timeout
        self.stats = options.stats
        self.interrupt = options.interrupt
        self.headers = headers
        self.max_in_flight = max_in_flight
        self.registry = registry
        self._judge = AttemptJudge(policy, options, pool.target.url, redact, telemetry)
        self._try_acquire = pacer.try_acquire if isinstance(pacer, NonBlockingPacer) else None
        self._prefix = pool.target.base_path
        if pool.forwarding:  # absolute-form targets through an http proxy
            self._prefix = f"http://{pool.target.authority}{self._prefix}"
        self._results: deque[Result] = deque()
        self._active: dict[Connection, Exchange] = {}
        self._connecting: list[tuple[Future[Connection], Exchange]] = []
        self._retries: list[tuple[float, int, Exchange]] = []  # (due, sequence, exchange)
        self._sequence = 0
        self._pacer_wait = 0.0
        self._source_wait: float | None = 0.0
        self._stop_at: float | None = None  # when stopping: the end of the grace
        self._selector: selectors.BaseSelector | None = None
        self._waker: _Waker | None = None

    # --- the loop ------------------------------------------------------------------------

    def run(self, source: Source) -> Generator[Result, None, None]:
        """Results as exchanges finish (not in input order)."""
        self._open()
        try:
            while True:
                try:
                    self._start(source)
                    while self._results:
                        yield self._results.popleft()
                    if self._finished():
                        return
                    self._wait()
                    while self._results:
                        yield self._results.popleft()
                except KeyboardInterrupt:
                    self._stop(source, signal.SIGINT)
        finally:
            self._close()
            self._judge.log_repeats()

    def _open(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._waker = _Waker()
        self._selector.register(self._waker, selectors.EVENT_READ)
        if self.interrupt is not None:
            self._selector.register(self.interrupt, selectors.EVENT_READ)

    def _finished(self) -> bool:
        return not (self._active or self._connecting or self._retries or self._results) and (
            self._source_wait is None or self._stop_at is not None
        )

    # --- starting attempts ---------------------------------------------------------------

    def _start(self, source: Source) -> None:
        interrupt = self.interrupt
        if interrupt is not None and interrupt.signal is not None and self._stop_at is None:
            self._stop(source, interrupt.signal)
        self._pacer_wait = 0.0
        if self._stop_at is not None:
            return
        now = time.monotonic()
        while True:
            retry_due = bool(self._retries) and self._retries[0][0] <= now
            # An exchange waiting for its retry keeps its slot: max_in_flight=1 is strictly
            # one batch at a time, and a failing server gets no more work meanwhile.
            if not retry_due:
                if len(self._active) + len(self._connecting) + len(self._retries) >= (
                    self.max_in_flight
                ):
                    return
                self._source_wait = source.next_ready()
                if self._source_wait != 0.0:
                    return
            if self._judge.unreachable:
                exchange = heapq.heappop(self._retries)[2] if retry_due else source.take()
                self._finish(self._judge.give_up(exchange))
                continue
            if self._try_acquire is None:
                self.pacer.acquire()
            else:
                wait = self._try_acquire()
                if wait > 0:
                    self._pacer_wait = wait
                    return
            exchange = heapq.heappop(self._retries)[2] if retry_due else source.take()
            exchange.slot = True
            try:
                self._attempt(exchange, now)
            except BaseException:
                # Raised before or while the try got under way (h11 refusing the request
                # line, a pool closed meanwhile): no answer will give its slot back.
                self._give_back(exchange)
                raise

    def _give_back(
        self,
        exchange: Exchange,
        status: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """End the pacer slot of ``exchange``'s try (what its answer said, if it has one):
        once, whichever path ends the try first, so a slot is neither lost nor freed twice."""
        if exchange.slot:
            exchange.slot = False
            self.pacer.observe(status, {} if headers is None else headers)

    def _attempt(self, exchange: Exchange, now: float) -> None:
        exchange.attempt += 1
        exchange.started = now
        exchange.deadline = now + self.timeout
        self.stats.requests += 1
        if self.telemetry is not None:
            self.telemetry.start_try(exchange)
        connection = None if exchange.fresh else self.pool.checkout()
        exchange.fresh = False
        if connection is None:
            assert self._waker is not None
            future = self.pool.connect(self.timeout)
            future.add_done_callback(self._waker.wake)
            self._connecting.append((future, exchange))
        else:
            self._send(connection, exchange)

    def _send(self, connection: Connection, exchange: Exchange) -> None:
        headers = self.headers
        if exchange.body is not None:
            headers = [*headers, (b"content-length", str(len(exchange.body)).encode())]
        target = (self._prefix + exchange.target).encode()
        try:
            connection.start(exchange.method.encode(), target, headers, exchange.body)
        except BaseException:  # h11 refusing the request: never under way, nothing else closes it
            connection.close()
            raise
        connection.deadline = exchange.deadline
        self._active[connection] = exchange
        try:
            if not connection.used and not connection.usable():
                # A new connection the server already spoke on: its bytes would pair with ours.
                raise ProtocolError("the server sent data before any request was written")
            done = connection.write()
        except OSError as exc:
            self._failed(connection, exc)
            return
        assert self._selector is not None
        events = selectors.EVENT_READ if done else selectors.EVENT_READ | selectors.EVENT_WRITE
        self._selector.register(connection, events)

    # --- waiting -------------------------------------------------------------------------

    def _timeout(self) -> float | None:
        now = time.monotonic()
        waits = []
        if self._pacer_wait:
            waits.append(self._pacer_wait)
        if self._retries and self._stop_at is None:
            waits.append(self._retries[0][0] - now)
        if self._source_wait and self._stop_at is None and not math.isinf(self._source_wait):
            waits.append(self._source_wait)
        deadlines = [c.deadline for c in self._active] + [e.deadline for _, e in self._connecting]
        if deadlines:
            waits.append(min(deadlines) - now)
        if self._stop_at is not None:
            waits.append(self._stop_at - now)
        return max(0.0, min(waits)) if waits else None

    def _wait(self) -> None:
        assert self._selector is not None
        for key, mask in self._selector.select(self._timeout()):
            fileobj = key.fileobj
            if fileobj is self._waker:
                self._waker.drain()
                continue
            if fileobj is self.interrupt:
                continue  # seen by _start
            connection: Connection = fileobj  # type: ignore[assignment]
            try:
                if mask & selectors.EVENT_WRITE and connection.writing and connection.write():
                    self._selector.modify(connection, selectors.EVENT_READ)
                if mask & selectors.EVENT_READ and connection.read():
                    self._answered(connection)
            except (OSError, ValueError, MemoryError) as exc:
                self._failed(connection, exc)
        self._connected()
        now = time.monotonic()
        for connection in [c for c in self._active if c.deadline <= now]:
            self._failed(connection, TimeoutError(f"no complete answer within {self.timeout}s"))
        late = [(f, e) for f, e in self._connecting if e.deadline <= now]
        for future, exchange in late:
            self._connecting.remove((future, exchange))
            future.add_done_callback(_close_when_connected)
            self._attempt_failed(exchange, TimeoutError(f"no connection within {self.timeout}s"))
        if self._stop_at is not None and now >= self._stop_at:
            self._abandon_in_flight()

    def _connected(self) -> None:
        if not self._connecting:
            return
        pending = []
        for future, exchange in self._connecting:
            if not future.done():
                pending.append((future, exchange))
                continue
            try:
                connection = future.result()
            except (OSError, ValueError) as exc:  # urllib3 and socket errors, bad hosts
                self._attempt_failed(exchange, exc)
                continue
            except CancelledError:  # the client was closed while this connect was queued
                self._attempt_failed(exchange, OSError("the client was closed"))
                continue
            self._send(connection, exchange)
        self._connecting = pending

    # --- answers -------------------------------------------------------------------------

    def _answered(self, connection: Connection) -> None:
        assert self._selector is not None
        self._selector.unregister(connection)
        exchange = self._active.pop(connection)
        response = connection.response
        assert response is not None
        if connection.reusable():
            self.pool.checkin(connection)
        else:
            connection.close()
        # Braze's rate-limit headers describe the endpoint that answered: the pacer keeps the
        # /users/track budget, so other answers only give back their slot (an export's or
        # /custom_attributes' window must not hold back track; those keep their own budgets).
        track = exchange.path == TRACK
        self._give_back(
            exchange, response.status_code if track else None, response.headers if track else {}
        )
        self._settle(exchange, self._judge.answered(exchange, response))

    def _failed(self, connection: Connection, exc: BaseException) -> None:
        assert self._selector is not None
        with contextlib.suppress(KeyError, ValueError):  # failed before it was registered
            self._selector.unregister(connection)
        exchange = self._active.pop(connection)
        if connection.sent:
            exchange.unknown = True  # the request went out whole: Braze may have applied it
        if connection.used and not connection.answering:
            # A kept-alive connection the server closed as we used it: the retry opens a new
            # one, and costs no attempt when not a byte of the request was taken.
            exchange.fresh = True
            if connection.untouched and isinstance(exc, OSError):
                connection.close()
                self._give_back(exchange)  # its slot: the retry takes another
                if self.telemetry is not None:  # the try that never was ends its span
                    self.telemetry.end_try(exchange, None)
                exchange.attempt -= 1
                self._sequence += 1
                heapq.heappush(self._retries, (time.monotonic(), self._sequence, exchange))
                return
        connection.close()
        self._attempt_failed(exchange, exc)

    def _attempt_failed(self, exchange: Exchange, exc: BaseException) -> None:
        self._give_back(exchange)
        self._settle(exchange, self._judge.failed(exchange, exc))

    def _settle(self, exchange: Exchange, verdict: Verdict) -> None:
        """Schedule the retry (``verdict`` is its due time) or finish with the result."""
        if isinstance(verdict, Result):
            self._finish(verdict)
            return
        self._sequence += 1
        heapq.heappush(self._retries, (verdict, self._sequence, exchange))

    def _finish(self, result: Result) -> None:
        self.registry.release(result.exchange.keys)
        self._results.append(result)

    # --- stopping ------------------------------------------------------------------------

    def halt(self, source: Source, reason: str) -> None:
        """Stop taking new work after a fatal result (``reason`` names it): queued exchanges
        end ``"interrupted"`` and not sent now, in-flight ones get the grace to finish."""
        if self._stop_at is None:
            self._judge.stop_reason = reason
            self._stop(source, None)

    def _stop(self, source: Source, signum: int | None) -> None:
        """Stop taking new work; in-flight requests get the grace, queued ones end now."""
        if self._stop_at is not None:  # a second interrupt: no more grace
            self._abandon_in_flight()
            return
        if signum is not None:
            self._judge.signal = self.stats.interrupted = signum
        self._judge.stopping = True
        self._stop_at = time.monotonic() + self.options.grace
        if self.interrupt is not None and self._selector is not None:
            # Seen: it stays readable, and select must now wait for the in-flight answers.
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(self.interrupt)
        for exchange in source.pending():
            self._results.append(self._judge.interrupted(exchange))
        for _, _, exchange in self._retries:
            self._finish(self._judge.interrupted(exchange))
        self._retries = []

    def _abandon_in_flight(self) -> None:
        for exchange in self._drop_in_flight():
            self._finish(self._judge.interrupted(exchange))

    def _drop_in_flight(self) -> list[Exchange]:
        """Close every connection in flight (or its connect, once done); their exchanges."""
        dropped = []
        for connection, exchange in self._active.items():
            if self._selector is not None:
                with contextlib.suppress(KeyError, ValueError):  # closed, or not registered
                    self._selector.unregister(connection)
            if connection.sent:
                exchange.unknown = True
            connection.close()
            dropped.append(exchange)
        for future, exchange in self._connecting:
            future.add_done_callback(_close_when_connected)
            dropped.append(exchange)
        # One exchange may be in both (a connect done, its send raising as it began).
        dropped = list({id(exchange): exchange for exchange in dropped}.values())
        for exchange in dropped:
            # Each took a pacer slot: give it back, or a budget counted in flight shrinks.
            self._give_back(exchange)
            if self.telemetry is not None:
                self.telemetry.end_try(exchange, None)
        self._active.clear()
        self._connecting = []
        return dropped

    def _close(self) -> None:
        """Abandon what is in flight (only when the caller stops early or an error is raised)."""
        for exchange in self._drop_in_flight() + [e for _, _, e in self._retries]:
            self.registry.release(exchange.keys)
        self._retries = []
        if self._selector is not None:
            self._selector.close()
        if self._waker is not None:
            self._waker.close()


def _close_when_connected(future: Future[Connection]) -> None:
    if not future.cancelled() and future.exception() is None:
        future.result().close()


class _Waker:
    """A socket pair that wakes the loop's ``select`` from another thread (a finished
    connect); waking it once closed does nothing."""

    def __init__(self) -> None:
        self._read, self._write = socket.socketpair()
        self._read.setblocking(False)
        self._write.setblocking(False)

    def fileno(self) -> int:
        return self._read.fileno()

    def wake(self, _: object = None) -> None:
        with contextlib.suppress(OSError):  # full (already woken) or closed meanwhile
            self._write.send(b".")

    def drain(self) -> None:
        with contextlib.suppress(OSError):
            while self._read.recv(4096):
                pass

    def close(self) -> None:
        self._read.close()
        self._write.close()
