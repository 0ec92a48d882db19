"""Record accounting: one outcome per input record.

A :class:`Tally` is the accounting of one sync call. Records enter it through its pre-step
(:meth:`Tally.admitted`, where unreadable lines and records an earlier run settled end at
once) and leave it through exactly one of: :meth:`Tally.fail`, :meth:`Tally.skip`, or
:meth:`Tally.open` (sent), which :meth:`Tally.settle` ends from the batch outcomes. Whatever
is still open when the run stops is failed as interrupted (:meth:`Tally.close_open`), and
the report refuses to add up otherwise. Nothing here does I/O except through the sinks it
is given. What it hands back, the report and its parts, is :mod:`.report`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

import attrs

from .._build.batching import ATTRIBUTES, BatchOutcome, Item
from .._build.records import change_id
from .._telemetry import log_fields
from ..exceptions import CoercionError, short_repr
from .checkpoint import Settled
from .deadletter import DeadLetterEntry, DeadLetterObject, DeadLetterSink, Outcome
from .input import BadInput
from .report import (
    DroppedField,
    FieldProblem,
    Progress,
    RecordFailure,
    RecordOutcome,
    Stage,
    SyncReport,
    by_index,
    field_counts,
    outcomes_of,
)

__all__ = [
    "CLEAR_GUARD_FROM",
    "ClearGuard",
    "Tally",
    "fingerprint",
    "is_mass_clear",
    "record_view",
]

log = logging.getLogger("antavo_braze.sync")

_PROGRESS_EVERY = 0.5  # seconds between progress callbacks
CLEAR_GUARD_FROM = 100  # the mass-clear guard judges from this many members on


def is_mass_clear(seen: int, cleared: int, max_ratio: float | None) -> bool:
    """Whether clearing a field in ``cleared`` of the ``seen`` members so far is a mass
    clear: judged from the 100th member on, more than ``max_ratio`` of them (``None``: never)."""
    return max_ratio is not None and seen >= CLEAR_GUARD_FROM and cleared > max_ratio * seen


class ClearGuard:
    """The mass-clear guard of one run: counts, per clearing field, the members it would
    clear; once a field is a mass clear (:func:`is_mass_clear`) it is ``stopped`` and no
    more of it is cleared. Until the guard can judge (100 members), the caller holds the
    records back (:attr:`holding`)."""

    __slots__ = ("cleared", "max_ratio", "seen", "stopped")

    def __init__(self, max_ratio: float | None) -> None:
        self.max_ratio = max_ratio
        self.seen = 0
        self.cleared: Counter[str] = Counter()
        self.stopped: dict[str, tuple[int, int]] = {}  # field: (cleared, seen) when stopped

    @property
    def holding(self) -> bool:
        """Whether records must wait: the guard cannot judge yet."""
        return self.max_ratio is not None and self.seen < CLEAR_GUARD_FROM

    def observe(self, fields: Iterable[str]) -> None:
        """One more member, which would clear ``fields``."""
        self.seen += 1
        for name in fields:
            self.cleared[name] += 1
        if self.seen < CLEAR_GUARD_FROM:
            return
        for name, count in self.cleared.items():
            if name not in self.stopped and is_mass_clear(self.seen, count, self.max_ratio):
                self.stopped[name] = (count, self.seen)
                log.warning(
                    "stopped clearing %s: %d of the first %d members would have lost it",
                    name,
                    count,
                    self.seen,
                )


# --- values for dead letters and state --------------------------------------------------------


def _stringify(value: Any, depth: int = 0) -> Any:
    if depth > 64:
        return "..."
    if isinstance(value, Mapping):
        return {str(k): _stringify(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_stringify(v, depth + 1) for v in value]
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return (
            value if value == value and value not in (float("inf"), float("-inf")) else str(value)
        )
    return str(value)


def record_view(record: Any) -> Any:
    """A JSON-ready copy of an input record, for the dead letter."""
    envelope = getattr(record, "envelope", None)
    if callable(envelope):
        return _stringify(envelope())
    fields = getattr(record, "fields", None)
    if fields is not None and hasattr(record, "id"):
        return _stringify({**fields, "id": record.id})
    if isinstance(record, DeadLetterEntry):
        return record.record
    return _stringify(record)


def fingerprint(value: Any, secret: bytes) -> str:
    """A keyed hash of a coerced value: equal hashes mean Braze holds the same value, and the
    store never holds the value itself (emails, birth dates). Canonical JSON first, because
    plain ``==`` would call ``True == 1 == 1.0`` unchanged, which Braze does not."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hmac.new(secret, text.encode(), hashlib.sha256).hexdigest()[:32]


def _record_key(item: Item) -> str | None:
    """The record id an item stands for (``None`` for profiles without an external_id)."""
    return None if item.key.startswith("\x00") else item.key


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _problem(exc: CoercionError) -> FieldProblem:
    return FieldProblem(exc.field or "?", short_repr(exc.value), exc.plain_reason())


def _objects(items: Iterable[Item]) -> tuple[DeadLetterObject, ...]:
    return tuple(DeadLetterObject(item.array, item.json()) for item in items)  # type: ignore[arg-type]


class _Parts:
    """A record with several objects while some are unanswered: its input record and items,
    how many are still out, the failed ones, the first failure, and whether an event or
    purchase may have been recorded twice."""

    __slots__ = ("done", "failed", "failure", "items", "record", "remaining", "unknown")

    def __init__(self, record: Any, items: tuple[Item, ...]) -> None:
        self.record = record
        self.items = items
        self.remaining = len(items)
        self.done: list[Item] = []
        self.failed: list[Item] = []
        self.failure: tuple[str, str, bool, Outcome] | None = None
        self.unknown = False


class Tally:
    """The tally of one sync call (see the module docstring)."""

    def __init__(
        self,
        kind: str,
        *,
        sink: DeadLetterSink | None,
        progress: Callable[[Progress], None] | None = None,
        total: int | None = None,
        line_of: Callable[[int], int | None] | None = None,
        fresh: bool = False,
        field_names: tuple[tuple[str, str, bool], ...] = (),
        event_arrays: bool = False,
        max_clear_ratio: float | None = None,
    ) -> None:
        self.kind = kind
        self.sink = sink
        self.progress = progress
        self.expected = total
        self.line_of = line_of
        self.fresh = fresh  # no code of the caller runs between two input records
        self.total = self.succeeded = self.failed = self.skipped = 0
        self.failures: list[RecordFailure] = []
        self.dropped: list[DroppedField] = []
        self.warnings: list[str] = []
        self.skip_reasons: Counter[str] = Counter()
        self.attribute_values = 0
        self.saved = 0
        self.possible_duplicates = 0
        self.requests = 0
        self.started = time.perf_counter()
        self.next_progress = self.started + _PROGRESS_EVERY
        # Records whose objects are in flight carry themselves (Item.source); only records
        # with several objects are kept here until their last answer.
        self.parts: dict[int, _Parts] = {}
        self.states: dict[int, tuple[str, dict[str, str]]] = {}
        self.state_updates: list[tuple[str, dict[str, str]]] = []
        # The event ledger: ids of events in flight by position, and those Braze accepted.
        self.sent: dict[int, str] = {}
        self.sent_updates: list[str] = []
        # Field presence (member syncs): absent counts are filled by the compiled plan, one
        # per field, then one per clearing field, then every clear.
        self.count_fields(field_names)
        self.cleared: Counter[str] = Counter()  # nulls sent per remote field
        self.clear_guard = ClearGuard(max_clear_ratio)
        self.invalid: Counter[str] = Counter()
        self.mapped = 0  # member records whose fields were looked at
        self.event_arrays = event_arrays
        # Why each skipped position was skipped, when the caller needs every record's own
        # outcome (the background sender); None on the hot path.
        self.skips: dict[int, str] | None = None
        # Merges and deletes ("as": "merge"/"delete"), applied after the run's track requests.
        self.identities: list[Any] = []
        self.merged = self.deleted = 0
        # An event run that also carries members (the sender's refresh from Antavo): the
        # positions from here on are members.
        self.members_from: int | None = None

    # --- entering and leaving ------------------------------------------------------------

    def admitted(self, records: Iterable[Any], start: int = 0) -> Iterator[tuple[int, Any]]:
        """``(position, record)`` of the records a builder should see: an unreadable line
        (:class:`BadInput`) and a record an earlier run settled (:class:`Settled`, a resume)
        end here, once, before any builder sees them."""
        for pair in enumerate(records, start):  # the pair itself goes on: the hot path
            self.total += 1  # entered: it leaves through exactly one outcome
            cls = type(pair[1])
            if cls is not BadInput and cls is not Settled:
                yield pair
                continue
            position, record = pair
            if cls is BadInput:
                self.fail(position, record, None, "input", record.reason, line=record.line)
            else:
                self.skip(position, record.reason)

    def open(self, position: int, record: Any, items: tuple[Item, ...]) -> tuple[Item, ...]:
        """A record's objects, about to be batched (sent: settled by the batch outcomes):
        each carries its record (for the dead letter); a record with several objects is kept
        until its last answer."""
        items = tuple(item._replace(source=record) for item in items)
        if len(items) > 1:
            self.parts[position] = _Parts(record, items)
        return items

    def fail_unsent(self, position: int, record: Any, wire: dict[str, Any]) -> None:
        """A member's attributes object that was built but never sent (the run stopped)."""
        self.fail(
            position, record, wire["external_id"], "interrupted", "interrupted before it was sent",
            retryable=True, outcome="not_sent",
            objects=(DeadLetterObject(ATTRIBUTES, wire),),  # type: ignore[arg-type]
        )  # fmt: skip

    def fail_unread(self, records: Sequence[Any], reason: str) -> None:
        """Fail as not sent the records a stopped run never read (a sender's window)."""
        for position in range(self.total, len(records)):
            record = records[position]
            self.total += 1
            self.fail(
                position, record, change_id(self.kind, record), "interrupted", reason,
                retryable=True, outcome="not_sent",
            )  # fmt: skip

    def count_fields(self, field_names: tuple[tuple[str, str, bool], ...]) -> None:
        """Count field presence for these member fields (a run that also carries members)."""
        self.field_names = field_names
        clearing = sum(clears for _, _, clears in field_names)
        self.absent = [0] * (len(field_names) + clearing + (1 if clearing else 0))

    def line(self, position: int) -> int | None:
        return None if self.line_of is None else self.line_of(position)

    def skip(self, position: int, reason: str) -> None:
        self.skipped += 1
        self.skip_reasons[reason] += 1
        if self.skips is not None:
            self.skips[position] = reason
        self.tick()

    def fail(
        self,
        position: int,
        record: Any,
        record_id: str | None,
        stage: Stage,
        reason: str,
        *,
        retryable: bool = False,
        outcome: Outcome = "failed",
        objects: tuple[DeadLetterObject, ...] = (),
        problems: tuple[FieldProblem, ...] = (),
        line: int | None = None,
    ) -> None:
        self.failed += 1
        first = problems[0] if problems else None
        failure = RecordFailure(
            position, record_id, stage, reason, retryable,
            None if first is None else first.field, None if first is None else first.value,
            self.line(position) if line is None else line, outcome, problems,
        )  # fmt: skip
        self.failures.append(failure)
        if self.sink is not None:
            self.sink.write(_dead_letter_entry(self, failure, record, objects))
        self.tick()

    def fail_invalid(
        self, position: int, record: Any, record_id: str | None, problems: list[CoercionError]
    ) -> None:
        """A record refused before sending: every bad field listed, stage validation."""
        found = tuple(_problem(exc) for exc in problems)
        for problem in found:
            self.invalid[problem.field] += 1
        if len(found) == 1:
            reason = (
                f"{found[0].field}: {found[0].reason}" if found[0].field != "?" else found[0].reason
            )
        else:
            reason = f"{len(found)} invalid fields: " + "; ".join(
                f"{p.field}: {p.reason}" for p in found
            )
        self.fail(position, record, record_id, "validation", reason, problems=found)

    def drop(self, position: int, record_id: str | None, problems: list[CoercionError]) -> None:
        for exc in problems:
            problem = _problem(exc)
            self.invalid[problem.field] += 1
            self.dropped.append(
                DroppedField(position, record_id, problem.field, problem.value, problem.reason)
            )

    # --- settling from Braze's answers ----------------------------------------------------

    def settle(self, outcome: BatchOutcome) -> None:
        """Settle the records whose last objects were in ``outcome``'s batch."""
        self.warnings.extend(outcome.warnings)
        clean = outcome.error is None and not outcome.rejected
        duplicated = clean and outcome.unknown and self.event_arrays
        items = outcome.batch.items
        if clean and not duplicated and not self.parts and not self.states and not self.sent:
            # Every object accepted, each its own record, nothing to remember: count them.
            self.succeeded += len(items)
            self.attribute_values += sum([item.values for item in items])
            self.tick()
            return
        succeeded = values = 0  # counted here, added once
        for number, item in enumerate(items):
            failure = None if clean else outcome.failure(number)
            if item.parts == 1:
                if failure is not None:
                    self._failed_items(item, outcome, failure)
                    continue
                succeeded += 1
                values += item.values
                if duplicated and item.array != ATTRIBUTES:
                    self.possible_duplicates += 1
                if self.states or self.sent:
                    self._remember(item.record)
                continue
            parts = self.parts[item.record]
            parts.remaining -= 1
            if failure is not None:
                parts.failed.append(item)
                if parts.failure is None:
                    parts.failure = (*failure, outcome.retryable, _fate(outcome))
            else:
                parts.done.append(item)
                parts.unknown = parts.unknown or (outcome.unknown and item.array != ATTRIBUTES)
            if not parts.remaining:
                self._settle_parts(item.record, parts)
        self.succeeded += succeeded
        self.attribute_values += values
        self.tick()

    def _settle_parts(self, position: int, parts: _Parts) -> None:
        del self.parts[position]
        if parts.failure is None:
            self.succeeded += 1
            self.attribute_values += sum(i.values for i in parts.items)
            if parts.unknown and self.event_arrays:
                self.possible_duplicates += 1
            self._remember(position)
            return
        stage, reason, retryable, fate = parts.failure
        self.fail(
            position,
            parts.record,
            _record_key(parts.items[0]),
            stage,  # type: ignore[arg-type]
            reason,
            retryable=retryable,
            outcome=fate,
            objects=_objects(parts.failed),
        )
        self.states.pop(position, None)
        self.sent.pop(position, None)

    def _remember(self, position: int) -> None:
        state = self.states.pop(position, None)
        if state is not None:
            self.state_updates.append(state)
        event_id = self.sent.pop(position, None)
        if event_id is not None:
            self.sent_updates.append(event_id)

    def _failed_items(self, item: Item, outcome: BatchOutcome, failure: tuple[str, str]) -> None:
        stage, reason = failure
        whole = outcome.error is not None  # the request failed, not this object
        self.fail(
            item.record,
            item.source,
            _record_key(item),
            stage,  # type: ignore[arg-type]
            reason,
            retryable=outcome.retryable and whole,
            outcome=_fate(outcome) if whole else "failed",
            objects=_objects([item]),
        )
        self.states.pop(item.record, None)
        self.sent.pop(item.record, None)

    # --- progress and the report ---------------------------------------------------------

    def snapshot(self) -> Progress:
        return Progress(
            done=self.succeeded + self.failed + self.skipped,
            succeeded=self.succeeded,
            failed=self.failed,
            skipped=self.skipped,
            requests=self.requests,
            elapsed=time.perf_counter() - self.started,
            total=self.expected,
        )

    def tick(self, force: bool = False) -> None:
        if self.progress is None:
            return
        now = time.perf_counter()
        if force or now >= self.next_progress:
            self.next_progress = now + _PROGRESS_EVERY
            self.progress(self.snapshot())

    def close_open(self, pending: list[Item], signal_name: str) -> None:
        """Settle as interrupted what was built but never answered: ``pending`` (packed,
        never sent) and every record with several objects still waiting for some."""
        reason = f"interrupted ({signal_name}) before it was sent"
        for item in pending:
            if item.parts == 1:
                key = _record_key(item)
                self.fail(
                    item.record, item.source, key, "interrupted", reason,
                    retryable=True, outcome="not_sent", objects=_objects([item]),
                )  # fmt: skip
        for position in sorted(self.parts):
            parts = self.parts.pop(position)
            left = [i for i in parts.items if not any(i is d for d in parts.done)]
            self.fail(
                position, parts.record, _record_key(parts.items[0]), "interrupted", reason,
                retryable=True, outcome="not_sent", objects=_objects(left),
            )  # fmt: skip
        self.unread()

    def unread(self) -> None:
        """A stopped run: records entered but never built (read ahead, or cut short while
        mapped) leave the tally unread, so the report adds up and a resume reads them again."""
        self.total = self.succeeded + self.failed + self.skipped

    def outcomes(self, count: int) -> list[RecordOutcome]:
        """Each of the first ``count`` records' own outcome (the run kept its skips)."""
        assert self.skips is not None, "outcomes need a run made with skips = {}"
        return outcomes_of(self.failures, self.skips, count)

    def report(self, stats: Any = None, *, requests: int = 0) -> SyncReport:
        """The report of the call; ``stats``: the send loop's ``CallStats`` (``None``: a call
        that sent nothing, ``requests`` it would have made)."""
        if self.parts:  # pragma: no cover - every record sent is settled or closed first
            raise AssertionError(f"records left open: {sorted(self.parts)[:10]}")
        self.tick(force=True)
        _log_warnings(self.kind, self.warnings)
        report = SyncReport(
            total=self.total,
            succeeded=self.succeeded,
            failed=self.failed,
            skipped=self.skipped,
            requests=requests if stats is None else stats.requests,
            failures=tuple(sorted(self.failures, key=by_index)),
            attribute_values=self.attribute_values,
            attribute_values_saved=self.saved,
            warnings=tuple(self.warnings),
            elapsed=time.perf_counter() - self.started,
            fields=field_counts(
                self.field_names, self.absent, self.invalid, self.cleared, self.mapped
            )
            if self.mapped
            else {},
            skipped_by_reason=dict(self.skip_reasons),
            dropped=tuple(self.dropped),
            possible_duplicates=self.possible_duplicates,
            retries=0 if stats is None else stats.retries,
            rate_limit_waits=0 if stats is None else stats.rate_limited,
            rate_limit_wait=0.0 if stats is None else stats.rate_limit_wait,
            requests_by_status={} if stats is None else dict(sorted(stats.statuses.items())),
            merged=self.merged,
            deleted=self.deleted,
            clears_stopped=dict(self.clear_guard.stopped),
        )
        _log_report(self.kind, report)
        return report


def _dead_letter_entry(
    run: Tally, failure: RecordFailure, record: Any, objects: tuple[DeadLetterObject, ...]
) -> DeadLetterEntry:
    """The dead-letter entry of a failed record (a replayed entry carried forward)."""
    fields = {
        "stage": failure.stage,
        "reason": failure.reason,
        "retryable": failure.retryable,
        "outcome": failure.outcome,
        "objects": objects,
        "time": _utc_now(),
        "field": failure.field,
        "value": failure.value,
    }
    if isinstance(record, DeadLetterEntry):  # a replay: carry the original forward
        return attrs.evolve(
            record,
            replays=record.replays + 1,
            replayed_at=None,  # a new failure: the next replay may resend it
            **fields,  # type: ignore[arg-type]
        )
    kind = run.kind if run.kind in ("member", "event", "attributes") else "member"
    if run.members_from is not None and failure.index >= run.members_from:
        kind = "member"  # a member refreshed from Antavo, sent with a window's events
    return DeadLetterEntry(
        kind=kind,  # type: ignore[arg-type]
        index=failure.index,
        record_id=failure.record_id,
        record=record_view(record),
        line=failure.line,
        **fields,  # type: ignore[arg-type]
    )


def _fate(outcome: BatchOutcome) -> Outcome:
    if outcome.not_sent:
        return "not_sent"
    if outcome.error is not None and outcome.unknown:
        return "unknown"
    return "failed"


def _log_report(kind: str, report: SyncReport) -> None:
    """One log line per call, with its counts as structured fields."""
    log.info(
        "%s sync: %s",
        kind,
        report.summary(),
        extra=log_fields(
            "sync",
            kind=kind,
            total=report.total,
            succeeded=report.succeeded,
            failed=report.failed,
            skipped=report.skipped,
            requests=report.requests,
            elapsed=round(report.elapsed, 3),
        ),
    )


def _log_warnings(kind: str, warnings: list[str]) -> None:
    """Braze's errors that named no object: one warning for the call."""
    if warnings:
        log.warning(
            "Braze reported %d error(s) it did not attribute to an object, e.g. %s",
            len(warnings),
            warnings[0],
            extra=log_fields("sync", kind=kind, count=len(warnings)),
        )
