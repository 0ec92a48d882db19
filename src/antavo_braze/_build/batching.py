"""Packing serialized Braze objects into ``/users/track`` request bodies. Pure: no I/O. (Hot.)

Objects arrive in *groups* (the objects built from one input record). A group stays in one
request whenever it fits, so a member's attributes and events reach Braze together (Braze does
not order separate requests).

An object is serialized once. Most are serialized when built (``Item.data``): their bytes are
what is sent whatever the caller does to its input afterwards, and a body's size is known
exactly while it is filled. Attributes objects of a member sync whose input runs no code of
the caller (a list, a tuple, rows the SDK reads itself) may come *unencoded* (``Item.wire``):
nothing can change them before their batch closes, so the batch is encoded in one call (with
the standard library's json, one call per object costs more than the whole body); a body over
the byte limit is taken apart again into encoded objects and packed exactly.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal, NamedTuple

from attrs import field, frozen, validators

from .._json import dumps_object, loads
from ..exceptions import AntavoBrazeError
from .._braze.limits import ARRAYS, MAX_BODY_BYTES, MAX_OBJECTS

__all__ = ["ATTRIBUTES", "Batch", "BatchLimits", "BatchMode", "Item", "Packer", "pack"]

ATTRIBUTES = "attributes"
BatchMode = Literal["combined", "legacy"]
_OPENINGS = {name: f'"{name}":['.encode() for name in ARRAYS}
_HEADS = {name: b"{" + opening for name, opening in _OPENINGS.items()}


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
    position it was built from, how many ``parts`` (objects) that record has, how many
    attribute ``values`` it sets, the input record itself (``source``, for the dead letter if
    it fails), and, for an attributes object not encoded yet, its JSON-ready ``wire`` dict
    (``data`` is then empty: the batch encodes it).

    A named tuple rather than an attrs class: one is made per object on the hot path.
    """

    array: str
    data: bytes
    key: str
    record: int
    parts: int = 1
    values: int = 0
    source: Any = None
    wire: Any = None

    def encoded(self) -> Item:
        """This item with its ``data`` (itself if it has them already)."""
        if self.wire is None:
            return self
        return self._replace(data=dumps_object(self.wire), wire=None)

    def json(self) -> Any:
        """A fresh JSON-ready copy of the object (for dead letters and reports)."""
        return loads(self.data if self.wire is None else dumps_object(self.wire))


@frozen
class Batch:
    """One request: its items, its body, and the profiles it touches."""

    items: tuple[Item, ...]
    body: bytes
    oversize: bool = False  # a single object over the byte limit: it can never be sent

    @property
    def keys(self) -> frozenset[str]:
        """The profiles the request touches (worked out when it is sent, not when packed:
        dry runs and previews never need them)."""
        return frozenset([item.key for item in self.items])

    def locate(self) -> dict[tuple[str, int], int]:
        """``(array, index in that array of the body)`` -> item number (for ``errors[]``)."""
        counts = dict.fromkeys(ARRAYS, 0)
        where: dict[tuple[str, int], int] = {}
        for number, item in enumerate(self.items):
            where[(item.array, counts[item.array])] = number
            counts[item.array] += 1
        return where


def _body(items: Sequence[Item], attributes_only: bool = False) -> bytes:
    first = items[0].array
    if attributes_only or all(item.array == first for item in items):  # the common case
        # One join copies the body once (concatenating head and tail to it would copy the
        # whole body again for each).
        datas = [item.data for item in items]
        datas[0] = _HEADS[first] + datas[0]
        datas[-1] += b"]}"
        return b",".join(datas)
    parts = []
    for name in ARRAYS:
        datas = [item.data for item in items if item.array == name]
        if datas:
            parts.append(_OPENINGS[name] + b",".join(datas) + b"]")
    return b"{" + b",".join(parts) + b"}"


def _batch(items: list[Item], attributes_only: bool) -> Batch:
    return Batch(tuple(items), _body(items, attributes_only))


def _size(items: list[Item]) -> int:
    """The exact size of an attributes-only body of ``items``."""
    if not items:
        return 2
    return (
        2 + len(_OPENINGS[ATTRIBUTES]) + 1 + sum(len(item.data) for item in items) + len(items) - 1
    )


def _cost(item: Item, counts: dict[str, int]) -> int:
    """Bytes ``item`` adds to a body that holds ``counts`` objects per array."""
    if counts[item.array]:
        return len(item.data) + 1  # a comma
    opened = any(counts.values())
    return len(item.data) + len(_OPENINGS[item.array]) + 1 + opened  # "name":[ ] (and a comma)


class Packer:
    """Packs groups of items into batches within ``limits`` (Braze's, by default).

    A group that does not fit the current batch starts the next one; a group too large for
    any batch is split item by item; an object over the byte limit alone comes out as a batch
    of its own marked ``oversize``. :attr:`pending` holds the items of the batch still being
    filled and the items taken from ``groups`` but not yet placed: what an interrupted run
    has read but not sent (never an item of a batch already yielded).
    """

    def __init__(self, groups: Iterable[Sequence[Item]], limits: BatchLimits | None = None) -> None:
        self.groups = groups
        self.limits = limits or _DEFAULT
        self._open: list[Item] = []
        self._held: Sequence[Item] = ()

    @property
    def pending(self) -> list[Item]:
        """The items read from ``groups`` that are in no yielded batch yet."""
        return [*self._open, *self._held]

    def __iter__(self) -> Iterator[Batch]:
        limits = self.limits
        max_objects, max_bytes = limits.max_objects, limits.max_bytes
        combined = limits.mode == "combined"
        current = self._open = []
        counts = dict.fromkeys(ARRAYS, 0)  # kept up to date off the hot path only
        attributes_only = True  # every item in current is an attributes object
        unencoded = False  # some item in current has no data yet
        size = 2  # the braces (kept up to date off the hot path only)
        # Objects no larger than this cannot, max_objects of them, exceed max_bytes: while a
        # batch holds only such objects its size needs no counting.
        small = (max_bytes - len(_OPENINGS[ATTRIBUTES]) - 3) // max_objects - 1
        for group in self.groups:
            if combined and attributes_only and len(group) == 1:
                item = group[0]
                # The hot path: one attributes object per member, unencoded or small, into an
                # attributes batch (identity is enough: an equal string takes the general path).
                if item.array is ATTRIBUTES and (item.wire is not None or len(item.data) <= small):
                    if len(current) >= max_objects:  # filled on the general path
                        closed, current = current, []
                        self._open, self._held = current, group
                        yield from self._attributes_batches(closed)
                        self._held = ()  # the item is about to be open, not held
                    current.append(item)
                    if item.wire is not None:
                        unencoded = True
                    if len(current) >= max_objects:
                        # Full by count: closed at once, so that no object waits unencoded
                        # while the batch is away (the caller's callbacks may run then).
                        closed, current, unencoded = current, [], False
                        self._open, self._held = current, ()
                        yield from self._attributes_batches(closed)
                    continue
            if unencoded:  # leaving the hot path: exact sizes from here on
                current[:] = [item.encoded() for item in current]
                unencoded = False
            if any(item.wire is not None for item in group):
                group = [item.encoded() for item in group]
            if attributes_only:
                counts = {**dict.fromkeys(ARRAYS, 0), ATTRIBUTES: len(current)}
                size = _size(current)
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
                # Once out, a batch is the sender's: pending is what is read and not in one.
                batch, current = _batch(current, attributes_only), []
                self._open, self._held = current, group
                yield batch
                counts, size = dict.fromkeys(ARRAYS, 0), 2
            for placed, item in enumerate(group):  # too large for one batch: item by item
                cost = _cost(item, counts)
                full = (
                    len(current) >= max_objects if combined else counts[item.array] >= max_objects
                )
                if current and (full or size + cost > max_bytes):
                    batch, current = _batch(current, counts[ATTRIBUTES] == len(current)), []
                    self._open, self._held = current, group[placed:]
                    yield batch
                    counts, size = dict.fromkeys(ARRAYS, 0), 2
                    cost = _cost(item, counts)
                if size + cost > max_bytes:  # alone in a batch and still too large
                    self._held = group[placed + 1 :]
                    yield Batch((item,), _body([item]), oversize=True)
                    continue
                current.append(item)
                counts[item.array] += 1
                size += cost
            self._held = ()
            attributes_only = counts[ATTRIBUTES] == len(current) and all(
                len(item.data) <= small for item in current
            )
        self._open, self._held = [], ()
        if current:
            if attributes_only:
                yield from self._attributes_batches(current)
            else:
                yield _batch(current, False)

    def _attributes_batches(self, items: list[Item]) -> Iterator[Batch]:
        """The batches of ``items``, attributes objects that fit one batch by count: one
        batch, unless unencoded objects turn out over the byte limit together (then they are
        encoded one by one and packed exactly)."""
        wires = [item.wire for item in items if item.wire is not None]
        if not wires:
            yield _batch(items, True)
            return
        if len(wires) == len(items):
            body = dumps_object({ATTRIBUTES: wires})  # the whole body in one call
            if len(body) <= self.limits.max_bytes:
                yield Batch(tuple(items), body)
                return
        encoded = [item.encoded() for item in items]
        rest = self._held
        sent = 0
        for batch in Packer([(item,) for item in encoded], self.limits):
            sent += len(batch.items)  # batches keep the order of their items
            self._held = [*encoded[sent:], *rest]
            yield batch
        self._held = rest


def pack(groups: Iterable[Sequence[Item]], limits: BatchLimits | None = None) -> Iterator[Batch]:
    """The batches of ``groups`` (see :class:`Packer`)."""
    return iter(Packer(groups, limits))


_DEFAULT = BatchLimits()


@frozen
class BatchOutcome:
    """The result of sending one batch: per-item rejections, or the error that sank it.

    ``attempts`` the requests it took; ``unknown``: some attempt went out whole without a
    usable answer (Braze may have applied it: events could be recorded twice); ``not_sent``:
    it never left (an interrupt, a fatal error, or Braze unreachable); ``retryable``: the
    whole request failed in a way a later try may mend (429, 408, 5xx, network, interrupted)
    — decided once, by :func:`~antavo_braze._retry.decide_retry`, and carried here.
    """

    batch: Batch
    rejected: Mapping[int, str] = field(factory=dict)  # item number in batch -> reason
    error: AntavoBrazeError | None = None
    stage: str | None = None
    warnings: tuple[str, ...] = ()
    attempts: int = 0
    unknown: bool = False
    not_sent: bool = False
    retryable: bool = False

    def failure(self, item_number: int) -> tuple[str, str] | None:
        """``(stage, reason)`` if item ``item_number`` of the batch failed, else ``None``."""
        if self.error is not None:
            return self.stage or "braze", str(self.error)
        reason = self.rejected.get(item_number)
        return None if reason is None else ("braze", reason)
