"""The Syncer: mapper + client, streaming, with one outcome per input record.

Every input record ends as exactly one of succeeded, failed (with stage and reason, and in the
dead letter) or skipped (with a reason) — also when the run is interrupted or Braze goes away.
Memory is bounded by batch size times requests in flight. Each call keeps its own tally
(``_run/tally.Tally``): nothing about one call lives on the Syncer.

A call is a pipeline, wired by :meth:`Syncer._execute`: the input's records, the tally's
pre-step (unreadable lines and settled records end there), a builder from ``_build/records``
(one group of Braze objects per record), a stage from ``_run/changes`` (what Braze holds
already), the packer, the client's send loop, and the tally settling each batch's outcome.
"""

from __future__ import annotations

import hashlib
import logging
import signal
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Sequence
from collections.abc import Mapping as AbcMapping
from functools import partial
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ._braze.limits import DELETE_VERIFY_SECONDS
from ._build.batching import BatchLimits, BatchOutcome, Item, Packer, pack
from ._build.mapper import Mapper
from ._build.mapping import Mapping
from ._build.records import (
    NO_ACTION,
    NO_FIELD,
    InvalidField,
    attribute_groups,
    change_id,
    event_groups,
    wire_attribute_groups,
)
from ._client import BrazeClient, send_batches
from ._client import telemetry_of as client_telemetry
from ._http import CallStats, Interrupt
from ._identity import settle_dry_run, settle_identities
from ._json import loads
from ._run.audit import AuditReport, drifted_members, new_tally
from ._run.changes import event_key, member_stages, unsent
from ._run.deadletter import DeadLetterSink, open_sink, start_sink
from ._run.input import is_fresh, records_length, rows_of
from ._run.interrupts import stop_on_signals, until_interrupted
from ._run.progress import progress_callback
from ._run.replay import replay_file
from ._run.report import Progress, RecordOutcome, Stage, SyncReport
from ._run.state import StateStore, record_sent
from ._run.tally import Tally
from ._telemetry import Telemetry, log_fields, traced
from .exceptions import AntavoBrazeError, ConfigurationError, SyncInterrupted

if TYPE_CHECKING:
    from ._antavo.client import AntavoClient, TimeLike
    from ._scale.workers import Workers

__all__ = ["Syncer", "needs_a_look"]

log = logging.getLogger("antavo_braze.sync")

SendMode = Literal["full", "changed"]
Groups = Generator[Sequence[Item], None, None]
Build = Callable[[Iterable[tuple[int, Any]], Tally], Groups]
_PLAIN_SECRET = hashlib.sha256(b"antavo_braze state").digest()


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
        _check_options(send, state, on_invalid_field, max_clear_ratio, max_delete_ratio)
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
            self._telemetry = client_telemetry(client)
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
        return self._sync("member", members, workers)

    @traced("sync_events")
    def sync_events(self, events: Iterable[Any], *, workers: Workers = 1) -> SyncReport:
        """Send each event as a custom event or purchases (plus trigger attributes);
        ``workers`` as for :meth:`sync_members` (a member's events stay in one worker, in
        order)."""
        return self._sync("event", events, workers)

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
        build = attribute_groups(self.mapper, member_id, values, types)
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
        fixed = self._execute("attributes", drift, wire_attribute_groups)[0] if fix else None
        deque(drift, maxlen=0)  # without fix, the drift is only counted
        return tally.report(time.perf_counter() - start, fixed)

    def preview_members(self, members: Iterable[Any]) -> list[dict[str, Any]]:
        """The ``/users/track`` bodies a member sync would send; no network (records that
        fail validation are left out)."""
        return self._preview("member", members, self._builder("member"))

    def preview_events(self, events: Iterable[Any]) -> list[dict[str, Any]]:
        """The ``/users/track`` bodies an event sync would send; no network."""
        return self._preview("event", events, self._builder("event"))

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
        build = self._builder(kind)
        sink = open_sink(dead_letter)
        start_sink(sink)
        run = self._new_run("member" if kind == "members" else "event", records, sink)
        count = 0
        for batch in pack(build(run.admitted(rows_of(records)), run), self.limits):
            count += 1
            if on_body is not None:
                on_body(loads(batch.body))
            run.settle(BatchOutcome(batch))
        settle_dry_run(
            run, allow_deletes=self.allow_deletes, max_delete_ratio=self.max_delete_ratio
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
        run = partial(self._run, "replay")
        return replay_file(Path(path), self.dead_letter, self.state, run, allow_duplicates, again)

    # --- the pipeline -----------------------------------------------------------------------

    def _builder(self, kind: str) -> Build:
        """The pipeline of a member (``"member"``/``"members"``) or an event sync."""
        return self._member_builder() if kind.startswith("member") else self._event_groups

    def _member_builder(self) -> Build:
        """The member builder, followed by change detection when there is a state store."""
        send_changed, size = self.send == "changed", self.limits.max_objects
        return member_stages(
            self.mapper, self.on_invalid_field, self.state, self._secret, send_changed, size
        )

    def _event_groups(self, pairs: Iterable[tuple[int, Any]], run: Tally) -> Groups:
        """Events the ledger has not seen, through the event builder."""
        ledger = unsent(pairs, run, self.state, event_key)
        return event_groups(self.mapper, ledger, run, self.state is not None)

    def _new_run(self, kind: str, records: Any, sink: DeadLetterSink | None) -> Tally:
        return Tally(
            kind,
            sink=sink,
            progress=progress_callback(self._progress, records_length(records)),
            total=records_length(records),
            line_of=getattr(records, "line_of", None),
            fresh=is_fresh(records),
            field_names=self.mapper.fields if kind == "member" else (),
            event_arrays=kind in ("event", "replay"),
            max_clear_ratio=self.max_clear_ratio if self.mapper.plan.clearing else None,
        )

    def _preview(self, kind: str, records: Iterable[Any], build: Build) -> list[dict[str, Any]]:
        run = self._new_run(kind, records, None)
        run.progress = None  # a preview is quick and says nothing on the way
        groups = build(run.admitted(rows_of(records)), run)
        return [loads(batch.body) for batch in pack(groups, self.limits)]

    def _sync(self, kind: str, records: Iterable[Any], workers: Workers) -> SyncReport:
        from ._scale.workers import run_in_workers, worker_count  # it builds on this module

        if (count := worker_count(workers)) > 1:
            return run_in_workers(self, kind, records, count)
        return self._run(kind, records, self._builder(kind))

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
    ) -> tuple[SyncReport, Tally]:
        """Run a sync; with ``each`` the run also keeps every record's own outcome (for
        :meth:`Tally.outcomes`: the background sender answers each submission). ``hold``
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
        groups = build(run.admitted(until_interrupted(rows_of(records), interrupt)), run)
        packer = Packer(groups, self.limits)
        fatal: AntavoBrazeError | None = None
        hard_stop = False
        try:
            with stop_on_signals(interrupt, self.handle_signals):
                _send(client, self, run, packer, stats, interrupt)
        except KeyboardInterrupt:
            hard_stop = True  # what is still open fails as interrupted, below
        except AntavoBrazeError as exc:
            fatal = exc  # every batch sent was settled; what was not sent is closed below
        finally:
            groups.close()  # the builders fail what they still held as they end
            interrupt.close()
        signum = stats.interrupted or interrupt.signal
        if signum is None and fatal is None and (run.parts or packer.pending):
            signum = signal.SIGINT  # stopped hard: the loop never said why
        if run.identities:
            stats.requests += settle_identities(
                client,
                run,
                signum,
                allow_deletes=self.allow_deletes,
                max_delete_ratio=self.max_delete_ratio,
                verify_within=self.verify_deletes_within,
            )
        if signum is not None:
            run.close_open(packer.pending, signal.Signals(signum).name)
        elif fatal is not None:
            stopped = f"the run stopped at {type(fatal).__name__}"
            run.close_open(packer.pending, stopped)
            if each:  # the sender's window: what the stop left unread fails as not sent too
                run.fail_unread(records, f"interrupted ({stopped}) before it was sent")  # type: ignore[arg-type]
        elif hard_stop:
            run.unread()  # what was cut short while mapped was never read
        report = run.report(stats)
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


def _check_options(
    send: str,
    state: StateStore | None,
    on_invalid_field: str,
    max_clear_ratio: float | None,
    max_delete_ratio: float,
) -> None:
    """Refuse a Syncer option out of its range, with what it may be."""
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


def _send(
    client: BrazeClient,
    syncer: Syncer,
    run: Tally,
    packer: Packer,
    stats: CallStats,
    interrupt: Interrupt,
) -> None:
    """Settle every batch outcome; a Ctrl-C in here asks the loop to drain (it goes on
    yielding what it finishes), a second one stops at once."""
    state = syncer.state
    outcomes = send_batches(
        client,
        packer,
        stats=stats,
        interrupt=interrupt,
        give_up_after=syncer.give_up_after,
        grace=syncer.interrupt_grace,
        telemetry=syncer._telemetry,
    )
    gave_up = False
    try:
        while True:
            try:
                for outcome in outcomes:
                    if outcome.not_sent and outcome.stage == "transport" and not gave_up:
                        gave_up = True
                        _gave_up(run, outcome)
                    run.settle(outcome)
                    run.requests = stats.requests
                    if run.state_updates and state is not None:
                        state.put_many(run.state_updates)
                        run.state_updates = []
                    if run.sent_updates:
                        record_sent(state, run.sent_updates)
                        run.sent_updates = []
                return
            except KeyboardInterrupt:
                if interrupt.signal is not None:
                    raise  # a second Ctrl-C in our own code: stop now
                interrupt.request(signal.SIGINT)
    finally:
        outcomes.close()


def _gave_up(run: Tally, outcome: BatchOutcome) -> None:
    # Nothing ever answered is fatal in the loop (raised with the report); here Braze had
    # answered before, so the rest of the input is accounted for as not sent.
    log.warning(
        "Braze unreachable: %s; the remaining records fail as not sent (retryable)",
        outcome.error,
        extra=log_fields("sync", kind=run.kind, stage="transport", reason=str(outcome.error)),
    )


def needs_a_look(reason: str) -> bool:
    """Whether records skipped for ``reason`` point at a mistake (a mapping that matches
    nothing in the input) rather than at work already done (unchanged, already sent, another
    worker's shard, settled by the run this one resumes)."""
    return reason == NO_FIELD or reason.startswith(NO_ACTION)


# The seam the background sender sends its windows through (package-level, so the sender
# never reaches into the Syncer's private methods). Each returns one outcome per record.


def sync_window(
    syncer: Syncer, kind: str, records: Sequence[Any], *, hold: DeadLetterSink | None = None
) -> tuple[SyncReport, list[RecordOutcome]]:
    """Send one window of ``kind`` (``"member"``, ``"event"``, or ``"attributes"``: Braze
    attribute objects already coerced when they were submitted): one outcome per record, in
    order. Failures go to ``hold`` when given."""
    build = wire_attribute_groups if kind == "attributes" else syncer._builder(kind)
    report, run = syncer._execute(kind, records, build, each=True, hold=hold)
    return report, run.outcomes(len(records))


def sync_events_with_members(
    syncer: Syncer,
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
    members_of = syncer._member_builder()

    def build(pairs: Iterable[tuple[int, Any]], run: Tally) -> Groups:
        run.members_from = count
        run.count_fields(syncer.mapper.fields)
        yield from members_of(run.admitted(members, count), run)
        yield from syncer._event_groups(run.admitted(events), run)

    report, run = syncer._execute("event", [*events, *members], build, each=True, hold=hold)
    outcomes = run.outcomes(count + len(members))
    return report, outcomes[:count], outcomes[count:]


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
    """Fail records that could not be sent at all (bad credentials, a closed client, a
    refused submission): each goes to the dead letter (or ``hold``), by default retryable
    once the cause is fixed."""
    run = syncer._new_run(kind, records, syncer.dead_letter if hold is None else hold)
    run.skips = {}
    for position, record in run.admitted(records):
        run.fail(
            position,
            record,
            change_id(kind, record),
            stage,
            reason,
            retryable=retryable,
            outcome="not_sent",
        )
    active = syncer._telemetry.active()
    if active is not None:
        active.count_records(kind, 0, len(records), 0)
    return run.outcomes(len(records))


def telemetry_of(syncer: Syncer) -> Telemetry:
    """The Syncer's telemetry (spans, metrics, logs), shared by the sender it feeds."""
    return syncer._telemetry
