"""The Syncer: mapper + client, streaming, with one outcome per input record.

Every input record ends as exactly one of succeeded, failed (with stage and reason, and in the
dead letter) or skipped (with a reason) — also when the run is interrupted or Braze goes away.
Memory is bounded by batch size times requests in flight. Each call keeps its own tally
(``_accounting._Run``): nothing about one call lives on the Syncer.
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from collections.abc import Mapping as AbcMapping
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ._accounting import (
    Progress,
    RecordOutcome,
    Stage,
    SyncReport,
    _Parts,
    _Run,
    fingerprint,
    stderr_progress,
)
from ._batching import ATTRIBUTES, BatchLimits, Item, Packer, pack
from ._checkpoint import Settled
from ._client import BatchOutcome, BrazeClient
from ._deadletter import DeadLetterEntry, DeadLetterSink, open_sink, read_dead_letters
from ._http import CallStats, Interrupt
from ._input import BadInput
from ._interrupts import stop_on_signals
from ._json import dumps_object, loads
from ._mapper import MISSING, Mapper, member_fields
from ._mapping import Mapping
from ._state import StateStore, get_many
from ._wire import WireError, model_item, wire_item
from .exceptions import CoercionError, ConfigurationError, SyncInterrupted, TransportError

if TYPE_CHECKING:
    from ._workers import Workers

__all__ = ["Syncer"]

log = logging.getLogger("antavo_braze.sync")

SendMode = Literal["full", "changed"]
InvalidField = Literal["fail_record", "drop_field"]
Build = Callable[[Iterable[Any], _Run], Generator[Sequence[Item], None, None]]
_NO_FIELD = "no mapped field present"
_UNCHANGED = "unchanged since Braze last accepted it"
_PLAIN_SECRET = hashlib.sha256(b"antavo_braze state").digest()
_new_item = tuple.__new__  # Item(...) without NamedTuple's Python-level __new__: hot path


class _TqdmProgress:
    def __init__(self, total: int | None) -> None:
        from tqdm import tqdm

        self._bar = tqdm(unit="records", total=total)
        self._done = 0

    def __call__(self, progress: Progress) -> None:
        self._bar.update(progress.done - self._done)
        self._done = progress.done
        self._bar.set_postfix(failed=progress.failed, requests=progress.requests, refresh=False)


def _length(records: Any) -> int | None:
    try:
        return len(records)
    except TypeError:
        return None


def _dataframe_rows(frame: Any) -> Iterator[dict[str, Any]]:
    """Rows of a pandas DataFrame as dicts: missing cells (NaN, NaT, None) are absent."""
    import pandas

    columns = [str(c) for c in frame.columns]
    for row in frame.itertuples(index=False, name=None):
        cells = zip(columns, row, strict=True)
        yield {name: value for name, value in cells if not _is_missing(pandas, value)}


def _is_missing(pandas: Any, value: Any) -> bool:
    if isinstance(value, (list, tuple, dict, set)):
        return False
    try:
        return bool(pandas.isna(value))
    except (TypeError, ValueError):  # array-likes: present
        return False


def _is_dataframe(records: Iterable[Any]) -> bool:
    return type(records).__module__.startswith("pandas") and hasattr(records, "itertuples")


def _rows(records: Iterable[Any]) -> Iterable[Any]:
    return _dataframe_rows(records) if _is_dataframe(records) else records


def _fresh(records: Iterable[Any]) -> bool:
    """Whether no code of the caller runs between two records: a list, a tuple, or rows the
    SDK reads itself (a file, a data frame). A record's objects then stay as they are until
    its batch is encoded (in one call); from any other iterable, which may reuse them for the
    next record, each object is encoded as it is built."""
    return (
        records.__class__ is list
        or records.__class__ is tuple
        or getattr(records, "_fresh", False) is True
        or _is_dataframe(records)
    )


def _same_file(a: Path, b: Path) -> bool:
    """Whether both paths exist and are one file (links included)."""
    return a.exists() and b.exists() and os.path.samefile(a, b)


def _start(sink: DeadLetterSink | None) -> None:
    """A run's dead-letter file starts afresh when the run does (a sink with ``start``)."""
    start = getattr(sink, "start", None)
    if callable(start):
        start()


def _until_interrupted(records: Iterable[Any], interrupt: Interrupt) -> Iterator[Any]:
    """The records; a Ctrl-C raised while the input is read (a notebook cell, a generator
    reading a socket) ends them and stops the run like a signal: every record read so far
    was handled, so the report adds up."""
    try:
        yield from records
    except KeyboardInterrupt:
        if interrupt.signal is not None:  # a second one: stop now
            raise
        interrupt.request(signal.SIGINT)


class Syncer:
    """Syncs Antavo members and events into Braze through ``client`` with ``mapping``.

    - ``dead_letter``: a path (a new JSON Lines file) or an object with ``write(entry)``;
      receives every failed record as a :class:`~antavo_braze.DeadLetterEntry`.
    - ``state`` (e.g. :class:`SqliteStateStore`): unchanged members are skipped; with
      ``send="changed"`` only changed fields are sent.
    - ``progress``: a callback taking :class:`Progress`, or ``True`` for a tqdm bar per call
      (a stderr line without tqdm).
    - ``on_invalid_field``: ``"fail_record"`` (a bad field fails its member) or
      ``"drop_field"`` (the bad field is left out and listed in ``report.dropped``).
    - ``give_up_after``: after this many requests in a row got no answer at all, the rest is
      not sent (failed, retryable); if nothing had got through, :class:`TransportError`.
    - ``interrupt_grace``: seconds in-flight requests get after Ctrl-C/SIGTERM;
      ``handle_signals``: catch those signals during a sync (main thread, default handlers).
    - ``client`` may be ``None`` for offline work (previews, dry runs): ``limits`` then says
      how requests would be batched.
    """

    def __init__(
        self,
        client: BrazeClient | None,
        mapping: Mapping | AbcMapping[str, Any] | str | PathLike[str],
        *,
        dead_letter: str | PathLike[str] | DeadLetterSink | None = None,
        state: StateStore | None = None,
        send: SendMode = "full",
        progress: bool | Callable[[Progress], None] | None = None,
        truncate_strings: bool = False,
        max_array_items: int = 500,
        limits: BatchLimits | None = None,
        app_id: str | None = None,
        on_invalid_field: InvalidField = "fail_record",
        give_up_after: int | None = 10,
        interrupt_grace: float = 5.0,
        handle_signals: bool = True,
    ) -> None:
        if send not in ("full", "changed"):
            raise ConfigurationError(f"send must be 'full' or 'changed', not {send!r}")
        if send == "changed" and state is None:
            raise ConfigurationError("send='changed' needs a state store to compare against")
        if on_invalid_field not in ("fail_record", "drop_field"):
            raise ConfigurationError(
                f"on_invalid_field must be 'fail_record' or 'drop_field', not {on_invalid_field!r}"
            )
        if isinstance(mapping, (str, PathLike)):
            mapping = Mapping.from_file(mapping)
        elif not isinstance(mapping, Mapping):
            mapping = Mapping.from_dict(mapping)
        self.client = client
        self.mapping = mapping
        self.limits = limits or (client.limits if client is not None else BatchLimits())
        self.app_id = app_id if app_id is not None else (client.app_id if client else None)
        self.mapper = Mapper(
            mapping,
            app_id=self.app_id,
            truncate_strings=truncate_strings,
            max_array_items=max_array_items,
        )
        self._owns_sink = isinstance(dead_letter, (str, PathLike))
        self.dead_letter = open_sink(dead_letter)
        self.state = state
        self.send = send
        self.on_invalid_field: InvalidField = on_invalid_field
        self.give_up_after = give_up_after
        self.interrupt_grace = interrupt_grace
        self.handle_signals = handle_signals
        self._progress = progress
        self._secret: bytes = getattr(state, "secret", None) or _PLAIN_SECRET

    def __repr__(self) -> str:
        return (
            f"Syncer(client={self.client!r}, fields={len(self.mapping.fields)}, "
            f"events={len(self.mapping.events)}, send={self.send!r})"
        )

    def __enter__(self) -> Syncer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Release what this Syncer opened (the client and the state store are yours)."""
        close = getattr(self.dead_letter, "close", None)
        if self._owns_sink and callable(close):
            close()

    # --- public API -------------------------------------------------------------------------

    def sync_members(self, members: Iterable[Any], *, workers: Workers = 1) -> SyncReport:
        """Send every mapped field of each member (dicts with ``id``, :class:`LoyaltyMember`,
        or the rows of a pandas DataFrame).

        ``workers=N`` (or ``"auto"``: one per core) runs the sync in N forked processes
        sharing one request budget, split stably by member; the report, the dead letter and
        Ctrl-C behave as for one process. The input is read once per worker: a list, a
        tuple, a data frame or :func:`read_records`, not a one-shot iterator."""
        from ._workers import run_in_workers, worker_count  # it builds on this module

        count = worker_count(workers)
        if count > 1:
            return run_in_workers(self, "member", members, count)
        return self._run("member", members, self._member_builder())

    def sync_events(self, events: Iterable[Any], *, workers: Workers = 1) -> SyncReport:
        """Send each event as a custom event or purchases (plus trigger attributes);
        ``workers`` as for :meth:`sync_members` (a member's events stay in one worker, in
        order)."""
        from ._workers import run_in_workers, worker_count  # it builds on this module

        count = worker_count(workers)
        if count > 1:
            return run_in_workers(self, "event", events, count)
        return self._run("event", events, self._event_groups)

    def sync_attributes(
        self,
        member_id: str,
        values: AbcMapping[str, Any],
        types: AbcMapping[str, Any] | None = None,
    ) -> SyncReport:
        """A one-off sync of attributes outside the mapping (types inferred unless given)."""

        def build(records: Iterable[Any], run: _Run) -> Generator[Sequence[Item], None, None]:
            for position, record in enumerate(records):
                try:
                    obj = self.mapper.attributes(member_id, values, types)
                except CoercionError as exc:
                    run.total += 1
                    run.fail_invalid(position, record, _text_id(member_id), [exc])
                    continue
                yield self._open(run, position, record, (model_item(obj, position),))

        return self._run("attributes", [{"id": member_id, **values}], build)

    def preview_members(self, members: Iterable[Any]) -> list[dict[str, Any]]:
        """The ``/users/track`` bodies a member sync would send; no network (records that
        fail validation are left out)."""
        return self._preview("member", members, self._member_builder())

    def preview_events(self, events: Iterable[Any]) -> list[dict[str, Any]]:
        """The ``/users/track`` bodies an event sync would send; no network."""
        return self._preview("event", events, self._event_groups)

    def dry_run(
        self,
        kind: Literal["members", "events"],
        records: Iterable[Any],
        *,
        dead_letter: str | PathLike[str] | DeadLetterSink | None = None,
    ) -> SyncReport:
        """Validate and batch without sending: ``requests`` counts the bodies that would go,
        failures are the validation failures (written to ``dead_letter`` if given; the
        Syncer's own dead letter is never touched)."""
        build = self._member_builder() if kind == "members" else self._event_groups
        sink = open_sink(dead_letter)
        _start(sink)
        run = self._new_run("member" if kind == "members" else "event", records, sink)
        count = 0
        for batch in pack(build(_rows(records), run), self.limits):
            count += 1
            run.settle(BatchOutcome(batch))
        run.state_updates.clear()  # nothing was accepted
        return run.report(requests=count)

    def replay(
        self,
        path: str | PathLike[str],
        *,
        allow_duplicates: bool = False,
    ) -> SyncReport:
        """Resend the retryable records of a dead-letter file.

        What fails again goes to this Syncer's dead letter with ``replays`` counted up (kind
        and record carried forward). Entries not resent — not retryable, or an unknown
        outcome for events and purchases (they may already be in Braze; ``allow_duplicates``
        resends them) — are skipped with their reason and carried over unchanged.
        """
        source = Path(path)
        target = getattr(self.dead_letter, "path", None)
        if target is not None and _same_file(Path(target), source):
            raise ConfigurationError("replay needs a dead_letter other than the file it reads")
        entries = read_dead_letters(source)

        def build(records: Iterable[Any], run: _Run) -> Generator[Sequence[Item], None, None]:
            for position, entry in enumerate(records):
                reason = _not_resent(entry, allow_duplicates)
                if reason is not None:
                    run.total += 1
                    run.skip(position, reason)
                    if run.sink is not None:
                        run.sink.write(entry)
                    continue
                try:
                    parts = len(entry.objects)
                    items = tuple(
                        wire_item(o.array, o.object, position, parts) for o in entry.objects
                    )
                except WireError as exc:
                    run.total += 1
                    run.fail(position, entry, entry.record_id, "validation", str(exc))
                    continue
                yield self._open(run, position, entry, items)

        return self._run("replay", entries, build)

    # --- the pipeline -----------------------------------------------------------------------

    def _new_run(self, kind: str, records: Any, sink: DeadLetterSink | None) -> _Run:
        return _Run(
            kind,
            sink=sink,
            progress=self._progress_callback(_length(records)),
            total=_length(records),
            line_of=getattr(records, "line_of", None),
            fresh=_fresh(records),
            field_names=self.mapper.fields if kind == "member" else (),
            event_arrays=kind in ("event", "replay"),
        )

    def _progress_callback(self, total: int | None) -> Callable[[Progress], None] | None:
        spec = self._progress
        if spec is None or spec is False:
            return None
        if spec is True:
            try:
                return _TqdmProgress(total)  # a bar of its own per call
            except ModuleNotFoundError:
                return stderr_progress
        return spec

    def _preview(self, kind: str, records: Iterable[Any], build: Build) -> list[dict[str, Any]]:
        run = self._new_run(kind, records, None)
        run.progress = None
        return [loads(batch.body) for batch in pack(build(_rows(records), run), self.limits)]

    def _run(self, kind: str, records: Iterable[Any], build: Build) -> SyncReport:
        return self._execute(kind, records, build)[0]

    def _execute(
        self, kind: str, records: Iterable[Any], build: Build, *, each: bool = False
    ) -> tuple[SyncReport, _Run]:
        """Run a sync; with ``each`` the run also keeps every record's own outcome (for
        :meth:`_Run.outcomes`: the background sender answers each submission)."""
        client = self.client
        if client is None:
            raise ConfigurationError("this Syncer has no client: it can preview and dry-run only")
        _start(self.dead_letter)
        run = self._new_run(kind, records, self.dead_letter)
        if each:
            run.skips = {}
        stats = CallStats()
        interrupt = Interrupt()
        groups = build(_until_interrupted(_rows(records), interrupt), run)
        packer = Packer(groups, self.limits)
        try:
            with stop_on_signals(interrupt, self.handle_signals):
                self._send(client, run, packer, stats, interrupt)
        except KeyboardInterrupt:
            pass  # a hard stop: what is still open fails as interrupted, below
        finally:
            groups.close()  # the builder counts the records it handled as it ends
            interrupt.close()
        signum = stats.interrupted or interrupt.signal
        if signum is None and (run.parts or packer.pending):
            signum = signal.SIGINT  # stopped hard: the loop never said why
        if signum is not None:
            run.close_open(packer.pending, signal.Signals(signum).name)
        report = run.report(
            requests=stats.requests, retries=stats.retries, rate_limit_waits=stats.rate_limited
        )
        if signum is not None:
            raise SyncInterrupted(report, signum)
        return report, run

    def _sync_changes(
        self, kind: str, records: Sequence[Any]
    ) -> tuple[SyncReport, list[RecordOutcome]]:
        """One outcome per record, in order: the background sender's window of ``kind``
        (``"member"``, ``"event"``, or ``"attributes"``: Braze attribute objects already
        coerced when they were submitted)."""
        builds: dict[str, Build] = {
            "member": self._member_builder(),
            "event": self._event_groups,
            "attributes": self._wire_attribute_groups,
        }
        report, run = self._execute(kind, records, builds[kind], each=True)
        return report, run.outcomes(len(records))

    def _wire_attribute_groups(
        self, records: Iterable[Any], run: _Run
    ) -> Generator[Sequence[Item], None, None]:
        for position, wire in enumerate(records):
            try:
                item = wire_item(ATTRIBUTES, wire, position, 1)
            except WireError as exc:
                run.total += 1
                run.fail(position, wire, _text_id(wire.get("external_id")), "validation", str(exc))
                continue
            yield self._open(run, position, wire, (item,))

    def _fail_changes(
        self,
        kind: str,
        records: Sequence[Any],
        stage: Stage,
        reason: str,
        *,
        retryable: bool = True,
    ) -> list[RecordOutcome]:
        """Fail records that could not be sent at all (bad credentials, a closed client, a
        refused submission): each goes to the dead letter, by default retryable once the
        cause is fixed."""
        run = self._new_run(kind, records, self.dead_letter)
        run.skips = {}
        for position, record in enumerate(records):
            run.total += 1
            if kind == "event":
                record_id = _event_id(record)
            elif kind == "attributes":  # a wire object, or the values refused at submit
                record_id = _text_id(record.get("external_id", record.get("id")))
            else:
                record_id = _record_id(record)
            run.fail(
                position, record, record_id, stage, reason, retryable=retryable, outcome="not_sent"
            )
        return run.outcomes(len(records))

    def _send(
        self,
        client: BrazeClient,
        run: _Run,
        packer: Packer,
        stats: CallStats,
        interrupt: Interrupt,
    ) -> None:
        """Settle every batch outcome; a Ctrl-C in here asks the loop to drain (it goes on
        yielding what it finishes), a second one stops at once."""
        outcomes = client._send_batches(
            packer,
            stats=stats,
            interrupt=interrupt,
            give_up_after=self.give_up_after,
            grace=self.interrupt_grace,
        )
        gave_up = False
        try:
            while True:
                try:
                    for outcome in outcomes:
                        if outcome.not_sent and outcome.stage == "transport" and not gave_up:
                            gave_up = True
                            self._gave_up(run, outcome)
                        run.settle(outcome)
                        run.requests = stats.requests
                        if run.state_updates and self.state is not None:
                            self.state.put_many(run.state_updates)
                            run.state_updates = []
                    return
                except KeyboardInterrupt:
                    if interrupt.signal is not None:
                        raise  # a second Ctrl-C in our own code: stop now
                    interrupt.request(signal.SIGINT)
        finally:
            outcomes.close()

    @staticmethod
    def _gave_up(run: _Run, outcome: BatchOutcome) -> None:
        if run.succeeded == 0:
            raise TransportError(
                f"Braze unreachable: nothing got through ({outcome.error}); no record was sent"
            )
        log.warning(
            "Braze unreachable: %s; the remaining records fail as not sent (retryable)",
            outcome.error,
        )

    @staticmethod
    def _open(run: _Run, position: int, record: Any, items: tuple[Item, ...]) -> tuple[Item, ...]:
        """A record's objects, about to be batched: each carries its record (for the dead
        letter); a record with several objects is kept until its last answer."""
        items = tuple(item._replace(source=record) for item in items)
        if len(items) > 1:
            run.parts[position] = _Parts(record, items)
        run.total += 1
        return items

    # --- members ----------------------------------------------------------------------------

    def _member_builder(self) -> Build:
        if self.state is not None:
            return self._stateful_member_groups
        return self._member_groups

    def _member_groups(
        self, records: Iterable[Any], run: _Run
    ) -> Generator[Sequence[Item], None, None]:
        """Members without a state store: the hot path.

        A record counts in ``run.total`` once handled (failed, skipped or packed): one cut
        short by a hard interrupt was never read, and ``--resume`` reads it again.
        """
        member_id = self.mapper.member_id
        fill = self.mapper._fields.fill
        absent = run.absent
        clears = any(clear for _, _, clear in self.mapper.fields)
        new_item = _new_item
        settled = Settled
        fresh = run.fresh  # the batch encodes the objects (see _fresh)
        position, mapped = -1, 0
        try:
            for position, record in enumerate(records):
                if record.__class__ is settled:  # done by the run this one resumes, or
                    run.skip(position, record.reason)  # another worker's (before the raise)
                    continue
                external_id = None
                try:
                    external_id = member_id(record)
                    before = sum(absent) if clears else 0
                    fields = record if record.__class__ is dict else member_fields(record)
                    wire = fill(fields, {"external_id": external_id}, absent)
                except CoercionError as exc:
                    if record.__class__ is BadInput:  # a line the reader could not read
                        run.fail(position, record, None, "input", record.reason, line=record.line)
                        continue
                    values = self._refused(run, position, record, external_id, exc)
                    if values is None:
                        continue
                    wire = {"external_id": external_id, **values}
                except Exception as exc:  # a bad record fails alone, whatever is wrong with it
                    run.fail(position, record, _record_id(record), "validation", _describe(exc))
                    continue
                else:
                    mapped += 1
                    if len(wire) == 1 or (clears and sum(absent) - before == len(absent)):
                        run.skip(position, _NO_FIELD)
                        continue
                count = len(wire) - 1
                item: tuple[Any, ...]
                if fresh:  # encoded with its batch, in one call (see _batching)
                    item = (ATTRIBUTES, b"", external_id, position, 1, count, record, wire)
                else:  # the iterator may reuse these objects for the next record: encoded now
                    data = dumps_object(wire)
                    item = (ATTRIBUTES, data, external_id, position, 1, count, record, None)
                yield (new_item(Item, item),)
        except GeneratorExit:  # closed after a yield: that record was handled
            run.total += position + 1
            raise
        except BaseException:  # stopped while mapping record `position`: it was not
            run.total += max(position, 0)
            raise
        else:
            run.total += position + 1
        finally:
            run.mapped += mapped

    def _refused(
        self,
        run: _Run,
        position: int,
        record: Any,
        external_id: str | None,
        exc: CoercionError,
    ) -> dict[str, Any] | None:
        """A record the plan refused: list every bad field; with ``drop_field`` return the
        values left to send (``None``: nothing to send, the record is settled)."""
        if external_id is None:  # no usable id: nothing else matters
            run.fail_invalid(position, record, _record_id(record), [exc.at(record_id=None)])
            return None
        values, problems = self._each_field(record, exc, run)
        run.mapped += 1
        if self.on_invalid_field == "fail_record" or not problems:
            run.fail_invalid(position, record, external_id, problems or [exc])
            return None
        run.drop(position, external_id, problems)
        if not values:
            run.skip(position, "every mapped field present was invalid (drop_field)")
            return None
        return values

    def _each_field(
        self, record: Any, exc: CoercionError, run: _Run
    ) -> tuple[dict[str, Any], list[CoercionError]]:
        """The slow path: each field on its own. Absent fields after the one the plan stopped
        at were not counted by it: count them here."""
        plan = self.mapper._fields
        fields = member_fields(record)
        values, problems = plan.each(fields)
        stopped = next(
            (n for n, step in enumerate(plan.steps) if step.location == exc.field), len(plan.steps)
        )
        for number, step in enumerate(plan.steps):
            if number > stopped and step.get(fields) is MISSING:
                run.absent[number] += 1
        return values, problems

    def _stateful_member_groups(
        self, records: Iterable[Any], run: _Run
    ) -> Generator[Sequence[Item], None, None]:
        """Members with a state store: a batch at a time, one state read per batch."""
        chunk: list[tuple[int, Any, str, dict[str, Any], set[str]]] = []
        chunk_size = self.limits.max_objects
        for position, record in enumerate(records):
            mapped = self._map_with_absent(run, position, record)
            if mapped is None:
                run.total += 1
            else:
                chunk.append((position, record, *mapped))
            if len(chunk) >= chunk_size:
                yield from self._compare(run, chunk)
                chunk = []
        if chunk:
            yield from self._compare(run, chunk)

    def _map_with_absent(
        self, run: _Run, position: int, record: Any
    ) -> tuple[str, dict[str, Any], set[str]] | None:
        """``(external_id, values, cleared fields)`` of a member, or ``None`` (settled)."""
        if record.__class__ is BadInput:
            run.fail(position, record, None, "input", record.reason, line=record.line)
            return None
        if record.__class__ is Settled:
            run.skip(position, record.reason)
            return None
        plan = self.mapper._fields
        external_id = None
        try:
            external_id = self.mapper.member_id(record)
            before = list(run.absent)
            values = plan.fill(member_fields(record), {}, run.absent)
        except CoercionError as exc:
            refused = self._refused(run, position, record, external_id, exc)
            if refused is None:
                return None
            assert external_id is not None
            return external_id, refused, set()
        except Exception as exc:
            run.fail(position, record, _record_id(record), "validation", _describe(exc))
            return None
        run.mapped += 1
        missing = [n for n, (a, b) in enumerate(zip(before, run.absent, strict=True)) if a != b]
        if len(missing) == len(plan.steps):
            run.skip(position, _NO_FIELD)
            return None
        cleared = {plan.steps[n].remote_field for n in missing if plan.steps[n].clear}
        return external_id, values, cleared

    def _compare(
        self, run: _Run, chunk: list[tuple[int, Any, str, dict[str, Any], set[str]]]
    ) -> Iterator[Sequence[Item]]:
        assert self.state is not None
        previous = get_many(self.state, [external_id for _, _, external_id, _, _ in chunk])
        secret = self._secret
        for position, record, external_id, values, cleared in chunk:
            before = previous.get(external_id)
            # Clearing only removes what Braze holds: a field never sent stays unsent.
            for name in cleared:
                if before is None or name not in before:
                    del values[name]
            prints = {name: fingerprint(value, secret) for name, value in values.items()}
            if before is not None:
                changed = {k for k, v in prints.items() if before.get(k) != v}
                if not changed:
                    run.saved += len(prints)
                    run.total += 1
                    run.skip(position, _UNCHANGED)
                    continue
                if self.send == "changed":
                    run.saved += len(prints) - len(changed)
                    values = {k: v for k, v in values.items() if k in changed}
            if not values:
                run.total += 1
                run.skip(position, _NO_FIELD)
                continue
            wire = {"external_id": external_id, **values}
            group = (Item(ATTRIBUTES, dumps_object(wire), external_id, position, 1, len(values)),)
            run.states[position] = (external_id, prints)
            yield self._open(run, position, record, group)

    # --- events -----------------------------------------------------------------------------

    def _event_groups(
        self, records: Iterable[Any], run: _Run
    ) -> Generator[Sequence[Item], None, None]:
        mapper = self.mapper
        for position, event in enumerate(records):
            if event.__class__ is BadInput:
                run.total += 1
                run.fail(position, event, None, "input", event.reason, line=event.line)
                continue
            if event.__class__ is Settled:
                run.total += 1
                run.skip(position, event.reason)
                continue
            try:
                mapped = mapper.map_event(event)
            except CoercionError as exc:
                run.total += 1
                run.fail_invalid(position, event, exc.record_id or _event_id(event), [exc])
                continue
            except Exception as exc:
                run.total += 1
                run.fail(position, event, _event_id(event), "validation", _describe(exc))
                continue
            if mapped.skipped:
                run.total += 1
                run.skip(position, f"no mapping for action {_action(event)!r}")
                continue
            parts = len(mapped.objects)
            items = tuple(model_item(obj, position, parts) for obj in mapped.objects)
            yield self._open(run, position, event, items)


def _not_resent(entry: DeadLetterEntry, allow_duplicates: bool) -> str | None:
    if not entry.retryable:
        return f"not retryable (stage {entry.stage}; fix the cause and sync the record again)"
    if not entry.objects:
        return "no Braze objects to resend"
    if (
        entry.outcome == "unknown"
        and not allow_duplicates
        and any(o.array != ATTRIBUTES for o in entry.objects)
    ):
        return (
            "outcome unknown: Braze may already hold these events or purchases "
            "(allow_duplicates=True / --include-unknown resends them)"
        )
    return None


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]


def _text_id(value: Any) -> str | None:
    return None if value is None else str(value)


def _record_id(record: Any) -> str | None:
    """A member record's id, as text."""
    value = record.get("id") if isinstance(record, AbcMapping) else getattr(record, "id", None)
    return _text_id(value)


def _event_id(record: Any) -> str | None:
    """The member an event belongs to (its customer), as text."""
    if isinstance(record, AbcMapping):
        return _text_id(record.get("customer"))
    return _text_id(getattr(record, "customer_id", None))


def _action(record: Any) -> Any:
    if isinstance(record, AbcMapping):
        return record.get("action")
    return getattr(record, "action", None)
