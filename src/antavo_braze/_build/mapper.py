"""The mapper: Antavo members and events → Braze wire objects. Pure: no I/O.

A :class:`Mapper` compiles a :class:`~antavo_braze.Mapping` once into a plan of
``(remote_field, getter, coercer)`` steps, so mapping a record does no per-value type dispatch.
Bad values raise :class:`~antavo_braze.CoercionError` located at the record and field.
"""

from __future__ import annotations

from collections import abc
from collections.abc import Callable
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, Final, NamedTuple

from attrs import frozen

from .coerce import (
    DEFAULT_MAX_ARRAY_ITEMS,
    MAX_STRING_LENGTH,
    Coercer,
    coerce_date,
    coerce_number,
    coerce_properties,
    coercer_for,
    standard_coercer,
)
from .ecommerce import ORDER_PLACED, order_placed_properties
from .._braze.limits import MAX_EXTERNAL_ID_BYTES, MAX_PURCHASE_QUANTITY, PURCHASE_PROPERTY_RESERVED
from .mapping import Mapping
from .._braze.types import BrazeType, BrazeTypeLike
from ..exceptions import CoercionError
from ..models import (
    AttributesObject,
    BrazeObject,
    EventMapping,
    EventObject,
    FieldMapping,
    LoyaltyEvent,
    LoyaltyMember,
    PurchaseObject,
    Trigger,
)

__all__ = ["MISSING", "MappedEvent", "Mapper", "get_path", "member_fields", "utc_now"]

MISSING: Final = object()
_SHORT_ID = MAX_EXTERNAL_ID_BYTES // 4  # characters: at most 4 UTF-8 bytes each

Getter = Callable[[Any], Any]


def utc_now() -> datetime:
    """The current time, aware, in UTC."""
    return datetime.now(timezone.utc)


def get_path(record: Any, path: str) -> Any:
    """Read a dotted ``path`` (digits index lists) from ``record``; :data:`MISSING` if absent."""
    return _compile_getter(path)(record)


def _compile_getter(path: str) -> Getter:
    parts = path.split(".")
    if len(parts) == 1:
        key = parts[0]

        def get_key(record: Any) -> Any:
            return record.get(key, MISSING)

        return get_key

    def get_nested(record: Any) -> Any:
        # Flat records (CSV columns) may hold the dotted path as one key.
        flat = record.get(path, MISSING) if isinstance(record, abc.Mapping) else MISSING
        if flat is not MISSING:
            return flat
        current = record
        for part in parts:
            if isinstance(current, abc.Mapping):
                current = current.get(part, MISSING)
            elif isinstance(current, (list, tuple)) and part.isdigit():
                index = int(part)
                current = current[index] if index < len(current) else MISSING
            else:
                return MISSING
            if current is MISSING:
                return MISSING
        return current

    return get_nested


def member_fields(member: Any) -> abc.Mapping[str, Any]:
    """The field values of a member record (a dict, or :class:`LoyaltyMember`'s ``fields``)."""
    if member.__class__ is dict:
        return member
    return member.fields if isinstance(member, LoyaltyMember) else member


class _FieldStep(NamedTuple):
    remote_field: str
    key: str | None  # the record key when the path is a plain key (read inline, no call)
    get: Getter
    coerce: Coercer
    location: str  # where an error points: the loyalty field, under its prefix
    inline_check: str | None  # a Python test under which the value is already valid as is
    clear: bool = False  # when_missing "clear": an absent path sends null...
    first_key: str = ""  # ...only when the record holds the path's first key (the guard)


# fill(record, out, counts): adds every present field to ``out``; counts absent ones per step
# (``counts[n]``) and the clears it wrote (``counts[len(steps) + k]`` for the k-th clearing step,
# and all of them in the last counter, one test per record for "did anything clear?").
Fill = Callable[[Any, dict[str, Any], list[int]], dict[str, Any]]

# Values of these exact classes need no coercer call: the plan tests them inline.
_INLINE_CHECKS = {
    BrazeType.NUMBER: "v.__class__ is int and INT_MIN <= v <= INT_MAX",
    BrazeType.STRING: "v.__class__ is str and len(v) <= MAX_STRING_LENGTH",
    BrazeType.BOOLEAN: "v is True or v is False",
}


def _compile_plan(steps: tuple[_FieldStep, ...]) -> Fill:
    """Generate ``fill(record, out, absent)``: one straight-line block per field, no loop, no
    dispatch.

    Like attrs' and cattrs' generated methods, this removes the per-field interpretation
    overhead that dominates a 10-field mapping. Each block has its own ``try`` (free until
    something raises) so that an error names its field. ``absent[n]`` counts the records in
    which field ``n`` was not found (only that rare branch pays for counting); a clearing
    step writes ``null`` only when the record holds its path's first key (a partial change,
    a file without that column or a misspelled path clears nothing) and counts that clear in
    ``absent[len(steps) + k]``.
    """
    namespace: dict[str, Any] = {
        "MISSING": MISSING,
        "CoercionError": CoercionError,
        "INT_MIN": -(2**63),
        "INT_MAX": 2**63 - 1,
        "MAX_STRING_LENGTH": MAX_STRING_LENGTH,
    }
    lines = ["def fill(record, out, absent):", "    get = record.get"]
    clearing = len(steps)
    every_clear = clearing + sum(step.clear for step in steps)
    for number, step in enumerate(steps):
        namespace[f"coerce{number}"] = step.coerce
        namespace[f"get{number}"] = step.get
        namespace[f"location{number}"] = step.location
        read = f"get({step.key!r}, MISSING)" if step.key is not None else f"get{number}(record)"
        value = f"coerce{number}(v)"
        if step.inline_check is not None:
            value = f"v if {step.inline_check} else {value}"
        lines += [
            f"    v = {read}",
            "    if v is not MISSING:",
            "        try:",
            f"            out[{step.remote_field!r}] = {value}",
            "        except CoercionError as exc:",
            f"            raise exc.at(location{number}) from None",
            "    else:",
            f"        absent[{number}] += 1",
        ]
        if step.clear:
            lines += [
                f"        if get({step.first_key!r}, MISSING) is not MISSING:",
                f"            out[{step.remote_field!r}] = None",
                f"            absent[{clearing}] += 1",
                f"            absent[{every_clear}] += 1",
            ]
            clearing += 1
    lines.append("    return out")
    exec(compile("\n".join(lines), "<antavo_braze field plan>", "exec"), namespace)
    return namespace["fill"]  # type: ignore[no-any-return]


class _Plan:
    """A compiled list of fields: ``fill(record, out, absent)`` adds every present field to
    ``out``; :meth:`values` is the same without the counts."""

    __slots__ = ("clearing", "fill", "steps")

    def __init__(self, steps: tuple[_FieldStep, ...]) -> None:
        self.steps = steps
        # The steps that may clear, in the order of their counters after the absent ones.
        self.clearing = tuple(n for n, step in enumerate(steps) if step.clear)
        self.fill = _compile_plan(steps)

    @property
    def counters(self) -> int:
        """How long the ``counts`` list given to ``fill`` is."""
        return len(self.steps) + len(self.clearing) + (1 if self.clearing else 0)

    def values(self, record: Any, out: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.fill(record, {} if out is None else out, [0] * self.counters)

    def each(self, record: Any) -> tuple[dict[str, Any], list[CoercionError]]:
        """The slow path, for a record the plan refused: every field on its own, so that
        every bad field is found (not only the first) and the good ones are kept."""
        out: dict[str, Any] = {}
        problems: list[CoercionError] = []
        for step in self.steps:
            value = step.get(record)
            if value is MISSING:
                if step.clear and record.get(step.first_key, MISSING) is not MISSING:
                    out[step.remote_field] = None
                continue
            try:
                out[step.remote_field] = step.coerce(value)
            except CoercionError as exc:
                problems.append(exc.at(step.location))
        return out, problems


def _splitting(separator: str, coerce: Coercer) -> Coercer:
    """``split``: a text cell (``"a, b"``) read as an array before ``coerce``."""

    def split_then_coerce(value: Any) -> Any:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(separator) if part.strip()]
        return coerce(value)

    return split_then_coerce


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
    if value.__class__ is str and 0 < len(value) <= _SHORT_ID and not value.isspace():
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
        self.mapping = mapping
        self.app_id = app_id
        self._clock = clock
        self._max_array_items = max_array_items
        self._truncate_strings = truncate_strings
        self._fields = self._compile_fields(mapping.fields, when_missing=mapping.when_missing)
        self._id_field = mapping.id_field
        self._get_id = _compile_getter(mapping.id_field)
        self._events: dict[str, tuple[EventMapping, _Plan | None]] = {}
        for entry in mapping.events:
            steps = (
                None if entry.properties is None else self._compile_fields(entry.properties, "data")
            )
            self._events[entry.action] = (entry, steps)
        self._wildcard = self._events.pop("*", None)
        self._triggers = [
            (
                trigger,
                self._compile_fields(trigger.attributes),
                [(_compile_getter(path), value) for path, value in trigger.when.where.items()],
            )
            for trigger in mapping.triggers
        ]

    def _coercer(self, braze_type: BrazeTypeLike | None) -> Coercer:
        return coercer_for(
            braze_type,
            max_array_items=self._max_array_items,
            truncate_strings=self._truncate_strings,
        )

    def _compile_fields(
        self,
        fields: tuple[FieldMapping, ...],
        prefix: str | None = None,
        when_missing: str = "skip",
    ) -> _Plan:
        steps = []
        for item in fields:
            coercer = standard_coercer(item.remote_field, truncate_strings=self._truncate_strings)
            inline_check = None
            if coercer is None:
                coercer = self._coercer(item.type)
                inline_check = None if item.type is None else _INLINE_CHECKS.get(item.type)
            if item.split is not None:
                coercer, inline_check = _splitting(item.split, coercer), None
            steps.append(
                _FieldStep(
                    item.remote_field,
                    None if "." in item.loyalty_field else item.loyalty_field,
                    _compile_getter(item.loyalty_field),
                    coercer,
                    item.loyalty_field if prefix is None else f"{prefix}.{item.loyalty_field}",
                    inline_check,
                    (item.when_missing or when_missing) == "clear",
                    item.loyalty_field.split(".", 1)[0],
                )
            )
        return _Plan(tuple(steps))

    # --- members ----------------------------------------------------------------------------

    def member_id(self, member: Any) -> str:
        """The ``external_id`` of a member (dict with the mapping's ``id_field``, ``"id"``
        by default, or :class:`LoyaltyMember`)."""
        if member.__class__ is dict or isinstance(member, abc.Mapping):
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
        return tuple((s.location, s.remote_field, s.clear) for s in self._fields.steps)

    def member_values(self, member: Any) -> dict[str, Any]:
        """The coerced Braze attribute values of every mapped field present in ``member``
        (and ``None`` for absent ``when_missing: "clear"`` fields)."""
        return self._fields.values(member_fields(member))

    def member_problems(self, member: Any) -> tuple[dict[str, Any], list[CoercionError]]:
        """Every field of ``member`` on its own: the values that coerce and an error for each
        field that does not (the slow path behind a refused record)."""
        return self._fields.each(member_fields(member))

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
                coercer = self._coercer(types.get(name))
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
        triggers = [t for t in self._triggers if self._matches(t[0], t[2], action, envelope)]
        if entry is None and not triggers:
            return MappedEvent(objects=(), skipped=True)
        time = self._event_time(envelope, data)
        objects: list[BrazeObject] = []
        identity: tuple[str, str | None] | None = None
        if entry is not None:
            mapping, steps = entry
            sends = mapping.sends
            if "merge" in sends:
                identity = ("merge", self._merge_target(mapping, envelope, external_id))
            elif "delete" in sends:
                identity = ("delete", None)
            if "purchase" in sends:
                objects.extend(self._purchases(mapping, steps, data, external_id, time))
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

    @staticmethod
    def _merge_target(mapping: EventMapping, envelope: Any, external_id: str) -> str:
        """The customer an ``"as": "merge"`` event's customer is merged into."""
        assert mapping.into is not None  # the mapping requires it
        value = _compile_getter(mapping.into)(envelope)
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

    @staticmethod
    def _matches(
        trigger: Trigger, where: list[tuple[Getter, Any]], action: str, envelope: Any
    ) -> bool:
        return action in trigger.when.action and all(get(envelope) == v for get, v in where)

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
        steps: _Plan | None,
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

    def _purchases(
        self,
        mapping: EventMapping,
        steps: _Plan | None,
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
                    self._line_purchases(item, shared, steps is None, external_id, currency, time)
                )
            except CoercionError as exc:
                raise exc.at(f"data.items[{index}]") from None
        return out

    def _line_purchases(
        self,
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
                    app_id=self.app_id,
                )
            )
        return out
