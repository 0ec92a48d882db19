"""HOT: the record builders: input records -> groups of :class:`Item` (one group per record).

One member builder (:func:`member_groups`), one event builder (:func:`event_groups`), and the
small ones for wire attribute objects and one-off attributes. Each takes ``(position, record)``
pairs that already went through the tally's pre-step (unreadable lines and records settled by
an earlier run never get here) and the tally ``run`` of the call, which it tells of each record
it does not pass on (failed or skipped). Change detection is not here: it is a stage after the
member builder (``_run/changes.py``).

The member builder is the hot path: one ``Item`` per member, made with ``tuple.__new__`` (no
Python-level ``__new__``), and a record's object left unencoded when its batch can encode it
(``run.fresh``). It is pinned to :meth:`Mapper.map_member` by a twin test (tests/test_records.py).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from collections.abc import Mapping as AbcMapping
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from .._json import dumps_object, loads
from ..exceptions import CoercionError
from .batching import ATTRIBUTES, Item
from .mapper import MISSING, SHORT_ID, Mapper, member_fields
from .wire import WireError, model_item, wire_item

if TYPE_CHECKING:
    from .._run.tally import Tally

__all__ = [
    "NO_ACTION",
    "NO_FIELD",
    "Identity",
    "InvalidField",
    "change_id",
    "describe",
    "event_groups",
    "event_id",
    "member_groups",
    "record_id",
    "text_id",
    "wire_attribute_groups",
]

InvalidField = Literal["fail_record", "drop_field"]
Groups = Generator[Sequence[Item], None, None]
NO_FIELD = "no mapped field present"
NO_ACTION = "no mapping for action"
_GUARD_STOPPED = "nothing to send but a mass clear the guard stopped"
_new_item = tuple.__new__  # Item(...) without NamedTuple's Python-level __new__: hot path


class Identity(NamedTuple):
    """One merge or delete collected from a run: its record and what to do."""

    position: int
    record: Any
    external_id: str
    action: str  # "merge" or "delete"
    into: str | None = None


class _Held(NamedTuple):
    """A member the clear guard holds back: its wire object (fresh input) or encoding."""

    position: int
    record: Any
    wire: dict[str, Any] | None
    data: bytes
    fired: list[str]


# --- members --------------------------------------------------------------------------------


def member_groups(
    mapper: Mapper,
    pairs: Iterable[tuple[int, Any]],
    run: Tally,
    on_invalid_field: InvalidField = "fail_record",
    *,
    staged: bool = False,
) -> Groups:
    """Members: the hot path, one ``(Item,)`` per member sent.

    Records entered the tally in its pre-step; each leaves here failed, skipped or yielded
    (one cut short by a hard interrupt is unread: ``--resume`` reads it again). With clearing
    fields, the records go through the clear guard (:func:`_guard_clears`). ``staged``: a
    change stage follows (``_run/changes.py``): each item keeps its ``wire`` dict and the
    stage, not this builder, counts what is cleared.
    """
    member_id = mapper.member_id
    id_key = mapper.id_key
    plan = mapper.plan
    fill = plan.fill
    absent = run.absent
    new_item = _new_item
    keep = run.fresh or staged  # the batch (or the stage) encodes the objects (see is_fresh)
    clearing = bool(plan.clearing)
    clear_steps = [plan.steps[n] for n in plan.clearing]
    fields: AbcMapping[str, Any]
    held: list[_Held] = []  # records waiting for the guard to judge
    guard = run.clear_guard
    mark = 0
    mapped = 0  # records whose fields were looked at (the field counts)
    try:
        for position, record in pairs:
            external_id = None
            if clearing:
                mark = absent[-1]  # every clear so far
            try:
                if type(record) is dict and id_key is not None:
                    fields = record
                    value = record.get(id_key)
                    # Mapper's short-id test, inline; any other id takes member_id (it explains).
                    if type(value) is str and 0 < len(value) <= SHORT_ID and not value.isspace():
                        external_id = value
                    else:
                        external_id = member_id(record)
                else:
                    external_id = member_id(record)
                    fields = member_fields(record)
                wire = fill(fields, {"external_id": external_id}, absent)
            except CoercionError as exc:
                values = _refused(mapper, run, position, record, external_id, exc, on_invalid_field)
                if values is None:
                    continue
                wire = {"external_id": external_id, **values}
            except Exception as exc:  # a bad record fails alone, whatever is wrong with it
                run.fail(position, record, record_id(record), "validation", describe(exc))
                continue
            else:
                mapped += 1
                if len(wire) == 1:
                    run.skip(position, NO_FIELD)
                    continue
            if clearing:
                if absent[-1] != mark or held or guard.holding:
                    fired = [
                        step.remote_field
                        for step in clear_steps
                        if wire.get(step.remote_field, 0) is None
                        and step.get(member_fields(record)) is MISSING
                    ]
                    yield from _guard_clears(run, held, position, record, wire, fired, staged)
                    continue
                guard.seen += 1  # judged already, and it clears nothing: counted, sent
            count = len(wire) - 1
            item: tuple[Any, ...]
            if keep:  # encoded with its batch, in one call (see _batching)
                item = (ATTRIBUTES, b"", external_id, position, 1, count, record, wire)
            else:  # the iterator may reuse these objects for the next record: encoded now
                data = dumps_object(wire)
                item = (ATTRIBUTES, data, external_id, position, 1, count, record, None)
            yield (new_item(Item, item),)
        while held:  # the input ended before the guard could judge: they go as they are
            group = _release(run, held.pop(0), staged)
            if group is not None:
                yield group
    except BaseException:  # stopped (closed after a yield, or while mapping): fail the held
        _interrupted(run, held)
        raise
    finally:
        run.mapped += mapped


def _guard_clears(
    run: Tally,
    held: list[_Held],
    position: int,
    record: Any,
    wire: dict[str, Any],
    fired: list[str],
    staged: bool,
) -> Iterator[tuple[Item]]:
    """A member of a mapping that clears, through the mass-clear guard: held back while
    the guard cannot judge (the first 100 members), released without the clears it
    stopped. From an iterator (not fresh) the object is encoded now, as on the hot path."""
    guard = run.clear_guard
    guard.observe(fired)
    if run.fresh or staged:
        held.append(_Held(position, record, wire, b"", fired))
    else:
        held.append(_Held(position, record, None, dumps_object(wire), fired))
    if guard.holding:
        return
    while held:
        group = _release(run, held.pop(0), staged)
        if group is not None:
            yield group


def _release(run: Tally, entry: _Held, staged: bool) -> tuple[Item] | None:
    """One judged member's item, without the clears the guard stopped (``None``: nothing
    left to send, skipped)."""
    position, record, wire, data, fired = entry
    stopped = [name for name in fired if name in run.clear_guard.stopped]
    values = wire if wire is not None else loads(data)
    if stopped:
        for name in stopped:
            del values[name]
        if len(values) == 1:
            run.skip(position, _GUARD_STOPPED)
            return None
        if wire is None:
            data = dumps_object(values)
    if not staged:
        run.cleared.update(name for name in fired if name not in stopped)
    count = len(values) - 1
    return (Item(ATTRIBUTES, data, values["external_id"], position, 1, count, record, wire),)


def _interrupted(run: Tally, held: list[_Held]) -> None:
    """Fail what the guard still held when the run stopped: never sent, retryable."""
    while held:
        position, record, wire, data, _ = held.pop(0)
        wire = wire if wire is not None else loads(data)
        run.fail_unsent(position, record, wire)


def _refused(
    mapper: Mapper,
    run: Tally,
    position: int,
    record: Any,
    external_id: str | None,
    exc: CoercionError,
    on_invalid_field: InvalidField,
) -> dict[str, Any] | None:
    """A record the plan refused: list every bad field; with ``drop_field`` return the
    values left to send (``None``: nothing to send, the record is settled)."""
    if external_id is None:  # no usable id: nothing else matters
        run.fail_invalid(position, record, record_id(record), [exc.at(record_id=None)])
        return None
    values, problems = _each_field(mapper, record, exc, run)
    run.mapped += 1
    if on_invalid_field == "fail_record" or not problems:
        run.fail_invalid(position, record, external_id, problems or [exc])
        return None
    run.drop(position, external_id, problems)
    if not values:
        run.skip(position, "every mapped field present was invalid (drop_field)")
        return None
    return values


def _each_field(
    mapper: Mapper, record: Any, exc: CoercionError, run: Tally
) -> tuple[dict[str, Any], list[CoercionError]]:
    """The slow path: each field on its own. Absent fields after the one the plan stopped
    at were not counted by it: count them here."""
    plan = mapper.plan
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


def cleared_by(mapper: Mapper, record: Any, wire: AbcMapping[str, Any]) -> set[str]:
    """The remote fields ``wire`` clears (null because the record lacks them, ``when_missing:
    clear``), as opposed to nulls the record holds."""
    plan = mapper.plan
    if not plan.clearing:
        return set()
    fields = member_fields(record)
    return {
        plan.steps[n].remote_field
        for n in plan.clearing
        if wire.get(plan.steps[n].remote_field, 0) is None
        and plan.steps[n].get(fields) is MISSING
    }


# --- events and attribute objects -----------------------------------------------------------


def event_groups(
    mapper: Mapper,
    triples: Iterable[tuple[int, Any, str | None]],
    run: Tally,
    ledger: bool,
) -> Groups:
    """Events, each as a custom event or purchases (plus trigger attributes); merges and
    deletes are collected in ``run.identities`` (applied after the run). ``triples``:
    ``(position, event, ledger id)``, the events the ledger has not seen."""
    for position, event, ledger_id in triples:
        try:
            mapped = mapper.map_event(event)
        except CoercionError as exc:
            run.fail_invalid(position, event, exc.record_id or event_id(event), [exc])
            continue
        except Exception as exc:
            run.fail(position, event, event_id(event), "validation", describe(exc))
            continue
        if mapped.skipped:
            run.skip(position, f"{NO_ACTION} {_action(event)!r}")
            continue
        if mapped.identity is not None:  # a merge or delete: applied after the run
            action, into = mapped.identity
            external_id = mapper.event_customer(event)
            run.identities.append(Identity(position, event, external_id, action, into))
            continue
        parts = len(mapped.objects)
        items = tuple(model_item(obj, position, parts) for obj in mapped.objects)
        if ledger and ledger_id is not None:
            run.sent[position] = ledger_id  # recorded once Braze accepts it
        yield run.open(position, event, items)


def wire_attribute_groups(pairs: Iterable[tuple[int, Any]], run: Tally) -> Groups:
    """Braze attribute objects already coerced (the background sender's submissions)."""
    for position, wire in pairs:
        try:
            item = wire_item(ATTRIBUTES, wire, position, 1)
        except WireError as exc:
            run.fail(position, wire, text_id(wire.get("external_id")), "validation", str(exc))
            continue
        yield run.open(position, wire, (item,))


def attribute_groups(
    mapper: Mapper,
    member_id: Any,  # any value: Mapper.attributes explains a bad one (the record fails)
    values: AbcMapping[str, Any],
    types: AbcMapping[str, Any] | None,
) -> Callable[[Iterable[tuple[int, Any]], Tally], Groups]:
    """The builder of a one-off attributes sync (types inferred unless given)."""
    # A partial, not a closure: a generator closure closed before its first step fails when
    # this module is compiled (mypyc).
    return functools.partial(_attribute_groups, mapper, member_id, values, types)


def _attribute_groups(
    mapper: Mapper,
    member_id: Any,
    values: AbcMapping[str, Any],
    types: AbcMapping[str, Any] | None,
    pairs: Iterable[tuple[int, Any]],
    run: Tally,
) -> Groups:
    for position, record in pairs:
        try:
            obj = mapper.attributes(member_id, values, types)
        except CoercionError as exc:
            run.fail_invalid(position, record, text_id(member_id), [exc])
            continue
        yield run.open(position, record, (model_item(obj, position),))


# --- ids of records, for the report and the dead letter --------------------------------------


def text_id(value: Any) -> str | None:
    return None if value is None else str(value)


def record_id(record: Any) -> str | None:
    """A member record's id, as text."""
    value = record.get("id") if isinstance(record, AbcMapping) else getattr(record, "id", None)
    return text_id(value)


def event_id(record: Any) -> str | None:
    """The member an event belongs to (its customer), as text."""
    if isinstance(record, AbcMapping):
        return text_id(record.get("customer"))
    return text_id(getattr(record, "customer_id", None))


def describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]


def _action(record: Any) -> Any:
    if isinstance(record, AbcMapping):
        return record.get("action")
    return getattr(record, "action", None)


def change_id(kind: str, record: Any) -> str | None:
    """The member or event a background sender's change is about."""
    if kind == "event":
        return event_id(record)
    if kind == "attributes":  # a wire object, or the values refused at submit
        return text_id(record.get("external_id", record.get("id")))
    return record_id(record)
