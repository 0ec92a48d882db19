"""Antavo checkouts as Braze's recommended eCommerce event ``ecommerce.order_placed``. Pure.

Braze is retiring the purchase object in favour of recommended eCommerce events. The
properties are the ones Braze documents for ``ecommerce.order_placed`` (braze.com/docs
user_guide/data/activation/events/recommended_events/ecommerce_events): required
``order_id``, ``total_value``, ``currency``, ``products[]`` (each ``product_id``,
``product_name``, ``variant_id``, ``quantity``, ``price``; optional ``image_url``,
``product_url``, ``metadata``) and ``source``; optional ``cart_id``, ``subtotal_value``,
``tax``, ``shipping``, ``total_discounts``, ``discounts`` and ``metadata``. Braze validates the
event against this schema: an event that does not match is kept as a plain custom event and
counts no revenue, so every required property is checked here first.

From Antavo's ``checkout`` data (``shared/reference/antavo.md``): ``transaction_id`` → order_id,
``total`` → total_value (else the sum of the lines), ``currency`` (else the entry's),
``shipping``, ``discount`` → total_discounts, ``items[]`` → products (``product_id`` or ``sku``,
``product_name`` (else the id), ``sku`` or ``variant_id`` → variant_id (else the product id),
``quantity``, ``price``, ``product_url``, ``image_url``; other item keys go to the product's
``metadata``), ``source`` (else ``"antavo"``); other scalar keys go to ``metadata``.
"""

from __future__ import annotations

from collections import abc
from decimal import Decimal
from typing import Any

from .coerce import coerce_number, coerce_properties
from .._braze.limits import MAX_STRING_LENGTH
from ..exceptions import CoercionError

__all__ = ["ORDER_PLACED", "order_placed_properties"]

ORDER_PLACED = "ecommerce.order_placed"
_TYPE = "order_placed"
_ITEM_KEYS = frozenset(
    {
        "product_id",
        "sku",
        "variant_id",
        "product_name",
        "quantity",
        "price",
        "product_url",
        "image_url",
    }
)
_ORDER_KEYS = frozenset(
    {
        "transaction_id",
        "order_id",
        "total",
        "currency",
        "items",
        "shipping",
        "discount",
        "source",
        "tax",
        "cart_id",
        "subtotal",
        "effective_timestamp",
    }
)


def _text(value: Any, field: str, *, required: bool = True) -> str | None:
    if isinstance(value, (int, Decimal)) and not isinstance(value, bool):
        value = str(value)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_STRING_LENGTH:
        raise CoercionError(value, _TYPE, "expected text of 1-255 characters", field=field)
    return value


def _number(value: Any, field: str) -> float | int:
    try:
        number = coerce_number(value)
    except CoercionError as exc:
        raise exc.at(field) from None
    if number is None:
        raise CoercionError(value, _TYPE, "a number is required", field=field)
    return number


def _product(item: Any, where: str) -> tuple[dict[str, Any], float]:
    if not isinstance(item, abc.Mapping):
        raise CoercionError(item, _TYPE, "a line item must be an object", field=where)
    product_id = _text(item.get("product_id", item.get("sku")), f"{where}.product_id")
    quantity = _number(item.get("quantity", 1), f"{where}.quantity")
    if quantity < 1 or quantity != int(quantity):
        raise CoercionError(quantity, _TYPE, "a whole number >= 1", field=f"{where}.quantity")
    price = _number(item.get("price"), f"{where}.price")
    product: dict[str, Any] = {
        "product_id": product_id,
        "product_name": _text(item.get("product_name", product_id), f"{where}.product_name"),
        "variant_id": _text(
            item.get("variant_id", item.get("sku", product_id)), f"{where}.variant_id"
        ),
        "quantity": int(quantity),
        "price": float(price),
    }
    for key in ("product_url", "image_url"):
        value = _text(item.get(key), f"{where}.{key}", required=False)
        if value is not None:
            product[key] = value
    extra = {k: v for k, v in item.items() if k not in _ITEM_KEYS and v is not None}
    if extra:
        try:
            product["metadata"] = coerce_properties(extra)
        except CoercionError as exc:
            raise exc.at(where) from None
    return product, float(price) * int(quantity)


def order_placed_properties(
    data: abc.Mapping[str, Any], currency: str | None = None
) -> dict[str, Any]:
    """The ``ecommerce.order_placed`` properties of one Antavo checkout's ``data``
    (``currency``: the mapping entry's default). Raises :class:`CoercionError` naming the
    field when a required property cannot be built."""
    order_id = _text(data.get("transaction_id", data.get("order_id")), "data.transaction_id")
    code = data.get("currency") or currency
    if not isinstance(code, str) or len(code.strip()) != 3 or not code.strip().isalpha():
        raise CoercionError(
            code, _TYPE, "needs an ISO 4217 currency such as 'EUR'", field="data.currency"
        )
    items = data.get("items") or []
    if not isinstance(items, (list, tuple)):
        raise CoercionError(items, _TYPE, "'items' must be a list", field="data.items")
    products = []
    lines_total = 0.0
    for index, item in enumerate(items):
        product, line_total = _product(item, f"data.items[{index}]")
        products.append(product)
        lines_total += line_total
    total = data.get("total")
    total_value = float(_number(total, "data.total")) if total is not None else lines_total
    if total is None and not products:
        raise CoercionError(None, _TYPE, "an order needs a total or line items", field="data.total")
    out: dict[str, Any] = {
        "order_id": order_id,
        "total_value": total_value,
        "currency": code.strip().upper(),
        "products": products,
        "source": _text(data.get("source", "antavo"), "data.source"),
    }
    for key, target in (
        ("shipping", "shipping"),
        ("tax", "tax"),
        ("discount", "total_discounts"),
        ("subtotal", "subtotal_value"),
    ):
        if data.get(key) is not None:
            out[target] = float(_number(data[key], f"data.{key}"))
    if data.get("cart_id") is not None:
        out["cart_id"] = _text(data["cart_id"], "data.cart_id")
    extra = {
        k: v
        for k, v in data.items()
        if k not in _ORDER_KEYS and v is not None and not isinstance(v, (dict, list, tuple))
    }
    if extra:
        try:
            out["metadata"] = coerce_properties(extra)
        except CoercionError as exc:
            raise exc.at("data") from None
    return out
