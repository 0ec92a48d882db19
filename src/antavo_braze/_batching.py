"""Packing serialized Braze objects into ``/users/track`` request bodies. Pure: no I/O.

Objects arrive in *groups* (the objects built from one input record). A group stays in one
request whenever it fits, so a member's attributes and events reach Braze together (Braze does
not order separate requests).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal, NamedTuple

from attrs import frozen

from . import _json

__all__ = [
    "ARRAYS",
    "ATTRIBUTES",
    "MAX_BODY_BYTES",
    "MAX_OBJECTS",
    "Batch",
    "BatchMode",
    "Item",
    "build_body",
    "pack",
]

ATTRIBUTES = "attributes"
ARRAYS = (ATTRIBUTES, "events", "purchases")
MAX_OBJECTS = 75
MAX_BODY_BYTES = 4_000_000
BatchMode = Literal["combined", "legacy"]


class Item(NamedTuple):
    """One Braze object in wire form: its array, the JSON-ready dict, its profile, a caller tag.

    A named tuple rather than an attrs class: one is made per object on the hot path.
    """

    array: str
    obj: Mapping[str, Any]
    external_id: str
    tag: Any = None


@frozen
class Batch:
    """One request: its items, its body, and each item's ``(array, index)`` inside the body."""

    items: tuple[Item, ...]
    body: bytes
    positions: tuple[tuple[str, int], ...]
    external_ids: frozenset[str]
    oversize: bool = False


def build_body(
    items: Sequence[Item], dumps: Callable[[Any], bytes] = _json.dumps
) -> tuple[bytes, tuple[tuple[str, int], ...]]:
    """The request body for ``items`` (serialized in one call) and each item's position in it."""
    arrays = {item.array for item in items}
    if len(arrays) == 1:  # the common case, e.g. a member sync: attributes only
        (array,) = arrays
        return dumps({array: [item.obj for item in items]}), _positions(array, len(items))
    by_array: dict[str, list[Any]] = {}
    positions: list[tuple[str, int]] = []
    for item in items:
        objects = by_array.get(item.array)
        if objects is None:
            objects = by_array[item.array] = []
        positions.append((item.array, len(objects)))
        objects.append(item.obj)
    body = {name: by_array[name] for name in ARRAYS if name in by_array}
    return dumps(body), tuple(positions)


@functools.lru_cache(maxsize=3 * (MAX_OBJECTS + 1))
def _positions(array: str, count: int) -> tuple[tuple[str, int], ...]:
    return tuple((array, index) for index in range(count))


def _batches(items: list[Item], max_bytes: int, dumps: Callable[[Any], bytes]) -> Iterator[Batch]:
    """Batches for ``items``, halving (in order) any body over ``max_bytes``."""
    body, positions = build_body(items, dumps)
    if len(body) <= max_bytes:
        yield Batch(
            items=tuple(items),
            body=body,
            positions=positions,
            external_ids=frozenset([item.external_id for item in items]),
        )
    elif len(items) == 1:
        yield Batch(tuple(items), body, positions, frozenset([items[0].external_id]), True)
    else:
        middle = len(items) // 2
        yield from _batches(items[:middle], max_bytes, dumps)
        yield from _batches(items[middle:], max_bytes, dumps)


def pack(
    groups: Iterable[Sequence[Item]],
    *,
    mode: BatchMode = "combined",
    max_objects: int = MAX_OBJECTS,
    max_bytes: int = MAX_BODY_BYTES,
    dumps: Callable[[Any], bytes] = _json.dumps,
) -> Iterator[Batch]:
    """Pack groups of items into batches within Braze's object and byte limits.

    ``combined``: at most ``max_objects`` objects per request across all arrays (current rule);
    ``legacy``: at most ``max_objects`` per array. Each body is serialized once; the rare body
    over ``max_bytes`` is split in halves, and an object that alone exceeds it comes out as a
    batch of its own marked ``oversize`` (it can never be sent).
    """
    if mode not in ("combined", "legacy"):
        raise ValueError(f"batch mode must be 'combined' or 'legacy', not {mode!r}")
    current: list[Item] = []
    counts = dict.fromkeys(ARRAYS, 0)
    combined = mode == "combined"
    for group in groups:
        if combined and len(group) == 1 and len(current) < max_objects:
            current.append(group[0])  # the hot path: one object per record (counts: legacy only)
            continue
        if combined:
            fits = len(current) + len(group) <= max_objects
        else:
            needed = dict.fromkeys(ARRAYS, 0)
            for item in group:
                needed[item.array] += 1
            fits = all(counts[a] + needed[a] <= max_objects for a in ARRAYS)
        if not fits and current:
            yield from _batches(current, max_bytes, dumps)
            current, counts = [], dict.fromkeys(ARRAYS, 0)
        for item in group:  # a group over the object limit alone is split item by item
            full = len(current) >= max_objects if combined else counts[item.array] >= max_objects
            if full:
                yield from _batches(current, max_bytes, dumps)
                current, counts = [], dict.fromkeys(ARRAYS, 0)
            current.append(item)
            counts[item.array] += 1
    if current:
        yield from _batches(current, max_bytes, dumps)
