"""The background sender, for callers with one change at a time (web handlers, webhooks,
Antavo-side extensions).

``submit_*`` returns at once with a :class:`Submission`; one worker thread per process takes
what is queued in *windows* — up to ``flush_at`` objects, or whatever waited ``flush_interval``
seconds — and sends each window through the Syncer's own path, so 5,000 changes cost about
5,000 / 75 requests. Per member, order holds: a window takes a member's changes only while
they are of one kind (a member's later changes of another kind wait for the next window);
two member records or two attribute updates of one member in a window merge, the latest
value winning; events keep their order; and the client never has two requests in flight for
one profile. Windows are sent one after another, so a later change never overtakes an
earlier one.

With ``spool=PATH`` every submission is in an SQLite file before ``submit_*`` returns and
leaves it only once its outcome is known (succeeded, skipped, or failed into the dead
letter): a sender started on the same spool after a crash sends the rest (at least once).
"""

from __future__ import annotations

import asyncio
import atexit
import contextvars
import functools
import json
import logging
import threading
import time
import weakref
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterator
from collections.abc import Mapping as AbcMapping
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from os import PathLike
from typing import TYPE_CHECKING, Any, Literal

import attrs
from attrs import frozen

from ._build.wire import model_item
from ._fork import reset_after_fork
from ._run.deadletter import DeadLetterEntry, DeadLetterSink
from ._run.input import event_id, record_id
from ._run.tally import RecordOutcome, Stage, failure_groups, record_view
from ._scale.redis import RedisOrder
from ._service.spool import RECEIPT_TTL, Row, Spool
from ._sync import Syncer, fail_window, sync_events_with_members, sync_window, telemetry_of
from ._telemetry import Telemetry, log_fields
from .exceptions import (
    AntavoBrazeError,
    AuthenticationError,
    CoercionError,
    ConfigurationError,
    PermissionDeniedError,
    QueueFull,
    RateLimitError,
    ServerError,
    TransportError,
)

if TYPE_CHECKING:
    from ._antavo.client import AntavoClient

__all__ = ["BackgroundSender", "SenderStats", "Submission"]

log = logging.getLogger("antavo_braze.sender")

Kind = Literal["member", "event", "attributes"]
OnFull = Literal["block", "raise"]
_ORPHAN_CHECK = 10.0  # seconds between looks for spooled rows of processes that died
_RECEIPTS_IN_MEMORY = 100_000  # idempotency keys remembered without a spool
_SCAN_FACTOR = 4  # a window looks at most this many times its size of queued changes
_REFRESH_THREADS = 8  # members read from Antavo at once (antavo=)
MAX_RETRY_TIME = 3600.0  # seconds a change is retried through an outage before it fails
_RETRY_DELAY_MAX = 30.0  # seconds between tries, at most: a recovered Braze is used soon
_BUSY_WAIT = 0.05  # seconds before a member another process is sending is tried again
_LINGER = 0.005  # seconds a window waits for company while a caller waits for an outcome


class _Waiters:
    """How many callers wait for an outcome right now: while any does, windows go out after
    a short linger instead of the whole ``flush_interval`` (a handler that awaits each
    outcome is not held to one window per interval)."""

    __slots__ = ("count", "wake")

    def __init__(self, wake: Callable[[], None]) -> None:
        self.count = 0
        self.wake = wake

    @contextmanager
    def waiting(self) -> Iterator[None]:
        self.count += 1  # an int under the GIL: a racy read only shortens one linger
        self.wake()
        try:
            yield
        finally:
            self.count -= 1


class Submission:
    """One submitted change: :meth:`result` waits for its :class:`RecordOutcome`."""

    __slots__ = ("_future", "_waiters", "kind", "record_id")

    def __init__(self, kind: Kind, record_id: str | None, waiters: _Waiters | None = None) -> None:
        self.kind = kind
        self.record_id = record_id
        self._future: Future[RecordOutcome] = Future()
        self._waiters = waiters

    def __repr__(self) -> str:
        state = self._future.result().status if self._future.done() else "pending"
        return f"Submission({self.kind}, {self.record_id!r}, {state})"

    def done(self) -> bool:
        """True once the outcome is known."""
        return self._future.done()

    def result(self, timeout: float | None = None) -> RecordOutcome:
        """The record's outcome; raises :class:`TimeoutError` after ``timeout`` seconds."""
        if self._future.done() or self._waiters is None:
            return self._wait(timeout)
        with self._waiters.waiting():
            return self._wait(timeout)

    def _wait(self, timeout: float | None) -> RecordOutcome:
        try:
            return self._future.result(timeout)
        except FutureTimeout:
            raise TimeoutError(f"no outcome yet for {self.kind} {self.record_id!r}") from None

    async def aresult(self) -> RecordOutcome:
        """The outcome, awaited without blocking the event loop."""
        if self._future.done() or self._waiters is None:
            return await asyncio.wrap_future(self._future)
        with self._waiters.waiting():
            return await asyncio.wrap_future(self._future)

    def _settle(self, outcome: RecordOutcome) -> None:
        if not self._future.done():
            self._future.set_result(outcome)


@frozen
class SenderStats:
    """A :class:`BackgroundSender`'s counters since it started (in this process):
    changes ``received``, ``queued`` (waiting, spooled backlog included), ``in_flight``
    (in a window being sent), ``succeeded``, ``failed``, ``skipped``, Braze ``requests`` and
    ``rate_limit_waits`` (429s waited out), ``rate_limit_wait`` (seconds waited for them)
    and ``requests_by_status`` (HTTP tries by status; ``"error"``: no usable answer)."""

    received: int
    queued: int
    in_flight: int
    succeeded: int
    failed: int
    skipped: int
    requests: int
    rate_limit_waits: int
    refreshed: int = 0  # members read from Antavo and sent with their events (antavo=)
    refresh_failed: int = 0  # members Antavo could not give: their events went without
    rate_limit_wait: float = 0.0
    requests_by_status: AbcMapping[str, int] = attrs.field(factory=dict)


class _Change:
    """A queued change: what to send for which member (``key``), and who waits for it."""

    __slots__ = (
        "attempts", "context", "key", "kind", "queued_at", "record", "seq", "spool_ids",
        "submissions",
    )  # fmt: skip

    def __init__(
        self, kind: Kind, key: str, record: Any, submission: Submission | None, seq: int = 0
    ) -> None:
        self.kind = kind
        self.seq = seq  # its place among every process's changes (RedisOrder), 0: none
        self.key = key
        self.record = record
        self.submissions = [submission] if submission is not None else []
        self.spool_ids: list[int] = []
        self.queued_at = time.monotonic()
        self.context: Any = None  # the submitter's trace context, when tracing
        self.attempts = 0  # windows that failed it and could be tried again

    def absorb(self, later: _Change) -> None:
        """Merge a later change of the same member and kind: the latest value wins."""
        if self.kind == "attributes":
            self.record = {**self.record, **later.record}
        else:
            self.record = later.record
        self.submissions.extend(later.submissions)
        self.spool_ids.extend(later.spool_ids)
        if self.context is None:
            self.context = later.context
        self.seq = max(self.seq, later.seq)


def _units(change: _Change) -> int:
    """How many submitted changes a (possibly merged) queued change stands for."""
    return max(len(change.submissions), len(change.spool_ids))


def may_retry(kind: str, outcome: RecordOutcome) -> bool:
    """Whether a failed change is worth sending again later: Braze or the network failed it
    and said it may succeed (a 429, a 5xx, a dropped connection) — unless it is an event that
    may already have been recorded (its answer was lost), which a resend would record twice."""
    failure = outcome.failure
    if outcome.status != "failed" or failure is None or not failure.retryable:
        return False
    if failure.stage not in ("braze", "transport"):
        return False
    return not (kind == "event" and failure.outcome == "unknown")


def _pause_before(changes: list[_Change]) -> float:
    """How long to hold windows back before trying ``changes`` again: the backoff of the most
    tried one, or a moment when they only waited for another process's request."""
    attempts = max(c.attempts for c in changes)
    return retry_delay(attempts) if attempts else _BUSY_WAIT


def retry_delay(attempts: int) -> float:
    """Seconds to wait before the next try of a change that failed ``attempts`` times:
    doubling from half a second, at most ``_RETRY_DELAY_MAX``."""
    doublings = min(max(attempts - 1, 0), 10)  # 0.5 s * 2**10 is well past the cap
    return min(_RETRY_DELAY_MAX, 0.5 * 2.0**doublings)


class _HeldLetters:
    """A window's dead-letter entries, held until the sender knows which failures are final
    (the others are tried again, and must not be in the dead letter)."""

    def __init__(self) -> None:
        self.entries: list[DeadLetterEntry] = []

    def write(self, entry: DeadLetterEntry) -> None:
        self.entries.append(entry)

    def forward(self, sink: DeadLetterSink | None, positions: set[int]) -> None:
        """Write the entries of the records at ``positions`` to ``sink``."""
        if sink is None:
            return
        for entry in self.entries:
            if entry.index in positions:
                sink.write(entry)


def _positions_from(start: int, items: list[Any]) -> set[int]:
    """The run positions of ``items`` placed after ``start`` records."""
    return set(range(start, start + len(items)))


def _by_kind(changes: list[_Change]) -> Iterator[tuple[Kind, list[_Change]]]:
    """The changes of each kind, in order (one Syncer call per kind)."""
    kinds: tuple[Kind, ...] = ("member", "attributes", "event")
    for kind in kinds:
        same = [c for c in changes if c.kind == kind]
        if same:
            yield kind, same


def _record_json(record: Any) -> str:
    """An input record as JSON text: the queued change is parsed from it (so what is sent no
    longer changes when the caller reuses its objects), and a spool stores it as it is."""
    return json.dumps(record_view(record), default=str)


def _log_failures(changes: list[_Change], outcomes: list[RecordOutcome]) -> None:
    """One warning per kind of failure in a window (stage, field, reason; never a member's
    id or values: the dead letter has the records)."""
    for kind, same in _by_kind(changes):
        failures = [
            o.failure for c, o in zip(changes, outcomes, strict=True) if c in same and o.failure
        ]
        for group in failure_groups(failures):
            log.warning(
                "%d %s change(s) failed [%s]%s: %s",
                group["count"],
                kind,
                group["stage"],
                f" {group['field']}" if group["field"] else "",
                group["reason"],
                extra=log_fields(
                    "sender",
                    kind=kind,
                    stage=group["stage"],
                    field=group["field"],
                    reason=group["reason"],
                    count=group["count"],
                ),
            )


async def _off_loop(call: Callable[[], Submission]) -> Submission:
    """Run a submit on the loop's thread pool: a spool write or a wait for room never
    blocks the event loop; the caller's context (its trace) goes along."""
    run = functools.partial(contextvars.copy_context().run, call)
    return await asyncio.get_running_loop().run_in_executor(None, run)


_LIVE: weakref.WeakSet[BackgroundSender] = weakref.WeakSet()


def _flush_at_exit() -> None:
    for sender in list(_LIVE):
        sender._at_exit()


# Before the interpreter stops the thread pools that open connections (threading's own exit
# hooks run before atexit's, newest first): a plain atexit hook would be too late to send.
_register_early = getattr(threading, "_register_atexit", None)
if callable(_register_early):  # pragma: no branch - CPython
    _register_early(_flush_at_exit)
else:  # pragma: no cover
    atexit.register(_flush_at_exit)


class BackgroundSender:
    """Coalesces per-change submissions into batched requests on a background thread.

    See the module documentation of :mod:`antavo_braze` (service mode). ``flush_interval``
    seconds or ``flush_at`` objects make a window; at most ``max_queue`` changes wait at
    once (``on_full``: ``"block"`` waits for room, bounded by ``submit_*(timeout=)``;
    ``"raise"`` raises :class:`QueueFull`). ``spool``: an SQLite file that keeps every
    change until its outcome is known (without one, what is queued lives in memory only).
    At interpreter exit, pending work gets ``exit_timeout`` seconds; what remains is logged
    (and stays in the spool, or goes to the dead letter as not sent).

    A change Braze or the network failed in a way that may pass (an outage, a 429 storm)
    is tried again with backoff for up to ``max_retry_time`` seconds from its submission
    before it fails into the dead letter. ``sync_mode=True`` sends each submission at once
    in the caller's thread (notebooks, tests, job workers that fork and exit without exit
    hooks): ``submit_*`` returns with the outcome known. ``order``: a :class:`RedisOrder`
    shared by every process sending for the same members keeps their order across processes
    (without one, order holds within this process).

    ``antavo`` (an :class:`~antavo_braze.AntavoClient`) honours Antavo's rule that a change
    sends the member's whole mapping: for each member with events in a window, the current
    customer object is read from Antavo once and its mapped fields are sent in the same
    requests as the events. When Antavo cannot be read, the events still go and that refresh
    alone fails (stage ``"antavo"``, retryable, in the dead letter;
    ``stats().refresh_failed``).

    ``tracer_provider`` / ``meter_provider``: OpenTelemetry providers for the windows' spans
    (each a child of its first submitter's trace, linked to the others) and the queue-depth
    gauge (the ``otel`` extra); by default the Syncer's.
    """

    def __init__(
        self,
        syncer: Syncer,
        *,
        flush_interval: float = 0.5,
        flush_at: int = 75,
        max_queue: int = 100_000,
        spool: str | PathLike[str] | None = None,
        on_full: OnFull = "block",
        exit_timeout: float = 5.0,
        antavo: AntavoClient | None = None,
        tracer_provider: Any = None,
        meter_provider: Any = None,
        max_retry_time: float = MAX_RETRY_TIME,
        sync_mode: bool = False,
        order: RedisOrder | None = None,
    ) -> None:
        if syncer.client is None:
            raise ConfigurationError("a BackgroundSender needs a Syncer with a client")
        if not flush_interval >= 0:
            raise ConfigurationError("flush_interval must not be negative")
        if not 1 <= flush_at <= syncer.limits.max_objects:
            raise ConfigurationError(
                f"flush_at must be between 1 and {syncer.limits.max_objects} (objects per request)"
            )
        if max_queue < 1:
            raise ConfigurationError("max_queue must be at least 1")
        if on_full not in ("block", "raise"):
            raise ConfigurationError(f"on_full must be 'block' or 'raise', not {on_full!r}")
        if not max_retry_time >= 0:
            raise ConfigurationError("max_retry_time must not be negative")
        if sync_mode and spool is not None:
            raise ConfigurationError(
                "sync_mode sends each change before submit returns: it takes no spool"
            )
        self.syncer = syncer
        self.flush_interval = float(flush_interval)
        self.flush_at = flush_at
        self.max_queue = max_queue
        self.on_full: OnFull = on_full
        self.exit_timeout = exit_timeout
        self.antavo = antavo
        self.max_retry_time = float(max_retry_time)
        self.sync_mode = sync_mode
        self.order = order
        self.spool = Spool(spool) if spool is not None else None
        if tracer_provider is None and meter_provider is None:
            self._telemetry = telemetry_of(syncer)
        else:
            self._telemetry = Telemetry(tracer_provider, meter_provider)
        self._telemetry.watch(self)
        self._closed = False
        self._reset()
        reset_after_fork(self)
        _LIVE.add(self)
        if self.spool is not None:  # what a stopped process left in the spool goes first
            with self._cond:
                self._start_worker()

    def _reset(self) -> None:
        """This process's queue and worker (afresh in a forked child: the parent's queue is
        the parent's to send)."""
        self._cond = threading.Condition()
        self._queue: deque[_Change] = deque()
        self._kinds: Counter[str] = Counter()  # queued changes by kind (whole requests)
        self._outstanding = 0  # accepted and not settled: queued, backlog, in flight
        self._in_flight = 0
        self._flushing = 0
        self._closing = False
        self._worker: threading.Thread | None = None
        self._paused_until = 0.0  # no window goes before (Braze failed the last one)
        self._waiters = _Waiters(self._wake)
        self._writing = 0  # submits writing to the spool outside the lock (group commit)
        # Spooled rows not yet in memory (a restart's, a dead process's): while there are
        # some, new submissions wait on disk too (``_waiting``), so that order holds.
        self._backlog = False
        self._cursor = 0  # the last spool id looked at in this pass over the backlog
        self._known: set[int] = set()  # spool ids queued or in flight
        self._waiting: dict[int, Submission] = {}
        self._orphans_checked = 0.0
        self._receipts: OrderedDict[str, float] = OrderedDict()  # receipt -> when (monotonic)
        self._counts = dict.fromkeys(
            (
                "received",
                "succeeded",
                "failed",
                "skipped",
                "requests",
                "rate_limit_waits",
                "refreshed",
                "refresh_failed",
            ),
            0,
        )
        self._rate_limit_wait = 0.0
        self._statuses: Counter[str] = Counter()

    def _after_fork(self) -> None:
        self._reset()

    def _wake(self) -> None:
        """A caller started waiting for an outcome: the worker looks at its window's time."""
        with self._cond:
            self._cond.notify_all()

    def __repr__(self) -> str:
        spool = f", spool={str(self.spool.path)!r}" if self.spool is not None else ""
        return f"BackgroundSender(flush_at={self.flush_at}, outstanding={self._outstanding}{spool})"

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    def __enter__(self) -> BackgroundSender:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- submitting ---------------------------------------------------------------------

    def submit_member(self, member: Any, *, timeout: float | None = None) -> Submission:
        """Queue a member record (a dict with ``id`` or :class:`LoyaltyMember`): every mapped
        field is sent, as by :meth:`Syncer.sync_members`."""
        return self._submit_one("member", member, timeout)

    def submit_event(self, event: Any, *, timeout: float | None = None) -> Submission:
        """Queue an Antavo event (envelope dict or :class:`LoyaltyEvent`)."""
        return self._submit_one("event", event, timeout)

    def _submit_one(
        self, kind: Literal["member", "event"], record: Any, timeout: float | None
    ) -> Submission:
        submitted = self._submit_records(kind, [record], timeout)
        assert submitted is not None  # only a receipt can make it None
        return submitted[0]

    def submit_attributes(
        self,
        member_id: str,
        values: AbcMapping[str, Any],
        types: AbcMapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> Submission:
        """Queue a one-off attributes update outside the mapping (coerced now: a bad value
        fails its Submission at once)."""
        try:
            obj = self.syncer.mapper.attributes(member_id, values, types)
        except CoercionError as exc:
            return self._refused("attributes", {"id": member_id, **values}, str(exc))
        text = model_item(obj, 0).data.decode()
        submitted = self._submit([("attributes", obj.external_id, text)], timeout)
        assert submitted is not None  # only a receipt can make it None
        return submitted[0]

    async def asubmit_member(self, member: Any, *, timeout: float | None = None) -> Submission:
        """:meth:`submit_member` without blocking the event loop (the spool write and any
        wait for room happen on a worker thread)."""
        return await _off_loop(functools.partial(self.submit_member, member, timeout=timeout))

    async def asubmit_event(self, event: Any, *, timeout: float | None = None) -> Submission:
        """:meth:`submit_event` without blocking the event loop."""
        return await _off_loop(functools.partial(self.submit_event, event, timeout=timeout))

    async def asubmit_attributes(
        self,
        member_id: str,
        values: AbcMapping[str, Any],
        types: AbcMapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> Submission:
        """:meth:`submit_attributes` without blocking the event loop."""
        return await _off_loop(
            functools.partial(self.submit_attributes, member_id, values, types, timeout=timeout)
        )

    def submit_many(
        self,
        kind: Literal["member", "event"],
        records: list[Any],
        *,
        receipt: str | None = None,
        receipt_ttl: float | None = None,
        timeout: float | None = None,
    ) -> list[Submission] | None:
        """Queue several records at once (one spool transaction). ``receipt`` is an
        idempotency key: if a submission with it was accepted before (within
        ``receipt_ttl`` seconds: 7 days by default; without a spool, the last 100,000 keys),
        nothing is queued, nothing is dead-lettered again, and ``None`` is returned (a
        redelivered webhook)."""
        ttl = RECEIPT_TTL if receipt_ttl is None else receipt_ttl
        return self._submit_records(kind, records, timeout, receipt, ttl)

    def _submit_records(
        self,
        kind: Literal["member", "event"],
        records: list[Any],
        timeout: float | None,
        receipt: str | None = None,
        receipt_ttl: float = RECEIPT_TTL,
    ) -> list[Submission] | None:
        keyed: list[tuple[Kind, str, str]] = []
        reasons: dict[int, str] = {}
        key_of = record_id if kind == "member" else event_id
        for number, record in enumerate(records):
            key = key_of(record)
            if key is None:
                reasons[number] = f"{'id' if kind == 'member' else 'customer'}: missing"
                continue
            try:
                keyed.append((kind, key, _record_json(record)))
            except (TypeError, ValueError, RecursionError) as exc:
                reasons[number] = f"not JSON-like: {exc}"
        queued = self._submit(keyed, timeout, receipt, receipt_ttl)
        if queued is None:
            return None  # a redelivery: its refused records are in the dead letter already
        refused = {n: self._refused(kind, records[n], reason) for n, reason in reasons.items()}
        out = iter(queued)
        return [refused[n] if n in refused else next(out) for n in range(len(records))]

    def _refused(self, kind: Kind, record: Any, reason: str) -> Submission:
        """A change refused before queueing: failed at once (stage validation), and in the
        dead letter like any failed record."""
        submission = Submission(kind, None)
        outcome = fail_window(self.syncer, kind, [record], "validation", reason, retryable=False)
        submission.record_id = outcome[0].record_id
        submission._settle(outcome[0])
        with self._cond:
            self._counts["received"] += 1
            self._counts["failed"] += 1
        return submission

    def _submit(
        self,
        changes: list[tuple[Kind, str, str]],
        timeout: float | None,
        receipt: str | None = None,
        receipt_ttl: float = RECEIPT_TTL,
    ) -> list[Submission] | None:
        """Queue ``(kind, member key, record JSON)`` changes (and spool them, with a spool)."""
        if self._closed:
            raise ConfigurationError("this BackgroundSender is closed")
        records = [json.loads(text) for _, _, text in changes]  # parsed before taking the lock
        context = Telemetry.capture()
        seqs = self._stamp(len(changes))
        pairs = zip(changes, seqs, strict=True)
        rows: list[Row] = [(kind, key, text, seq) for (kind, key, text), seq in pairs]
        return self._submit_rows(rows, records, timeout, receipt, receipt_ttl, context)

    def _stamp(self, count: int) -> list[int]:
        """Order sequence numbers for ``count`` changes (0: no cross-process order)."""
        if self.order is None or not count:
            return [0] * count
        try:
            return self.order.stamp(count)
        except self.order.errors as exc:
            log.warning("Redis unreachable (%s): %d change(s) sent without cross-process order",
                        exc, count, extra=log_fields("sender", count=count))  # fmt: skip
            return [0] * count

    def _submit_rows(
        self,
        changes: list[Row],
        records: list[Any],
        timeout: float | None,
        receipt: str | None,
        receipt_ttl: float,
        context: Any,
    ) -> list[Submission] | None:
        count = len(changes)
        if self.sync_mode:
            return self._send_now(changes, records, receipt, receipt_ttl, context)
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._start_worker()
            if self.spool is None and self._seen(receipt, receipt_ttl):
                return None
            while count and self._outstanding + count > self.max_queue:
                if self.on_full == "raise":
                    raise QueueFull(f"{self._outstanding} changes are waiting (max_queue)")
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise QueueFull(f"no room in the queue within {timeout}s")
                self._cond.wait(left)
            self._outstanding += count  # room taken now, the changes queued below
            if self.spool is None:
                if receipt is not None:
                    self._remember(receipt)
                return self._enqueue(changes, records, [], context)
            if self._backlog:  # written in order with the backlog being loaded
                return self._spool_and_enqueue(changes, records, receipt, receipt_ttl, context)
            self._writing += 1
        # Written without the lock: threads submitting at once share one disk sync.
        try:
            return self._spool_and_enqueue(changes, records, receipt, receipt_ttl, context)
        finally:
            with self._cond:
                self._writing -= 1

    def _remember(self, receipt: str) -> None:
        self._receipts[receipt] = time.monotonic()
        self._receipts.move_to_end(receipt)
        if len(self._receipts) > _RECEIPTS_IN_MEMORY:
            self._receipts.popitem(last=False)

    def _seen(self, receipt: str | None, receipt_ttl: float) -> bool:
        """Whether an in-memory receipt was accepted within ``receipt_ttl`` (lock held)."""
        if receipt is None or receipt not in self._receipts:
            return False
        return time.monotonic() - self._receipts[receipt] < receipt_ttl

    def _spool_and_enqueue(
        self,
        changes: list[Row],
        records: list[Any],
        receipt: str | None,
        receipt_ttl: float,
        context: Any,
    ) -> list[Submission] | None:
        """Write the changes to the spool, then queue them (their room is taken)."""
        assert self.spool is not None
        try:
            ids = self.spool.add(changes, receipt, receipt_ttl)
        except BaseException:
            with self._cond:
                self._outstanding -= len(changes)
                self._cond.notify_all()
            raise
        with self._cond:
            if ids is None:  # a redelivery
                self._outstanding -= len(changes)
                self._cond.notify_all()
                return None
            return self._enqueue(changes, records, ids, context)

    def _enqueue(
        self, changes: list[Row], records: list[Any], ids: list[int], context: Any
    ) -> list[Submission]:
        """Queue changes whose room is taken (lock held)."""
        submissions = []
        for number, ((kind, key, _, seq), record) in enumerate(zip(changes, records, strict=True)):
            submission = Submission(kind, key, self._waiters)  # type: ignore[arg-type]
            submissions.append(submission)
            if self._backlog:
                self._waiting[ids[number]] = submission  # loaded, in order, with the rest
                continue
            change = _Change(kind, key, record, submission, seq)  # type: ignore[arg-type]
            change.context = context
            if ids:
                change.spool_ids.append(ids[number])
                self._known.add(ids[number])
            self._push(change)
        self._counts["received"] += len(changes)
        self._cond.notify_all()
        return submissions

    def _send_now(
        self,
        changes: list[Row],
        records: list[Any],
        receipt: str | None,
        receipt_ttl: float,
        context: Any,
    ) -> list[Submission] | None:
        """``sync_mode``: send in the caller's thread, retrying through an outage as the
        worker would; the submissions are settled when this returns."""
        window = []
        with self._cond:
            if receipt is not None:
                if self._seen(receipt, receipt_ttl):
                    return None
                self._remember(receipt)
            for (kind, key, _, seq), record in zip(changes, records, strict=True):
                submission = Submission(kind, key)  # type: ignore[arg-type]
                change = _Change(kind, key, record, submission, seq)  # type: ignore[arg-type]
                change.context = context
                window.append(change)
            self._counts["received"] += len(window)
            self._outstanding += len(window)
            self._in_flight += len(window)
        submissions = [c.submissions[0] for c in window]
        while window:
            window = self._send(window)
            if window:
                time.sleep(_pause_before(window))
        return submissions

    # --- the worker ---------------------------------------------------------------------

    def _start_worker(self) -> None:
        """Start this process's worker (called holding the lock); with a spool, first take
        over the rows of processes that no longer run, and send this owner's rows first."""
        if self._worker is not None and self._worker.is_alive():
            return
        if self.spool is not None and not self._writing:
            self._adopt()
            self._backlog = True
        self._worker = threading.Thread(target=self._work, name="antavo-braze-sender", daemon=True)
        self._worker.start()

    def _adopt(self) -> None:
        assert self.spool is not None
        if self._writing:
            return  # rows being written now must not be loaded as a backlog: next time
        self._orphans_checked = time.monotonic()
        adopted = self.spool.adopt_orphans()
        if adopted:
            log.warning(
                "spool %s: sending %d change(s) a stopped process left unsent",
                self.spool.path,
                adopted,
                extra=log_fields("sender", count=adopted),
            )
            self._backlog = True
            self._cursor = 0

    def _work(self) -> None:
        while True:
            try:
                with self._cond:
                    window = self._next_window()
            except Exception:  # the spool could not be read: try again, never stop
                log.exception("the background sender could not load its spool")
                time.sleep(1.0)
                continue
            if window is None:
                return
            again = self._send(window)
            if again:
                self._retry_later(again)

    def _retry_later(self, changes: list[_Change]) -> None:
        """Put changes a window failed for now back at the head of the queue (they are the
        oldest), and hold every window back for the backoff."""
        delay = _pause_before(changes)
        if any(c.attempts for c in changes):
            log.warning(
                "Braze failed %d change(s) for now; trying again in %.1fs (each for up to %.0fs)",
                len(changes),
                delay,
                self.max_retry_time,
            )
        with self._cond:
            self._in_flight -= sum(_units(c) for c in changes)
            self._push_front(changes)
            self._paused_until = time.monotonic() + delay
            self._cond.notify_all()

    def _next_window(self) -> list[_Change] | None:
        """Wait for a window's worth of changes (or its time) and take them (lock held)."""
        while True:
            self._refill()
            now = time.monotonic()
            if self._queue and now < self._paused_until and not self._closing:
                self._cond.wait(self._paused_until - now)  # backing off after a failure
            elif self._queue:
                interval = min(self.flush_interval, _LINGER) if self._waiters.count else None
                due = self._queue[0].queued_at + (interval or self.flush_interval)
                by_size = max(self._kinds.values(), default=0) >= self.flush_at  # a kind's request
                urgent = now >= due or self._flushing or self._closing
                if by_size or urgent:
                    return self._take(by_size and not urgent)
                self._cond.wait(due - now)
            elif self._closing or self._closed:
                return None
            else:
                self._cond.wait(_ORPHAN_CHECK)

    def _refill(self) -> None:
        """Load spooled rows in id order while there is a backlog (lock held)."""
        spool = self.spool
        if spool is None:
            return
        if time.monotonic() - self._orphans_checked > _ORPHAN_CHECK:
            self._adopt()
        room = self.max_queue - len(self._queue)
        if not self._backlog or room <= 0:
            return
        rows = spool.load(self._cursor, room)
        for spool_id, kind, key, record, seq in rows:
            self._cursor = spool_id
            if spool_id in self._known:
                continue
            submission = self._waiting.pop(spool_id, None)
            if submission is None:
                self._outstanding += 1  # not submitted by this run: a restart's, an orphan's
            change = _Change(kind, key, json.loads(record), submission, seq)  # type: ignore[arg-type]
            change.spool_ids.append(spool_id)
            self._known.add(spool_id)
            self._push(change)
        if len(rows) < room:
            self._backlog = False
            self._cursor = 0
            self._cond.notify_all()

    def _push(self, change: _Change) -> None:
        self._queue.append(change)
        self._kinds[change.kind] += 1

    def _push_front(self, changes: list[_Change]) -> None:
        self._queue.extendleft(reversed(changes))
        self._kinds.update(c.kind for c in changes)

    def _pop(self) -> _Change:
        change = self._queue.popleft()
        self._kinds[change.kind] -= 1
        return change

    def _whole_requests(self, cap: int) -> dict[str, int]:
        """On a size trigger: how many changes of each kind make whole requests (kinds with
        less than a request queued wait for the next window, or the window's time)."""
        limits = {}
        for kind, count in self._kinds.items():
            whole = min(count, cap) - min(count, cap) % self.flush_at
            if whole:
                limits[kind] = whole
        return limits

    def _take(self, whole_requests_only: bool) -> list[_Change]:
        """The next window: in queue order, a member's changes only while they are of one
        kind; same-kind member records and attribute updates merge. On a size trigger, only
        whole requests of each kind (each kind is one request body), so mixed kinds never go
        out as half-full requests of each."""
        client = self.syncer.client
        assert client is not None
        cap = self.flush_at * client.max_in_flight
        limit = min(len(self._queue), cap)
        limits: dict[str, int] | None = None
        if whole_requests_only:  # a size trigger: leave partial requests for the next window
            limits = self._whole_requests(cap)
            limit = min(cap, sum(limits.values()))
        taken: Counter[str] = Counter()
        window: list[_Change] = []
        merged: dict[tuple[str, str], _Change] = {}
        kinds: dict[str, str] = {}
        held: list[_Change] = []
        blocked: set[str] = set()
        scanned = 0
        while self._queue and len(window) < limit and scanned < limit * _SCAN_FACTOR:
            change = self._pop()
            scanned += 1
            if (
                change.key in blocked
                or kinds.get(change.key, change.kind) != change.kind
                or (limits is not None and taken[change.kind] >= limits.get(change.kind, 0))
            ):
                blocked.add(change.key)  # its earlier change goes first (or waits too)
                held.append(change)
                continue
            kinds[change.key] = change.kind
            if change.kind != "event":
                earlier = merged.get((change.kind, change.key))
                if earlier is not None:
                    earlier.absorb(change)
                    continue
                merged[(change.kind, change.key)] = change
            window.append(change)
            taken[change.kind] += 1
        self._push_front(held)
        if not window and limits is not None:
            return self._take(False)  # every whole request waits on other kinds: send all
        self._in_flight += sum(_units(c) for c in window)
        return window

    def _send(self, window: list[_Change]) -> list[_Change]:
        """Send a window, one Syncer call per kind, and settle what is final; return the
        changes to try again later."""
        self._telemetry.watch(self)  # a provider the application set since
        contexts = [c.context for c in window]
        with self._telemetry.window(contexts, sum(_units(c) for c in window)):
            return self._send_window(window)

    def _send_window(self, window: list[_Change]) -> list[_Change]:
        again: list[_Change] = []
        members: list[dict[str, Any]] | None = None
        for kind, taken in _by_kind(window):
            changes = self._claim(kind, taken, again)
            if not changes:
                continue
            if kind == "event" and self.antavo is not None and members is None:
                members = self._refresh(changes, self.antavo)  # Antavo's rule, once a window
            held = _HeldLetters()
            refreshed = (members or []) if kind == "event" else []
            outcomes, retry = self._send_kind(kind, changes, held, refreshed)
            self._release(kind, changes, outcomes)
            again.extend(self._settle(kind, changes, outcomes, held, retry=retry))
        return again

    def _claim(self, kind: Kind, changes: list[_Change], later: list[_Change]) -> list[_Change]:
        """With a :class:`RedisOrder`: the changes this process may send now. A member
        another process is sending waits (into ``later``); a member snapshot older than one
        already sent is skipped."""
        order = self.order
        if order is None:
            return changes
        members = [(c.key, c.seq if kind == "member" else 0) for c in changes]
        try:
            claims = order.claim(members)
        except order.errors as exc:
            log.warning("Redis unreachable (%s): %d change(s) wait for it", exc, len(changes))
            for change in changes:
                change.attempts += 1  # backs off like an outage
            later.extend(changes)
            return []
        pairs = list(zip(changes, claims, strict=True))
        later.extend(c for c, claim in pairs if claim == "busy")
        stale = [c for c, claim in pairs if claim == "stale"]
        if stale:
            reason = "superseded: another process sent a newer change of this member"
            self._finish(stale, [RecordOutcome("skipped", c.key, reason) for c in stale])
        return [c for c, claim in pairs if claim == "send"]

    def _release(self, kind: Kind, changes: list[_Change], outcomes: list[RecordOutcome]) -> None:
        """End this window's claims, recording the member snapshots now in Braze."""
        if self.order is None:
            return
        members = [
            (c.key, c.seq if kind == "member" and o.status == "succeeded" else 0)
            for c, o in zip(changes, outcomes, strict=True)
        ]
        try:
            self.order.release(members)
        except self.order.errors as exc:  # the claims lapse after their lease
            log.warning("Redis unreachable (%s): claims lapse after %.0fs", exc, self.order.lease)

    def _send_kind(
        self,
        kind: Kind,
        changes: list[_Change],
        held: _HeldLetters,
        refreshed: list[dict[str, Any]],
    ) -> tuple[list[RecordOutcome], bool]:
        """Each change's outcome (failures written to ``held``), and whether failures that
        may pass can be tried again (not when the credentials were refused). ``refreshed``:
        the members read from Antavo for these events, sent in the same requests; each fails
        alone, straight into the dead letter (a later window reads them again)."""
        records = [c.record for c in changes]
        try:
            if refreshed:
                report, outcomes, member_outcomes = sync_events_with_members(
                    self.syncer, records, refreshed, hold=held
                )
                held.forward(self.syncer.dead_letter, _positions_from(len(records), refreshed))
                self._count_refresh(member_outcomes)
            else:
                report, outcomes = sync_window(self.syncer, kind, records, hold=held)
        except (AuthenticationError, PermissionDeniedError) as exc:
            log.error(
                "Braze refused the credentials; the window is dead-lettered: %s",
                exc,
                extra=log_fields("sender", kind=kind, stage="braze", count=len(records)),
            )
            return self._fail_window(kind, records, refreshed, "braze", str(exc), held, exc), False
        except (TransportError, RateLimitError, ServerError) as exc:
            log.warning(
                "a window could not be sent: %s",
                exc,
                extra=log_fields("sender", kind=kind, stage="transport", count=len(records)),
            )
            outcomes = self._fail_window(kind, records, refreshed, "transport", str(exc), held, exc)
            return outcomes, True
        except AntavoBrazeError as exc:  # a closed client, a bad setting: trying again won't do
            log.error(
                "a window could not be sent; it goes to the dead letter: %s",
                exc,
                extra=log_fields("sender", kind=kind, stage="transport", count=len(records)),
            )
            outcomes = self._fail_window(kind, records, refreshed, "transport", str(exc), held, exc)
            return outcomes, False
        except Exception as exc:  # a bug of ours: never leave a caller waiting for it
            log.exception(
                "the background sender failed on a window",
                extra=log_fields("sender", kind=kind, count=len(records)),
            )
            reason = f"the sender failed: {type(exc).__name__}: {exc}"[:300]
            outcomes = self._fail_window(
                kind, records, refreshed, "transport", reason, held, retryable=False
            )
            return outcomes, False
        with self._cond:
            self._counts["requests"] += report.requests
            self._counts["rate_limit_waits"] += report.rate_limit_waits
            self._rate_limit_wait += report.rate_limit_wait
            self._statuses.update(report.requests_by_status)
        return outcomes, True

    def _settle(
        self,
        kind: Kind,
        changes: list[_Change],
        outcomes: list[RecordOutcome],
        held: _HeldLetters,
        *,
        retry: bool,
    ) -> list[_Change]:
        """Finish the changes whose outcome is final (their failures into the dead letter);
        return those to try again (failed for now, and younger than ``max_retry_time``)."""
        now = time.monotonic()
        final: list[int] = []
        again: list[_Change] = []
        kept: list[_Change] = []
        for position, (change, outcome) in enumerate(zip(changes, outcomes, strict=True)):
            young = now - change.queued_at < self.max_retry_time
            if not (retry and young and may_retry(kind, outcome)):
                final.append(position)
            elif not self._closed:
                change.attempts += 1
                again.append(change)
            elif change.spool_ids:
                kept.append(change)  # closed: the next sender on the spool tries again
            else:
                final.append(position)
        try:
            held.forward(self.syncer.dead_letter, set(final))
        except Exception:  # a full disk must not stop the sender: the outcomes still say it
            log.exception("failed changes could not be written to the dead letter")
        self._finish([changes[p] for p in final], [outcomes[p] for p in final])
        if kept:
            with self._cond:
                units = sum(_units(c) for c in kept)
                self._outstanding -= units
                self._in_flight -= units
                self._known.difference_update(i for c in kept for i in c.spool_ids)
                self._cond.notify_all()
        return again

    def _fail_window(
        self,
        kind: Kind,
        records: list[Any],
        members: list[Any],
        stage: Stage,
        reason: str,
        held: _HeldLetters,
        error: BaseException | None = None,
        *,
        retryable: bool = True,
    ) -> list[RecordOutcome]:
        """Fail a window that could not be sent: its records into ``held``, the members
        refreshed for it straight into the dead letter. A run a fatal error stopped has
        settled each record already (``error._outcomes``): those outcomes stand."""
        if members:
            failed = fail_window(self.syncer, "member", members, stage, reason)
            self._count_refresh(failed)
        settled = getattr(error, "_outcomes", None)
        if settled is not None and not members and len(settled) == len(records):
            return list(settled)
        return fail_window(
            self.syncer, kind, records, stage, reason, retryable=retryable, hold=held
        )

    def _count_refresh(self, outcomes: list[RecordOutcome]) -> None:
        with self._cond:
            for outcome in outcomes:
                self._counts["refresh_failed" if outcome.status == "failed" else "refreshed"] += 1

    def _refresh(self, window: list[_Change], antavo: AntavoClient) -> list[dict[str, Any]]:
        """Antavo's rule: read each member with events in ``window`` once (the customer
        objects to send with the events); a member Antavo cannot give fails alone, now
        (stage ``antavo``, retryable), and its events still go."""
        ids = list(
            dict.fromkeys(
                member_id
                for change in window
                if change.kind == "event" and (member_id := event_id(change.record)) is not None
            )
        )
        if not ids:
            return []

        def fetch(member_id: str) -> dict[str, Any] | str:
            try:
                return antavo.customer(member_id)
            except AntavoBrazeError as exc:
                return str(exc)[:300]

        with ThreadPoolExecutor(min(_REFRESH_THREADS, len(ids))) as pool:
            found = list(pool.map(fetch, ids))
        for member_id, result in zip(ids, found, strict=True):
            if isinstance(result, str):
                log.warning("could not read member %s from Antavo: %s", member_id, result)
                self._count_refresh(
                    fail_window(
                        self.syncer,
                        "member",
                        [{"id": member_id}],
                        "antavo",
                        f"refresh from Antavo: {result}",
                    )
                )
        return [m for m in found if isinstance(m, dict)]

    def _finish(
        self, changes: list[_Change], outcomes: list[RecordOutcome], *, sent: bool = True
    ) -> None:
        """Settle ``changes`` (taken in a window, or with ``sent=False`` still queued)."""
        ids = [i for c in changes for i in c.spool_ids]
        if self.spool is not None:
            try:
                self.spool.remove(ids)
            except Exception:  # the outcome stands; the rows are sent again by a next start
                log.exception("spool %s: settled rows could not be removed", self.spool.path)
        settled = 0
        with self._cond:
            self._known.difference_update(ids)
            for change, outcome in zip(changes, outcomes, strict=True):
                count = _units(change)
                settled += count
                self._counts[outcome.status] += count
                if outcome.record_id is None:
                    outcome = attrs.evolve(outcome, record_id=change.key)
                for submission in change.submissions:
                    submission._settle(outcome)
            self._outstanding -= settled
            if sent:
                self._in_flight -= settled
            self._cond.notify_all()
        _log_failures(changes, outcomes)

    def _fail_unsent(self, left: list[_Change]) -> None:
        """Dead-letter changes still queued when the sender closes (no spool to keep them)."""
        reason = "not sent: the sender closed before its turn"
        for kind, changes in _by_kind(left):
            records = [c.record for c in changes]
            outcomes = fail_window(self.syncer, kind, records, "interrupted", reason)
            self._finish(changes, outcomes, sent=False)

    # --- flushing, closing, stats ---------------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:
        """Send everything queued now, without waiting for windows to fill; return True
        when nothing is left outstanding, False if ``timeout`` ran out first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            if self.spool is not None or self._outstanding:
                self._start_worker()  # a forked child's first call, or a spool's backlog
            self._flushing += 1
            self._cond.notify_all()
            try:
                while self._outstanding or self._backlog:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        return False
                    self._cond.wait(left if left is not None else 1.0)
                return True
            finally:
                self._flushing -= 1

    def close(self, timeout: float | None = None) -> None:
        """Flush (within ``timeout``), then stop the worker; the sender then refuses
        submissions. What could not be sent stays in the spool, or without one goes to the
        dead letter (failed, not sent, retryable). The Syncer and client stay yours."""
        if self._closed:
            return
        done = self.flush(timeout)
        self._closed = True
        with self._cond:
            self._closing = True
            left = list(self._queue) if not done else []
            self._queue.clear()
            self._kinds.clear()
            in_flight = self._in_flight
            self._cond.notify_all()
        worker = self._worker
        if done and worker is not None:
            worker.join(timeout)
        if left or in_flight:
            self._report_unsent(left, in_flight)
        if self.spool is not None and (worker is None or not worker.is_alive()):
            self.spool.close()
        _LIVE.discard(self)

    def _report_unsent(self, left: list[_Change], in_flight: int) -> None:
        count = sum(_units(c) for c in left)
        if self.spool is not None:
            log.warning(
                "closing with %d change(s) unsent and %d in flight: kept in the spool %s, "
                "sent by the next sender on it",
                count,
                in_flight,
                self.spool.path,
                extra=log_fields("sender", count=count),
            )
            return
        log.warning(
            "closing with %d change(s) unsent (written to the dead letter as not sent) and %d "
            "in flight with unknown outcome",
            count,
            in_flight,
            extra=log_fields("sender", count=count),
        )
        self._fail_unsent(left)

    def _at_exit(self) -> None:
        if not self._closed and (self._outstanding or self._worker is not None):
            self.close(self.exit_timeout)

    def stats(self) -> SenderStats:
        """What this sender did so far, in this process."""
        with self._cond:
            counts = self._counts
            return SenderStats(
                received=counts["received"],
                queued=self._outstanding - self._in_flight,
                in_flight=self._in_flight,
                succeeded=counts["succeeded"],
                failed=counts["failed"],
                skipped=counts["skipped"],
                requests=counts["requests"],
                rate_limit_waits=counts["rate_limit_waits"],
                refreshed=counts["refreshed"],
                refresh_failed=counts["refresh_failed"],
                rate_limit_wait=self._rate_limit_wait,
                requests_by_status=dict(sorted(self._statuses.items())),
            )

    def submit_groups(
        self,
        groups: list[tuple[Literal["member", "event"], list[Any], str | None, float | None]],
        *,
        timeout: float | None = None,
        contexts: list[Any] | None = None,
    ) -> list[list[Submission] | Exception | None]:
        """Several :meth:`submit_many` calls, each ``(kind, records, receipt, receipt_ttl)``,
        written to the spool in one transaction (one disk sync) — for a caller holding
        several webhooks at once (``serve``). Per group, in order: what :meth:`submit_many`
        returns, or the exception it raises (:class:`QueueFull`: no room within ``timeout``,
        one deadline for all the groups). ``contexts``: each group's trace
        (``Telemetry.capture()`` in its caller); used with a spool."""
        spool = self.spool
        results: list[list[Submission] | Exception | None] = []
        if spool is None or self._closed:  # no disk sync to share: one submit_many each
            for kind, records, receipt, ttl in groups:
                try:
                    results.append(
                        self.submit_many(
                            kind, records, receipt=receipt, receipt_ttl=ttl, timeout=timeout
                        )
                    )
                except Exception as exc:
                    results.append(exc)
            return results
        deadline = None if timeout is None else time.monotonic() + timeout
        # Per group, as _submit_records and _submit do for one: its rows, parsed records
        # and the records refused before queueing (by position).
        prepared: list[tuple[list[Row], list[Any], dict[int, str]]] = []
        for kind, records, _, _ in groups:
            key_of = record_id if kind == "member" else event_id
            rows: list[Row] = []
            parsed: list[Any] = []
            reasons: dict[int, str] = {}
            for number, record in enumerate(records):
                key = key_of(record)
                if key is None:
                    reasons[number] = f"{'id' if kind == 'member' else 'customer'}: missing"
                    continue
                try:
                    text = _record_json(record)
                except (TypeError, ValueError, RecursionError) as exc:
                    reasons[number] = f"not JSON-like: {exc}"
                    continue
                rows.append((kind, key, text, 0))
                parsed.append(json.loads(text))
            prepared.append((rows, parsed, reasons))
        seqs = iter(self._stamp(sum(len(rows) for rows, _, _ in prepared)))  # one INCRBY
        for rows, _, _ in prepared:
            rows[:] = [(kind, key, text, next(seqs)) for kind, key, text, _ in rows]
        context_of = contexts if contexts is not None else [None] * len(groups)
        results = [None] * len(groups)  # each set below
        taken: list[int] = []  # the groups that got room, in order

        def write() -> None:
            """Spool the groups that got room, then queue them (their room is taken)."""
            try:
                written = spool.add_many([(prepared[n][0], *groups[n][2:]) for n in taken])
            except BaseException as exc:
                with self._cond:
                    self._outstanding -= sum(len(prepared[n][0]) for n in taken)
                    self._cond.notify_all()
                if not isinstance(exc, Exception):
                    raise
                for n in taken:
                    results[n] = exc
                return
            with self._cond:
                for n, ids in zip(taken, written, strict=True):
                    rows, parsed, _ = prepared[n]
                    if ids is None:  # a redelivery
                        self._outstanding -= len(rows)
                        self._cond.notify_all()
                    else:
                        results[n] = self._enqueue(rows, parsed, ids, context_of[n])

        with self._cond:
            self._start_worker()
            for n, (rows, _, _) in enumerate(prepared):
                while rows and self._outstanding + len(rows) > self.max_queue:
                    left = None if deadline is None else deadline - time.monotonic()
                    if self.on_full == "raise" or (left is not None and left <= 0):
                        break
                    self._cond.wait(left)
                if rows and self._outstanding + len(rows) > self.max_queue:
                    results[n] = QueueFull(f"no room in the queue for {len(rows)} change(s)")
                    continue
                self._outstanding += len(rows)  # room taken now, the changes queued below
                taken.append(n)
            in_order = self._backlog  # written in order with the backlog being loaded
            if in_order:
                write()
            else:
                self._writing += 1
        if not in_order:  # written without the lock: other submits share the disk sync
            try:
                write()
            finally:
                with self._cond:
                    self._writing -= 1
        for n, (kind, records, _, _) in enumerate(groups):
            queued, reasons = results[n], prepared[n][2]
            if isinstance(queued, list) and reasons:  # a redelivery's are dead-lettered already
                refused = {i: self._refused(kind, records[i], why) for i, why in reasons.items()}
                out = iter(queued)
                results[n] = [
                    refused[i] if i in refused else next(out) for i in range(len(records))
                ]
        return results
