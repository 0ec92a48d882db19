"""Packing serialized Braze objects into ``/users/track`` request bodies. Pure: no I/O.

Objects arrive in *groups* (the objects built from one input record). A group stays in one
request whenever it fits, so a member's attributes and events reach Braze together (Braze does
not order separate requests).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Literal

from attrs import frozen

__all__ = [
    "ARRAYS",
    "MAX_BODY_BYTES",
    "MAX_OBJECTS",
    "Batch",
    "BatchMode",
    "Item",
    "build_body",
    "pack",
]

ARRAYS = ("attributes", "events", "purchases")
MAX_OBJECTS = 75
MAX_BODY_BYTES = 4_000_000
BatchMode = Literal["combined", "legacy"]
# Fixed bytes of a body: braces, plus per array its quoted name, colon, brackets and a comma.
_BODY_OVERHEAD = 2 + sum(len(name) + 6 for name in ARRAYS)


@frozen
class Item:
    """One serialized Braze object: its array, JSON bytes, the profile it touches, a caller tag."""

    array: str
    payload: bytes
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


def build_body(items: Sequence[Item]) -> tuple[bytes, tuple[tuple[str, int], ...]]:
    """The request body for ``items`` and each item's position in it."""
    by_array: dict[str, list[bytes]] = {}
    positions: list[tuple[str, int]] = []
    for item in items:
        payloads = by_array.setdefault(item.array, [])
        positions.append((item.array, len(payloads)))
        payloads.append(item.payload)
    parts = [
        b'"' + name.encode() + b'":[' + b",".join(by_array[name]) + b"]"
        for name in ARRAYS
        if name in by_array
    ]
    return b"{" + b",".join(parts) + b"}", tuple(positions)


def _make_batch(items: list[Item], oversize: bool = False) -> Batch:
    body, positions = build_body(items)
    return Batch(
        items=tuple(items),
        body=body,
        positions=positions,
        external_ids=frozenset(item.external_id for item in items),
        oversize=oversize,
    )


def pack(
    groups: Iterable[Sequence[Item]],
    *,
    mode: BatchMode = "combined",
    max_objects: int = MAX_OBJECTS,
    max_bytes: int = MAX_BODY_BYTES,
) -> Iterator[Batch]:
    """Pack groups of items into batches within Braze's object and byte limits.

    ``combined``: at most ``max_objects`` objects per request across all arrays (current rule);
    ``legacy``: at most ``max_objects`` per array. An object that alone exceeds ``max_bytes``
    comes out as a batch of its own marked ``oversize`` (it can never be sent).
    """
    if mode not in ("combined", "legacy"):
        raise ValueError(f"batch mode must be 'combined' or 'legacy', not {mode!r}")
    budget = max_bytes - _BODY_OVERHEAD
    current: list[Item] = []
    counts = dict.fromkeys(ARRAYS, 0)
    size = 0

    def fits(item_counts: dict[str, int], total: int, extra_bytes: int) -> bool:
        if size + extra_bytes > budget:
            return False
        if mode == "combined":
            return len(current) + total <= max_objects
        return all(counts[a] + n <= max_objects for a, n in item_counts.items())

    for group in groups:
        group_counts: dict[str, int] = {}
        group_bytes = 0
        for item in group:
            group_counts[item.array] = group_counts.get(item.array, 0) + 1
            group_bytes += len(item.payload) + 1
        if current and not fits(group_counts, len(group), group_bytes):
            yield _make_batch(current)
            current, counts, size = [], dict.fromkeys(ARRAYS, 0), 0
        if fits(group_counts, len(group), group_bytes):
            current.extend(group)
            for name, n in group_counts.items():
                counts[name] += n
            size += group_bytes
            continue
        # The group alone is over a limit: split it item by item.
        for item in group:
            item_bytes = len(item.payload) + 1
            if item_bytes > budget:
                if current:  # keep the input order
                    yield _make_batch(current)
                    current, counts, size = [], dict.fromkeys(ARRAYS, 0), 0
                yield _make_batch([item], oversize=True)
                continue
            if current and not fits({item.array: 1}, 1, item_bytes):
                yield _make_batch(current)
                current, counts, size = [], dict.fromkeys(ARRAYS, 0), 0
            current.append(item)
            counts[item.array] += 1
            size += item_bytes
    if current:
        yield _make_batch(current)
