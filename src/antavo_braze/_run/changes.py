"""What Braze already has: the stages between the record builders and the packer.

- :func:`changed_groups`, change detection for members: after the one member builder
  (:func:`~antavo_braze._build.records.member_groups`), a batch at a time with one state read
  per batch, a member whose fingerprints match what Braze last accepted is skipped as
  unchanged; with ``send="changed"`` only its changed fields go.
- :func:`unsent`, the event ledger: events Braze accepted before (or repeated in this input)
  are skipped before the event builder sees them.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from collections.abc import Mapping as AbcMapping
from functools import partial
from typing import Any

from .._build.batching import ATTRIBUTES, Item
from .._build.mapper import Mapper
from .._build.records import NO_FIELD, InvalidField, cleared_by, member_groups
from .._json import dumps_object
from ..exceptions import AntavoBrazeError
from .state import StateStore, already_sent, get_many, has_ledger
from .tally import Tally, fingerprint

__all__ = [
    "ALREADY_SENT",
    "UNCHANGED",
    "changed_groups",
    "event_key",
    "member_stages",
    "unsent",
]

Groups = Generator[Sequence[Item], None, None]
UNCHANGED = "unchanged since Braze last accepted it"
ALREADY_SENT = "already sent"  # the event ledger holds its id: Braze accepted it before
_REPEATED = "repeats an earlier event of this input (same id)"
_LEDGER_CHUNK = 75  # events looked up in the ledger at once


def member_stages(
    mapper: Mapper,
    on_invalid_field: InvalidField,
    state: StateStore | None,
    secret: bytes,
    send_changed: bool,
    chunk_size: int,
) -> Callable[[Iterable[tuple[int, Any]], Tally], Groups]:
    """The member pipeline of a call: the one member builder, then change detection when
    there is a state store to compare with."""
    if state is None:
        return partial(member_groups, mapper, on_invalid_field=on_invalid_field)

    def build(pairs: Iterable[tuple[int, Any]], run: Tally) -> Groups:
        groups = member_groups(mapper, pairs, run, on_invalid_field, staged=True)
        return changed_groups(
            groups,
            run,
            mapper,
            state,
            secret=secret,
            send_changed=send_changed,
            chunk_size=chunk_size,
        )

    return build


def changed_groups(
    groups: Groups,
    run: Tally,
    mapper: Mapper,
    state: StateStore,
    *,
    secret: bytes,
    send_changed: bool,
    chunk_size: int,
) -> Groups:
    """The member builder's groups (built with ``staged=True``), less what Braze holds
    already. What is still held here when the run stops fails as interrupted (never sent),
    so the report adds up."""
    chunk: list[Item] = []
    try:
        for group in groups:
            chunk.extend(group)
            if len(chunk) >= chunk_size:
                yield from _compare(chunk, run, mapper, state, secret, send_changed)
        if chunk:
            yield from _compare(chunk, run, mapper, state, secret, send_changed)
    except (GeneratorExit, KeyboardInterrupt, AntavoBrazeError):  # stopped: never sent
        for item in chunk:
            run.fail_unsent(item.record, item.source, item.wire)
        raise
    finally:
        groups.close()  # the builder counts the records it handled as it ends


def _compare(
    chunk: list[Item],
    run: Tally,
    mapper: Mapper,
    state: StateStore,
    secret: bytes,
    send_changed: bool,
) -> Iterator[tuple[Item]]:
    """Each member of ``chunk`` against the state read for all of them; each leaves the
    chunk as it is skipped or yielded."""
    previous = get_many(state, [item.key for item in chunk])
    while chunk:
        item = chunk[0]
        position, record, external_id = item.record, item.source, item.key
        values = dict(item.wire)
        del values["external_id"]
        cleared = cleared_by(mapper, record, item.wire)
        before = previous.get(external_id)
        # Clearing only removes what Braze holds: a field never sent stays unsent.
        for name in list(cleared):
            if before is None or name not in before:
                del values[name]
                cleared.discard(name)
        prints = {name: fingerprint(value, secret) for name, value in values.items()}
        del chunk[0]
        if before is not None:
            changed = {k for k, v in prints.items() if before.get(k) != v}
            if not changed:
                run.saved += len(prints)
                run.skip(position, UNCHANGED)
                continue
            if send_changed:
                run.saved += len(prints) - len(changed)
                values = {k: v for k, v in values.items() if k in changed}
        if not values:
            run.skip(position, NO_FIELD)
            continue
        run.cleared.update(name for name in cleared if name in values)
        wire = {"external_id": external_id, **values}
        run.states[position] = (external_id, prints)
        data = dumps_object(wire)
        yield (Item(ATTRIBUTES, data, external_id, position, 1, len(values), record),)


# --- the event ledger ---------------------------------------------------------------------------


def unsent(
    pairs: Iterable[tuple[int, Any]],
    run: Tally,
    state: StateStore | None,
    key: Callable[[Any], str | None],
) -> Iterator[tuple[int, Any, str | None]]:
    """``(position, record, event id)`` of the events to send; with a ledger, events Braze
    accepted before (or repeated in this input while the first is in flight) are skipped
    here. The ledger is read a chunk at a time."""
    if state is None or not has_ledger(state):  # no ledger: the id is not needed
        for position, record in pairs:
            yield position, record, None
        return
    chunk: list[tuple[int, Any, str | None]] = []
    for position, record in pairs:
        chunk.append((position, record, key(record)))
        if len(chunk) >= _LEDGER_CHUNK:
            yield from _check_ledger(chunk, run, state)
            chunk = []
    yield from _check_ledger(chunk, run, state)


def _check_ledger(
    chunk: list[tuple[int, Any, str | None]], run: Tally, state: StateStore
) -> Iterator[tuple[int, Any, str | None]]:
    hits = already_sent(state, [i for _, _, i in chunk if i is not None])
    in_flight = set(run.sent.values())
    for position, record, ledger_id in chunk:
        if ledger_id is not None and (ledger_id in hits or ledger_id in in_flight):
            run.skip(position, ALREADY_SENT if ledger_id in hits else _REPEATED)
            continue
        if ledger_id is not None:
            in_flight.add(ledger_id)
        yield position, record, ledger_id


def event_key(record: Any) -> str | None:
    """An event's Antavo ``id`` (the ledger's key), if it has one."""
    value = record.get("id") if isinstance(record, AbcMapping) else getattr(record, "id", None)
    if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value):
        return str(value)
    return None
