"""HOT: the mapper: Antavo members and events → Braze wire objects. Pure: no I/O.

A :class:`Mapper` compiles a :class:`~antavo_braze.Mapping` once into a plan of
``(remote_field, getter, coercer)`` steps, so mapping a record does no per-value type dispatch.
Bad values raise :class:`~antavo_braze.CoercionError` located at the record and field.
"""

from __future__ import annotations

from collections import abc
from collections.abc import Callable
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

from attrs import frozen

from .._braze.limits import MAX_EXTERNAL_ID_BYTES, MAX_PURCHASE_QUANTITY, PURCHASE_PROPERTY_RESERVED
from ..exceptions import CoercionError
from ..models import (
    AttributesObject,
    BrazeObject,
    EventMapping,
    EventObject,
    LoyaltyEvent,
    LoyaltyMember,
    PurchaseObject,
    Trigger,
)
from .coerce import (
    DEFAULT_MAX_ARRAY_ITEMS,
    check_options,
    coerce_date,
    coerce_number,
    coerce_properties,
    coercer_for,
    standard_coercer,
)
from .ecommerce import ORDER_PLACED, order_placed_properties
from .mapping import Mapping
from .plan import MISSING, Getter, Plan, compile_fields, compile_getter

__all__ = ["MISSING", "SHORT_ID", "MappedEvent", "Mapper", "get_path", "member_fields", "utc_now"]

# An id string this short (and not blank) is a valid external_id as it is: its UTF-8 cannot
# exceed the byte limit. The record builder tests it inline (records.py); _external_id here.
SHORT_ID = MAX_EXTERNAL_ID_BYTES // 4  # characters: at most 4 UTF-8 bytes each


def utc_now() -> datetime:
    """The current time, aware, in UTC."""
    return datetime.now(timezone.utc)


def get_path(record: Any, path: str) -> Any:
    """Read a dotted ``path`` (digits index lists) from ``record``; :data:`MISSING` if absent."""
    return compile_getter(path)(record)


def member_fields(member: Any) -> abc.Mapping[str, Any]:
    """The field values of a member record (a dict, or :class:`LoyaltyMember`'s ``fields``)."""
    if type(member) is dict:
        return member
    return member.fields if isinstance(member, LoyaltyMember) else member


def _no_id_reason(record: abc.Mapping[str, Any], id_field: str) -> str:
    """Why a member has no id, with the likeliest fix: the wrong kind of file, or the id
    under another name."""
    reason = f"the record has no {id_field!r}"
    if "customer" in record and "action" in record:
        return reason + " (it looks like an event: customer, action; use `sync events`)"
    names = [str(k) for k in record if str(k).lower().strip("_") in _ID_NAMES and k != id_field]
    if names:
        return reason + f' (it has {names[0]!r}: set "id_field": {names[0]!r} in the mapping)'
    return reason


_ID_NAMES = frozenset({"id", "customer_id", "member_id", "membership_id", "external_id", "uid"})


def _not_an_event(record: abc.Mapping[str, Any]) -> str:
    hint = " (it looks like a member; use `sync members`)" if "id" in record else ""
    return "the event has no 'customer' and no 'action'" + hint


@frozen
class MappedEvent:
    """What one Antavo event becomes: the Braze objects to send (none when ``skipped``), and
    an identity action (``("merge", into_external_id)`` or ``("delete", None)``) if its
    entry has ``"as": "merge"`` or ``"delete"``."""

    objects: tuple[BrazeObject, ...]
    skipped: bool = False
    identity: tuple[str, str | None] | None = None


def _external_id(value: Any, field: str) -> str:
    if type(value) is str and 0 < len(value) <= SHORT_ID and not value.isspace():
        return value  # short enough that its UTF-8 cannot exceed the byte limit
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise CoercionError(value, "external_id", "expected a string id", field=field)
    text = str(value)
    if not text.strip():
        raise CoercionError(value, "external_id", "the id is empty", field=field)
    if len(text.encode()) > MAX_EXTERNAL_ID_BYTES:
        raise CoercionError(
            value, "external_id", f"longer than Braze's {MAX_EXTERNAL_ID_BYTES} bytes", field=field
        )
    return text


class Mapper:
    """Maps members and events with a compiled :class:`Mapping`. Pure and thread-safe.

    ``app_id`` is added to events and purchases; ``clock`` gives "now" for events without a time.
    """

    def __init__(
        self,
        mapping: Mapping,
        *,
        app_id: str | None = None,
        max_array_items: int = DEFAULT_MAX_ARRAY_ITEMS,
        truncate_strings: bool = False,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        check_options(max_array_items, truncate_strings)
        self.mapping = mapping
        self.app_id = app_id
        self._clock = clock
        self._max_array_items = max_array_items
        self._truncate_strings = truncate_strings
        options = (max_array_items, truncate_strings)
        #: The member fields' plan (HOT: see :mod:`.plan`); the record builders drive it.
        self.plan = compile_fields(mapping.fields, *options, when_missing=mapping.when_missing)
        self._id_field = mapping.id_field
        self._get_id = compile_getter(mapping.id_field)
        #: The id field when it is a plain key (the record builder reads it inline), else None.
        self.id_key = None if "." in mapping.id_field else mapping.id_field
        self._events: dict[str, tuple[EventMapping, Plan | None]] = {}
        for entry in mapping.events:
            label = f"event {entry.action}"
            steps = None
            if entry.properties is not None:
                steps = compile_fields(entry.properties, *options, prefix="data", label=label)
            self._events[entry.action] = (entry, steps)
        self._wildcard = self._events.pop("*", None)
        self._triggers = [
            (
                trigger,
                compile_fields(trigger.attributes, *options, label="trigger"),
                [(compile_getter(path), value) for path, value in trigger.when.where.items()],
            )
            for trigger in mapping.triggers
        ]

    # --- members ----------------------------------------------------------------------------

    def member_id(self, member: Any) -> str:
        """The ``external_id`` of a member (dict with the mapping's ``id_field``, ``"id"``
        by default, or :class:`LoyaltyMember`)."""
        if type(member) is dict or isinstance(member, abc.Mapping):
            value = self._get_id(member)
            if value is MISSING:
                raise CoercionError(
                    member, "member", _no_id_reason(member, self._id_field), field=self._id_field
                )
            return _external_id(value, self._id_field)
        if isinstance(member, LoyaltyMember):
            return _external_id(member.id, "id")
        raise CoercionError(
            member, "member", f"expected a dict or LoyaltyMember, got {type(member).__name__}"
        )

    @property
    def fields(self) -> tuple[tuple[str, str, bool], ...]:
        """``(loyalty_field, remote_field, clears)`` of every mapped field, in plan order."""
        return tuple((s.location, s.remote_field, s.clear) for s in self.plan.steps)

    def member_values(self, member: Any) -> dict[str, Any]:
        """The coerced Braze attribute values of every mapped field present in ``member``
        (and ``None`` for absent ``when_missing: "clear"`` fields)."""
        return self.plan.values(member_fields(member))

    def member_problems(self, member: Any) -> tuple[dict[str, Any], list[CoercionError]]:
        """Every field of ``member`` on its own: the values that coerce and an error for each
        field that does not (the slow path behind a refused record)."""
        return self.plan.each(member_fields(member))

    def map_member(self, member: Any) -> AttributesObject:
        """Map one member to its attributes object (every mapped field present)."""
        external_id, values = self.member_attributes(member)
        return AttributesObject(external_id=external_id, attributes=values)

    def member_attributes(self, member: Any) -> tuple[str, dict[str, Any]]:
        """``(external_id, values)`` of one member: :meth:`map_member` without the object."""
        external_id = self.member_id(member)
        try:
            return external_id, self.member_values(member)
        except CoercionError as exc:
            raise exc.at(record_id=external_id) from None

    def attributes(
        self,
        member_id: Any,
        values: abc.Mapping[str, Any],
        types: abc.Mapping[str, Any] | None = None,
    ) -> AttributesObject:
        """A one-off attributes object for values outside the mapping (types inferred if absent)."""
        external_id = _external_id(member_id, "member_id")
        types = types or {}
        out: dict[str, Any] = {}
        for name, value in values.items():
            coercer = standard_coercer(name, truncate_strings=self._truncate_strings)
            if coercer is None:
                coercer = coercer_for(
                    types.get(name),
                    max_array_items=self._max_array_items,
                    truncate_strings=self._truncate_strings,
                )
            try:
                out[name] = coercer(value)
            except CoercionError as exc:
                raise exc.at(name, external_id) from None
        return AttributesObject(external_id=external_id, attributes=out)

    # --- events -----------------------------------------------------------------------------

    def event_customer(self, event: Any) -> str:
        """The ``external_id`` an event belongs to."""
        if isinstance(event, LoyaltyEvent):
            return _external_id(event.customer_id, "customer")
        if isinstance(event, abc.Mapping):
            if "customer" not in event and "action" not in event:
                raise CoercionError(event, "event", _not_an_event(event), field="customer")
            return _external_id(event.get("customer"), "customer")
        raise CoercionError(
            event, "event", f"expected a dict or LoyaltyEvent, got {type(event).__name__}"
        )

    def map_event(self, event: Any) -> MappedEvent:
        """Map one Antavo event to its custom event or purchases, plus trigger attributes."""
        external_id = self.event_customer(event)
        try:
            return self._map_event(event, external_id)
        except CoercionError as exc:
            raise exc.at(record_id=external_id) from None

    def _map_event(self, event: Any, external_id: str) -> MappedEvent:
        envelope = event.envelope() if isinstance(event, LoyaltyEvent) else event
        action = envelope.get("action")
        if not isinstance(action, str) or not action:
            raise CoercionError(action, "event", "the event has no 'action'", field="action")
        data = envelope.get("data")
        if data is None:
            data = {}
        if not isinstance(data, abc.Mapping):
            raise CoercionError(data, "event", "'data' must be an object", field="data")
        entry = self._events.get(action, self._wildcard)
        triggers = [t for t in self._triggers if _matches(t[0], t[2], action, envelope)]
        if entry is None and not triggers:
            return MappedEvent(objects=(), skipped=True)
        time = self._event_time(envelope, data)
        objects: list[BrazeObject] = []
        identity: tuple[str, str | None] | None = None
        if entry is not None:
            mapping, steps = entry
            sends = mapping.sends
            if "merge" in sends:
                identity = ("merge", _merge_target(mapping, envelope, external_id))
            elif "delete" in sends:
                identity = ("delete", None)
            if "purchase" in sends:
                objects.extend(_purchases(self.app_id, mapping, steps, data, external_id, time))
            if "order_placed" in sends:
                objects.append(self._order_placed(mapping, data, external_id, time))
            if "event" in sends:
                objects.append(self._custom_event(mapping, steps, action, data, external_id, time))
        if triggers:
            view = dict(envelope)
            view.setdefault("timestamp", time)
            values: dict[str, Any] = {}
            for _, steps_, _ in triggers:
                steps_.values(view, values)
            if values:
                objects.insert(0, AttributesObject(external_id=external_id, attributes=values))
        return MappedEvent(
            objects=tuple(objects), skipped=not objects and identity is None, identity=identity
        )

    def _order_placed(
        self, mapping: EventMapping, data: abc.Mapping[str, Any], external_id: str, time: str
    ) -> EventObject:
        return EventObject(
            external_id=external_id,
            name=ORDER_PLACED,
            time=time,
            properties=order_placed_properties(data, mapping.currency),
            app_id=self.app_id,
        )

    def _event_time(self, envelope: abc.Mapping[str, Any], data: abc.Mapping[str, Any]) -> str:
        for field, raw in (
            ("timestamp", envelope.get("timestamp")),
            ("data.effective_timestamp", data.get("effective_timestamp")),
        ):
            if raw is not None:
                try:
                    return coerce_date(raw)  # type: ignore[return-value]
                except CoercionError as exc:
                    raise exc.at(field) from None
        return coerce_date(self._clock())  # type: ignore[return-value]

    def _custom_event(
        self,
        mapping: EventMapping,
        steps: Plan | None,
        action: str,
        data: abc.Mapping[str, Any],
        external_id: str,
        time: str,
    ) -> EventObject:
        name = mapping.name if mapping.name is not None else action
        if name.startswith("$") or len(name) > 255:
            raise CoercionError(name, "event", "not a valid Braze event name", field="action")
        if steps is None:
            try:
                properties = coerce_properties(data)
            except CoercionError as exc:
                raise exc.at("data") from None
        else:
            properties = steps.values(data)
        return EventObject(
            external_id=external_id,
            name=name,
            time=time,
            properties=properties or None,
            app_id=self.app_id,
        )


def _merge_target(mapping: EventMapping, envelope: Any, external_id: str) -> str:
    """The customer an ``"as": "merge"`` event's customer is merged into."""
    assert mapping.into is not None  # the mapping requires it
    value = compile_getter(mapping.into)(envelope)
    if value is MISSING or value is None:
        raise CoercionError(
            None,
            "merge",
            "the event does not name the customer to merge into",
            field=mapping.into,
        )
    target = _external_id(value, mapping.into)
    if target == external_id:
        raise CoercionError(
            value, "merge", "cannot merge a customer into itself", field=mapping.into
        )
    return target


def _matches(trigger: Trigger, where: list[tuple[Getter, Any]], action: str, envelope: Any) -> bool:
    return action in trigger.when.action and all(get(envelope) == v for get, v in where)


def _purchases(
    app_id: str | None,
    mapping: EventMapping,
    steps: Plan | None,
    data: abc.Mapping[str, Any],
    external_id: str,
    time: str,
) -> list[PurchaseObject]:
    currency = data.get("currency") or mapping.currency
    if not isinstance(currency, str) or len(currency.strip()) != 3 or not currency.isalpha():
        raise CoercionError(
            currency,
            "purchase",
            "needs an ISO 4217 currency such as 'EUR'",
            field="data.currency",
        )
    currency = currency.strip().upper()
    shared = {} if steps is None else steps.values(data)
    if steps is None and data.get("transaction_id") is not None:
        shared["transaction_id"] = data["transaction_id"]
    items = data.get("items")
    if not items:
        # An order without line items is one purchase of the order (coupon_redeem: amount).
        price = data.get("total", data.get("amount"))
        items = [{"product_id": mapping.braze_name, "price": price, "quantity": 1}]
    elif not isinstance(items, (list, tuple)):
        raise CoercionError(items, "purchase", "'items' must be a list", field="data.items")
    out: list[PurchaseObject] = []
    for index, item in enumerate(items):
        try:
            out.extend(
                _line_purchases(app_id, item, shared, steps is None, external_id, currency, time)
            )
        except CoercionError as exc:
            raise exc.at(f"data.items[{index}]") from None
    return out


def _line_purchases(
    app_id: str | None,
    item: Any,
    shared: dict[str, Any],
    pass_through: bool,
    external_id: str,
    currency: str,
    time: str,
) -> list[PurchaseObject]:
    if not isinstance(item, abc.Mapping):
        raise CoercionError(item, "purchase", "a line item must be an object")
    product_id = item.get("product_id", item.get("sku"))
    if isinstance(product_id, (int, Decimal)) and not isinstance(product_id, bool):
        product_id = str(product_id)
    if not isinstance(product_id, str) or not product_id or len(product_id) > 255:
        raise CoercionError(
            product_id,
            "purchase",
            "product_id must be a string of 1-255 chars",
            field="product_id",
        )
    price = item.get("price")
    try:
        price_value = coerce_number(price)
    except CoercionError as exc:
        raise exc.at("price") from None
    if price_value is None:
        raise CoercionError(price, "purchase", "a purchase needs a price", field="price")
    raw_quantity = item.get("quantity", 1)
    quantity = coerce_number(raw_quantity)
    if quantity is None or quantity < 1 or quantity != int(quantity):
        raise CoercionError(
            raw_quantity, "purchase", "quantity must be a whole number >= 1", field="quantity"
        )
    quantity = int(quantity)
    properties = dict(shared)
    if pass_through:
        extra = {k: v for k, v in item.items() if k not in PURCHASE_PROPERTY_RESERVED}
        properties.update(coerce_properties(extra, PURCHASE_PROPERTY_RESERVED))
    out = []
    # Braze caps quantity at 100 per purchase object: split larger lines, keeping revenue.
    chunks = [MAX_PURCHASE_QUANTITY] * (quantity // MAX_PURCHASE_QUANTITY)
    if quantity % MAX_PURCHASE_QUANTITY:
        chunks.append(quantity % MAX_PURCHASE_QUANTITY)
    for chunk in chunks:
        out.append(
            PurchaseObject(
                external_id=external_id,
                product_id=product_id,
                currency=currency,
                price=float(price_value),
                time=time,
                quantity=chunk,
                properties=properties or None,
                app_id=app_id,
            )
        )
    return out
