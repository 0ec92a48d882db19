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
from os import PathLike
from typing import TYPE_CHECKING, Any, Literal

import attrs
from attrs import frozen

from ._accounting import RecordOutcome, Stage, failure_groups, record_view
from ._fork import reset_after_fork
from ._spool import Spool
from ._sync import Syncer, _event_id, _record_id
from ._telemetry import Telemetry, log_fields
from ._wire import model_item
from .exceptions import (
    AntavoBrazeError,
    AuthenticationError,
    CoercionError,
    ConfigurationError,
    PermissionDeniedError,
    QueueFull,
)

if TYPE_CHECKING:
    from ._antavo._client import AntavoClient

__all__ = ["BackgroundSender", "SenderStats", "Submission"]

log = logging.getLogger("antavo_braze.sender")

Kind = Literal["member", "event", "attributes"]
OnFull = Literal["block", "raise"]
_ORPHAN_CHECK = 10.0  # seconds between looks for spooled rows of processes that died
_RECEIPTS_IN_MEMORY = 100_000  # idempotency keys remembered without a spool
_SCAN_FACTOR = 4  # a window looks at most this many times its size of queued changes
_REFRESH_THREADS = 8  # members read from Antavo at once (antavo=)


class Submission:
    """One submitted change: :meth:`result` waits for its :class:`RecordOutcome`."""

    __slots__ = ("_future", "kind", "record_id")

    def __init__(self, kind: Kind, record_id: str | None) -> None:
        self.kind = kind
        self.record_id = record_id
        self._future: Future[RecordOutcome] = Future()

    def __repr__(self) -> str:
        state = self._future.result().status if self._future.done() else "pending"
        return f"Submission({self.kind}, {self.record_id!r}, {state})"

    def done(self) -> bool:
        """True once the outcome is known."""
        return self._future.done()

    def result(self, timeout: float | None = None) -> RecordOutcome:
        """The record's outcome; raises :class:`TimeoutError` after ``timeout`` seconds."""
        try:
            return self._future.result(timeout)
        except FutureTimeout:
            raise TimeoutError(f"no outcome yet for {self.kind} {self.record_id!r}") from None

    async def aresult(self) -> RecordOutcome:
        """The outcome, awaited without blocking the event loop."""
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

    __slots__ = ("context", "key", "kind", "queued_at", "record", "spool_ids", "submissions")

    def __init__(self, kind: Kind, key: str, record: Any, submission: Submission | None) -> None:
        self.kind = kind
        self.key = key
        self.record = record
        self.submissions = [submission] if submission is not None else []
        self.spool_ids: list[int] = []
        self.queued_at = time.monotonic()
        self.context: Any = None  # the submitter's trace context, when tracing

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


def _units(change: _Change) -> int:
    """How many submitted changes a (possibly merged) queued change stands for."""
    return max(len(change.submissions), len(change.spool_ids))


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
        self.syncer = syncer
        self.flush_interval = float(flush_interval)
        self.flush_at = flush_at
        self.max_queue = max_queue
        self.on_full: OnFull = on_full
        self.exit_timeout = exit_timeout
        self.antavo = antavo
        self.spool = Spool(spool) if spool is not None else None
        if tracer_provider is None and meter_provider is None:
            self._telemetry = syncer._telemetry
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
        self._outstanding = 0  # accepted and not settled: queued, backlog, in flight
        self._in_flight = 0
        self._flushing = 0
        self._closing = False
        self._worker: threading.Thread | None = None
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
        ``receipt_ttl`` seconds, when given), nothing is queued, nothing is dead-lettered
        again, and ``None`` is returned (a redelivered webhook)."""
        return self._submit_records(kind, records, timeout, receipt, receipt_ttl)

    def _submit_records(
        self,
        kind: Literal["member", "event"],
        records: list[Any],
        timeout: float | None,
        receipt: str | None = None,
        receipt_ttl: float | None = None,
    ) -> list[Submission] | None:
        keyed: list[tuple[Kind, str, str]] = []
        reasons: dict[int, str] = {}
        key_of = _record_id if kind == "member" else _event_id
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
        outcome = self.syncer._fail_changes(kind, [record], "validation", reason, retryable=False)
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
        receipt_ttl: float | None = None,
    ) -> list[Submission] | None:
        """Queue ``(kind, member key, record JSON)`` changes (and spool them, with a spool)."""
        if self._closed:
            raise ConfigurationError("this BackgroundSender is closed")
        count = len(changes)
        records = [json.loads(text) for _, _, text in changes]  # parsed before taking the lock
        context = Telemetry.capture()
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._start_worker()
            if (
                receipt is not None
                and self.spool is None
                and receipt in self._receipts
                and (
                    receipt_ttl is None or time.monotonic() - self._receipts[receipt] < receipt_ttl
                )
            ):
                return None
            while count and self._outstanding + count > self.max_queue:
                if self.on_full == "raise":
                    raise QueueFull(f"{self._outstanding} changes are waiting (max_queue)")
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise QueueFull(f"no room in the queue within {timeout}s")
                self._cond.wait(left)
            ids: list[int] = []
            if self.spool is not None:
                stored = self.spool.add(changes, receipt, receipt_ttl)
                if stored is None:
                    return None  # a redelivery
                ids = stored
            elif receipt is not None:
                self._receipts[receipt] = time.monotonic()
                self._receipts.move_to_end(receipt)
                if len(self._receipts) > _RECEIPTS_IN_MEMORY:
                    self._receipts.popitem(last=False)
            submissions = []
            for number, ((kind, key, _), record) in enumerate(zip(changes, records, strict=True)):
                submission = Submission(kind, key)
                submissions.append(submission)
                if self._backlog:
                    self._waiting[ids[number]] = submission  # loaded, in order, with the rest
                    continue
                change = _Change(kind, key, record, submission)
                change.context = context
                if ids:
                    change.spool_ids.append(ids[number])
                    self._known.add(ids[number])
                self._queue.append(change)
            self._outstanding += count
            self._counts["received"] += count
            self._cond.notify_all()
        return submissions

    # --- the worker ---------------------------------------------------------------------

    def _start_worker(self) -> None:
        """Start this process's worker (called holding the lock); with a spool, first take
        over the rows of processes that no longer run, and send this owner's rows first."""
        if self._worker is not None and self._worker.is_alive():
            return
        if self.spool is not None:
            self._adopt()
            self._backlog = True
        self._worker = threading.Thread(target=self._work, name="antavo-braze-sender", daemon=True)
        self._worker.start()

    def _adopt(self) -> None:
        assert self.spool is not None
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
            with self._cond:
                window = self._next_window()
            if window is None:
                return
            self._send(window)

    def _next_window(self) -> list[_Change] | None:
        """Wait for a window's worth of changes (or its time) and take them (lock held)."""
        while True:
            self._refill()
            now = time.monotonic()
            if self._queue:
                due = self._queue[0].queued_at + self.flush_interval
                by_size = len(self._queue) >= self.flush_at
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
        for spool_id, kind, key, record in rows:
            self._cursor = spool_id
            if spool_id in self._known:
                continue
            submission = self._waiting.pop(spool_id, None)
            if submission is None:
                self._outstanding += 1  # not submitted by this run: a restart's, an orphan's
            change = _Change(kind, key, json.loads(record), submission)  # type: ignore[arg-type]
            change.spool_ids.append(spool_id)
            self._known.add(spool_id)
            self._queue.append(change)
        if len(rows) < room:
            self._backlog = False
            self._cursor = 0
            self._cond.notify_all()

    def _take(self, whole_requests_only: bool) -> list[_Change]:
        """The next window: in queue order, a member's changes only while they are of one
        kind; same-kind member records and attribute updates merge."""
        client = self.syncer.client
        assert client is not None
        cap = self.flush_at * client.max_in_flight
        limit = min(len(self._queue), cap)
        if whole_requests_only:  # a size trigger: leave a partial request for the next window
            limit = max(self.flush_at, limit - limit % self.flush_at)
        window: list[_Change] = []
        merged: dict[tuple[str, str], _Change] = {}
        kinds: dict[str, str] = {}
        held: list[_Change] = []
        blocked: set[str] = set()
        scanned = 0
        while self._queue and len(window) < limit and scanned < limit * _SCAN_FACTOR:
            change = self._queue.popleft()
            scanned += 1
            if change.key in blocked or kinds.get(change.key, change.kind) != change.kind:
                blocked.add(change.key)  # its earlier change of another kind goes first
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
        self._queue.extendleft(reversed(held))
        self._in_flight += sum(_units(c) for c in window)
        return window

    def _send(self, window: list[_Change]) -> None:
        self._telemetry.watch(self)  # a provider the application set since
        contexts = [c.context for c in window]
        with self._telemetry.window(contexts, sum(_units(c) for c in window)):
            self._send_window(window)

    def _send_window(self, window: list[_Change]) -> None:
        members = self._refresh(window, self.antavo) if self.antavo is not None else []
        for kind, changes in _by_kind(window):
            records = [c.record for c in changes]
            refreshed = members if kind == "event" else []
            try:
                if refreshed:  # Antavo's rule: the members' fields in the events' requests
                    report, outcomes, member_outcomes = self.syncer._sync_events_with_members(
                        records, refreshed
                    )
                    self._count_refresh(member_outcomes)
                else:
                    report, outcomes = self.syncer._sync_changes(kind, records)
                with self._cond:
                    self._counts["requests"] += report.requests
                    self._counts["rate_limit_waits"] += report.rate_limit_waits
                    self._rate_limit_wait += report.rate_limit_wait
                    self._statuses.update(report.requests_by_status)
            except (AuthenticationError, PermissionDeniedError) as exc:
                log.error(
                    "Braze refused the credentials; the window is dead-lettered: %s",
                    exc,
                    extra=log_fields("sender", kind=kind, stage="braze", count=len(records)),
                )
                # A run stopped by a fatal error has settled each record already.
                outcomes = getattr(exc, "_outcomes", None) or self._fail_window(
                    kind, records, refreshed, "braze", str(exc)
                )
            except AntavoBrazeError as exc:
                log.error(
                    "a window could not be sent; it goes to the dead letter: %s",
                    exc,
                    extra=log_fields("sender", kind=kind, stage="transport", count=len(records)),
                )
                outcomes = getattr(exc, "_outcomes", None) or self._fail_window(
                    kind, records, refreshed, "transport", str(exc)
                )
            except Exception as exc:  # a bug of ours: never leave a caller waiting for it
                log.exception(
                    "the background sender failed on a window",
                    extra=log_fields("sender", kind=kind, count=len(records)),
                )
                reason = f"the sender failed: {type(exc).__name__}: {exc}"[:300]
                outcomes = self._fail_window(kind, records, refreshed, "transport", reason)
            self._finish(changes, outcomes)

    def _fail_window(
        self, kind: Kind, records: list[Any], members: list[Any], stage: Stage, reason: str
    ) -> list[RecordOutcome]:
        """Dead-letter a window that could not be sent (and the members refreshed for it)."""
        if members:
            self._count_refresh(self.syncer._fail_changes("member", members, stage, reason))
        return self.syncer._fail_changes(kind, records, stage, reason)

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
                if change.kind == "event" and (member_id := _event_id(change.record)) is not None
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
                    self.syncer._fail_changes(
                        "member", [{"id": member_id}], "antavo", f"refresh from Antavo: {result}"
                    )
                )
        return [m for m in found if isinstance(m, dict)]

    def _finish(
        self, changes: list[_Change], outcomes: list[RecordOutcome], *, sent: bool = True
    ) -> None:
        """Settle ``changes`` (taken in a window, or with ``sent=False`` still queued)."""
        ids = [i for c in changes for i in c.spool_ids]
        if self.spool is not None:
            self.spool.remove(ids)
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
            outcomes = self.syncer._fail_changes(kind, records, "interrupted", reason)
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
            in_flight = self._in_flight
            self._cond.notify_all()
        worker = self._worker
        if done and worker is not None:
            worker.join(timeout)
        if left or in_flight:
            self._report_unsent(left, in_flight)
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
