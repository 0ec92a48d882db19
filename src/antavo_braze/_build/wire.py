"""HOT: Braze wire objects -> batch items: the models, and plain dicts exactly as Braze documents them.

A plain dict is the escape hatch to every Braze feature (``_merge_objects``, ``$add`` /
``$remove`` / ``$update``, ``subscription_groups``, ``user_alias``...); it is checked against
the same limits as the models before anything is sent. Pure: no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from .._braze.limits import (
    DEFAULT_MAX_ARRAY_ITEMS,
    EVENT_PROPERTY_RESERVED,
    MAX_NESTED_BYTES,
    MAX_PURCHASE_PROPERTY_BYTES,
    MAX_PURCHASE_QUANTITY,
    MAX_STRING_LENGTH,
    PRIMARY_IDENTIFIERS,
    PURCHASE_PROPERTY_RESERVED,
    SECONDARY_IDENTIFIERS,
)
from .._braze.rules import (
    array_problem,
    depth_problem,
    float_problem,
    identifier_problem,
    int_problem,
    key_problem,
    name_problem,
    property_count_problem,
    reserved_problem,
    size_problem,
    string_problem,
    time_problem,
)
from .._json import dumps, dumps_object
from ..exceptions import CoercionError
from ..models import AttributesObject, BrazeObject, EventObject, PurchaseObject
from .batching import Item
from .coerce import to_datetime
from .converter import unstructure_attributes, unstructure_event, unstructure_purchase

__all__ = ["WireError", "model_item", "profile_key", "track_items", "wire_item"]

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
    if type(external_id) is str:
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
    cls = type(obj)
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
    if not all(type(key) is str for key in obj):
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


def track_items(
    arrays: Iterable[tuple[str, Iterable[Any]]], app_id: str | None = None
) -> tuple[list[tuple[str, int]], list[tuple[str, int, str]], list[list[Item]]]:
    """``track()``'s input as items: ``(where, refused, groups)``. ``where[record]`` is each
    object's ``(array, index)``; ``refused`` the ``(array, index, reason)`` of the objects that
    break a Braze rule (nothing of them is sent); ``groups`` one item each of the others."""
    where: list[tuple[str, int]] = []
    refused: list[tuple[str, int, str]] = []
    groups: list[list[Item]] = []
    for array, objects in arrays:
        for index, obj in enumerate(objects):
            position = len(where)
            where.append((array, index))
            try:
                if isinstance(obj, (AttributesObject, EventObject, PurchaseObject)):
                    if _ARRAY_NAMES[type(obj)] != array:
                        raise WireError(f"a {type(obj).__name__} does not go in {array!r}")
                    item = model_item(obj, position, app_id=app_id)
                else:
                    item = wire_item(array, obj, position, app_id=app_id)
            except WireError as exc:
                refused.append((array, index, str(exc)))
                continue
            groups.append([item])
    return where, refused, groups


def _encode(wire: Mapping[str, Any]) -> bytes:
    try:
        return dumps_object(wire)
    except (TypeError, ValueError, OverflowError) as exc:
        raise WireError(f"not JSON: {exc}") from None


# --- the checks (each Braze rule is one function of _braze/rules; these walk the shapes) -----


def _refuse(problem: str | None, where: str = "") -> None:
    if problem is not None:
        raise WireError(f"{where}: {problem}" if where else problem)


def _check_identifiers(obj: Mapping[str, Any]) -> str:
    _refuse(identifier_problem(obj))
    return profile_key(obj)


def _check_name(name: str, what: str) -> None:
    _refuse(name_problem(name, what))


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
        _refuse(string_problem(value))
    elif isinstance(value, float):
        _refuse(float_problem(value))
    elif isinstance(value, int) and not isinstance(value, bool):
        _refuse(int_problem(value))
    elif not isinstance(value, bool):
        raise WireError(f"unsupported value of type {type(value).__name__}")


def _check_attribute_value(value: Any) -> None:
    if value is None:
        return  # removes the attribute
    if isinstance(value, list):
        if value and all(isinstance(v, Mapping) for v in value):
            for index, item in enumerate(value):
                _check_object_item(item, f"[{index}]")
            _check_size(value)
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
            _check_nested(value, "", 0)
            _check_size(value)
        return
    _check_scalar(value)


def _array_key(item: Any) -> Any:
    # Braze collapses duplicates; numbers compare as numbers, apart from booleans (as coercion).
    return item if type(item) is str else (type(item) is bool, item)


def _check_scalar_array(value: list[Any]) -> None:
    for item in value:
        if item is None or isinstance(item, (list, Mapping)):
            raise WireError("arrays hold scalars only (a list of objects is an array of objects)")
        _check_scalar(item)
    if len(value) > DEFAULT_MAX_ARRAY_ITEMS:
        _refuse(array_problem(len({_array_key(item) for item in value}), unique=True))


def _check_object_operators(value: Mapping[str, Any]) -> None:
    for operator, items in value.items():
        if not isinstance(items, list):
            raise WireError(f"{operator!r} takes a list")
        for index, item in enumerate(items):
            if not isinstance(item, Mapping):
                raise WireError(f"{operator}[{index}] must be an object")
            if operator == "$add":
                _check_object_item(item, f"{operator}[{index}]")
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
    _check_size(value)


def _check_object_item(item: Mapping[str, Any], where: str) -> None:
    if set(item) == {"$time"}:  # a date, not an object
        raise WireError(f"{where}: every item of an array of objects must be an object")
    _check_nested(item, where, 1)


def _check_nested(value: Any, where: str, depth: int) -> None:
    """A value inside a nested custom attribute (``depth`` 0: the attribute's own object)."""
    if isinstance(value, Mapping):
        _refuse(depth_problem(depth), where)
        if depth and set(value) == {"$time"}:
            _check_time(value["$time"], f"{where}.$time")
            return
        for key, item in value.items():
            _refuse(key_problem(key), where)
            _check_nested(item, f"{where}.{key}" if where else key, depth + 1)
    elif isinstance(value, list):
        _refuse(depth_problem(depth), where)
        _refuse(array_problem(len(value)), where)
        for index, item in enumerate(value):
            _check_nested(item, f"{where}[{index}]", depth + 1)
    elif value is None:
        raise WireError(f"{where}: null inside a nested attribute drops Braze's whole update")
    else:
        try:
            _check_scalar(value)
        except WireError as exc:
            raise WireError(f"{where}: {exc}") from None


def _check_size(value: Any, limit: int = MAX_NESTED_BYTES) -> None:
    _refuse(size_problem(len(_encode_any(value)), limit))


def _encode_any(value: Any) -> bytes:
    try:
        return dumps(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise WireError(f"not JSON: {exc}") from None


def _check_time(value: Any, where: str) -> None:
    _refuse(time_problem(value), where)
    try:
        to_datetime(value)
    except CoercionError as exc:
        raise WireError(f"{where}: {exc.reason}") from None


def _check_property_value(value: Any, where: str, depth: int) -> None:
    """A value inside event or purchase properties (``depth`` 1: a property's own value);
    nested keys follow the property-key rule, as coercion's (Braze documents no other)."""
    if isinstance(value, Mapping):
        _refuse(depth_problem(depth), where)
        for key, item in value.items():
            _refuse(name_problem(key, "property"), where)
            _check_property_value(item, f"{where}.{key}", depth + 1)
    elif isinstance(value, list):
        _refuse(depth_problem(depth), where)
        for index, item in enumerate(value):
            _check_property_value(item, f"{where}[{index}]", depth + 1)
    elif value is not None:
        try:
            _check_scalar(value)
        except WireError as exc:
            raise WireError(f"{where}: {exc}") from None


def _check_properties(value: Any, reserved: frozenset[str], limit: int) -> None:
    if value is None:
        return
    if not isinstance(value, Mapping):
        raise WireError("properties must be an object")
    count = 0
    nested = False
    for key, item in value.items():
        _refuse(name_problem(key, "property"))
        _refuse(reserved_problem(key, reserved))
        if item is None:
            continue  # coercion leaves these out; they are not counted
        count += 1
        if isinstance(item, (Mapping, list)):
            nested = True
        try:
            _check_property_value(item, key, 1)
        except WireError as exc:
            raise WireError(f"property {exc}") from None
    _refuse(property_count_problem(count))
    if nested or limit != MAX_NESTED_BYTES:
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
