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
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from collections.abc import Mapping as AbcMapping
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import attrs

from ._braze.limits import DELETE_VERIFY_SECONDS
from ._build.batching import ATTRIBUTES, BatchLimits, BatchOutcome, Item, Packer, pack
from ._build.mapper import MISSING, Mapper, member_fields, utc_now
from ._build.mapping import Mapping
from ._build.wire import WireError, model_item, wire_item
from ._client import BrazeClient
from ._http import CallStats, Interrupt
from ._identity import Identity, apply_identities, settle_dry_run
from ._json import dumps_object, loads
from ._run.audit import AuditReport, drifted_members, new_tally
from ._run.checkpoint import Settled
from ._run.deadletter import (
    DeadLetterEntry,
    DeadLetterObject,
    DeadLetterSink,
    entry_to_json,
    open_sink,
    read_dead_letters,
    start_sink,
)
from ._run.files import check_private, replace_private
from ._run.input import (
    BadInput,
    change_id,
    event_id,
    is_fresh,
    record_id,
    records_length,
    rows_of,
    text_id,
)
from ._run.interrupts import stop_on_signals, until_interrupted
from ._run.progress import TqdmProgress
from ._run.report import Progress, RecordOutcome, Stage, SyncReport, stderr_progress
from ._run.state import StateStore, already_sent, get_many, has_ledger, record_sent
from ._run.tally import _Parts, _Run, fingerprint
from ._telemetry import Telemetry, log_fields, traced
from .exceptions import AntavoBrazeError, CoercionError, ConfigurationError, SyncInterrupted

if TYPE_CHECKING:
    from ._antavo.client import AntavoClient, TimeLike
    from ._scale.workers import Workers

__all__ = ["Syncer", "needs_a_look"]

log = logging.getLogger("antavo_braze.sync")

SendMode = Literal["full", "changed"]
InvalidField = Literal["fail_record", "drop_field"]
Build = Callable[[Iterable[Any], _Run], Generator[Sequence[Item], None, None]]
_NO_FIELD = "no mapped field present"
_NO_ACTION = "no mapping for action"
_UNCHANGED = "unchanged since Braze last accepted it"
ALREADY_SENT = "already sent"  # the event ledger holds its id: Braze accepted it before
_REPEATED = "repeats an earlier event of this input (same id)"
_LEDGER_CHUNK = 75  # events looked up in the ledger at once
_PLAIN_SECRET = hashlib.sha256(b"antavo_braze state").digest()
_new_item = tuple.__new__  # Item(...) without NamedTuple's Python-level __new__: hot path


def _same_file(a: Path, b: Path) -> bool:
    """Whether both paths exist and are one file (links included)."""
    return a.exists() and b.exists() and os.path.samefile(a, b)


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
      not sent (failed, retryable); if nothing was ever answered, :class:`TransportError`
      (with ``.report``, like every error that stops a run).
    - ``interrupt_grace``: seconds in-flight requests get after Ctrl-C/SIGTERM;
      ``handle_signals``: catch those signals during a sync (main thread, default handlers).
    - ``max_clear_ratio``: the mass-clear guard (``when_missing: "clear"``): from the 100th
      member on, a field that would be cleared for more than this share of the members seen
      is no longer cleared in this run (``report.clears_stopped``); ``None`` turns it off.
    - ``client`` may be ``None`` for offline work (previews, dry runs): ``limits`` then says
      how requests would be batched.
    - ``tracer_provider`` / ``meter_provider``: OpenTelemetry providers for a span per call
      and the record metrics (the ``otel`` extra); by default the client's.
    - ``allow_deletes``: events mapped ``"as": "delete"`` delete Braze profiles only when
      True; a run that would delete more than ``max_delete_ratio`` of at least 100 records
      deletes nothing and says so; each delete counts once Braze no longer exports the
      profile (waiting up to ``verify_deletes_within`` seconds).
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
        max_clear_ratio: float | None = 0.5,
        allow_deletes: bool = False,
        max_delete_ratio: float = 0.05,
        verify_deletes_within: float = DELETE_VERIFY_SECONDS,
        tracer_provider: Any = None,
        meter_provider: Any = None,
    ) -> None:
        if send not in ("full", "changed"):
            raise ConfigurationError(f"send must be 'full' or 'changed', not {send!r}")
        if send == "changed" and state is None:
            raise ConfigurationError("send='changed' needs a state store to compare against")
        if on_invalid_field not in ("fail_record", "drop_field"):
            raise ConfigurationError(
                f"on_invalid_field must be 'fail_record' or 'drop_field', not {on_invalid_field!r}"
            )
        if max_clear_ratio is not None and not 0 <= max_clear_ratio <= 1:
            raise ConfigurationError(
                f"max_clear_ratio must be between 0 and 1 (or None), not {max_clear_ratio!r}"
            )
        if not 0.0 <= max_delete_ratio <= 1.0:
            raise ConfigurationError(
                f"max_delete_ratio must be between 0 and 1, not {max_delete_ratio!r}"
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
        self.max_clear_ratio = max_clear_ratio
        self._progress = progress
        self.allow_deletes = allow_deletes
        self.max_delete_ratio = max_delete_ratio
        self.verify_deletes_within = verify_deletes_within
        self._secret: bytes = getattr(state, "secret", None) or _PLAIN_SECRET
        if tracer_provider is None and meter_provider is None and client is not None:
            self._telemetry = client._telemetry
        else:
            self._telemetry = Telemetry(tracer_provider, meter_provider)

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

    @traced("sync_members")
    def sync_members(self, members: Iterable[Any], *, workers: Workers = 1) -> SyncReport:
        """Send every mapped field of each member (dicts with ``id``, :class:`LoyaltyMember`,
        or the rows of a pandas DataFrame).

        ``workers=N`` (or ``"auto"``: one per core) runs the sync in N forked processes
        sharing one request budget, split stably by member; the report, the dead letter and
        Ctrl-C behave as for one process. The input is read once per worker: a list, a
        tuple, a data frame or :func:`read_records`, not a one-shot iterator."""
        from ._scale.workers import run_in_workers, worker_count  # it builds on this module

        count = worker_count(workers)
        if count > 1:
            return run_in_workers(self, "member", members, count)
        return self._run("member", members, self._member_builder())

    @traced("sync_events")
    def sync_events(self, events: Iterable[Any], *, workers: Workers = 1) -> SyncReport:
        """Send each event as a custom event or purchases (plus trigger attributes);
        ``workers`` as for :meth:`sync_members` (a member's events stay in one worker, in
        order)."""
        from ._scale.workers import run_in_workers, worker_count  # it builds on this module

        count = worker_count(workers)
        if count > 1:
            return run_in_workers(self, "event", events, count)
        return self._run("event", events, self._event_groups)

    @traced("pull_members")
    def pull_members(
        self, antavo: AntavoClient, since: TimeLike | None = None, until: TimeLike | None = None
    ) -> SyncReport:
        """Read the customers Antavo changed in ``(since, until]`` and sync them; ``since``
        defaults to the state store's watermark, which moves to ``until`` once the whole
        window is settled (``report.watermark``: where the next pull starts)."""
        from ._service.pull import pull

        return pull(self, antavo, "members", since, until)

    @traced("pull_events")
    def pull_events(
        self, antavo: AntavoClient, since: TimeLike | None = None, until: TimeLike | None = None
    ) -> SyncReport:
        """Read Antavo's events of ``[since, until)`` and sync them, each once (the ledger);
        the watermark as for :meth:`pull_members`."""
        from ._service.pull import pull

        return pull(self, antavo, "events", since, until)

    @traced("sync_attributes")
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
                    run.fail_invalid(position, record, text_id(member_id), [exc])
                    continue
                yield self._open(run, position, record, (model_item(obj, position),))

        return self._run("attributes", [{"id": member_id, **values}], build)

    @traced("audit")
    def audit(self, members: Iterable[Any], *, fix: bool = False) -> AuditReport:
        """Compare each member's mapped values (as this mapping would send them) with what
        Braze holds (``/users/export/ids``, only the mapped fields); per field, equal /
        different / missing in Braze with examples. ``fix=True`` sends only the drifted
        fields (``report.fixed``)."""
        client = self.client
        if client is None:
            raise ConfigurationError("an audit reads Braze: this Syncer has no client")
        tally = new_tally(self.mapper)
        start = time.perf_counter()
        drift = drifted_members(self.mapper, client.export_users, rows_of(members), tally)
        fixed = None
        if fix:
            fixed = self._execute("attributes", drift, self._wire_attribute_groups)[0]
        else:
            for _ in drift:
                pass
        return tally.report(time.perf_counter() - start, fixed)

    def preview_members(self, members: Iterable[Any]) -> list[dict[str, Any]]:
        """The ``/users/track`` bodies a member sync would send; no network (records that
        fail validation are left out)."""
        return self._preview("member", members, self._member_builder())

    def preview_events(self, events: Iterable[Any]) -> list[dict[str, Any]]:
        """The ``/users/track`` bodies an event sync would send; no network."""
        return self._preview("event", events, self._event_groups)

    @traced("dry_run")
    def dry_run(
        self,
        kind: Literal["members", "events"],
        records: Iterable[Any],
        *,
        dead_letter: str | PathLike[str] | DeadLetterSink | None = None,
        on_body: Callable[[dict[str, Any]], None] | None = None,
    ) -> SyncReport:
        """Validate and batch without sending: ``requests`` counts the bodies that would go,
        failures are the validation failures (written to ``dead_letter`` if given; the
        Syncer's own dead letter is never touched). ``on_body`` is given each request body
        that would be sent (``--dry-run --show N``). Nothing was accepted: the records that
        would be sent count as ``succeeded``."""
        build = self._member_builder() if kind == "members" else self._event_groups
        sink = open_sink(dead_letter)
        start_sink(sink)
        run = self._new_run("member" if kind == "members" else "event", records, sink)
        count = 0
        for batch in pack(build(rows_of(records), run), self.limits):
            count += 1
            if on_body is not None:
                on_body(loads(batch.body))
            run.settle(BatchOutcome(batch))
        identities, run.identities = run.identities, []
        settle_dry_run(
            run,
            identities,
            allow_deletes=self.allow_deletes,
            max_delete_ratio=self.max_delete_ratio,
        )
        run.state_updates.clear()  # nothing was accepted
        return run.report(requests=count)

    @traced("replay")
    def replay(
        self,
        path: str | PathLike[str],
        *,
        allow_duplicates: bool = False,
        again: bool = False,
    ) -> SyncReport:
        """Resend the retryable records of a dead-letter file.

        What fails again goes to this Syncer's dead letter with ``replays`` counted up (kind
        and record carried forward). Entries not resent — not retryable, or an unknown
        outcome for events and purchases (they may already be in Braze; ``allow_duplicates``
        resends them) — are skipped with their reason and carried over unchanged.

        The file read is rewritten with each resent entry marked ``replayed_at``; a later
        replay skips marked entries (``again=True`` resends them), so replaying the same
        file twice never doubles events or purchases.
        """
        source = Path(path)
        target = getattr(self.dead_letter, "path", None)
        if target is not None and _same_file(Path(target), source):
            raise ConfigurationError("replay needs a dead_letter other than the file it reads")
        # The file is rewritten with the resent entries marked: refuse one we may not rewrite
        # before anything is sent, never after (resent but unmarked would double next time).
        check_private(source)
        entries = read_dead_letters(source)
        resent: set[int] = set()

        ledger = self._ledger()

        def build(records: Iterable[Any], run: _Run) -> Generator[Sequence[Item], None, None]:
            for position, entry, ledger_id in self._unsent(records, run, _entry_event_key):
                if ledger_id is _SKIP:
                    continue
                if entry.replayed_at is not None and not again:
                    run.total += 1
                    run.skip(position, f"{_ALREADY_REPLAYED} (again=True / --again resends it)")
                    continue
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
                resent.add(position)
                if ledger and ledger_id is not None:
                    run.sent[position] = ledger_id
                yield self._open(run, position, entry, items)

        try:
            report = self._run("replay", entries, build)
        except SyncInterrupted:  # what was cut off is in the new dead letter, not lost
            if resent:
                _mark_replayed(source, resent)
            raise
        # (A call that failed as a whole, nothing got through, marks nothing.)
        if resent:
            _mark_replayed(source, resent)
        return report

    # --- the pipeline -----------------------------------------------------------------------

    def _new_run(self, kind: str, records: Any, sink: DeadLetterSink | None) -> _Run:
        return _Run(
            kind,
            sink=sink,
            progress=self._progress_callback(records_length(records)),
            total=records_length(records),
            line_of=getattr(records, "line_of", None),
            fresh=is_fresh(records),
            field_names=self.mapper.fields if kind == "member" else (),
            event_arrays=kind in ("event", "replay"),
            max_clear_ratio=self.max_clear_ratio if self.mapper._fields.clearing else None,
        )

    def _progress_callback(self, total: int | None) -> Callable[[Progress], None] | None:
        spec = self._progress
        if spec is None or spec is False:
            return None
        if spec is True:
            try:
                return TqdmProgress(total)  # a bar of its own per call
            except ModuleNotFoundError:
                return stderr_progress
        return spec

    def _preview(self, kind: str, records: Iterable[Any], build: Build) -> list[dict[str, Any]]:
        run = self._new_run(kind, records, None)
        run.progress = None
        return [loads(batch.body) for batch in pack(build(rows_of(records), run), self.limits)]

    def _run(self, kind: str, records: Iterable[Any], build: Build) -> SyncReport:
        return self._execute(kind, records, build)[0]

    def _execute(
        self,
        kind: str,
        records: Iterable[Any],
        build: Build,
        *,
        each: bool = False,
        hold: DeadLetterSink | None = None,
    ) -> tuple[SyncReport, _Run]:
        """Run a sync; with ``each`` the run also keeps every record's own outcome (for
        :meth:`_Run.outcomes`: the background sender answers each submission). ``hold``
        receives the failures instead of the dead letter (the sender retries some)."""
        client = self.client
        if client is None:
            raise ConfigurationError("this Syncer has no client: it can preview and dry-run only")
        start_sink(self.dead_letter)
        run = self._new_run(kind, records, self.dead_letter if hold is None else hold)
        if each:
            run.skips = {}
        stats = CallStats()
        interrupt = Interrupt()
        groups = build(until_interrupted(rows_of(records), interrupt), run)
        packer = Packer(groups, self.limits)
        fatal: AntavoBrazeError | None = None
        try:
            with stop_on_signals(interrupt, self.handle_signals):
                self._send(client, run, packer, stats, interrupt)
        except KeyboardInterrupt:
            pass  # a hard stop: what is still open fails as interrupted, below
        except AntavoBrazeError as exc:
            fatal = exc  # every batch sent was settled; what was not sent is closed below
        finally:
            groups.close()  # the builder counts the records it handled as it ends
            interrupt.close()
        signum = stats.interrupted or interrupt.signal
        if signum is None and fatal is None and (run.parts or packer.pending):
            signum = signal.SIGINT  # stopped hard: the loop never said why
        if run.identities:
            stats.requests += self._identities(client, run, signum)
        if signum is not None:
            run.close_open(packer.pending, signal.Signals(signum).name)
        elif fatal is not None:
            stopped = f"the run stopped at {type(fatal).__name__}"
            run.close_open(packer.pending, stopped)
            if each:  # the sender's window: what the stop left unread fails as not sent too
                for position in range(run.total, len(records)):  # type: ignore[arg-type]
                    record = records[position]  # type: ignore[index]
                    run.total += 1
                    run.fail(
                        position, record, change_id(kind, record), "interrupted",
                        f"interrupted ({stopped}) before it was sent",
                        retryable=True, outcome="not_sent",
                    )  # fmt: skip
        report = run.report(
            requests=stats.requests,
            retries=stats.retries,
            rate_limit_waits=stats.rate_limited,
            rate_limit_wait=stats.rate_limit_wait,
            statuses=stats.statuses,
        )
        active = self._telemetry.active()
        if active is not None:
            active.count_records(kind, report.succeeded, report.failed, report.skipped)
        if signum is not None:
            raise SyncInterrupted(report, signum)
        if fatal is not None:
            fatal.report = report  # the partial accounting travels with the error
            if each:  # the background sender answers each submission from these
                fatal._outcomes = run.outcomes(run.total)  # type: ignore[attr-defined]
            raise fatal
        return report, run

    def _identities(self, client: BrazeClient, run: _Run, signum: int | None) -> int:
        """Merges and deletes collected by the run: applied now, or failed as not sent.
        Return the requests made."""
        identities, run.identities = run.identities, []
        if signum is None:
            return apply_identities(
                client,
                run,
                identities,
                allow_deletes=self.allow_deletes,
                max_delete_ratio=self.max_delete_ratio,
                verify_within=self.verify_deletes_within,
            )
        name = signal.Signals(signum).name
        for identity in identities:
            run.fail(
                identity.position,
                identity.record,
                identity.external_id,
                "interrupted",
                f"interrupted ({name}) before the {identity.action} was sent",
                retryable=True,
                outcome="not_sent",
            )
        return 0

    def _sync_changes(
        self, kind: str, records: Sequence[Any], *, hold: DeadLetterSink | None = None
    ) -> tuple[SyncReport, list[RecordOutcome]]:
        """One outcome per record, in order: the background sender's window of ``kind``
        (``"member"``, ``"event"``, or ``"attributes"``: Braze attribute objects already
        coerced when they were submitted). Failures go to ``hold`` when given."""
        builds: dict[str, Build] = {
            "member": self._member_builder(),
            "event": self._event_groups,
            "attributes": self._wire_attribute_groups,
        }
        report, run = self._execute(kind, records, builds[kind], each=True, hold=hold)
        return report, run.outcomes(len(records))

    def _sync_events_with_members(
        self,
        events: Sequence[Any],
        members: Sequence[Any],
        *,
        hold: DeadLetterSink | None = None,
    ) -> tuple[SyncReport, list[RecordOutcome], list[RecordOutcome]]:
        """A sender window's events and the members read from Antavo for them, in the same
        requests (Antavo's rule: a change sends the member's whole mapping). Events are at
        positions ``0..n-1``, members after them; each record fails alone (into ``hold`` when
        given). Returns the report, the events' outcomes and the members'."""
        count = len(events)

        def build(records: Iterable[Any], run: _Run) -> Generator[Sequence[Item], None, None]:
            run.members_from = count
            run.field_names = self.mapper.fields
            run.absent = [0] * len(run.field_names)
            chunk = []
            for offset, member in enumerate(members):
                mapped = self._map_with_absent(run, count + offset, member)
                if mapped is None:
                    run.total += 1
                else:
                    chunk.append((count + offset, member, *mapped))
            if self.state is not None:
                yield from self._compare(run, chunk)
            else:
                for position, member, external_id, values, _ in chunk:
                    wire = {"external_id": external_id, **values}
                    item = Item(
                        ATTRIBUTES, dumps_object(wire), external_id, position, 1, len(values)
                    )
                    yield self._open(run, position, member, (item,))
            yield from self._event_groups(events, run)

        report, run = self._execute("event", [*events, *members], build, each=True, hold=hold)
        outcomes = run.outcomes(count + len(members))
        return report, outcomes[:count], outcomes[count:]

    def _wire_attribute_groups(
        self, records: Iterable[Any], run: _Run
    ) -> Generator[Sequence[Item], None, None]:
        for position, wire in enumerate(records):
            try:
                item = wire_item(ATTRIBUTES, wire, position, 1)
            except WireError as exc:
                run.total += 1
                run.fail(position, wire, text_id(wire.get("external_id")), "validation", str(exc))
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
        hold: DeadLetterSink | None = None,
    ) -> list[RecordOutcome]:
        """Fail records that could not be sent at all (bad credentials, a closed client, a
        refused submission): each goes to the dead letter (or ``hold``), by default
        retryable once the cause is fixed."""
        run = self._new_run(kind, records, self.dead_letter if hold is None else hold)
        run.skips = {}
        for position, record in enumerate(records):
            run.total += 1
            run.fail(
                position,
                record,
                change_id(kind, record),
                stage,
                reason,
                retryable=retryable,
                outcome="not_sent",
            )
        active = self._telemetry.active()
        if active is not None:
            active.count_records(kind, 0, len(records), 0)
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
            telemetry=self._telemetry,
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
                        if run.sent_updates:
                            record_sent(self.state, run.sent_updates)
                            run.sent_updates = []
                    return
                except KeyboardInterrupt:
                    if interrupt.signal is not None:
                        raise  # a second Ctrl-C in our own code: stop now
                    interrupt.request(signal.SIGINT)
        finally:
            outcomes.close()

    @staticmethod
    def _gave_up(run: _Run, outcome: BatchOutcome) -> None:
        # Nothing ever answered is fatal in the loop (raised with the report); here Braze had
        # answered before, so the rest of the input is accounted for as not sent.
        log.warning(
            "Braze unreachable: %s; the remaining records fail as not sent (retryable)",
            outcome.error,
            extra=log_fields("sync", kind=run.kind, stage="transport", reason=str(outcome.error)),
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
        short by a hard interrupt was never read, and ``--resume`` reads it again. With
        clearing fields, the records go through the clear guard (:meth:`_guard_clears`).
        """
        member_id = self.mapper.member_id
        plan = self.mapper._fields
        fill = plan.fill
        absent = run.absent
        new_item = _new_item
        settled = Settled
        fresh = run.fresh  # the batch encodes the objects (see is_fresh)
        clearing = bool(plan.clearing)
        clear_steps = [plan.steps[n] for n in plan.clearing]
        held: list[_Held] = []  # records waiting for the guard to judge
        guard = run.clear_guard
        mark = 0
        position, mapped = -1, 0
        try:
            for position, record in enumerate(records):
                if record.__class__ is settled:  # done by the run this one resumes, or
                    run.skip(position, record.reason)  # another worker's (before the raise)
                    continue
                external_id = None
                if clearing:
                    mark = absent[-1]  # every clear so far
                try:
                    external_id = member_id(record)
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
                    run.fail(position, record, record_id(record), "validation", _describe(exc))
                    continue
                else:
                    mapped += 1
                    if len(wire) == 1:
                        run.skip(position, _NO_FIELD)
                        continue
                if clearing:
                    if absent[-1] != mark or held or guard.holding:
                        fired = [
                            step.remote_field
                            for step in clear_steps
                            if wire.get(step.remote_field, 0) is None
                            and step.get(member_fields(record)) is MISSING
                        ]
                        yield from self._guard_clears(run, held, position, record, wire, fired)
                        continue
                    guard.seen += 1  # judged already, and it clears nothing: counted, sent
                count = len(wire) - 1
                item: tuple[Any, ...]
                if fresh:  # encoded with its batch, in one call (see _batching)
                    item = (ATTRIBUTES, b"", external_id, position, 1, count, record, wire)
                else:  # the iterator may reuse these objects for the next record: encoded now
                    data = dumps_object(wire)
                    item = (ATTRIBUTES, data, external_id, position, 1, count, record, None)
                yield (new_item(Item, item),)
            while held:  # the input ended before the guard could judge: they go as they are
                group = self._release(run, held.pop(0))
                if group is not None:
                    yield group
        except GeneratorExit:  # closed after a yield: that record was handled
            run.total += position + 1
            self._interrupted(run, held)
            raise
        except BaseException:  # stopped while mapping record `position`: it was not
            run.total += max(position, 0)
            self._interrupted(run, held)
            raise
        else:
            run.total += position + 1
        finally:
            run.mapped += mapped

    def _guard_clears(
        self,
        run: _Run,
        held: list[_Held],
        position: int,
        record: Any,
        wire: dict[str, Any],
        fired: list[str],
    ) -> Iterator[tuple[Item]]:
        """A member of a mapping that clears, through the mass-clear guard: held back while
        the guard cannot judge (the first 100 members), released without the clears it
        stopped. From an iterator (not fresh) the object is encoded now, as on the hot path."""
        guard = run.clear_guard
        guard.observe(fired)
        if run.fresh:
            held.append(_Held(position, record, wire, b"", fired))
        else:
            held.append(_Held(position, record, None, dumps_object(wire), fired))
        if guard.holding:
            return
        while held:
            group = self._release(run, held.pop(0))
            if group is not None:
                yield group

    @staticmethod
    def _release(run: _Run, entry: _Held) -> tuple[Item] | None:
        """One judged member's item, without the clears the guard stopped (``None``: nothing
        left to send, skipped)."""
        position, record, wire, data, fired = entry
        stopped = [name for name in fired if name in run.clear_guard.stopped]
        values = wire if wire is not None else loads(data)
        if stopped:
            for name in stopped:
                del values[name]
            if len(values) == 1:
                run.skip(position, "nothing to send but a mass clear the guard stopped")
                return None
            if wire is None:
                data = dumps_object(values)
        run.cleared.update(name for name in fired if name not in stopped)
        count = len(values) - 1
        return (Item(ATTRIBUTES, data, values["external_id"], position, 1, count, record, wire),)

    @staticmethod
    def _interrupted(run: _Run, held: list[_Held]) -> None:
        """Fail what the guard still held when the run stopped: never sent, retryable."""
        while held:
            position, record, wire, data, _ = held.pop(0)
            wire = wire if wire is not None else loads(data)
            run.fail(
                position, record, wire["external_id"], "interrupted",
                "interrupted before it was sent", retryable=True, outcome="not_sent",
                objects=(DeadLetterObject(ATTRIBUTES, wire),),  # type: ignore[arg-type]
            )  # fmt: skip

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
            run.fail_invalid(position, record, record_id(record), [exc.at(record_id=None)])
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
        clearing = len(plan.steps)
        for number, step in enumerate(plan.steps):
            if number > stopped and step.get(fields) is MISSING:
                run.absent[number] += 1
                if values.get(step.remote_field, MISSING) is None:  # a clear: count it too
                    run.absent[clearing + plan.clearing.index(number)] += 1
                    run.absent[-1] += 1
        return values, problems

    def _stateful_member_groups(
        self, records: Iterable[Any], run: _Run
    ) -> Generator[Sequence[Item], None, None]:
        """Members with a state store or clears: a batch at a time, one state read per batch.

        Clears are guarded (:class:`ClearGuard`): records wait until it can judge (the first
        100 members), and a field it stopped is no longer cleared. What is still held when
        the run stops is failed as interrupted (never sent), so the report adds up.
        """
        chunk: list[tuple[int, Any, str, dict[str, Any], set[str]]] = []
        chunk_size = self.limits.max_objects
        guard = run.clear_guard
        try:
            for position, record in enumerate(records):
                mapped = self._map_with_absent(run, position, record)
                if mapped is None:
                    run.total += 1
                else:
                    chunk.append((position, record, *mapped))
                    guard.observe(mapped[2])
                if len(chunk) >= chunk_size and not guard.holding:
                    self._guarded(run, chunk)
                    yield from self._compare(run, chunk)  # empties the chunk
            if chunk:
                self._guarded(run, chunk)
                yield from self._compare(run, chunk)
        except (GeneratorExit, KeyboardInterrupt):  # stopped: what is held was never sent
            for position, record, external_id, values, _ in chunk:
                wire = {"external_id": external_id, **values}
                run.total += 1
                run.fail(
                    position, record, external_id, "interrupted", "interrupted before it was sent",
                    retryable=True, outcome="not_sent",
                    objects=(DeadLetterObject(ATTRIBUTES, wire),),  # type: ignore[arg-type]
                )  # fmt: skip
            raise

    @staticmethod
    def _guarded(run: _Run, chunk: list[tuple[int, Any, str, dict[str, Any], set[str]]]) -> None:
        """Take the clears the guard stopped out of the chunk (a record left with nothing to
        send is skipped)."""
        stopped = run.clear_guard.stopped
        if not stopped:
            return
        kept = []
        for position, record, external_id, values, cleared in chunk:
            for name in cleared & stopped.keys():
                del values[name]
                cleared.discard(name)
            if values:
                kept.append((position, record, external_id, values, cleared))
            else:
                run.total += 1
                run.skip(position, "nothing to send but a mass clear the guard stopped")
        chunk[:] = kept

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
            fields = member_fields(record)
            values = plan.fill(fields, {}, run.absent)
        except CoercionError as exc:
            refused = self._refused(run, position, record, external_id, exc)
            if refused is None:
                return None
            assert external_id is not None
            fields = member_fields(record)
            cleared = {
                step.remote_field
                for step in plan.steps
                if step.clear and refused.get(step.remote_field, 0) is None
                and step.get(fields) is MISSING
            }  # fmt: skip
            return external_id, refused, cleared
        except Exception as exc:
            run.fail(position, record, record_id(record), "validation", _describe(exc))
            return None
        run.mapped += 1
        if not values:
            run.skip(position, _NO_FIELD)
            return None
        cleared = {
            plan.steps[n].remote_field
            for n in plan.clearing
            if values.get(plan.steps[n].remote_field, 0) is None
            and plan.steps[n].get(fields) is MISSING
        }
        return external_id, values, cleared

    def _compare(
        self, run: _Run, chunk: list[tuple[int, Any, str, dict[str, Any], set[str]]]
    ) -> Iterator[Sequence[Item]]:
        if self.state is None:  # clears without state: what is left after the guard goes
            while chunk:
                position, record, external_id, values, cleared = chunk.pop(0)
                run.cleared.update(cleared)
                wire = {"external_id": external_id, **values}
                yield self._open(
                    run,
                    position,
                    record,
                    (Item(ATTRIBUTES, dumps_object(wire), external_id, position, 1, len(values)),),
                )
            return
        previous = get_many(self.state, [external_id for _, _, external_id, _, _ in chunk])
        secret = self._secret
        while chunk:  # each entry leaves the chunk as it is settled or yielded
            position, record, external_id, values, cleared = chunk.pop(0)
            before = previous.get(external_id)
            # Clearing only removes what Braze holds: a field never sent stays unsent.
            for name in list(cleared):
                if before is None or name not in before:
                    del values[name]
                    cleared.discard(name)
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
            run.cleared.update(name for name in cleared if name in values)
            wire = {"external_id": external_id, **values}
            group = (Item(ATTRIBUTES, dumps_object(wire), external_id, position, 1, len(values)),)
            run.states[position] = (external_id, prints)
            yield self._open(run, position, record, group)

    # --- events -----------------------------------------------------------------------------

    def _event_groups(
        self, records: Iterable[Any], run: _Run
    ) -> Generator[Sequence[Item], None, None]:
        mapper = self.mapper
        ledger = self._ledger()
        for position, event, ledger_id in self._unsent(records, run, _event_key):
            if ledger_id is _SKIP:
                continue
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
                run.fail_invalid(position, event, exc.record_id or event_id(event), [exc])
                continue
            except Exception as exc:
                run.total += 1
                run.fail(position, event, event_id(event), "validation", _describe(exc))
                continue
            if mapped.skipped:
                run.total += 1
                run.skip(position, f"{_NO_ACTION} {_action(event)!r}")
                continue
            if mapped.identity is not None:  # a merge or delete: applied after the run
                run.total += 1
                action, into = mapped.identity
                external_id = mapper.event_customer(event)
                run.identities.append(Identity(position, event, external_id, action, into))
                continue
            parts = len(mapped.objects)
            items = tuple(model_item(obj, position, parts) for obj in mapped.objects)
            if ledger and ledger_id is not None:
                run.sent[position] = ledger_id  # recorded once Braze accepts it
            yield self._open(run, position, event, items)

    def _ledger(self) -> bool:
        return self.state is not None and has_ledger(self.state)

    def _unsent(
        self, records: Iterable[Any], run: _Run, key: Callable[[Any], str | None]
    ) -> Iterator[tuple[int, Any, Any]]:
        """``(position, record, event id)``; with a ledger, events Braze accepted before
        (or repeated in this input while the first is in flight) are skipped here and come
        with the id ``_SKIP``. The ledger is read a chunk at a time."""
        if not self._ledger():  # no ledger: the id is not needed
            for position, record in enumerate(records):
                yield position, record, None
            return
        chunk: list[tuple[int, Any, str | None]] = []
        for position, record in enumerate(records):
            chunk.append((position, record, key(record)))
            if len(chunk) >= _LEDGER_CHUNK:
                yield from self._check_ledger(chunk, run)
                chunk = []
        yield from self._check_ledger(chunk, run)

    def _check_ledger(
        self, chunk: list[tuple[int, Any, str | None]], run: _Run
    ) -> Iterator[tuple[int, Any, Any]]:
        hits = already_sent(self.state, [i for _, _, i in chunk if i is not None])
        in_flight = set(run.sent.values())
        for position, record, ledger_id in chunk:
            if ledger_id is not None and (ledger_id in hits or ledger_id in in_flight):
                run.total += 1
                run.skip(position, ALREADY_SENT if ledger_id in hits else _REPEATED)
                yield position, record, _SKIP
                continue
            if ledger_id is not None:
                in_flight.add(ledger_id)
            yield position, record, ledger_id


_SKIP = object()  # the id _unsent gives a record it skipped


def _event_key(record: Any) -> str | None:
    """An event's Antavo ``id`` (the ledger's key), if it has one."""
    value = record.get("id") if isinstance(record, AbcMapping) else getattr(record, "id", None)
    if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value):
        return str(value)
    return None


def _entry_event_key(entry: Any) -> str | None:
    """The Antavo ``id`` of the event a dead-letter entry holds."""
    if isinstance(entry, DeadLetterEntry) and entry.kind == "event":
        return _event_key(entry.record)
    return None


_ALREADY_REPLAYED = "already replayed"


def _mark_replayed(path: Path, positions: set[int]) -> None:
    """Rewrite a dead-letter file with the entries at ``positions`` marked as replayed now."""
    now = utc_now().isoformat(timespec="seconds").replace("+00:00", "Z")
    lines = [
        entry_to_json(attrs.evolve(entry, replayed_at=now) if position in positions else entry)
        + "\n"
        for position, entry in enumerate(read_dead_letters(path))
    ]
    replace_private(path, "".join(lines))


class _Held(NamedTuple):
    """A member the clear guard holds back: its wire object (fresh input) or encoding."""

    position: int
    record: Any
    wire: dict[str, Any] | None
    data: bytes
    fired: list[str]


def needs_a_look(reason: str) -> bool:
    """Whether records skipped for ``reason`` point at a mistake (a mapping that matches
    nothing in the input) rather than at work already done (unchanged, already sent, another
    worker's shard, settled by the run this one resumes)."""
    return reason == _NO_FIELD or reason.startswith(_NO_ACTION)


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


def _action(record: Any) -> Any:
    if isinstance(record, AbcMapping):
        return record.get("action")
    return getattr(record, "action", None)


# The seam the background sender sends its windows through (package-level, so the sender
# never reaches into the Syncer's private methods). Each returns one outcome per record.


def sync_window(
    syncer: Syncer, kind: str, records: Sequence[Any], *, hold: DeadLetterSink | None = None
) -> tuple[SyncReport, list[RecordOutcome]]:
    """Send one window of ``kind`` (``"member"``, ``"event"`` or ``"attributes"``)."""
    return syncer._sync_changes(kind, records, hold=hold)


def sync_events_with_members(
    syncer: Syncer,
    events: Sequence[Any],
    members: Sequence[Any],
    *,
    hold: DeadLetterSink | None = None,
) -> tuple[SyncReport, list[RecordOutcome], list[RecordOutcome]]:
    """Send a window's events with the members read from Antavo for them, in one run."""
    return syncer._sync_events_with_members(events, members, hold=hold)


def fail_window(
    syncer: Syncer,
    kind: str,
    records: Sequence[Any],
    stage: Stage,
    reason: str,
    *,
    retryable: bool = True,
    hold: DeadLetterSink | None = None,
) -> list[RecordOutcome]:
    """Fail records that could not be sent at all, each into the dead letter (or ``hold``)."""
    return syncer._fail_changes(kind, records, stage, reason, retryable=retryable, hold=hold)


def telemetry_of(syncer: Syncer) -> Telemetry:
    """The Syncer's telemetry (spans, metrics, logs), shared by the sender it feeds."""
    return syncer._telemetry
