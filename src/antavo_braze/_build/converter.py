"""The one cattrs converter: config ↔ mapping models, and Braze wire objects → JSON.

Built by :func:`make_converter`; nothing here uses cattrs' global converter. Wire details (key
names such as ``as`` or ``_update_existing_only``) live here, not in the models. Antavo inputs
are read by the mapper straight from their dicts, on the hot path.
"""

from __future__ import annotations

from collections import abc
from typing import Any

from cattrs import Converter
from cattrs.errors import IterableValidationError, IterableValidationNote
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

from .._braze.types import BrazeType
from ..models import (
    AttributesObject,
    EventMapping,
    EventObject,
    PurchaseObject,
    TriggerCondition,
)

__all__ = [
    "EXTERNAL_ID",
    "attributes_wire",
    "make_converter",
    "unstructure_attributes",
    "unstructure_event",
    "unstructure_purchase",
]


def _structure_str(value: Any, _: type) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__} {value!r}")
    return value


def _structure_braze_type(value: Any, _: type) -> BrazeType:
    return BrazeType.parse(value)


def _structure_condition(value: Any, _: type) -> TriggerCondition:
    if not isinstance(value, abc.Mapping):
        raise TypeError(f"expected a mapping, got {type(value).__name__}")
    extra = set(value) - {"action", "where"}
    if extra:
        raise ValueError(f"unknown key(s) {', '.join(map(repr, sorted(extra)))}")
    if "action" not in value:
        raise KeyError("action")
    action = value["action"]
    actions = (action,) if isinstance(action, str) else action
    if (
        not isinstance(actions, (list, tuple))
        or not actions
        or not all(isinstance(a, str) and a for a in actions)
    ):
        raise ValueError("'action' must be an action name or a non-empty list of names")
    where = value.get("where", {})
    if not isinstance(where, abc.Mapping) or not all(isinstance(k, str) for k in where):
        raise ValueError("'where' must map paths to the values they must equal")
    return TriggerCondition(action=tuple(actions), where=dict(where))


_AS_VALUES = ("event", "purchase", "order_placed", "merge", "delete")
_AS_COMBINABLE = frozenset({"purchase", "order_placed"})


def _structure_as(value: Any, _: Any) -> Any:
    """``"as"``: one of the values, or a list of ``"purchase"`` and ``"order_placed"``."""
    if isinstance(value, str):
        if value not in _AS_VALUES:
            allowed = ", ".join(repr(a) for a in _AS_VALUES)
            raise ValueError(f'must be one of {allowed}, or ["purchase", "order_placed"]')
        return value
    if isinstance(value, (list, tuple)):
        if (
            not value
            or not all(isinstance(v, str) and v in _AS_COMBINABLE for v in value)
            or len(set(value)) != len(value)
        ):
            raise ValueError(
                'a list "as" names "purchase" and "order_placed" (each once): '
                'e.g. ["purchase", "order_placed"] sends both'
            )
        return value[0] if len(value) == 1 else tuple(value)
    raise ValueError(f"expected a string or a list, got {type(value).__name__}")


def _unstructure_as(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _unstructure_condition(condition: TriggerCondition) -> dict[str, Any]:
    action: str | list[str] = (
        condition.action[0] if len(condition.action) == 1 else list(condition.action)
    )
    out: dict[str, Any] = {"action": action}
    if condition.where:
        out["where"] = dict(condition.where)
    return out


# --- Braze wire objects (hand-written: they run once per object on the hot path) ------------

EXTERNAL_ID = "external_id"  # the first key of every wire object


def unstructure_attributes(obj: AttributesObject) -> dict[str, Any]:
    """The JSON form of a user-attributes object."""
    return attributes_wire(obj.external_id, obj.attributes, obj.update_existing_only)


def attributes_wire(
    external_id: str, attributes: abc.Mapping[str, Any], update_existing_only: bool | None = None
) -> dict[str, Any]:
    """The JSON form of a user-attributes object from its parts (no object on the hot path)."""
    out: dict[str, Any] = {EXTERNAL_ID: external_id, **attributes}
    if update_existing_only is not None:
        out["_update_existing_only"] = update_existing_only
    return out


def unstructure_event(obj: EventObject) -> dict[str, Any]:
    """The JSON form of a custom event object."""
    out: dict[str, Any] = {"external_id": obj.external_id, "name": obj.name, "time": obj.time}
    if obj.properties:
        out["properties"] = obj.properties
    if obj.app_id is not None:
        out["app_id"] = obj.app_id
    if obj.update_existing_only is not None:
        out["_update_existing_only"] = obj.update_existing_only
    return out


def unstructure_purchase(obj: PurchaseObject) -> dict[str, Any]:
    """The JSON form of a purchase object."""
    out: dict[str, Any] = {
        "external_id": obj.external_id,
        "product_id": obj.product_id,
        "currency": obj.currency,
        "price": obj.price,
        "quantity": obj.quantity,
        "time": obj.time,
    }
    if obj.properties:
        out["properties"] = obj.properties
    if obj.app_id is not None:
        out["app_id"] = obj.app_id
    if obj.update_existing_only is not None:
        out["_update_existing_only"] = obj.update_existing_only
    return out


def make_converter() -> Converter:
    """Build the SDK's converter (strict: unknown keys and wrong scalar types are errors)."""
    converter = Converter(forbid_extra_keys=True, omit_if_default=True)
    converter.register_structure_hook(str, _structure_str)
    converter.register_structure_hook(BrazeType, _structure_braze_type)
    converter.register_unstructure_hook(BrazeType, lambda t: t.value)

    def is_homogeneous_tuple(cl: Any) -> bool:
        return getattr(cl, "__origin__", None) is tuple

    def structure_tuple(value: Any, cl: Any) -> tuple[Any, ...]:
        # Like cattrs' own, but a string or mapping is an error instead of being iterated.
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"expected a list, got {type(value).__name__}")
        item_type = cl.__args__[0]
        hook = converter.get_structure_hook(item_type)
        errors: list[Exception] = []
        items: list[Any] = []
        for index, item in enumerate(value):
            try:
                items.append(hook(item, item_type))
            except Exception as exc:
                note = IterableValidationNote(f"Structuring {cl} @ index {index}", index, item_type)
                exc.__notes__ = [*getattr(exc, "__notes__", []), note]  # type: ignore[attr-defined]
                errors.append(exc)
        if errors:
            raise IterableValidationError(f"While structuring {cl!r}", errors, cl)
        return tuple(items)

    converter.register_structure_hook_func(is_homogeneous_tuple, structure_tuple)

    converter.register_structure_hook(
        EventMapping,
        make_dict_structure_fn(
            EventMapping, converter, as_=override(rename="as", struct_hook=_structure_as)
        ),
    )
    converter.register_unstructure_hook(
        EventMapping,
        make_dict_unstructure_fn(
            EventMapping,
            converter,
            _cattrs_omit_if_default=True,
            as_=override(rename="as", unstruct_hook=_unstructure_as),
        ),
    )
    converter.register_structure_hook(TriggerCondition, _structure_condition)
    converter.register_unstructure_hook(TriggerCondition, _unstructure_condition)

    converter.register_unstructure_hook(AttributesObject, unstructure_attributes)
    converter.register_unstructure_hook(EventObject, unstructure_event)
    converter.register_unstructure_hook(PurchaseObject, unstructure_purchase)
    return converter
