"""Pulls: read a window of Antavo (changed customers, or events) and sync it, incrementally.

With a state store, a pull starts where the last one of its kind ended (the watermark) and
moves the watermark to the window's end only when every record of the window is settled:
accepted by Braze, or failed into the dead letter. Events Braze accepted are in the ledger,
so windows that overlap (a retried pull, a replay) never send an event twice.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, Literal

import attrs

from .._antavo.client import AntavoClient, TimeLike
from .._antavo.shapes import format_time, to_utc
from .._run.report import SyncReport
from .._run.state import read_watermark, write_watermark
from .._telemetry import log_fields
from ..exceptions import AntavoBrazeError, ConfigurationError, SyncInterrupted

if TYPE_CHECKING:
    from .._sync import Syncer

__all__ = ["pull"]

log = logging.getLogger("antavo_braze.sync")

Kind = Literal["members", "events"]


class _Reading:
    """Antavo's records; an error while reading ends them (what was read is synced and
    reported) and is raised afterwards with the partial report."""

    def __init__(self, records: Iterable[Any]) -> None:
        self._records = records
        self.error: AntavoBrazeError | None = None

    def __iter__(self) -> Iterator[Any]:
        try:
            yield from self._records
        except AntavoBrazeError as exc:
            self.error = exc


def pull(
    syncer: Syncer,
    antavo: AntavoClient,
    kind: Kind,
    since: TimeLike | None = None,
    until: TimeLike | None = None,
) -> SyncReport:
    """Read ``kind`` from Antavo over ``[since, until)`` and sync it (see the module doc)."""
    state = syncer.state
    if since is None:
        if state is None:
            raise ConfigurationError(
                f"pulling {kind} needs since= or a state store, whose watermark says where "
                "the last pull ended"
            )
        since = read_watermark(state, kind)
        if since is None:
            raise ConfigurationError(
                f"this state store has no watermark for {kind} yet: give since= for the "
                "first pull (e.g. --since 2026-12-01T00:00:00Z)"
            )
    if until is not None:
        start, end = antavo.window(since, until)
    else:  # now minus the lag: a pull less than `lag` after the last one reads nothing
        start = to_utc(since)
        end = max(start, antavo.closed_until())
    reading = _Reading(
        antavo.changed_customers(start, end) if kind == "members" else antavo.events(start, end)
    )
    sync = syncer.sync_members if kind == "members" else syncer.sync_events
    try:
        report = sync(reading)
    except SyncInterrupted as stop:  # not settled: the next pull starts where this one did
        stop.report = attrs.evolve(stop.report, watermark=format_time(start))
        raise
    settled = reading.error is None and (report.failed == 0 or syncer.dead_letter is not None)
    mark = format_time(end if settled else start)
    if settled and state is not None:
        write_watermark(state, kind, mark)
    elif not settled:
        log.warning(
            "pull of %s: the window %s .. %s is not settled; %s",
            kind,
            format_time(start),
            format_time(end),
            f"the watermark stays at {mark}"
            if state is not None  # without a state store no watermark is kept: say what to do
            else f"pull again from {mark} (no state store keeps a watermark)",
            extra=log_fields(
                "pull",
                kind="member" if kind == "members" else "event",
                reason="reading failed" if reading.error is not None else "records failed",
                failed=report.failed,
                total=report.total,
            ),
        )
    report = attrs.evolve(report, watermark=mark)
    if reading.error is not None:
        reading.error.report = report
        raise reading.error
    return report
