"""The one send loop: every request of the client goes through here. (Hot.)

Many requests in flight on one thread: the thread that builds requests (mapping records)
also drives non-blocking keep-alive connections with ``selectors`` — measured cheaper than a
thread per request, whose answers wait for the GIL the mapping thread holds. ``max_in_flight``
is only the number of slots: one slot is the same loop.

Per attempt: a pacer slot, then a whole-request deadline (connect + send + the complete
answer). Per answer: :func:`~antavo_braze._retry.decide_retry` says retry (a timer in the
loop) or stop. Only a 2xx whose body is Braze's answer counts as answered (:func:`braze_answer`).
Never two requests in flight for one profile (``keys``), also across loops of threads that
share a client. A fatal result (:meth:`SendLoop.halt`) stops the loop taking new work: what
follows ends ``not_sent``, so the caller can account for every request.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import math
import random
import selectors
import signal
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import CancelledError, Future
from typing import Any, NamedTuple, Protocol, cast

from .._braze.limits import ENDPOINT_PERMISSIONS
from .._fork import reset_after_fork
from .._json import loads
from .._telemetry import Active, log_fields
from ..exceptions import AntavoBrazeError, BrazeAPIError, TransportError, error_for_status
from .connection import BrazeResponse, Connection, ProtocolError
from .pacing import NonBlockingPacer, Pacer
from .pool import ConnectionPool, TLSVerificationError, UnmendableError
from .retry import AttemptOutcome, Failure, RetryDecision, RetryPolicy, decide_retry

__all__ = [
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

log = logging.getLogger("antavo_braze.http")

_BUSY_POLL = 0.005  # seconds: a profile busy in another thread's loop is looked at again
DEFAULT_GRACE = 5.0  # seconds in-flight requests get to finish after an interrupt
_TRACK = "/users/track"
_BRAZE_MESSAGES = ("success", "queued")  # "queued": Braze's maintenance answer (still applied)


class Exchange:
    """One logical request and its attempts (``keys``: the profiles it touches)."""

    __slots__ = (
        "attempt",
        "body",
        "deadline",
        "fresh",
        "keys",
        "method",
        "path",
        "span",
        "started",
        "tag",
        "target",
        "unknown",
    )

    def __init__(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        *,
        query: str = "",
        keys: frozenset[str] = frozenset(),
        tag: Any = None,
    ) -> None:
        self.method = method
        self.path = path
        self.target = path + ("?" + query if query else "")
        self.body = body
        self.keys = keys
        self.tag = tag
        self.attempt = 0
        self.unknown = False  # some attempt went out whole and got no usable answer
        self.fresh = False  # the next attempt opens a new connection
        self.deadline = 0.0
        self.started = 0.0
        self.span: Any = None  # the current try's span, when tracing (_telemetry)


class Result(NamedTuple):
    """How an exchange ended: answered (``response`` and its JSON ``payload``) or ``error``.

    ``stage`` is ``""`` when answered, ``"braze"`` (an error status), ``"transport"`` (no
    usable answer) or ``"interrupted"``. ``fatal``: no other request can succeed either (401,
    403, TLS, unmendable connection failures). ``not_sent``: the loop gave up before sending
    it at all. ``retryable``: a later try may succeed (decided by
    :func:`~antavo_braze._retry.decide_retry` alone; the dead letter records it).
    """

    exchange: Exchange
    response: BrazeResponse | None
    payload: Any
    error: AntavoBrazeError | None
    stage: str
    fatal: bool = False
    not_sent: bool = False
    retryable: bool = False


class CallStats:
    """What one call cost: attempts made, retries, waits Braze asked for (its 429s), and the
    signal that interrupted it, if one did."""

    __slots__ = (
        "interrupted",
        "rate_limit_wait",
        "rate_limited",
        "requests",
        "retries",
        "statuses",
    )

    def __init__(self) -> None:
        self.requests = 0
        self.statuses: Counter[str] = Counter()  # tries by HTTP status ("error": no answer)
        self.retries = 0
        self.rate_limited = 0
        self.rate_limit_wait = 0.0
        self.interrupted: int | None = None


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
    """Where the loop's exchanges come from."""

    def peek(self) -> float | None:
        """0: an exchange is ready (its profiles are claimed); ``t > 0``: look again within
        ``t`` seconds (or when woken); ``None``: there will be no more."""

    def take(self) -> Exchange:
        """The ready exchange (only after :meth:`peek` said 0)."""

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

    def peek(self) -> float | None:
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
    """Runs exchanges to their results; see the module docstring.

    ``redact`` removes the API key from any server text before it reaches a message;
    ``give_up_after`` consecutive exchanges failing without any answer open a circuit: what
    follows is not sent (``not_sent``) until the loop ends.
    """

    def __init__(
        self,
        pool: ConnectionPool,
        pacer: Pacer,
        policy: RetryPolicy,
        *,
        timeout: float,
        headers: list[tuple[bytes, bytes]],
        max_in_flight: int,
        registry: KeyRegistry,
        redact: Callable[[str], str],
        stats: CallStats | None = None,
        interrupt: Interrupt | None = None,
        grace: float = DEFAULT_GRACE,
        give_up_after: int | None = None,
        telemetry: Active | None = None,
    ) -> None:
        self.pool = pool
        self.telemetry = telemetry
        self.pacer = pacer
        self.policy = policy
        self.timeout = timeout
        self.headers = headers
        self.max_in_flight = max_in_flight
        self.registry = registry
        self.redact = redact
        self.stats = stats if stats is not None else CallStats()
        self.interrupt = interrupt
        self.grace = grace
        self.give_up_after = give_up_after
        self.interrupted: int | None = None  # the signal that stopped the loop
        self.unreachable = False
        self._try_acquire = pacer.try_acquire if isinstance(pacer, NonBlockingPacer) else None
        self._prefix = pool.target.base_path
        self._base_url = pool.target.url
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
        self._failures_in_a_row = 0
        self._answers = 0  # HTTP answers of any status: Braze (or something) is reachable
        self._unknown = 0  # exchanges that went out whole without a usable answer
        self._stop_reason: str | None = None  # why the loop stopped taking work (halt)
        self._retry_reasons: Counter[str] = Counter()
        self._selector: selectors.BaseSelector | None = None
        self._live: Source | None = None
        self._wake_read: socket.socket | None = None
        self._wake_write: socket.socket | None = None

    # --- the loop ------------------------------------------------------------------------

    def run(self, source: Source) -> Generator[Result, None, None]:
        """Results as exchanges finish (not in input order)."""
        self._open(source)
        try:
            while True:
                try:
                    self._start(source)
                    while self._results:
                        yield self._results.popleft()
                    if self._finished():
                        return
                    self._wait(source)
                    while self._results:
                        yield self._results.popleft()
                except KeyboardInterrupt:
                    self._stop(source, signal.SIGINT)
        finally:
            self._close()
            for where, count in self._retry_reasons.items():
                if count > 1:
                    endpoint, _, reason = where.partition(": ")
                    log.warning(
                        "%s: %d more retries for the same reason",
                        where,
                        count - 1,
                        extra=log_fields("http", endpoint=endpoint, reason=reason, count=count - 1),
                    )

    def _open(self, source: Source) -> None:
        self._selector = selectors.DefaultSelector()
        self._wake_read, self._wake_write = socket.socketpair()
        self._wake_read.setblocking(False)
        self._wake_write.setblocking(False)
        self._selector.register(self._wake_read, selectors.EVENT_READ)
        if self.interrupt is not None:
            self._selector.register(self.interrupt, selectors.EVENT_READ)
        # A live source (the background sender) wakes the loop when new work arrives.
        live = source if callable(getattr(source, "fileno", None)) else None
        self._live = live
        if live is not None:
            self._selector.register(cast(Any, live), selectors.EVENT_READ)

    def _finished(self) -> bool:
        return not (self._active or self._connecting or self._retries or self._results) and (
            self._source_wait is None or self._stop_at is not None
        )

    def _wake(self, _: object = None) -> None:
        """Wake ``select`` (a connect finished in a helper thread); a no-op once closed."""
        sock = self._wake_write
        if sock is None:
            return
        with contextlib.suppress(OSError):  # full (already woken) or closed meanwhile
            sock.send(b".")

    # --- starting attempts ---------------------------------------------------------------

    def _start(self, source: Source) -> None:
        if (
            self.interrupt is not None
            and self.interrupt.signal is not None
            and self._stop_at is None
        ):
            self._stop(source, self.interrupt.signal)
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
                self._source_wait = source.peek()
                if self._source_wait != 0.0:
                    return
            if self.unreachable:
                exchange = heapq.heappop(self._retries)[2] if retry_due else source.take()
                self._give_up(exchange)
                continue
            if self._try_acquire is None:
                self.pacer.acquire()
            else:
                wait = self._try_acquire()
                if wait > 0:
                    self._pacer_wait = wait
                    return
            exchange = heapq.heappop(self._retries)[2] if retry_due else source.take()
            self._attempt(exchange, now)

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
            future = self.pool.connect(self.timeout)
            future.add_done_callback(self._wake)
            self._connecting.append((future, exchange))
        else:
            self._send(connection, exchange)

    def _send(self, connection: Connection, exchange: Exchange) -> None:
        headers = self.headers
        if exchange.body is not None:
            headers = [*headers, (b"content-length", str(len(exchange.body)).encode())]
        target = (self._prefix + exchange.target).encode()
        connection.start(exchange.method.encode(), target, headers, exchange.body)
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

    def _wait(self, source: Source) -> None:
        assert self._selector is not None
        for key, mask in self._selector.select(self._timeout()):
            fileobj = key.fileobj
            if fileobj is self._wake_read:
                self._drain_wakeups(self._wake_read)
                continue
            if fileobj is self.interrupt:
                continue  # seen by _start
            if self._live is not None and fileobj is cast(Any, self._live):
                cast(Any, self._live).drain()
                continue
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

    @staticmethod
    def _drain_wakeups(sock: Any) -> None:
        with contextlib.suppress(OSError):
            while sock.recv(4096):
                pass

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
        status = response.status_code
        self._answers += 1
        self.stats.statuses[str(status)] += 1
        # Braze's rate-limit headers describe the endpoint that answered: the pacer keeps the
        # /users/track budget, so other answers only give back their slot (an export's or
        # /custom_attributes' window must not hold back track; those keep their own budgets).
        track = exchange.path == _TRACK
        self.pacer.observe(status if track else None, response.headers if track else {})
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "%s %s -> %d (attempt %d, %.1f ms)",
                exchange.method,
                exchange.path,
                status,
                exchange.attempt,
                (time.monotonic() - exchange.started) * 1000,
                extra=log_fields(
                    "http",
                    endpoint=f"{exchange.method} {exchange.path}",
                    status=status,
                    attempt=exchange.attempt,
                ),
            )
        if 200 <= status < 300:
            payload = braze_answer(exchange.path, response.content)
            if payload is not None:
                self._failures_in_a_row = 0
                if self.telemetry is not None:
                    self.telemetry.end_try(exchange, AttemptOutcome(status), payload=payload)
                self._finish(Result(exchange, response, payload, None, ""))
                return
            exchange.unknown = True  # a gateway's page, a cut or garbled body: was it applied?
            outcome = AttemptOutcome(status, response.headers, "invalid_answer")
        else:
            self._failures_in_a_row = 0  # Braze is reachable
            outcome = AttemptOutcome(status, response.headers)
        self._decide(exchange, outcome, response, None)

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
                if self.telemetry is not None:  # the try that never was ends its span
                    self.telemetry.end_try(exchange, None)
                exchange.attempt -= 1
                self._sequence += 1
                heapq.heappush(self._retries, (time.monotonic(), self._sequence, exchange))
                return
        connection.close()
        self._attempt_failed(exchange, exc)

    def _attempt_failed(self, exchange: Exchange, exc: BaseException) -> None:
        self.pacer.observe(None, {})
        self.stats.statuses["error"] += 1
        failure: Failure = "transport"
        if isinstance(exc, TLSVerificationError):
            failure = "tls"
        elif isinstance(exc, UnmendableError):
            failure = "unmendable"
        self._decide(exchange, AttemptOutcome(failure=failure), None, exc)

    def _decide(
        self,
        exchange: Exchange,
        outcome: AttemptOutcome,
        response: BrazeResponse | None,
        exc: BaseException | None,
    ) -> None:
        decision = decide_retry(
            self.policy, outcome, exchange.attempt, time.time(), random.random()
        )
        if self.telemetry is not None:
            self.telemetry.end_try(exchange, outcome, decision, exc)
        what = f"HTTP {outcome.status}" if exc is None else self._reason(exc)
        if outcome.failure == "invalid_answer":
            what += " that is not Braze's answer"
        if decision.retry and self._stop_at is None:
            self.stats.retries += 1
            if decision.rate_limited:
                self.stats.rate_limited += 1
                self.stats.rate_limit_wait += decision.wait
            # The first retry for a reason is a warning; repeats are counted and summed up
            # when the loop ends (a failing server would otherwise print a line per batch).
            where = f"{exchange.method} {exchange.path}: {what}"
            seen = self._retry_reasons[where]
            self._retry_reasons[where] = seen + 1
            log.log(
                logging.DEBUG if seen else logging.WARNING,
                "%s; retry %d in %.2fs",
                where,
                exchange.attempt,
                decision.wait,
                extra=log_fields(
                    "http",
                    endpoint=f"{exchange.method} {exchange.path}",
                    status=outcome.status,
                    attempt=exchange.attempt,
                    wait=decision.wait,
                    reason=what,
                ),
            )
            self._sequence += 1
            due = time.monotonic() + decision.wait
            heapq.heappush(self._retries, (due, self._sequence, exchange))
            return
        if self._stop_at is not None and decision.retry:
            self._finish(self._interrupted(exchange))
            return
        error, stage = self._error(exchange, outcome, decision, response, what)
        error.__cause__ = exc
        fatal = decision.fatal
        if exchange.unknown:
            self._unknown += 1
        if stage == "transport" and outcome.status is None:
            self._failures_in_a_row += 1
            if self.give_up_after is not None and self._failures_in_a_row >= self.give_up_after:
                self.unreachable = True
                if not self._answers:  # nothing ever answered: stop, as for a TLS refusal
                    fatal = True
                    cause = error
                    error = self._located(
                        TransportError(
                            f"Braze unreachable at {self._base_url}: {self._failures_in_a_row} "
                            f"requests in a row got no answer and none was ever answered "
                            f"({self._unknown} went out whole and may have been applied); "
                            f"last: {error}"
                        ),
                        exchange,
                    )
                    error.__cause__ = cause
        self._finish(
            Result(exchange, response, None, error, stage, fatal, retryable=decision.retryable)
        )

    def _reason(self, exc: BaseException) -> str:
        if isinstance(exc, UnmendableError):  # its message says it all; the class is internal
            return self.redact(str(exc))[:300]
        return self.redact(f"{type(exc).__name__}: {exc}")[:300]

    def _located(self, error: AntavoBrazeError, exchange: Exchange) -> AntavoBrazeError:
        """``error`` marked with the call it ends: method, URL (no secrets in it), attempts."""
        error.method = exchange.method
        error.url = self._base_url + exchange.target
        error.path = exchange.path
        error.attempts = exchange.attempt
        return error

    def _error(
        self,
        exchange: Exchange,
        outcome: AttemptOutcome,
        decision: RetryDecision,
        response: BrazeResponse | None,
        what: str,
    ) -> tuple[AntavoBrazeError, str]:
        where = f"{exchange.method} {self._base_url}{exchange.path}"
        if outcome.failure in ("tls", "unmendable"):
            error: AntavoBrazeError = TransportError(f"{where}: {decision.reason}: {what}")
            return self._located(error, exchange), "transport"
        if outcome.failure is not None:
            message = f"{where} failed after {exchange.attempt} attempt(s): {what}"
            return self._located(TransportError(message), exchange), "transport"
        assert response is not None
        assert outcome.status is not None
        needed = ENDPOINT_PERMISSIONS.get(exchange.path)
        error = _status_error(outcome.status, self.redact(response.text), where, decision, needed)
        return self._located(error, exchange), "braze"

    def _finish(self, result: Result) -> None:
        self.registry.release(result.exchange.keys)
        self._results.append(result)

    def _give_up(self, exchange: Exchange) -> None:
        error = TransportError(
            f"not sent: Braze unreachable ({self.give_up_after} requests in a row got no answer)"
        )
        self._finish(
            Result(exchange, None, None, error, "transport", not_sent=True, retryable=True)
        )

    # --- stopping ------------------------------------------------------------------------

    def _interrupted(self, exchange: Exchange) -> Result:
        name = self._stop_reason or signal.Signals(self.interrupted or signal.SIGINT).name
        if exchange.unknown:
            text = f"interrupted ({name}) after the request went out: Braze may have applied it"
        else:
            text = f"interrupted ({name}) before it was sent"
        return Result(
            exchange,
            None,
            None,
            TransportError(text),
            "interrupted",
            not_sent=not exchange.unknown,
            retryable=True,
        )

    def halt(self, source: Source, reason: str) -> None:
        """Stop taking new work after a fatal result (``reason`` names it): queued exchanges
        end ``"interrupted"`` and not sent now, in-flight ones get the grace to finish."""
        if self._stop_at is None:
            self._stop_reason = reason
            self._stop(source, None)

    def _stop(self, source: Source, signum: int | None) -> None:
        """Stop taking new work; in-flight requests get the grace, queued ones end now."""
        if self._stop_at is not None:  # a second interrupt: no more grace
            self._abandon_in_flight()
            return
        if signum is not None:
            self.interrupted = self.stats.interrupted = signum
        self._stop_at = time.monotonic() + self.grace
        if self.interrupt is not None and self._selector is not None:
            # Seen: it stays readable, and select must now wait for the in-flight answers.
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(self.interrupt)
        for exchange in source.pending():
            self._results.append(self._interrupted(exchange))
        for _, _, exchange in self._retries:
            self._finish(self._interrupted(exchange))
        self._retries = []

    def _abandon_in_flight(self) -> None:
        assert self._selector is not None
        for connection, exchange in list(self._active.items()):
            self._selector.unregister(connection)
            if connection.sent:
                exchange.unknown = True
            connection.close()
            if self.telemetry is not None:
                self.telemetry.end_try(exchange, None)
            self._finish(self._interrupted(exchange))
        self._active.clear()
        for future, exchange in self._connecting:
            future.add_done_callback(_close_when_connected)
            if self.telemetry is not None:
                self.telemetry.end_try(exchange, None)
            self._finish(self._interrupted(exchange))
        self._connecting = []

    def _close(self) -> None:
        """Abandon what is in flight (only when the caller stops early or an error is raised)."""
        for connection, exchange in self._active.items():
            self.registry.release(exchange.keys)
            connection.close()
            if self.telemetry is not None:
                self.telemetry.end_try(exchange, None)
        for future, exchange in self._connecting:
            self.registry.release(exchange.keys)
            future.add_done_callback(_close_when_connected)
            if self.telemetry is not None:
                self.telemetry.end_try(exchange, None)
        for _, _, exchange in self._retries:
            self.registry.release(exchange.keys)
        self._active.clear()
        self._connecting = []
        self._retries = []
        if self._selector is not None:
            self._selector.close()
        for sock in (self._wake_read, self._wake_write):
            if sock is not None:
                sock.close()
        self._wake_read = self._wake_write = None


def braze_answer(path: str, content: bytes) -> Any:
    """The 2xx body as Braze's answer, or ``None`` when it is not one: not a JSON object (or
    too deep), and for ``/users/track`` a ``"message"`` other than ``"success"``/``"queued"`` or
    ``errors`` that is not a list (``{}``, a gateway's ``{"status": "ok"}``, an error page)."""
    try:
        payload = loads(content)
    except (ValueError, RecursionError, MemoryError):
        return None
    if not isinstance(payload, dict):
        return None
    if path == _TRACK and (
        payload.get("message") not in _BRAZE_MESSAGES
        or not isinstance(payload.get("errors", []), list)
    ):
        return None
    return payload


def _status_error(
    status: int, body: str, where: str, decision: RetryDecision, permission: str | None
) -> BrazeAPIError:
    # Redacted above, truncated here: a key can never be cut in half into a message.
    text = f"Braze answered HTTP {status} to {where}: {body[:300]}"
    if decision.reason.startswith("rate limited"):
        text = f"{decision.reason} ({where})"
    return error_for_status(status, body, text, permission=permission)


def _close_when_connected(future: Future[Connection]) -> None:
    if not future.cancelled() and future.exception() is None:
        future.result().close()
