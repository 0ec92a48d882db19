"""Braze wire objects -> batch items: the models, and plain dicts exactly as Braze documents them.

A plain dict is the escape hatch to every Braze feature (``_merge_objects``, ``$add`` /
``$remove`` / ``$update``, ``subscription_groups``, ``user_alias``...); it is checked against
the same limits as the models before anything is sent. Pure: no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from .batching import Item
from .coerce import to_datetime
from .converter import unstructure_attributes, unstructure_event, unstructure_purchase
from .._json import dumps_object
from .._braze.limits import (
    DEFAULT_MAX_ARRAY_ITEMS,
    EVENT_PROPERTY_RESERVED,
    MAX_EXTERNAL_ID_BYTES,
    MAX_NESTED_BYTES,
    MAX_PURCHASE_PROPERTY_BYTES,
    MAX_PURCHASE_QUANTITY,
    MAX_STRING_LENGTH,
    PRIMARY_IDENTIFIERS,
    PURCHASE_PROPERTY_RESERVED,
    SECONDARY_IDENTIFIERS,
)
from ..exceptions import CoercionError
from ..models import AttributesObject, BrazeObject, EventObject, PurchaseObject

__all__ = ["WireError", "model_item", "profile_key", "wire_item"]

_MAX_DEPTH = 32
# Keys of an attributes object that are identifiers or flags, not custom attributes.
_CONTROL = frozenset({*PRIMARY_IDENTIFIERS, "_update_existing_only", "_merge_objects", "app_id"})
_FLAGS = ("_update_existing_only", "_merge_objects")
_ARRAY_OPERATORS = frozenset({"add", "remove"})  # scalar arrays: no "$"
_OBJECT_OPERATORS = frozenset({"$add", "$remove", "$update"})  # arrays of objects
_ARRAY_NAMES = {AttributesObject: "attributes", EventObject: "events", PurchaseObject: "purchases"}


class WireError(ValueError):
    """A wire object Braze would refuse (the reason says which rule)."""


def profile_key(obj: Mapping[str, Any]) -> str:
    """The profile a wire object touches (requests touching one never overlap)."""
    external_id = obj.get("external_id")
    if external_id.__class__ is str:
        return external_id
    alias = obj.get("user_alias")
    if isinstance(alias, Mapping):
        return f"\x00alias:{alias.get('alias_label')}:{alias.get('alias_name')}"
    for name in ("braze_id", *SECONDARY_IDENTIFIERS):
        if obj.get(name) is not None:
            return f"\x00{name}:{obj[name]}"
    return "\x00none"


def model_item(
    obj: BrazeObject,
    record: int,
    parts: int = 1,
    app_id: str | None = None,
    source: Any = None,
) -> Item:
    """A model object as an item (``app_id`` fills events and purchases that have none;
    ``source`` is the input record it was built from)."""
    cls = obj.__class__
    if cls is AttributesObject:
        wire = unstructure_attributes(obj)  # type: ignore[arg-type]
        values = len(obj.attributes)  # type: ignore[union-attr]
    elif cls is EventObject:
        wire = unstructure_event(obj)  # type: ignore[arg-type]
        values = 0
    elif cls is PurchaseObject:
        wire = unstructure_purchase(obj)  # type: ignore[arg-type]
        values = 0
    else:
        raise WireError(f"not a Braze object: {type(obj).__name__}")
    if app_id is not None and cls is not AttributesObject and "app_id" not in wire:
        wire["app_id"] = app_id
    return Item(_ARRAY_NAMES[cls], _encode(wire), obj.external_id, record, parts, values, source)


def wire_item(
    array: str,
    obj: Any,
    record: int,
    parts: int = 1,
    app_id: str | None = None,
    source: Any = None,
) -> Item:
    """A plain Braze wire dict as an item, after checking it as Braze would; raises
    :class:`WireError` naming the rule it breaks."""
    if not isinstance(obj, Mapping):
        raise WireError(f"a wire object must be a dict, not {type(obj).__name__}")
    if not all(key.__class__ is str for key in obj):
        raise WireError("wire object keys must be strings")
    key = _check_identifiers(obj)
    for flag in _FLAGS:
        if flag in obj and not isinstance(obj[flag], bool):
            raise WireError(f"{flag} must be true or false")
    if array == "attributes":
        values = _check_attributes(obj)
        wire = dict(obj)
    elif array in ("events", "purchases"):
        if "app_id" in obj and not isinstance(obj["app_id"], str):
            raise WireError("app_id must be a string")
        _check_event(obj) if array == "events" else _check_purchase(obj)
        wire = dict(obj)
        if app_id is not None and "app_id" not in wire:
            wire["app_id"] = app_id
        values = 0
    else:
        raise WireError(f"unknown array {array!r} (attributes, events or purchases)")
    return Item(array, _encode(wire), key, record, parts, values, source)


def _encode(wire: Mapping[str, Any]) -> bytes:
    try:
        return dumps_object(wire)
    except (TypeError, ValueError, OverflowError) as exc:
        raise WireError(f"not JSON: {exc}") from None


# --- the checks ------------------------------------------------------------------------------


def _check_identifiers(obj: Mapping[str, Any]) -> str:
    primaries = [name for name in PRIMARY_IDENTIFIERS if name in obj]
    if len(primaries) > 1:
        raise WireError(f"more than one primary identifier ({', '.join(primaries)})")
    if not primaries and not any(obj.get(name) for name in SECONDARY_IDENTIFIERS):
        raise WireError("missing identifier (external_id, user_alias, braze_id, email or phone)")
    if "external_id" in obj:
        external_id = obj["external_id"]
        if not isinstance(external_id, str) or not external_id.strip():
            raise WireError("external_id must be a non-empty string")
        if len(external_id.encode()) > MAX_EXTERNAL_ID_BYTES:
            raise WireError(f"external_id is longer than {MAX_EXTERNAL_ID_BYTES} bytes")
    if "user_alias" in obj:
        alias = obj["user_alias"]
        if (
            not isinstance(alias, Mapping)
            or set(alias) != {"alias_name", "alias_label"}
            or not all(isinstance(v, str) and v for v in alias.values())
        ):
            raise WireError("user_alias must be {'alias_name': ..., 'alias_label': ...}")
    if "braze_id" in obj and not (isinstance(obj["braze_id"], str) and obj["braze_id"]):
        raise WireError("braze_id must be a non-empty string")
    return profile_key(obj)


def _check_name(name: str, what: str) -> None:
    if not name or len(name) > MAX_STRING_LENGTH:
        raise WireError(f"{what} {name[:40]!r} must have 1 to {MAX_STRING_LENGTH} characters")
    if name.startswith("$"):
        raise WireError(f"{what} {name[:40]!r} cannot start with '$'")


def _check_attributes(obj: Mapping[str, Any]) -> int:
    values = 0
    for name, value in obj.items():
        if name in _CONTROL:
            continue
        if name in SECONDARY_IDENTIFIERS and not any(p in obj for p in PRIMARY_IDENTIFIERS):
            continue  # the lookup identifier itself (with a primary, it is an attribute)
        _check_name(name, "attribute")
        try:
            _check_attribute_value(value)
        except WireError as exc:
            raise WireError(f"attribute {name!r}: {exc}") from None
        values += 1
    return values


def _check_scalar(value: Any) -> None:
    if isinstance(value, str):
        if len(value) > MAX_STRING_LENGTH:
            raise WireError(f"string of {len(value)} characters (Braze keeps {MAX_STRING_LENGTH})")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise WireError("NaN and infinity are not numbers Braze can store")
    elif isinstance(value, int) and not isinstance(value, bool):
        if not -(2**63) <= value < 2**63:
            raise WireError("integer outside the signed 64-bit range")
    elif not isinstance(value, bool):
        raise WireError(f"unsupported value of type {type(value).__name__}")


def _check_attribute_value(value: Any) -> None:
    if value is None:
        return  # removes the attribute
    if isinstance(value, list):
        if value and all(isinstance(v, Mapping) for v in value):
            for index, item in enumerate(value):
                _check_nested(item, f"[{index}]", 1)
            _check_size(value, MAX_NESTED_BYTES)
            return
        _check_scalar_array(value)
        return
    if isinstance(value, Mapping):
        keys = set(value)
        if keys == {"$time"}:
            _check_time(value["$time"], "$time")
        elif keys and keys <= _ARRAY_OPERATORS:
            for operator in keys:
                if not isinstance(value[operator], list):
                    raise WireError(f"{operator!r} takes a list")
                _check_scalar_array(value[operator])
        elif keys == {"inc"}:
            if isinstance(value["inc"], bool) or not isinstance(value["inc"], int):
                raise WireError("'inc' takes an integer")
        elif keys and keys <= _OBJECT_OPERATORS:
            _check_object_operators(value)
        elif any(k.startswith("$") for k in keys):
            raise WireError(
                "'$' keys are Braze operators: {'$time': ...} for dates, $add/$remove/$update "
                "for arrays of objects"
            )
        else:
            _check_nested(value, "", 1)
            _check_size(value, MAX_NESTED_BYTES)
        return
    _check_scalar(value)


def _check_scalar_array(value: list[Any]) -> None:
    if len(value) > DEFAULT_MAX_ARRAY_ITEMS:
        raise WireError(f"{len(value)} items is more than Braze keeps ({DEFAULT_MAX_ARRAY_ITEMS})")
    for item in value:
        if item is None or isinstance(item, (list, Mapping)):
            raise WireError("arrays hold scalars only (a list of objects is an array of objects)")
        _check_scalar(item)


def _check_object_operators(value: Mapping[str, Any]) -> None:
    for operator, items in value.items():
        if not isinstance(items, list):
            raise WireError(f"{operator!r} takes a list")
        for index, item in enumerate(items):
            if not isinstance(item, Mapping):
                raise WireError(f"{operator}[{index}] must be an object")
            if operator == "$add":
                _check_nested(item, f"{operator}[{index}]", 1)
                continue
            allowed = {"$identifier_key", "$identifier_value"}
            if operator == "$update":
                allowed.add("$new_object")
            if "$identifier_key" not in item or not set(item) <= allowed:
                raise WireError(
                    f"{operator}[{index}] needs $identifier_key and $identifier_value"
                    + (" (and $new_object)" if operator == "$update" else "")
                )
            if operator == "$update":
                new = item.get("$new_object")
                if not isinstance(new, Mapping):
                    raise WireError(f"{operator}[{index}].$new_object must be an object")
                _check_nested(new, f"{operator}[{index}].$new_object", 1)
    _check_size(value, MAX_NESTED_BYTES)


def _check_nested(value: Any, where: str, depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise WireError(f"{where}: nested deeper than {_MAX_DEPTH} levels")
    if isinstance(value, Mapping):
        if set(value) == {"$time"}:
            _check_time(value["$time"], f"{where}.$time")
            return
        for key, item in value.items():
            if not isinstance(key, str) or not key or len(key) > MAX_STRING_LENGTH:
                raise WireError(f"{where}: keys must be strings of 1 to 255 characters")
            if key.startswith("$") or "." in key:
                raise WireError(f"{where}: key {key[:40]!r} cannot start with '$' or hold '.'")
            _check_nested(item, f"{where}.{key}" if where else key, depth + 1)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_nested(item, f"{where}[{index}]", depth + 1)
    elif value is None:
        raise WireError(f"{where}: null inside a nested attribute drops Braze's whole update")
    else:
        try:
            _check_scalar(value)
        except WireError as exc:
            raise WireError(f"{where}: {exc}") from None


def _check_size(value: Any, limit: int) -> None:
    size = len(_encode(value) if isinstance(value, Mapping) else _encode({"v": value}))
    if size > limit:
        raise WireError(f"{size} bytes is over Braze's {limit // 1024} KB limit")


def _check_time(value: Any, where: str) -> None:
    if not isinstance(value, str):
        raise WireError(f"{where} must be an ISO 8601 string")
    try:
        to_datetime(value)
    except CoercionError as exc:
        raise WireError(f"{where}: {exc.reason}") from None


def _check_properties(value: Any, reserved: frozenset[str], limit: int) -> None:
    if value is None:
        return
    if not isinstance(value, Mapping):
        raise WireError("properties must be an object")
    for key, item in value.items():
        if not isinstance(key, str):
            raise WireError("property keys must be strings")
        _check_name(key, "property")
        if key in reserved:
            raise WireError(f"property {key!r} is reserved by Braze")
        if isinstance(item, (Mapping, list)):
            _check_nested(item, key, 1)
        elif item is not None:
            try:
                _check_scalar(item)
            except WireError as exc:
                raise WireError(f"property {key!r}: {exc}") from None
    _check_size(value, limit)


def _check_event(obj: Mapping[str, Any]) -> None:
    name = obj.get("name")
    if not isinstance(name, str):
        raise WireError("an event needs a 'name'")
    _check_name(name, "event name")
    _check_time(obj.get("time"), "time")
    _check_properties(obj.get("properties"), EVENT_PROPERTY_RESERVED, MAX_NESTED_BYTES)


def _check_purchase(obj: Mapping[str, Any]) -> None:
    product_id = obj.get("product_id")
    if not isinstance(product_id, str) or not product_id or len(product_id) > MAX_STRING_LENGTH:
        raise WireError("product_id must be a string of 1 to 255 characters")
    currency = obj.get("currency")
    if not isinstance(currency, str) or len(currency) != 3 or not currency.isalpha():
        raise WireError("currency must be an ISO 4217 code such as 'EUR'")
    price = obj.get("price")
    if isinstance(price, bool) or not isinstance(price, (int, float)) or not math.isfinite(price):
        raise WireError("price must be a finite number")
    quantity = obj.get("quantity", 1)
    if (
        isinstance(quantity, bool)
        or not isinstance(quantity, int)
        or not 1 <= quantity <= MAX_PURCHASE_QUANTITY
    ):
        raise WireError(f"quantity must be a whole number from 1 to {MAX_PURCHASE_QUANTITY}")
    _check_time(obj.get("time"), "time")
    _check_properties(
        obj.get("properties"), PURCHASE_PROPERTY_RESERVED, MAX_PURCHASE_PROPERTY_BYTES
    )
