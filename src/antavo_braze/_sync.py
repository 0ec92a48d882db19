"""The Syncer: mapper + client, streaming, with one outcome per input record.

Every input record ends as exactly one of succeeded, failed (with stage and reason, and in the
dead letter) or skipped. Memory is bounded by batch size times requests in flight.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from collections.abc import Mapping as AbcMapping
from datetime import datetime, timezone
from html import escape
from os import PathLike
from pathlib import Path
from typing import Any, Literal

from attrs import frozen

from ._batching import ARRAYS, ATTRIBUTES, Item
from ._client import BrazeClient, to_item
from ._converter import EXTERNAL_ID, attributes_wire
from ._deadletter import DeadLetterSink, open_sink, read_dead_letters
from ._json import dumps, loads
from ._mapper import Mapper
from ._mapping import Mapping
from ._state import StateStore, fingerprint
from .exceptions import CoercionError, ConfigurationError
from .models import AttributesObject, BrazeObject

__all__ = ["Progress", "RecordFailure", "SyncReport", "Syncer"]

Stage = Literal["validation", "braze", "transport"]
SendMode = Literal["full", "changed"]
_PROGRESS_EVERY = 0.5  # seconds between progress callbacks


@frozen
class RecordFailure:
    """Why one input record failed: its ``index`` in the input, id, ``stage`` and ``reason``."""

    index: int
    record_id: str | None
    stage: Stage
    reason: str
    retryable: bool = False


@frozen
class SyncReport:
    """One outcome per input record. Always ``total == succeeded + failed + skipped``."""

    total: int
    succeeded: int
    failed: int
    skipped: int
    requests: int
    failures: tuple[RecordFailure, ...] = ()
    attribute_values: int = 0  # attribute values Braze accepted (each one a data point)
    attribute_values_saved: int = 0  # unchanged values change detection did not send
    warnings: tuple[str, ...] = ()
    elapsed: float = 0.0

    def __attrs_post_init__(self) -> None:
        if self.total != self.succeeded + self.failed + self.skipped:  # pragma: no cover
            raise AssertionError(f"report does not add up: {self!r}")

    @property
    def ok(self) -> bool:
        """True when no record failed."""
        return self.failed == 0

    def summary(self) -> str:
        """One line: counts, requests and time."""
        rate = f", {self.total / self.elapsed:,.0f} records/s" if self.elapsed > 0 else ""
        return (
            f"{self.total} records: {self.succeeded} succeeded, {self.failed} failed, "
            f"{self.skipped} skipped; {self.requests} requests{rate}"
        )

    def __str__(self) -> str:
        lines = [self.summary()]
        if self.attribute_values_saved:
            lines.append(
                f"change detection left out {self.attribute_values_saved} unchanged attribute "
                f"values ({self.attribute_values} sent)"
            )
        for failure in self.failures[:20]:
            lines.append(
                f"  #{failure.index} {failure.record_id or '?'} [{failure.stage}] {failure.reason}"
            )
        if len(self.failures) > 20:
            lines.append(f"  ... and {len(self.failures) - 20} more failures")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        colour = "green" if self.ok else "firebrick"
        head = f"<p style='color:{colour}'><b>{escape(self.summary())}</b></p>"
        if not self.failures:
            return head
        rows = "".join(
            f"<tr><td>{f.index}</td><td>{escape(f.record_id or '')}</td><td>{f.stage}</td>"
            f"<td>{escape(f.reason)}</td></tr>"
            for f in self.failures[:200]
        )
        return (
            head + "<table><thead><tr><th>index</th><th>record</th><th>stage</th>"
            f"<th>reason</th></tr></thead><tbody>{rows}</tbody></table>"
        )

    def failures_table(self) -> list[dict[str, Any]]:
        """The failures as rows of plain dicts (``pandas.DataFrame(report.failures_table())``)."""
        return [
            {
                "index": f.index,
                "record_id": f.record_id,
                "stage": f.stage,
                "reason": f.reason,
                "retryable": f.retryable,
            }
            for f in self.failures
        ]


@frozen
class Progress:
    """How far a running sync has got (given to the ``progress`` callback)."""

    done: int
    succeeded: int
    failed: int
    skipped: int
    requests: int
    elapsed: float

    @property
    def rate(self) -> float:
        """Records finished per second so far."""
        return self.done / self.elapsed if self.elapsed > 0 else 0.0

    def line(self) -> str:
        """A one-line rendering for terminals."""
        return (
            f"{self.done:,} records ({self.rate:,.0f}/s): {self.succeeded:,} ok, "
            f"{self.failed:,} failed, {self.skipped:,} skipped, {self.requests:,} requests"
        )


class _Pending:
    """One record on its way: its items (all in flight until the last outcome) and its fate."""

    __slots__ = ("attribute_values", "failure", "items", "record", "remaining", "state")

    def __init__(
        self,
        record: Any,
        items: list[Item],
        attribute_values: int = 0,
        state: tuple[str, dict[str, str]] | None = None,
    ) -> None:
        self.record = record
        self.items = items
        self.remaining = len(items)
        self.attribute_values = attribute_values
        self.state = state  # (member id, fingerprints) to store once Braze accepted the record
        self.failure: tuple[str, str, bool] | None = None


# What a build function makes of one record: nothing (skipped) or the record's bookkeeping.
# (The member hot path makes neither: its items carry ``(index, record)`` as their tag.)
Build = Callable[[Any, int, "_Run"], "_Pending | None"]
_new_item = tuple.__new__  # Item(...) without NamedTuple's Python-level __new__: hot path


class _Run:
    """The mutable tally of one sync call."""

    def __init__(self, kind: str, progress: Callable[[Progress], None] | None) -> None:
        self.kind = kind
        self.total = self.succeeded = self.failed = self.skipped = 0
        self.failures: list[RecordFailure] = []
        self.warnings: list[str] = []
        self.attribute_values = 0
        self.saved = 0
        self.started = time.perf_counter()
        self.progress = progress
        self.next_progress = self.started + _PROGRESS_EVERY
        self.requests = 0

    def snapshot(self) -> Progress:
        return Progress(
            done=self.succeeded + self.failed + self.skipped,
            succeeded=self.succeeded,
            failed=self.failed,
            skipped=self.skipped,
            requests=self.requests,
            elapsed=time.perf_counter() - self.started,
        )

    def tick(self, force: bool = False) -> None:
        if self.progress is None:
            return
        now = time.perf_counter()
        if force or now >= self.next_progress:
            self.next_progress = now + _PROGRESS_EVERY
            self.progress(self.snapshot())


def _json_safe(value: Any) -> Any:
    try:
        return loads(dumps(value))
    except (TypeError, ValueError):
        return loads(dumps(_stringify(value)))


def _stringify(value: Any) -> Any:
    if isinstance(value, AbcMapping):
        return {str(k): _stringify(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_stringify(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _record_view(record: Any) -> Any:
    """A JSON-ready form of an input record for the dead letter."""
    envelope = getattr(record, "envelope", None)
    if callable(envelope):
        return _json_safe(envelope())
    fields = getattr(record, "fields", None)
    if fields is not None and hasattr(record, "id"):
        return _json_safe({**fields, "id": record.id})
    return _json_safe(record)


class _TqdmProgress:
    def __init__(self) -> None:
        from tqdm import tqdm

        self._bar = tqdm(unit="records")
        self._done = 0

    def __call__(self, progress: Progress) -> None:
        self._bar.update(progress.done - self._done)
        self._done = progress.done
        self._bar.set_postfix(failed=progress.failed, requests=progress.requests, refresh=False)


def stderr_progress(progress: Progress) -> None:
    """A progress callback printing one updating line to stderr."""
    sys.stderr.write("\r" + progress.line())
    sys.stderr.flush()


def _progress_callback(
    progress: bool | Callable[[Progress], None] | None,
) -> Callable[[Progress], None] | None:
    if progress is None or progress is False:
        return None
    if progress is True:
        try:
            return _TqdmProgress()
        except ModuleNotFoundError:
            return stderr_progress
    return progress


class Syncer:
    """Syncs Antavo members and events into Braze through ``client`` with ``mapping``.

    ``dead_letter`` (a path or an object with ``write(entry)``) receives every failed record;
    ``state`` (e.g. :class:`SqliteStateStore`) skips unchanged members, and with
    ``send="changed"`` sends only changed fields; ``progress`` is a callback taking
    :class:`Progress`, or ``True`` for a tqdm bar (stderr line without tqdm).
    """

    def __init__(
        self,
        client: BrazeClient,
        mapping: Mapping | AbcMapping[str, Any] | str | PathLike[str],
        *,
        dead_letter: str | PathLike[str] | DeadLetterSink | None = None,
        state: StateStore | None = None,
        send: SendMode = "full",
        progress: bool | Callable[[Progress], None] | None = None,
        truncate_strings: bool = False,
        max_array_items: int = 500,
    ) -> None:
        if send not in ("full", "changed"):
            raise ConfigurationError(f"send must be 'full' or 'changed', not {send!r}")
        if send == "changed" and state is None:
            raise ConfigurationError("send='changed' needs a state store to compare against")
        if isinstance(mapping, (str, PathLike)):
            mapping = Mapping.from_file(mapping)
        elif not isinstance(mapping, Mapping):
            mapping = Mapping.from_dict(mapping)
        self.client = client
        self.mapping = mapping
        self.mapper = Mapper(
            mapping,
            app_id=client.app_id,
            truncate_strings=truncate_strings,
            max_array_items=max_array_items,
        )
        self.dead_letter = open_sink(dead_letter)
        self.state = state
        self.send = send
        self._progress = _progress_callback(progress)

    def __repr__(self) -> str:
        return (
            f"Syncer(client={self.client!r}, fields={len(self.mapping.fields)}, "
            f"events={len(self.mapping.events)}, send={self.send!r})"
        )

    # --- building Braze objects from records ------------------------------------------------

    def _build_member(self, member: Any, index: int, run: _Run) -> _Pending | None:
        # Without a state store, _member_groups does this faster.
        external_id, values = self.mapper.member_attributes(member)
        state = None
        if self.state is not None:
            prints = {name: fingerprint(value) for name, value in values.items()}
            previous = self.state.get(external_id)
            if previous is not None:
                changed = {k for k, v in prints.items() if previous.get(k) != v}
                if not changed:
                    run.saved += len(prints)
                    return None
                if self.send == "changed":
                    run.saved += len(prints) - len(changed)
                    values = {k: v for k, v in values.items() if k in changed}
            state = (external_id, prints)
        item = Item(ATTRIBUTES, attributes_wire(external_id, values), external_id, index)
        return _Pending(member, [item], len(values), state)

    def _build_event(self, event: Any, index: int, run: _Run) -> _Pending | None:
        mapped = self.mapper.map_event(event)
        if mapped.skipped:
            return None
        return _objects_pending(event, mapped.objects, index)

    # --- the pipeline -----------------------------------------------------------------------

    def _fail(
        self,
        run: _Run,
        index: int,
        record_id: str | None,
        stage: str,
        reason: str,
        record: Any,
        objects: Iterable[dict[str, Any]] | None,
        retryable: bool,
    ) -> None:
        run.failed += 1
        run.failures.append(RecordFailure(index, record_id, stage, reason, retryable))  # type: ignore[arg-type]
        if self.dead_letter is not None:
            self.dead_letter.write(
                {
                    "time": datetime.now(timezone.utc).isoformat().replace("+00:00", "Z"),
                    "kind": run.kind,
                    "index": index,
                    "record_id": record_id,
                    "stage": stage,
                    "reason": reason,
                    "retryable": retryable,
                    "record": _record_view(record),
                    "objects": list(objects) if objects is not None else None,
                }
            )

    def _groups(
        self,
        records: Iterable[Any],
        build: Build,
        run: _Run,
        pending: dict[int, _Pending],
        record_id_of: Callable[[Any], str | None],
    ) -> Iterator[Sequence[Item]]:
        if build == self._build_member and self.state is None:
            yield from self._member_groups(records, run, record_id_of)
            return
        for index, record in enumerate(records):
            run.total += 1
            try:
                entry = build(record, index, run)
            except Exception as exc:  # a bad record fails alone, whatever is wrong with it
                self._invalid(run, index, record, exc, record_id_of)
                continue
            if entry is None:
                run.skipped += 1
                run.tick()
            else:
                pending[index] = entry
                yield entry.items

    def _member_groups(
        self, records: Iterable[Any], run: _Run, record_id_of: Callable[[Any], str | None]
    ) -> Iterator[Sequence[Item]]:
        """The hot path of :meth:`_groups`: members without state, each one attributes item
        whose tag ``(index, record)`` is all the bookkeeping it needs."""
        member_id, member_values = self.mapper.member_id, self.mapper.member_values
        for index, record in enumerate(records):
            run.total += 1
            external_id = None
            try:
                external_id = member_id(record)
                wire = member_values(record, {EXTERNAL_ID: external_id})
            except CoercionError as exc:
                located = exc if external_id is None else exc.at(record_id=external_id)
                self._invalid(run, index, record, located, record_id_of)
                continue
            except Exception as exc:
                self._invalid(run, index, record, exc, record_id_of)
                continue
            yield (_new_item(Item, (ATTRIBUTES, wire, external_id, (index, record))),)

    def _invalid(
        self,
        run: _Run,
        index: int,
        record: Any,
        exc: Exception,
        record_id_of: Callable[[Any], str | None],
    ) -> None:
        """A record that failed before anything was sent: it fails alone, stage validation."""
        if isinstance(exc, CoercionError):
            record_id, reason = exc.record_id or _safe_id(record_id_of, record), str(exc)
        else:
            record_id, reason = _safe_id(record_id_of, record), f"{type(exc).__name__}: {exc}"
        self._fail(run, index, record_id, "validation", reason, record, None, False)
        run.tick()

    def _run(
        self,
        kind: str,
        records: Iterable[Any],
        build: Build,
        record_id_of: Callable[[Any], str | None],
    ) -> SyncReport:
        run = _Run(kind, self._progress)
        requests_before = self.client.requests_sent
        pending: dict[int, _Pending] = {}
        groups = self._groups(records, build, run, pending, record_id_of)
        for outcome in self.client.send_batches(self.client.pack(groups)):
            run.requests = self.client.requests_sent - requests_before
            run.warnings.extend(outcome.warnings)
            state_updates: list[tuple[str, dict[str, str]]] = []
            clean = outcome.error is None and not outcome.rejected
            for number, item in enumerate(outcome.batch.items):
                if item.tag.__class__ is tuple:  # a record with this one object
                    failure = None if clean else outcome.failure(number)
                    if failure is None:
                        run.succeeded += 1
                        run.attribute_values += len(item.obj) - 1  # all but external_id
                    else:
                        index, record = item.tag
                        objects = _dead_letter_objects([item])
                        retryable = outcome.retryable
                        self._fail(
                            run, index, item.external_id, *failure, record, objects, retryable
                        )
                    continue
                entry = pending[item.tag]
                failure = outcome.failure(number)
                if failure is not None and entry.failure is None:
                    entry.failure = (*failure, outcome.retryable)
                entry.remaining -= 1
                if entry.remaining:
                    continue
                del pending[item.tag]
                self._finish(run, item.tag, entry, state_updates)
            if state_updates and self.state is not None:
                self.state.put_many(state_updates)
            run.tick()
        run.requests = self.client.requests_sent - requests_before
        run.tick(force=True)
        return SyncReport(
            total=run.total,
            succeeded=run.succeeded,
            failed=run.failed,
            skipped=run.skipped,
            requests=run.requests,
            failures=tuple(sorted(run.failures, key=_by_index)),
            attribute_values=run.attribute_values,
            attribute_values_saved=run.saved,
            warnings=tuple(run.warnings),
            elapsed=time.perf_counter() - run.started,
        )

    def _finish(
        self,
        run: _Run,
        index: int,
        entry: _Pending,
        state_updates: list[tuple[str, dict[str, str]]],
    ) -> None:
        if entry.failure is None:
            run.succeeded += 1
            run.attribute_values += entry.attribute_values
            if entry.state is not None:
                state_updates.append(entry.state)
            return
        stage, reason, retryable = entry.failure
        objects = _dead_letter_objects(entry.items)
        record_id = entry.items[0].external_id
        self._fail(run, index, record_id, stage, reason, entry.record, objects, retryable)

    # --- public API -------------------------------------------------------------------------

    def sync_members(self, members: Iterable[Any]) -> SyncReport:
        """Send every mapped field of each member (dicts with ``id`` or LoyaltyMember)."""
        return self._run("member", members, self._build_member, _member_id)

    def sync_events(self, events: Iterable[Any]) -> SyncReport:
        """Send each event as a custom event or purchases (plus trigger attributes)."""
        return self._run("event", events, self._build_event, _event_id)

    def sync_attributes(
        self,
        member_id: str,
        values: AbcMapping[str, Any],
        types: AbcMapping[str, Any] | None = None,
    ) -> SyncReport:
        """A one-off sync of attributes outside the mapping (types inferred unless given)."""

        def build(record: Any, index: int, run: _Run) -> _Pending:
            obj = self.mapper.attributes(member_id, values, types)
            return _objects_pending(record, (obj,), index)

        return self._run(
            "attributes", [{"id": member_id, **values}], build, lambda record: str(member_id)
        )

    def preview_members(self, members: Iterable[Any]) -> list[dict[str, Any]]:
        """The ``/users/track`` bodies a member sync would send; no network (records that
        fail validation are left out)."""
        return self._preview(members, self._build_member, _member_id)

    def preview_events(self, events: Iterable[Any]) -> list[dict[str, Any]]:
        """The ``/users/track`` bodies an event sync would send; no network."""
        return self._preview(events, self._build_event, _event_id)

    def _preview(
        self,
        records: Iterable[Any],
        build: Build,
        record_id_of: Callable[[Any], str | None],
    ) -> list[dict[str, Any]]:
        return [loads(batch.body) for batch in self._plan(records, build, record_id_of)[0]]

    def _plan(
        self,
        records: Iterable[Any],
        build: Build,
        record_id_of: Callable[[Any], str | None],
    ) -> tuple[Iterator[Any], _Run]:
        """The batches a sync would send, lazily, with the tally of validation outcomes."""
        run = _Run("preview", None)
        sink, self.dead_letter = self.dead_letter, None
        pending: dict[int, _Pending] = {}

        def batches() -> Iterator[Any]:
            try:
                for batch in self.client.pack(
                    self._groups(records, build, run, pending, record_id_of)
                ):
                    for item in batch.items:
                        tag = item.tag
                        if tag.__class__ is tuple or pending.pop(tag, None) is not None:
                            run.succeeded += 1
                    yield batch
            finally:
                self.dead_letter = sink

        return batches(), run

    def dry_run(self, kind: Literal["members", "events"], records: Iterable[Any]) -> SyncReport:
        """Validate and batch without sending: a report whose ``requests`` counts the bodies
        that would go and whose failures are the validation failures."""
        build = self._build_member if kind == "members" else self._build_event
        record_id_of = _member_id if kind == "members" else _event_id
        batches, run = self._plan(records, build, record_id_of)
        count = sum(1 for _ in batches)
        return SyncReport(
            total=run.total,
            succeeded=run.succeeded,
            failed=run.failed,
            skipped=run.skipped,
            requests=count,
            failures=tuple(run.failures),
            elapsed=time.perf_counter() - run.started,
        )

    def replay(self, path: str | PathLike[str]) -> SyncReport:
        """Resend the retryable records of a dead-letter file; the rest count as skipped."""
        source = Path(path)
        target = getattr(self.dead_letter, "path", None)
        if target is not None and os.path.abspath(target) == os.path.abspath(source):
            raise ConfigurationError("replay needs a dead_letter other than the file it reads")

        def build(entry: dict[str, Any], index: int, run: _Run) -> _Pending | None:
            objects = entry.get("objects")
            if not entry.get("retryable") or not objects:
                return None
            record_id = str(entry.get("record_id"))
            return _Pending(entry, [_wire_item(o, record_id, index) for o in objects])

        return self._run(
            "replay", read_dead_letters(source), build, lambda entry: entry.get("record_id")
        )


def _safe_id(record_id_of: Callable[[Any], str | None], record: Any) -> str | None:
    try:
        return record_id_of(record)
    except Exception:
        return None


def _member_id(record: Any) -> str | None:
    value = record.get("id") if isinstance(record, AbcMapping) else getattr(record, "id", None)
    return None if value is None else str(value)


def _event_id(record: Any) -> str | None:
    if isinstance(record, AbcMapping):
        value = record.get("customer")
    else:
        value = getattr(record, "customer_id", None)
    return None if value is None else str(value)


def _objects_pending(record: Any, objects: Iterable[BrazeObject], index: int) -> _Pending:
    items = [to_item(obj, index) for obj in objects]
    values = sum(len(o.attributes) for o in objects if isinstance(o, AttributesObject))
    return _Pending(record, items, values)


def _dead_letter_objects(items: Iterable[Item]) -> list[dict[str, Any]]:
    """A failed record's objects as the dead letter keeps them (replay sends them again)."""
    return [{"array": item.array, "object": _json_safe(item.obj)} for item in items]


def _wire_item(entry: dict[str, Any], record_id: str, index: int) -> Item:
    """An item from a dead-letter object, already in wire form."""
    array = entry.get("array")
    wire = entry.get("object")
    if array not in ARRAYS or not isinstance(wire, dict):
        raise ValueError("dead-letter object without 'array' and 'object'")
    return Item(array, wire, str(wire.get("external_id", record_id)), index)


def _by_index(failure: RecordFailure) -> int:
    return failure.index
