"""Packing serialized Braze objects into ``/users/track`` request bodies. Pure: no I/O. (Hot.)

Objects arrive in *groups* (the objects built from one input record). A group stays in one
request whenever it fits, so a member's attributes and events reach Braze together (Braze does
not order separate requests). Every object is serialized once, when it is built: its bytes are
what is sent, whatever the caller does to its input afterwards, and a body's size is known
exactly while it is filled.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Literal, NamedTuple

from attrs import field, frozen, validators

from ._limits import ARRAYS, MAX_BODY_BYTES, MAX_OBJECTS

__all__ = ["ATTRIBUTES", "Batch", "BatchLimits", "BatchMode", "Item", "pack"]

ATTRIBUTES = "attributes"
BatchMode = Literal["combined", "legacy"]
_OPENINGS = {name: f'"{name}":['.encode() for name in ARRAYS}


@frozen
class BatchLimits:
    """How much one ``/users/track`` request may hold.

    ``mode="combined"``: at most ``max_objects`` objects across attributes, events and
    purchases (Braze's current rule; some contracts say 50); ``"legacy"``: ``max_objects`` per
    array. No body is larger than ``max_bytes``.
    """

    mode: BatchMode = field(default="combined", validator=validators.in_(("combined", "legacy")))
    max_objects: int = field(
        default=MAX_OBJECTS, validator=[validators.ge(1), validators.le(MAX_OBJECTS)]
    )
    max_bytes: int = field(
        default=MAX_BODY_BYTES, validator=[validators.ge(1024), validators.le(MAX_BODY_BYTES)]
    )


class Item(NamedTuple):
    """One Braze object on its way: which ``array`` it goes in, its JSON ``data``, the profile
    it touches (``key``: requests touching one profile never overlap), the input ``record``
    position it was built from, how many ``parts`` (objects) that record has, and how many
    attribute ``values`` it sets.

    A named tuple rather than an attrs class: one is made per object on the hot path.
    """

    array: str
    data: bytes
    key: str
    record: int
    parts: int = 1
    values: int = 0


@frozen
class Batch:
    """One request: its items, its body, and the profiles it touches."""

    items: tuple[Item, ...]
    body: bytes
    keys: frozenset[str]
    oversize: bool = False  # a single object over the byte limit: it can never be sent

    def locate(self) -> dict[tuple[str, int], int]:
        """``(array, index in that array of the body)`` -> item number (for ``errors[]``)."""
        counts = dict.fromkeys(ARRAYS, 0)
        where: dict[tuple[str, int], int] = {}
        for number, item in enumerate(self.items):
            where[(item.array, counts[item.array])] = number
            counts[item.array] += 1
        return where


def _body(items: Sequence[Item]) -> bytes:
    first = items[0].array
    if all(item.array == first for item in items):  # the common case: one array
        return b"{" + _OPENINGS[first] + b",".join([item.data for item in items]) + b"]}"
    parts = []
    for name in ARRAYS:
        datas = [item.data for item in items if item.array == name]
        if datas:
            parts.append(_OPENINGS[name] + b",".join(datas) + b"]")
    return b"{" + b",".join(parts) + b"}"


def _batch(items: list[Item]) -> Batch:
    return Batch(tuple(items), _body(items), frozenset([item.key for item in items]))


def _cost(item: Item, counts: dict[str, int]) -> int:
    """Bytes ``item`` adds to a body that holds ``counts`` objects per array."""
    if counts[item.array]:
        return len(item.data) + 1  # a comma
    opened = any(counts.values())
    return len(item.data) + len(_OPENINGS[item.array]) + 1 + opened  # "name":[ ] (and a comma)


def pack(groups: Iterable[Sequence[Item]], limits: BatchLimits | None = None) -> Iterator[Batch]:
    """Pack groups of items into batches within ``limits`` (Braze's, by default).

    A group that does not fit the current batch starts the next one; a group too large for
    any batch is split item by item; an object over the byte limit alone comes out as a batch
    of its own marked ``oversize``.
    """
    limits = limits or _DEFAULT
    max_objects, max_bytes = limits.max_objects, limits.max_bytes
    combined = limits.mode == "combined"
    current: list[Item] = []
    counts = dict.fromkeys(ARRAYS, 0)
    size = 2  # the braces
    hot_array = ATTRIBUTES
    for group in groups:
        if combined and len(group) == 1:
            item = group[0]
            # The hot path: one attributes object per member, added to an attributes batch.
            if item.array == hot_array and counts[hot_array] == len(current):
                cost = len(item.data) + (1 if current else len(_OPENINGS[hot_array]) + 1)
                if len(current) < max_objects and size + cost <= max_bytes:
                    current.append(item)
                    counts[hot_array] += 1
                    size += cost
                    continue
        needed = dict.fromkeys(ARRAYS, 0)
        for item in group:
            needed[item.array] += 1
        if combined:
            fits = len(current) + len(group) <= max_objects
        else:
            fits = all(counts[a] + needed[a] <= max_objects for a in ARRAYS)
        if fits:
            trial = dict(counts)
            grown = size
            for item in group:
                grown += _cost(item, trial)
                trial[item.array] += 1
            fits = grown <= max_bytes
        if not fits and current:
            yield _batch(current)
            current, counts, size = [], dict.fromkeys(ARRAYS, 0), 2
        for item in group:  # a group too large for one batch is split item by item
            cost = _cost(item, counts)
            full = len(current) >= max_objects if combined else counts[item.array] >= max_objects
            if current and (full or size + cost > max_bytes):
                yield _batch(current)
                current, counts, size = [], dict.fromkeys(ARRAYS, 0), 2
                cost = _cost(item, counts)
            if size + cost > max_bytes:  # alone in a batch and still too large
                yield Batch((item,), _body([item]), frozenset([item.key]), oversize=True)
                continue
            current.append(item)
            counts[item.array] += 1
            size += cost
    if current:
        yield _batch(current)


_DEFAULT = BatchLimits()
