"""Replaying a dead letter: which entries are resent, their groups, and the file marked after.

The Syncer's :meth:`~antavo_braze.Syncer.replay` reads the file, runs :func:`replay_groups`
through its pipeline and marks the resent entries (:func:`mark_replayed`), so that replaying
the same file twice never doubles events or purchases.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs

from .._build.batching import ATTRIBUTES, Item
from .._build.mapper import utc_now
from .._build.wire import WireError, wire_item
from ..exceptions import ConfigurationError, SyncInterrupted
from .changes import event_key, unsent
from .deadletter import DeadLetterEntry, DeadLetterSink, entry_to_json, read_dead_letters
from .files import check_private, replace_private
from .report import SyncReport
from .state import StateStore
from .tally import Tally

__all__ = ["mark_replayed", "read_replay", "replay_builder", "replay_file"]

Groups = Generator[Sequence[Item], None, None]
Build = Callable[[Iterable[tuple[int, Any]], Tally], Groups]
_ALREADY_REPLAYED = "already replayed"


def replay_file(
    source: Path,
    dead_letter: DeadLetterSink | None,
    state: StateStore | None,
    run: Callable[[Iterable[DeadLetterEntry], Build], SyncReport],
    allow_duplicates: bool,
    again: bool,
) -> SyncReport:
    """Replay the dead letter ``source`` through ``run`` (the Syncer's pipeline), then mark
    the resent entries in it (also when the run was interrupted: what was cut off is in the
    new dead letter, not lost; a call that failed as a whole marks nothing)."""
    entries = read_replay(source, dead_letter)
    resent: set[int] = set()
    build = replay_builder(state, allow_duplicates=allow_duplicates, again=again, resent=resent)
    try:
        report = run(entries, build)
    except SyncInterrupted:
        if resent:
            mark_replayed(source, resent)
        raise
    if resent:
        mark_replayed(source, resent)
    return report


def read_replay(path: Path, dead_letter: DeadLetterSink | None) -> Iterator[DeadLetterEntry]:
    """The entries of the dead-letter file ``path``, once it is known that it may be
    rewritten afterwards and is not the dead letter this replay writes to."""
    target = getattr(dead_letter, "path", None)
    if target is not None and _same_file(Path(target), path):
        raise ConfigurationError("replay needs a dead_letter other than the file it reads")
    # The file is rewritten with the resent entries marked: refuse one we may not rewrite
    # before anything is sent, never after (resent but unmarked would double next time).
    check_private(path)
    return read_dead_letters(path)


def replay_builder(
    state: StateStore | None, *, allow_duplicates: bool, again: bool, resent: set[int]
) -> Build:
    """The builder of a replay: each entry resent as the objects it holds, or skipped with
    its reason (and carried over to the new dead letter). Resent positions go in ``resent``."""

    def build(pairs: Iterable[tuple[int, Any]], run: Tally) -> Groups:
        for position, entry, ledger_id in unsent(pairs, run, state, _entry_event_key):
            if entry.replayed_at is not None and not again:
                run.skip(position, f"{_ALREADY_REPLAYED} (again=True / --again resends it)")
                continue
            reason = _not_resent(entry, allow_duplicates)
            if reason is not None:
                run.skip(position, reason)
                if run.sink is not None:
                    run.sink.write(entry)
                continue
            try:
                parts = len(entry.objects)
                items = tuple(wire_item(o.array, o.object, position, parts) for o in entry.objects)
            except WireError as exc:
                run.fail(position, entry, entry.record_id, "validation", str(exc))
                continue
            resent.add(position)
            if ledger_id is not None:
                run.sent[position] = ledger_id
            yield run.open(position, entry, items)

    return build


def mark_replayed(path: Path, positions: set[int]) -> None:
    """Rewrite a dead-letter file with the entries at ``positions`` marked as replayed now."""
    now = utc_now().isoformat(timespec="seconds").replace("+00:00", "Z")
    lines = [
        entry_to_json(attrs.evolve(entry, replayed_at=now) if position in positions else entry)
        + "\n"
        for position, entry in enumerate(read_dead_letters(path))
    ]
    replace_private(path, "".join(lines))


def _entry_event_key(entry: Any) -> str | None:
    """The Antavo ``id`` of the event a dead-letter entry holds."""
    if isinstance(entry, DeadLetterEntry) and entry.kind == "event":
        return event_key(entry.record)
    return None


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


def _same_file(a: Path, b: Path) -> bool:
    """Whether both paths exist and are one file (links included)."""
    return a.exists() and b.exists() and os.path.samefile(a, b)
