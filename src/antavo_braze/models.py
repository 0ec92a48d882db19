"""Value objects: Antavo inputs, the mapping config, and Braze's wire objects.

All are attrs ``@frozen`` classes and know nothing about JSON: how they look on the wire (and in
config files) is the converter's business (see ``antavo_braze._converter``).
"""

from __future__ import annotations

from collections import abc
from datetime import date, datetime
from typing import Any, Literal

from attrs import field, frozen

from ._braze.types import BrazeType

__all__ = [
    "AttributesObject",
    "BrazeObject",
    "EventAs",
    "EventMapping",
    "EventObject",
    "FieldMapping",
    "LoyaltyEvent",
    "LoyaltyMember",
    "PurchaseObject",
    "Trigger",
    "TriggerCondition",
    "WhenMissing",
]

TimeLike = datetime | date | str | int | float


def _to_mapping(value: abc.Mapping[str, Any] | None) -> abc.Mapping[str, Any]:
    return {} if value is None else value


# --- Antavo inputs --------------------------------------------------------------------------


@frozen
class LoyaltyMember:
    """An Antavo member: ``id`` becomes Braze's ``external_id``; ``fields`` are its values."""

    id: str
    fields: abc.Mapping[str, Any] = field(factory=dict, converter=_to_mapping)


@frozen
class LoyaltyEvent:
    """An Antavo event envelope: who (``customer_id``), what (``action``), ``data`` and ``time``.

    ``time`` is the event's moment (datetime, ISO string or unix seconds); when ``None`` the
    mapper uses ``data["effective_timestamp"]``, else the current time.
    """

    customer_id: str
    action: str
    data: abc.Mapping[str, Any] = field(factory=dict, converter=_to_mapping)
    time: TimeLike | None = None

    def envelope(self) -> dict[str, Any]:
        """The Antavo envelope form (``customer``/``action``/``data``/``timestamp``)."""
        out: dict[str, Any] = {
            "customer": self.customer_id,
            "action": self.action,
            "data": dict(self.data),
        }
        if self.time is not None:
            out["timestamp"] = self.time
        return out


# --- mapping config -------------------------------------------------------------------------


WhenMissing = Literal["skip", "clear"]


@frozen
class FieldMapping:
    """One pair: Antavo ``loyalty_field`` (a dotted path) → Braze ``remote_field``.

    ``when_missing``: what a path that resolves to nothing sends — ``"skip"`` nothing,
    ``"clear"`` ``null`` (Braze removes the attribute) — only when the record holds the
    path's first key; ``None`` takes the mapping's setting. ``split``: a separator that reads a
    text value as an array (``","``: a CSV cell ``"a,b"`` becomes ``["a", "b"]``).
    """

    loyalty_field: str
    remote_field: str
    type: BrazeType | None = None
    when_missing: WhenMissing | None = None
    split: str | None = None


EventAs = Literal["event", "purchase", "order_placed", "merge", "delete"]
"""What an Antavo action becomes in Braze (an events entry's ``"as"``)."""


@frozen
class EventMapping:
    """Which Antavo ``action`` becomes which Braze event ``name``, or, by ``as_``: purchases,
    Braze's ``ecommerce.order_placed`` event, both (``("purchase", "order_placed")``), or an
    identity action (``"merge"`` the customer into the one at path ``into``; ``"delete"``)."""

    action: str
    name: str | None = None
    properties: tuple[FieldMapping, ...] | None = None
    as_: EventAs | tuple[EventAs, ...] = "event"
    currency: str | None = None
    into: str | None = None

    @property
    def sends(self) -> tuple[EventAs, ...]:
        """``as_`` as a tuple (``("event",)``, ``("purchase", "order_placed")``, ...)."""
        return self.as_ if isinstance(self.as_, tuple) else (self.as_,)

    @property
    def braze_name(self) -> str:
        """The Braze event name (the action itself unless ``name`` is given)."""
        return self.name if self.name is not None else self.action


@frozen
class TriggerCondition:
    """When a trigger fires: the event's action is one of ``action`` and ``where`` paths match."""

    action: tuple[str, ...]
    where: abc.Mapping[str, Any] = field(factory=dict)


@frozen
class Trigger:
    """Antavo's "sync data occasionally": on a matching event, also send ``attributes``."""

    when: TriggerCondition
    attributes: tuple[FieldMapping, ...]


# --- Braze wire objects ---------------------------------------------------------------------


@frozen
class AttributesObject:
    """A Braze user-attributes object: the attributes to set on ``external_id``'s profile."""

    external_id: str
    attributes: abc.Mapping[str, Any]
    update_existing_only: bool | None = None


@frozen
class EventObject:
    """A Braze custom event for ``external_id``."""

    external_id: str
    name: str
    time: str
    properties: abc.Mapping[str, Any] | None = None
    app_id: str | None = None
    update_existing_only: bool | None = None


@frozen
class PurchaseObject:
    """A Braze purchase object (one product line; ``quantity`` ≤ 100)."""

    external_id: str
    product_id: str
    currency: str
    price: float
    time: str
    quantity: int = 1
    properties: abc.Mapping[str, Any] | None = None
    app_id: str | None = None
    update_existing_only: bool | None = None


BrazeObject = AttributesObject | EventObject | PurchaseObject
