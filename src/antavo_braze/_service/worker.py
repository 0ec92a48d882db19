"""The background sender's worker thread, in the shape of posthog's consumer: ``run`` loops
over ``next`` (wait for a window and take it), ``send`` (one Syncer call per kind) and
``finish`` (settle what is final; the rest is tried again later). It owns the queue and the
counters the facade (:class:`~antavo_braze.BackgroundSender`) and ``intake.py`` share with it
under one lock (``cond``); when a window goes and what it takes are decided by the pure
functions of ``window.py``.

This layer sits below the Syncer: the Syncer's window functions come in as :class:`Seams`,
and the sender's settings are read through :class:`Settings`.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal, Protocol

import attrs
from attrs import frozen

from .._build.records import event_id
from .._run.deadletter import DeadLetterEntry, DeadLetterSink
from .._run.report import RecordOutcome, Stage, failure_groups
from .._telemetry import log_fields
from ..exceptions import (
    AntavoBrazeError,
    AuthenticationError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    TransportError,
)
from .spool import Spool
from .window import (
    Change,
    ChangeQueue,
    Kind,
    Send,
    by_kind,
    decide_retries,
    next_step,
    pause_before,
    plan_window,
    units,
)

if TYPE_CHECKING:
    from .._antavo.client import AntavoClient
    from .._run.report import SyncReport
    from .._scale.redis import RedisOrder
    from .._sync import Syncer
    from .._telemetry import Telemetry

__all__ = ["HeldLetters", "Seams", "Settings", "Waiters", "Worker", "read_members"]

log = logging.getLogger("antavo_braze.sender")

ORPHAN_CHECK = 10.0  # seconds between looks for spooled rows of processes that died
REFRESH_THREADS = 8  # members read from Antavo at once (antavo=)
COUNTS = (
    "received", "succeeded", "failed", "skipped", "requests", "rate_limit_waits", "refreshed",
    "refresh_failed",
)  # fmt: skip


@frozen
class Seams:
    """The Syncer's package-level window functions (``sync_window``,
    ``sync_events_with_members``, ``fail_window``), each taking the Syncer first."""

    sync_window: Callable[..., tuple[SyncReport, list[RecordOutcome]]]
    sync_events_with_members: Callable[
        ..., tuple[SyncReport, list[RecordOutcome], list[RecordOutcome]]
    ]
    fail_window: Callable[..., list[RecordOutcome]]


class Waiters:
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


class HeldLetters:
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


class Settings(Protocol):
    """What the worker reads of its sender (the facade), each time it needs it: a caller
    may tune a running sender."""

    syncer: Syncer
    flush_interval: float
    flush_at: int
    max_queue: int
    max_retry_time: float
    on_full: Literal["block", "raise"]
    antavo: AntavoClient | None
    order: RedisOrder | None


class SpoolBacklog:
    """A spool's rows not yet in memory (a restart's, a dead process's, adopted orphans').
    While ``pending``, new submissions wait on disk too (``waiting``) and are loaded in id
    order with the rest, so that order holds."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self.pending = False
        self.cursor = 0  # the last spool id looked at in this pass over the backlog
        self.known: set[int] = set()  # spool ids queued or in flight
        self.waiting: dict[int, Any] = {}  # spool id -> its Submission, until loaded
        self.orphans_checked = 0.0
        self.writing = 0  # submits writing to the spool outside the lock (group commit)

    def adopt(self) -> None:
        if self.writing:
            return  # rows being written now must not be loaded as a backlog: next time
        self.orphans_checked = time.monotonic()
        adopted = self.spool.adopt_orphans()
        if adopted:
            log.warning(
                "spool %s: sending %d change(s) a stopped process left unsent",
                self.spool.path,
                adopted,
                extra=log_fields("sender", count=adopted),
            )
            self.pending = True
            self.cursor = 0

    def load(self, room: int) -> tuple[list[Change], int, bool]:
        """Up to ``room`` spooled rows as changes, in id order; how many of them this run did
        not submit (a restart's, an orphan's); and whether the backlog is now all loaded."""
        if time.monotonic() - self.orphans_checked > ORPHAN_CHECK:
            self.adopt()
        if not self.pending or room <= 0:
            return [], 0, False
        rows = self.spool.load(self.cursor, room)
        loaded = []
        strangers = 0
        for spool_id, kind, key, record, seq in rows:
            self.cursor = spool_id
            if spool_id in self.known:
                continue
            submission = self.waiting.pop(spool_id, None)
            strangers += submission is None
            change = Change(kind, key, json.loads(record), submission, seq)  # type: ignore[arg-type]
            change.spool_ids.append(spool_id)
            self.known.add(spool_id)
            loaded.append(change)
        if len(rows) < room:
            self.pending = False
            self.cursor = 0
            return loaded, strangers, True
        return loaded, strangers, False


class Worker:
    """One process's queue and the thread that sends it (see the module documentation).
    The facade reads and writes ``queue``, ``outstanding`` (accepted and not settled:
    queued, spooled backlog, in flight), ``in_flight``, ``flushing``, ``closing``, ``closed``,
    ``backlog`` and ``counts`` holding ``cond``."""

    def __init__(
        self,
        settings: Settings,
        seams: Seams,
        *,
        telemetry: Telemetry,
        spool: Spool | None = None,
        closed: bool = False,
    ) -> None:
        self.settings, self.syncer, self.seams = settings, settings.syncer, seams
        self.telemetry, self.spool = telemetry, spool
        self.cond = threading.Condition()
        self.queue = ChangeQueue()
        self.outstanding = 0
        self.in_flight = 0
        self.flushing = 0
        self.closing = False
        self.closed = closed
        self.thread: threading.Thread | None = None
        self.paused_until = 0.0  # no window goes before (Braze failed the last one)
        self.waiters = Waiters(self.wake)
        self.backlog = SpoolBacklog(spool) if spool is not None else None
        self.counts = dict.fromkeys(COUNTS, 0)
        self.rate_limit_wait = 0.0
        self.statuses: Counter[str] = Counter()

    def wake(self) -> None:
        """A caller started waiting for an outcome: the worker looks at its window's time."""
        with self.cond:
            self.cond.notify_all()

    def start(self) -> None:
        """Start the thread (lock held); with a spool, first take over the rows of processes
        that no longer run, and send this owner's rows first."""
        if self.thread is not None and self.thread.is_alive():
            return
        if self.backlog is not None and not self.backlog.writing:
            self.backlog.adopt()
            self.backlog.pending = True
        self.thread = threading.Thread(target=self.run, name="antavo-braze-sender", daemon=True)
        self.thread.start()

    # --- run -> next -> send -> finish ---------------------------------------------------

    def run(self) -> None:
        while True:
            try:
                with self.cond:
                    window = self.next()
            except Exception:  # the spool could not be read: try again, never stop
                log.exception("the background sender could not load its spool")
                time.sleep(1.0)
                continue
            if window is None:
                return
            again = self.send(window)
            if again:
                self.retry_later(again)

    def next(self) -> list[Change] | None:
        """Wait for a window's worth of changes (or its time) and take them (lock held);
        None once closing with nothing left."""
        while True:
            self.refill()
            if not self.queue:
                if self.closing or self.closed:
                    return None
                self.cond.wait(ORPHAN_CHECK)
                continue
            step = next_step(
                self.queue,
                now=time.monotonic(),
                flush_interval=self.settings.flush_interval,
                flush_at=self.settings.flush_at,
                paused_until=self.paused_until,
                lingering=bool(self.waiters.count),
                flushing=bool(self.flushing),
                closing=self.closing,
            )
            if isinstance(step, Send):
                return self.take(step.whole_requests_only)
            self.cond.wait(step.seconds)

    def take(self, whole_requests_only: bool) -> list[Change]:
        """Take the next window off the queue (lock held)."""
        client = self.syncer.client
        assert client is not None
        cap = self.settings.flush_at * client.max_in_flight
        plan = plan_window(
            self.queue,
            flush_at=self.settings.flush_at,
            cap=cap,
            whole_requests_only=whole_requests_only,
        )
        window = self.queue.take(plan)
        self.in_flight += sum(units(c) for c in window)
        return window

    def refill(self) -> None:
        """Load spooled rows in id order while there is a backlog (lock held)."""
        if self.backlog is None:
            return
        loaded, strangers, drained = self.backlog.load(self.settings.max_queue - len(self.queue))
        self.outstanding += strangers
        for change in loaded:
            self.queue.push(change)
        if drained:
            self.cond.notify_all()

    def loading(self) -> bool:
        """Whether spooled rows wait to be loaded (lock held)."""
        return self.backlog is not None and self.backlog.pending

    def retry_later(self, changes: list[Change]) -> None:
        """Put changes a window failed for now back at the head of the queue (they are the
        oldest), and hold every window back for the backoff."""
        delay = pause_before(changes)
        if any(c.attempts for c in changes):
            log.warning(
                "Braze failed %d change(s) for now; trying again in %.1fs (each for up to %.0fs)",
                len(changes),
                delay,
                self.settings.max_retry_time,
            )
        with self.cond:
            self.in_flight -= sum(units(c) for c in changes)
            self.queue.push_front(changes)
            self.paused_until = time.monotonic() + delay
            self.cond.notify_all()

    def send(self, window: list[Change]) -> list[Change]:
        """Send a window, one Syncer call per kind, and settle what is final; return the
        changes to try again later."""
        self.telemetry.watch(self.settings)  # a provider the application set since
        with self.telemetry.window([c.context for c in window], sum(units(c) for c in window)):
            again: list[Change] = []
            members: list[dict[str, Any]] | None = None
            for kind, taken in by_kind(window):
                changes = self.claim(kind, taken, again)
                if not changes:
                    continue
                if kind == "event" and self.settings.antavo is not None and members is None:
                    members = self.refresh(
                        changes, self.settings.antavo
                    )  # Antavo's rule, once a window
                held = HeldLetters()
                refreshed = (members or []) if kind == "event" else []
                outcomes, retry = self.send_kind(kind, changes, held, refreshed)
                release(self.settings.order, kind, changes, outcomes)
                again.extend(self.settle(kind, changes, outcomes, held, retry=retry))
            return again

    def claim(self, kind: Kind, changes: list[Change], later: list[Change]) -> list[Change]:
        """The changes this process may send now (all, without a :class:`RedisOrder`); those
        to try later go into ``later``, superseded ones are skipped."""
        if self.settings.order is None:
            return changes
        send, wait, stale = claim(self.settings.order, kind, changes)
        later.extend(wait)
        if stale:
            reason = "superseded: another process sent a newer change of this member"
            self.finish(stale, [RecordOutcome("skipped", c.key, reason) for c in stale])
        return send

    def send_kind(
        self,
        kind: Kind,
        changes: list[Change],
        held: HeldLetters,
        refreshed: list[dict[str, Any]],
    ) -> tuple[list[RecordOutcome], bool]:
        """Each change's outcome (failures written to ``held``), and whether failures that
        may pass can be tried again (not when the credentials were refused). ``refreshed``:
        the members read from Antavo for these events, sent in the same requests; each fails
        alone, straight into the dead letter (a later window reads them again)."""
        records = [c.record for c in changes]
        try:
            if refreshed:
                report, outcomes, member_outcomes = self.seams.sync_events_with_members(
                    self.syncer, records, refreshed, hold=held
                )
                positions = set(range(len(records), len(records) + len(refreshed)))
                held.forward(self.syncer.dead_letter, positions)
                self.count_refresh(member_outcomes)
            else:
                report, outcomes = self.seams.sync_window(self.syncer, kind, records, hold=held)
        except Exception as exc:
            stage, reason, retryable, retry = why_unsent(exc, kind, len(records))
            error = exc if isinstance(exc, AntavoBrazeError) else None
            failed = self.fail_window(
                kind, records, refreshed, stage, reason, held, error, retryable=retryable
            )
            return failed, retry
        with self.cond:
            self.counts["requests"] += report.requests
            self.counts["rate_limit_waits"] += report.rate_limit_waits
            self.rate_limit_wait += report.rate_limit_wait
            self.statuses.update(report.requests_by_status)
        return outcomes, True

    def settle(
        self,
        kind: Kind,
        changes: list[Change],
        outcomes: list[RecordOutcome],
        held: HeldLetters,
        *,
        retry: bool,
    ) -> list[Change]:
        """Finish the changes whose outcome is final (their failures into the dead letter);
        return those to try again (failed for now, and younger than ``max_retry_time``)."""
        retries = decide_retries(
            kind,
            changes,
            outcomes,
            now=time.monotonic(),
            max_retry_time=self.settings.max_retry_time,
            retry=retry,
            closed=self.closed,
        )
        again = [changes[p] for p in retries.again]
        for change in again:
            change.attempts += 1
        try:
            held.forward(self.syncer.dead_letter, set(retries.final))
        except Exception:  # a full disk must not stop the sender: the outcomes still say it
            log.exception("failed changes could not be written to the dead letter")
        self.finish([changes[p] for p in retries.final], [outcomes[p] for p in retries.final])
        if retries.kept:  # closed: the next sender on the spool tries them again
            kept = [changes[p] for p in retries.kept]
            with self.cond:
                count = sum(units(c) for c in kept)
                self.outstanding -= count
                self.in_flight -= count
                self.forget(kept)
                self.cond.notify_all()
        return again

    def forget(self, changes: list[Change]) -> None:
        if self.backlog is not None:
            self.backlog.known.difference_update(i for c in changes for i in c.spool_ids)

    def fail_window(
        self,
        kind: Kind,
        records: list[Any],
        members: list[Any],
        stage: Stage,
        reason: str,
        held: HeldLetters,
        error: BaseException | None = None,
        *,
        retryable: bool = True,
    ) -> list[RecordOutcome]:
        """Fail a window that could not be sent: its records into ``held``, the members
        refreshed for it straight into the dead letter. A run a fatal error stopped has
        settled each record already (``error._outcomes``): those outcomes stand."""
        if members:
            self.count_refresh(
                self.seams.fail_window(self.syncer, "member", members, stage, reason)
            )
        settled = getattr(error, "_outcomes", None)
        if settled is not None and not members and len(settled) == len(records):
            return list(settled)
        return self.seams.fail_window(
            self.syncer, kind, records, stage, reason, retryable=retryable, hold=held
        )

    def count_refresh(self, outcomes: list[RecordOutcome]) -> None:
        with self.cond:
            for outcome in outcomes:
                self.counts["refresh_failed" if outcome.status == "failed" else "refreshed"] += 1

    def refresh(self, window: list[Change], antavo: AntavoClient) -> list[dict[str, Any]]:
        """Antavo's rule: read each member with events in ``window`` once (the customer
        objects to send with the events); a member Antavo cannot give fails alone, now
        (stage ``antavo``, retryable), and its events still go."""
        found, missing = read_members(window, antavo)
        for member_id, reason in missing:
            log.warning("could not read member %s from Antavo: %s", member_id, reason)
            failed = self.seams.fail_window(
                self.syncer,
                "member",
                [{"id": member_id}],
                "antavo",
                f"refresh from Antavo: {reason}",
            )
            self.count_refresh(failed)
        return found

    def finish(
        self, changes: list[Change], outcomes: list[RecordOutcome], *, sent: bool = True
    ) -> None:
        """Settle ``changes`` (taken in a window, or with ``sent=False`` still queued)."""
        ids = [i for c in changes for i in c.spool_ids]
        if self.spool is not None:
            try:
                self.spool.remove(ids)
            except Exception:  # the outcome stands; the rows are sent again by a next start
                log.exception("spool %s: settled rows could not be removed", self.spool.path)
        settled = 0
        with self.cond:
            if self.backlog is not None:
                self.backlog.known.difference_update(ids)
            for change, outcome in zip(changes, outcomes, strict=True):
                count = units(change)
                settled += count
                self.counts[outcome.status] += count
                if outcome.record_id is None:
                    outcome = attrs.evolve(outcome, record_id=change.key)
                for submission in change.submissions:
                    submission._settle(outcome)
            self.outstanding -= settled
            if sent:
                self.in_flight -= settled
            self.cond.notify_all()
        log_failures(changes, outcomes)


def why_unsent(exc: Exception, kind: str, count: int) -> tuple[Stage, str, bool, bool]:
    """A window that raised ``exc``, logged once: its failures' stage and reason, whether
    they are retryable, and whether this sender tries them again (not when the credentials
    were refused, a setting is wrong, or a bug of ours stopped it)."""
    reason = str(exc)
    if isinstance(exc, AuthenticationError | PermissionDeniedError):
        log.error("Braze refused the credentials; the window is dead-lettered: %s", exc,
                  extra=log_fields("sender", kind=kind, stage="braze", count=count))  # fmt: skip
        return "braze", reason, True, False
    extra = log_fields("sender", kind=kind, stage="transport", count=count)
    if isinstance(exc, TransportError | RateLimitError | ServerError):
        log.warning("a window could not be sent: %s", exc, extra=extra)
        return "transport", reason, True, True
    if isinstance(exc, AntavoBrazeError):  # a closed client, a bad setting: trying again won't do
        log.error("a window could not be sent; it goes to the dead letter: %s", exc, extra=extra)
        return "transport", reason, True, False
    # A bug of ours: never leave a caller waiting for it.
    log.exception("the background sender failed on a window",
                  extra=log_fields("sender", kind=kind, count=count))  # fmt: skip
    return "transport", f"the sender failed: {type(exc).__name__}: {exc}"[:300], False, False


def claim(
    order: RedisOrder, kind: Kind, changes: list[Change]
) -> tuple[list[Change], list[Change], list[Change]]:
    """Ask ``order`` which changes this process may send: those to send now, those to try
    later (another process is sending the member, or Redis is unreachable: they back off
    like an outage) and the stale ones (older member snapshots than one already sent)."""
    members = [(c.key, c.seq if kind == "member" else 0) for c in changes]
    try:
        claims = order.claim(members)
    except order.errors as exc:
        log.warning("Redis unreachable (%s): %d change(s) wait for it", exc, len(changes))
        for change in changes:
            change.attempts += 1
        return [], changes, []
    pairs = list(zip(changes, claims, strict=True))
    return (
        [c for c, claim in pairs if claim == "send"],
        [c for c, claim in pairs if claim == "busy"],
        [c for c, claim in pairs if claim == "stale"],
    )


def release(
    order: RedisOrder | None, kind: Kind, changes: list[Change], outcomes: list[RecordOutcome]
) -> None:
    """End a window's claims (with a :class:`RedisOrder`), recording the member snapshots
    now in Braze."""
    if order is None:
        return
    members = [
        (c.key, c.seq if kind == "member" and o.status == "succeeded" else 0)
        for c, o in zip(changes, outcomes, strict=True)
    ]
    try:
        order.release(members)
    except order.errors as exc:  # the claims lapse after their lease
        log.warning("Redis unreachable (%s): claims lapse after %.0fs", exc, order.lease)


def read_members(
    changes: Sequence[Change], antavo: AntavoClient
) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """The customer objects of the members with events in ``changes``, each read once from
    Antavo (at most ``REFRESH_THREADS`` at a time), and ``(member id, reason)`` for each
    member Antavo could not give."""
    ids = list(
        dict.fromkeys(
            member_id
            for change in changes
            if change.kind == "event" and (member_id := event_id(change.record)) is not None
        )
    )
    if not ids:
        return [], []

    def fetch(member_id: str) -> dict[str, Any] | str:
        try:
            return antavo.customer(member_id)
        except AntavoBrazeError as exc:
            return str(exc)[:300]

    with ThreadPoolExecutor(min(REFRESH_THREADS, len(ids))) as pool:
        found = list(pool.map(fetch, ids))
    missing = [(i, r) for i, r in zip(ids, found, strict=True) if isinstance(r, str)]
    return [m for m in found if isinstance(m, dict)], missing


def log_failures(changes: list[Change], outcomes: list[RecordOutcome]) -> None:
    """One warning per kind of failure in a window (stage, field, reason; never a member's
    id or values: the dead letter has the records)."""
    for kind, same in by_kind(changes):
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
