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

This module is the facade. The parts live in ``_service/``: ``window.py`` decides (pure: when
a window goes, what it takes and merges, what a failed change does next), ``worker.py`` is the
thread that sends, ``intake.py`` admits submissions (room, receipts, the spool write).
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
from collections.abc import Callable, Iterator
from collections.abc import Mapping as AbcMapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from os import PathLike
from typing import TYPE_CHECKING, Any, Literal

import attrs
from attrs import frozen

from ._build.records import event_id, record_id
from ._build.wire import model_item
from ._fork import reset_after_fork
from ._run.report import RecordOutcome
from ._run.tally import record_view
from ._scale.redis import RedisOrder
from ._service.intake import Admission, Intake
from ._service.spool import RECEIPT_TTL, Row, Spool
from ._service.window import Change, Kind, by_kind, pause_before, units
from ._service.worker import Seams, Waiters, Worker
from ._sync import Syncer, fail_window, sync_events_with_members, sync_window, telemetry_of
from ._telemetry import Telemetry, log_fields
from .exceptions import CoercionError, ConfigurationError

if TYPE_CHECKING:
    from ._antavo.client import AntavoClient

__all__ = ["BackgroundSender", "SenderStats", "Submission"]

log = logging.getLogger("antavo_braze.sender")

OnFull = Literal["block", "raise"]
MAX_RETRY_TIME = 3600.0  # seconds a change is retried through an outage before it fails
# The Syncer's window functions, handed to the worker (the _service layer sits below _sync).
_SEAMS = Seams(sync_window, sync_events_with_members, fail_window)


class Submission:
    """One submitted change: :meth:`result` waits for its :class:`RecordOutcome`."""

    __slots__ = ("_future", "_waiters", "kind", "record_id")

    def __init__(self, kind: Kind, record_id: str | None, waiters: Waiters | None = None) -> None:
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


def _record_json(record: Any) -> str:
    """An input record as JSON text: the queued change is parsed from it (so what is sent no
    longer changes when the caller reuses its objects), and a spool stores it as it is."""
    return json.dumps(record_view(record), default=str)


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


def _check_settings(
    syncer: Syncer,
    flush_interval: float,
    flush_at: int,
    max_queue: int,
    on_full: str,
    max_retry_time: float,
    sync_mode: bool,
    spool: object,
) -> None:
    """Refuse a :class:`BackgroundSender` setting that cannot work, saying which and why."""
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


def _send_now(
    worker: Worker, rows: list[Row], records: list[Any], context: Any
) -> list[Submission]:
    """``sync_mode``: send in the caller's thread, retrying through an outage as the worker
    would; the submissions are settled when this returns."""
    window = []
    for (kind, key, _, seq), record in zip(rows, records, strict=True):
        change = Change(kind, key, record, Submission(kind, key), seq)  # type: ignore[arg-type]
        change.context = context
        window.append(change)
    with worker.cond:
        worker.counts["received"] += len(window)
        worker.outstanding += len(window)
        worker.in_flight += len(window)
    submissions: list[Submission] = [c.submissions[0] for c in window]
    while window:
        window = worker.send(window)
        if window:
            time.sleep(pause_before(window))
    return submissions


def _report_unsent(syncer: Syncer, worker: Worker, left: list[Change], in_flight: int) -> None:
    """Log what a closing sender leaves unsent; without a spool to keep them, dead-letter
    the changes still queued (failed, not sent, retryable)."""
    count = sum(units(c) for c in left)
    if worker.spool is not None:
        log.warning(
            "closing with %d change(s) unsent and %d in flight: kept in the spool %s, "
            "sent by the next sender on it",
            count,
            in_flight,
            worker.spool.path,
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
    reason = "not sent: the sender closed before its turn"
    for kind, changes in by_kind(left):
        records = [c.record for c in changes]
        outcomes = fail_window(syncer, kind, records, "interrupted", reason)
        worker.finish(changes, outcomes, sent=False)


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
        _check_settings(
            syncer, flush_interval, flush_at, max_queue, on_full, max_retry_time, sync_mode, spool
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
        self._reset()
        reset_after_fork(self)
        _LIVE.add(self)
        if self.spool is not None:  # what a stopped process left in the spool goes first
            with self._worker.cond:
                self._worker.start()

    def _reset(self, closed: bool = False) -> None:
        """This process's queue and worker (afresh in a forked child: the parent's queue is
        the parent's to send)."""
        self._worker = Worker(
            self, _SEAMS, telemetry=self._telemetry, spool=self.spool, closed=closed
        )
        self._cond = self._worker.cond
        self._intake = Intake(self._worker)

    def _after_fork(self) -> None:
        self._reset(self._worker.closed)

    def __repr__(self) -> str:
        spool = f", spool={str(self.spool.path)!r}" if self.spool is not None else ""
        outstanding = self._worker.outstanding
        return f"BackgroundSender(flush_at={self.flush_at}, outstanding={outstanding}{spool})"

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._worker.closed

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
        keyed, reasons = _keyed(kind, records)
        queued = self._submit(keyed, timeout, receipt, receipt_ttl)
        if queued is None:
            return None  # a redelivery: its refused records are in the dead letter already
        return self._with_refused(kind, records, queued, reasons)

    def _with_refused(
        self, kind: Kind, records: list[Any], queued: list[Submission], reasons: dict[int, str]
    ) -> list[Submission]:
        """One submission per record, in order: the queued ones and the refused ones."""
        refused = {n: self._refused(kind, records[n], reason) for n, reason in reasons.items()}
        out = iter(queued)
        return [refused[n] if n in refused else next(out) for n in range(len(records))]

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
        if self.spool is None or self.closed or self.sync_mode:
            return [_submit_many_or_error(self, *group, timeout) for group in groups]
        prepared = [_keyed(kind, records) for kind, records, _, _ in groups]
        waiters = self._intake.worker.waiters
        admissions = _admissions(groups, prepared, self.order, waiters, contexts)
        admitted = self._intake.admit_groups(admissions, timeout=timeout)
        results: list[list[Submission] | Exception | None] = []
        for (kind, records, _, _), (_, reasons), admission, answer in zip(
            groups, prepared, admissions, admitted, strict=True
        ):
            if isinstance(answer, Exception):
                results.append(answer)
            elif not answer:
                results.append(None)  # a redelivery
            else:
                results.append(self._with_refused(kind, records, admission.submissions, reasons))
        return results

    def _refused(self, kind: Kind, record: Any, reason: str) -> Submission:
        """A change refused before queueing: failed at once (stage validation), and in the
        dead letter like any failed record."""
        submission = Submission(kind, None)
        outcome = fail_window(self.syncer, kind, [record], "validation", reason, retryable=False)
        submission.record_id = outcome[0].record_id
        submission._settle(outcome[0])
        with self._cond:
            self._worker.counts["received"] += 1
            self._worker.counts["failed"] += 1
        return submission

    def _submit(
        self,
        changes: list[tuple[Kind, str, str]],
        timeout: float | None,
        receipt: str | None = None,
        receipt_ttl: float = RECEIPT_TTL,
    ) -> list[Submission] | None:
        """Queue ``(kind, member key, record JSON)`` changes (and spool them, with a spool)."""
        if self.closed:
            raise ConfigurationError("this BackgroundSender is closed")
        intake = self._intake
        seqs = iter(_stamp(self.order, len(changes)))
        context = Telemetry.capture()
        admission = _admission(changes, seqs, intake.worker.waiters, receipt, receipt_ttl, context)
        if self.sync_mode:
            with self._cond:
                if intake.receipts.seen(receipt, receipt_ttl):
                    return None
                intake.receipts.remember(receipt)
            return _send_now(intake.worker, admission.rows, admission.records, context)
        return admission.submissions if intake.admit(admission, timeout=timeout) else None

    # --- flushing, closing, stats ---------------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:
        """Send everything queued now, without waiting for windows to fill; return True
        when nothing is left outstanding, False if ``timeout`` ran out first."""
        worker = self._worker
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            if self.spool is not None or worker.outstanding:
                worker.start()  # a forked child's first call, or a spool's backlog
            worker.flushing += 1
            self._cond.notify_all()
            try:
                while worker.outstanding or worker.loading():
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        return False
                    self._cond.wait(left if left is not None else 1.0)
                return True
            finally:
                worker.flushing -= 1

    def close(self, timeout: float | None = None) -> None:
        """Flush (within ``timeout``), then stop the worker; the sender then refuses
        submissions. What could not be sent stays in the spool, or without one goes to the
        dead letter (failed, not sent, retryable). The Syncer and client stay yours."""
        if self.closed:
            return
        done = self.flush(timeout)
        worker = self._worker
        worker.closed = True
        with self._cond:
            worker.closing = True
            left = worker.queue.clear() if not done else []
            in_flight = worker.in_flight
            self._cond.notify_all()
        thread = worker.thread
        if done and thread is not None:
            thread.join(timeout)
        if left or in_flight:
            _report_unsent(self.syncer, self._worker, left, in_flight)
        if self.spool is not None and (thread is None or not thread.is_alive()):
            self.spool.close()
        _LIVE.discard(self)

    def _at_exit(self) -> None:
        worker = self._worker
        if not self.closed and (worker.outstanding or worker.thread is not None):
            self.close(self.exit_timeout)

    def stats(self) -> SenderStats:
        """What this sender did so far, in this process."""
        worker = self._worker
        with self._cond:
            counts = worker.counts
            return SenderStats(
                received=counts["received"],
                queued=worker.outstanding - worker.in_flight,
                in_flight=worker.in_flight,
                succeeded=counts["succeeded"],
                failed=counts["failed"],
                skipped=counts["skipped"],
                requests=counts["requests"],
                rate_limit_waits=counts["rate_limit_waits"],
                refreshed=counts["refreshed"],
                refresh_failed=counts["refresh_failed"],
                rate_limit_wait=worker.rate_limit_wait,
                requests_by_status=dict(sorted(worker.statuses.items())),
            )


def _keyed(
    kind: Literal["member", "event"], records: list[Any]
) -> tuple[list[tuple[Kind, str, str]], dict[int, str]]:
    """``(kind, member key, record JSON)`` for each record that can be queued, and the reason
    for each one that cannot (by position): no id, or not JSON-like."""
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
    return keyed, reasons


def _stamp(order: RedisOrder | None, count: int) -> list[int]:
    """Order sequence numbers for ``count`` changes (0: no cross-process order)."""
    if order is None or not count:
        return [0] * count
    try:
        return order.stamp(count)
    except order.errors as exc:
        log.warning("Redis unreachable (%s): %d change(s) sent without cross-process order",
                    exc, count, extra=log_fields("sender", count=count))  # fmt: skip
        return [0] * count


def _admissions(
    groups: list[tuple[Literal["member", "event"], list[Any], str | None, float | None]],
    prepared: list[tuple[list[tuple[Kind, str, str]], dict[int, str]]],
    order: RedisOrder | None,
    waiters: Waiters,
    contexts: list[Any] | None,
) -> list[Admission]:
    """Each webhook's group, ready for the intake: spool rows (order stamps taken at once:
    one INCRBY), parsed records, submissions, receipt and trace."""
    seqs = iter(_stamp(order, sum(len(keyed) for keyed, _ in prepared)))
    traces = contexts if contexts is not None else [None] * len(groups)
    return [
        _admission(keyed, seqs, waiters, receipt, ttl, trace)
        for (keyed, _), (_, _, receipt, ttl), trace in zip(prepared, groups, traces, strict=True)
    ]


def _admission(
    keyed: list[tuple[Kind, str, str]],
    seqs: Iterator[int],
    waiters: Waiters,
    receipt: str | None,
    receipt_ttl: float | None,
    context: Any,
) -> Admission:
    """One group of changes, ready for the intake: spool rows (with their order stamps), the
    records parsed before any lock is taken, one submission each, receipt and trace."""
    return Admission(
        [(kind, key, text, next(seqs)) for kind, key, text in keyed],
        [json.loads(text) for _, _, text in keyed],
        [Submission(kind, key, waiters) for kind, key, _ in keyed],
        receipt,
        RECEIPT_TTL if receipt_ttl is None else receipt_ttl,
        context,
    )


def _submit_many_or_error(
    sender: BackgroundSender,
    kind: Literal["member", "event"],
    records: list[Any],
    receipt: str | None,
    receipt_ttl: float | None,
    timeout: float | None,
) -> list[Submission] | Exception | None:
    """``sender.submit_many``'s answer, or the exception it raised (one group of several)."""
    try:
        return sender.submit_many(
            kind, records, receipt=receipt, receipt_ttl=receipt_ttl, timeout=timeout
        )
    except Exception as exc:
        return exc
