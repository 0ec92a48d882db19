"""Antavo's shapes, read as pure functions: times, list envelopes, event envelopes, paging.

No I/O here: the client composes these (and the property tests exercise them alone).
Facts: ``reference/antavo-api.md`` sections 3.2 and 3.3.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import date, datetime, timezone
from typing import Any

from ..exceptions import ConfigurationError

__all__ = [
    "customer_ids",
    "event_customer",
    "event_envelope",
    "format_time",
    "page_continues",
    "to_utc",
    "updated_at",
]

_STACK = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_MAX_ID_LENGTH = 512  # an id longer than this is not Antavo's; it is refused, never sent on


def to_utc(value: datetime | date | str | float | int) -> datetime:
    """An aware UTC datetime, whole seconds (floored), from a datetime (naive = UTC), a date,
    unix seconds, or an ISO 8601 string (``Z`` or an offset; ``YYYY-MM-DD``)."""
    if isinstance(value, bool):
        raise ConfigurationError(f"not a time: {value!r}")
    if isinstance(value, datetime):
        moment = value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)
    elif isinstance(value, date):
        moment = datetime(value.year, value.month, value.day, tzinfo=timezone.utc)
    elif isinstance(value, (int, float)):
        try:
            moment = datetime.fromtimestamp(value, timezone.utc)
        except (OverflowError, OSError, ValueError) as exc:
            raise ConfigurationError(f"not a time: {value!r} ({exc})") from None
    elif isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise ConfigurationError(
                f"not an ISO 8601 time: {value!r} (expected e.g. 2026-12-06T09:00:00Z)"
            ) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
    else:
        raise ConfigurationError(f"not a time: {value!r}")
    return moment.astimezone(timezone.utc).replace(microsecond=0)


def format_time(moment: datetime) -> str:
    """``YYYY-MM-DDTHH:MM:SSZ``: UTC with ``Z``, never a ``+`` (Antavo's filters and the
    signature disagree about a literal ``+``; reference section 2.2)."""
    return to_utc(moment).strftime("%Y-%m-%dT%H:%M:%SZ")


def stack_of(host: str) -> str | None:
    """The stack a host ``api.<stack>.antavo.com`` names, else ``None``."""
    labels = host.lower().rstrip(".").split(".")
    if len(labels) == 4 and labels[0] == "api" and labels[2:] == ["antavo", "com"]:
        return labels[1] if _STACK.fullmatch(labels[1]) else None
    return None


def is_stack_name(text: str) -> bool:
    """Whether ``text`` is a bare stack name (``st2``), not a URL."""
    return _STACK.fullmatch(text) is not None


def customer_ids(body: Any) -> list[str]:
    """The ids in a ``GET /customers`` answer: a list of ``{id}``, ``{"data": [...]}`` or one
    ``{id}`` object (the envelope is not published; each is accepted). Anything else raises
    ``ValueError`` naming what came."""
    if isinstance(body, Mapping):
        items: Any = body.get("data", [body])
    else:
        items = body
    if not isinstance(items, list):
        raise ValueError(f"not a list of customers: {type(items).__name__}")
    out = []
    for item in items:
        value = item.get("id") if isinstance(item, Mapping) else item
        if not isinstance(value, (str, int)) or isinstance(value, bool):
            raise ValueError(f"a customer without a usable id: {str(item)[:80]}")
        text = str(value)
        if not text or len(text) > _MAX_ID_LENGTH:
            raise ValueError(f"a customer id that is empty or too long: {text[:80]!r}")
        out.append(text)
    return out


def updated_at(customer: Mapping[str, Any]) -> float | None:
    """A customer's ``updated_at`` as unix seconds (a number, or an ISO string), if any."""
    value = customer.get("updated_at")
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return to_utc(value).timestamp()
    except ConfigurationError:
        return None


def event_customer(event: Mapping[str, Any]) -> str | None:
    """The customer of an Antavo event: ``Customer.id``, else ``customer.id``, else
    ``customer`` as a string (the spelling is not settled; reference section 3.3)."""
    for key in ("Customer", "customer"):
        value = event.get(key)
        if isinstance(value, Mapping):
            value = value.get("id")
        if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value):
            return str(value)
    return None


def event_envelope(event: Mapping[str, Any]) -> dict[str, Any]:
    """The envelope ``sync_events`` takes, from an event of ``/customers/-/events``:
    ``id``, ``customer``, ``action``, ``timestamp`` and ``data`` (the ``properties`` list
    read as ``{name: value}``, plus ``points`` when the properties do not name it)."""
    data: dict[str, Any] = {}
    existing = event.get("data")
    if isinstance(existing, Mapping):
        data.update(existing)
    properties = event.get("properties")
    if isinstance(properties, list):
        for prop in properties:
            if isinstance(prop, Mapping) and isinstance(prop.get("name"), str):
                data[prop["name"]] = prop.get("value")
    elif isinstance(properties, Mapping):
        data.update(properties)
    if "points" in event and "points" not in data:
        data["points"] = event["points"]
    envelope: dict[str, Any] = {
        "id": event.get("id"),
        "customer": event_customer(event),
        "action": event.get("action"),
        "data": data,
    }
    if event.get("timestamp") is not None:
        envelope["timestamp"] = event["timestamp"]
    return envelope


def page_continues(previous_tail: Sequence[str], page: Sequence[str]) -> bool:
    """Whether a page read at an offset that overlaps the previous page by
    ``len(previous_tail)`` items still joins it: one of the previous page's last ids is on
    this page. When none is, the list moved by more than the overlap between the two reads
    (items before the offset went away) and what lay between may have been skipped."""
    if not previous_tail or not page:
        return True
    tail = set(previous_tail)
    return any(item in tail for item in page)
