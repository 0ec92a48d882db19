"""FakeBraze's oracle: Braze's rules as pure functions from a request to a reply.

Nothing here holds state or touches a socket (the shape of ``httpx.MockTransport``: a fake is a
function from request to response; the server around it is plumbing). :func:`gate` answers the
requests that never reach an endpoint (key, route, permission), :func:`judge_track` the whole
of ``POST /users/track`` (framing, object counts, every object's validity).
``_endpoints.handle`` puts them together with the other endpoints.

The numbers are FakeBraze's own copy of Braze's, on purpose: an oracle that imported the
library's ``_braze.limits`` would share its mistakes. ``tests/test_fake_rules.py`` asserts the
two copies agree. Sources: ``shared/reference/braze-api.md`` (section numbers in brackets) and
``shared/reference/braze-2026.md``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from collections.abc import Set as AbstractSet
from datetime import datetime, timezone
from typing import Any

from attrs import Factory, field, frozen

from .._json import dumps, loads

__all__ = ["Account", "Reply", "Request", "Verdict", "gate", "judge_track"]

# --- Braze's numbers: the oracle's own copy ---------------------------------------------------
MAX_OBJECTS = 75  # per request, combined (or per array on "legacy" accounts) [1.2]
MAX_BODY_BYTES = 4_000_000  # 413 above it [1.3]
MAX_EXTERNAL_ID_BYTES = 987  # EXTERNAL_USER_ID_TOO_LARGE [1.1]
MAX_STRING_LENGTH = 255  # strings, keys, names [2.1]
DEFAULT_MAX_ARRAY_ITEMS = 500  # [2.1]
MAX_NESTED_BYTES = 100 * 1024  # objects, arrays, event properties [2.1, 3.1]
MAX_PURCHASE_PROPERTY_BYTES = 50 * 1024  # [3.2]
MAX_PURCHASE_QUANTITY = 100  # [3.2]
MIN_YEAR, MAX_YEAR = 1, 3000  # [2.1]
MAX_PROPERTIES = 256  # distinct properties kept per event or purchase; the rest dropped [3.1]
PRIMARY_IDENTIFIERS = ("external_id", "user_alias", "braze_id")  # one per object [1.1]
SECONDARY_IDENTIFIERS = ("email", "phone")  # lookup only without a primary [1.1]
ARRAYS = ("attributes", "events", "purchases")  # the order Braze processes them in [7]
EVENT_PROPERTY_RESERVED = frozenset({"time", "event_name"})  # [3.1]
PURCHASE_PROPERTY_RESERVED = frozenset(
    {"time", "product_id", "quantity", "event_name", "price", "currency"}
)  # [3.2]
EVENTS_LIST_PAGE = 250  # names per page of GET /events/list [4]
EVENTS_PAGE = 50  # events per page of GET /events [4]
CUSTOM_ATTRIBUTES_PAGE = 50  # braze-2026.md 1.5
IDS_PER_REQUEST = 50  # export, merge, delete (braze-2026.md 1.3, 1.4, 1.6)
EXPORT_RATE_SECONDS = 1.0  # /users/export/ids: n per second (braze-2026.md 1.6)
IDENTITY_RATE_SECONDS = 60.0  # /users/merge + /users/delete: n per minute (braze-2026.md 1.3)
# Braze's own profile fields: not custom attributes, so never typed [2.2].
STANDARD_ATTRIBUTES = frozenset(
    {
        "first_name",
        "last_name",
        "email",
        "phone",
        "dob",
        "gender",
        "country",
        "language",
        "home_city",
        "time_zone",
        "email_subscribe",
        "push_subscribe",
        "subscription_groups",
    }
)
# The permission each endpoint needs (403 Access Denied without it) [4; braze-2026.md 1.11].
ENDPOINT_PERMISSIONS = {
    ("POST", "/users/track"): "users.track",
    ("GET", "/events/list"): "events.list",
    ("GET", "/events"): "events.get",
    ("GET", "/events/data_series"): "events.data_series",
    ("GET", "/custom_attributes"): "custom_attributes.get",
    ("POST", "/users/export/ids"): "users.export.ids",
    ("POST", "/users/merge"): "users.merge",
    ("POST", "/users/delete"): "users.delete",
}
ALL_PERMISSIONS = frozenset(ENDPOINT_PERMISSIONS.values())

CONTROL_KEYS = frozenset(
    {
        *PRIMARY_IDENTIFIERS,
        *SECONDARY_IDENTIFIERS,
        "_update_existing_only",
        "_merge_objects",
        "app_id",
    }
)
_MAX_DEPTH = 50  # ours: Braze documents no depth limit [8.7]; bounds the recursion
UTC = timezone.utc


def _bearer_key(request: Request) -> str | None:
    auth = request.headers.get("authorization") or ""
    return auth[7:] if auth.startswith("Bearer ") else None


@frozen
class Request:
    """One HTTP request as the oracle sees it (header names lower-case: ``content-type``,
    ``authorization``, ``user-agent``)."""

    method: str
    path: str
    query: Mapping[str, str] = field(factory=dict)
    headers: Mapping[str, str] = field(factory=dict)
    body: bytes = b""
    api_key: str | None = field(init=False, default=Factory(_bearer_key, takes_self=True))


@frozen
class Reply:
    """What Braze answers: a status, extra headers, and a JSON-ready body (or raw bytes)."""

    status: int
    headers: Mapping[str, str] = field(factory=dict)
    body: Any = None


def message(status: int, text: str, headers: Mapping[str, str] | None = None) -> Reply:
    return Reply(status, headers or {}, {"message": text})


NOT_FOUND = message(404, "Not Found")


@frozen
class Account:
    """The workspace's settings that change Braze's answers."""

    batch_mode: str = "combined"  # or "legacy": MAX_OBJECTS per array
    validate: bool = True  # False: count objects, check nothing inside them (load tests)
    max_body_bytes: int = MAX_BODY_BYTES
    blocked: AbstractSet[str] = frozenset()  # profile ids Braze refuses (dummy users)
    keys: Mapping[str, frozenset[str]] = field(factory=lambda: {"test-key": ALL_PERMISSIONS})
    url: str = "http://127.0.0.1"  # the REST endpoint, for the Link headers of paged answers


@frozen
class Verdict:
    """Braze's answer and what it goes on to do: the body it read (recorded with the request),
    the track objects it processes per array, the merges and deletes it queues."""

    reply: Reply
    body: Any = None
    accepted: Mapping[str, list[dict[str, Any]]] = field(factory=dict)
    merges: tuple[tuple[str, str], ...] = ()
    deletes: tuple[str, ...] = ()


class InvalidError(Exception):
    """One object breaks a rule: the text goes into ``errors[].type``."""


UNPARSED: Any = object()


def loads_or_unparsed(raw: bytes) -> Any:
    try:
        return loads(raw)
    except ValueError:
        return UNPARSED


# --- the gate and /users/track ----------------------------------------------------------------


def gate(request: Request, keys: Mapping[str, frozenset[str]]) -> Reply | None:
    """The answer of a request that never reaches an endpoint, or None."""
    key = request.api_key
    if key is None or key not in keys:
        # Braze echoes the key it did not recognise; the client must redact it [1.7].
        return message(401, f"Invalid API key: {key}")
    permission = ENDPOINT_PERMISSIONS.get((request.method, request.path))
    if permission is None:
        return NOT_FOUND
    if permission not in keys[key]:
        return message(403, "Access Denied")
    return None


def judge_track(request: Request, account: Account, body: Any = UNPARSED) -> Verdict:
    """Braze's answer to a ``POST /users/track`` that passed the gate [1.1-1.7]: 413, 415, 400
    for the request as a whole, else 201 with the objects refused in ``errors[]``."""
    if len(request.body) > account.max_body_bytes:
        return Verdict(message(413, "Request Entity Too Large"))
    if "application/json" not in (request.headers.get("content-type") or ""):
        return Verdict(message(415, "Unsupported Media Type"))
    if body is UNPARSED:
        body = loads_or_unparsed(request.body)
        if body is UNPARSED:
            return Verdict(message(400, "Invalid JSON: syntax or parse error"))
    if not isinstance(body, dict) or set(body) - set(ARRAYS):
        return Verdict(message(400, "Invalid request body"), body)
    arrays = {name: body.get(name, []) for name in ARRAYS}
    if not all(isinstance(a, list) for a in arrays.values()):
        return Verdict(message(400, "attributes, events and purchases must be arrays"), body)
    counts = [len(a) for a in arrays.values()]
    too_many = sum(counts) if account.batch_mode == "combined" else max(counts)
    if too_many > MAX_OBJECTS:
        return Verdict(message(400, "Max Input Length Exceeded"), body)
    if not account.validate:
        return Verdict(message(201, "success"), body, arrays)
    errors: list[dict[str, Any]] = []
    accepted: dict[str, list[dict[str, Any]]] = {name: [] for name in ARRAYS}
    for name, objects in arrays.items():
        check = _CHECKS[name]
        for index, obj in enumerate(objects):
            try:
                if not isinstance(obj, dict):
                    raise InvalidError("objects must be JSON objects")
                if profile_id(obj) in account.blocked:
                    raise InvalidError("BLACKLISTED_EXTERNAL_USER_ID")
                check(obj)
            except InvalidError as exc:
                errors.append({"type": str(exc), "input_array": name, "index": index})
            else:
                accepted[name].append(obj)
    payload: dict[str, Any] = {"message": "success"}
    for name in ARRAYS:
        if arrays[name]:
            payload[f"{name}_processed"] = len(accepted[name])
    if errors:
        payload["errors"] = errors
    return Verdict(Reply(201, {}, payload), body, accepted)


def parse_time(value: Any) -> datetime:
    """An ISO 8601 time as Braze reads it (no offset: UTC) [2.1, 3.1]."""
    if not isinstance(value, str) or not value:
        raise InvalidError("time must be an ISO 8601 string")
    text = value.strip().replace("Z", "+00:00").replace("z", "+00:00")
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidError(f"invalid time {value!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    if not MIN_YEAR <= moment.year <= MAX_YEAR:
        raise InvalidError(f"time {value!r} is out of range")
    return moment.astimezone(UTC)


def profile_id(obj: dict[str, Any]) -> str:
    """The profile an object updates, by Braze's identifier rules [1.1]."""
    primaries = [k for k in PRIMARY_IDENTIFIERS if k in obj]
    if len(primaries) > 1:
        raise InvalidError("more than one primary identifier")
    if not primaries and not any(k in obj for k in SECONDARY_IDENTIFIERS):
        raise InvalidError("missing identifier (external_id, user_alias, braze_id, email or phone)")
    if "external_id" in obj:
        external_id = obj["external_id"]
        if not isinstance(external_id, str) or not external_id:
            raise InvalidError("external_id must be a non-empty string")
        if len(external_id.encode()) > MAX_EXTERNAL_ID_BYTES:
            raise InvalidError("EXTERNAL_USER_ID_TOO_LARGE")
        return external_id
    if "user_alias" in obj:
        alias = obj["user_alias"]
        if not isinstance(alias, dict) or set(alias) != {"alias_name", "alias_label"}:
            raise InvalidError("user_alias needs alias_name and alias_label")
        return f"alias:{alias['alias_label']}:{alias['alias_name']}"
    if "braze_id" in obj:
        return f"braze:{obj['braze_id']}"
    return f"{'email' if 'email' in obj else 'phone'}:{obj.get('email') or obj.get('phone')}"


def size(value: Any) -> int:
    return len(dumps(value))


def _check_key(key: Any, where: str) -> None:
    if not isinstance(key, str) or not key:
        raise InvalidError(f"{where}: keys must be non-empty strings")
    if len(key) > MAX_STRING_LENGTH:
        raise InvalidError(f"{where}: key longer than {MAX_STRING_LENGTH} characters")


def _check_string(value: str, where: str) -> None:
    if len(value) > MAX_STRING_LENGTH:
        raise InvalidError(f"{where}: string longer than {MAX_STRING_LENGTH} characters")


def _check_nested(value: Any, where: str, depth: int = 0) -> None:
    if depth > _MAX_DEPTH:
        raise InvalidError(f"{where}: nested too deep")
    if value is None:
        raise InvalidError(f"{where}: null inside a nested attribute")
    if isinstance(value, str):
        _check_string(value, where)
    elif isinstance(value, dict):
        if set(value) == {"$time"}:
            parse_time(value["$time"])
            return
        for key, item in value.items():
            _check_key(key, where)
            # Nested keys: no '$' first, no '.', no spaces [2.1; braze-2026.md 1.8].
            if key.startswith("$") or "." in key or " " in key:
                raise InvalidError(
                    f"{where}: nested keys cannot start with '$' or contain '.' or spaces"
                )
            _check_nested(item, f"{where}.{key}", depth + 1)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_nested(item, f"{where}[{index}]", depth + 1)
    elif isinstance(value, float) and not math.isfinite(value):
        raise InvalidError(f"{where}: not a finite number")


def _check_list_operators(name: str, value: dict[str, Any], ops: set[str]) -> None:
    for op in ops:
        if not isinstance(value[op], list):
            raise InvalidError(f"attribute {name!r}: '{op}' takes a list")


def check_attribute(name: str, value: Any) -> None:
    """One custom attribute of a user-attributes object [2.1, 2.2]."""
    _check_key(name, "attribute")
    if name.startswith("$"):
        raise InvalidError(f"attribute {name!r}: names cannot start with '$'")
    if value is None or isinstance(value, (bool, int)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidError(f"attribute {name!r}: not a finite number")
        return
    if isinstance(value, str):
        _check_string(value, f"attribute {name!r}")
        return
    if isinstance(value, list):
        if all(isinstance(v, dict) for v in value) and value:
            for index, item in enumerate(value):
                _check_nested(item, f"attribute {name!r}[{index}]")
        else:
            for item in value:
                if isinstance(item, (dict, list)) or item is None:
                    raise InvalidError(f"attribute {name!r}: arrays hold scalars only")
                if isinstance(item, str):
                    _check_string(item, f"attribute {name!r}")
            if len(value) != len({(type(v) is bool, v) for v in value}):
                raise InvalidError(f"attribute {name!r}: array values must be unique")
            if len(value) > DEFAULT_MAX_ARRAY_ITEMS:
                raise InvalidError(f"attribute {name!r}: more than {DEFAULT_MAX_ARRAY_ITEMS} items")
        if size(value) > MAX_NESTED_BYTES:
            raise InvalidError(f"attribute {name!r}: over 100 KB")
        return
    if isinstance(value, dict):
        ops = set(value)
        if ops and ops <= {"add", "remove"}:
            _check_list_operators(name, value, ops)
            return
        if ops == {"inc"}:
            if not isinstance(value["inc"], int) or isinstance(value["inc"], bool):
                raise InvalidError(f"attribute {name!r}: 'inc' takes an integer")
            return
        if ops and ops <= {"$add", "$remove", "$update"}:
            _check_list_operators(name, value, ops)
            for item in value.get("$add", []):
                _check_nested(item, f"attribute {name!r}.$add")
            for item in value.get("$remove", []) + value.get("$update", []):
                if not isinstance(item, dict) or "$identifier_key" not in item:
                    raise InvalidError(f"attribute {name!r}: operator items need $identifier_key")
            return
        if ops == {"$time"}:
            parse_time(value["$time"])
            return
        _check_nested(value, f"attribute {name!r}")
        if size(value) > MAX_NESTED_BYTES:
            raise InvalidError(f"attribute {name!r}: over 100 KB")
        return
    raise InvalidError(f"attribute {name!r}: unsupported value")  # pragma: no cover - JSON


def _check_attributes_object(obj: dict[str, Any]) -> None:
    if "_update_existing_only" in obj and not isinstance(obj["_update_existing_only"], bool):
        raise InvalidError("_update_existing_only must be a boolean")
    for name, value in obj.items():
        if name not in CONTROL_KEYS:
            check_attribute(name, value)


def _check_properties(value: Any, reserved: frozenset[str], limit: int) -> None:
    # More than MAX_PROPERTIES is not refused: Braze keeps the first 256 [3.1] (see
    # kept_properties).
    if value is None:
        return
    if not isinstance(value, dict):
        raise InvalidError("Invalid 'properties' field: must be an object")
    for key, item in value.items():
        _check_key(key, "properties")
        if key.startswith("$") or key in reserved:
            raise InvalidError(
                f"Invalid 'properties' field: {key!r} is reserved or starts with '$'"
            )
        if isinstance(item, str):
            _check_string(item, f"property {key!r}")
    if size(value) > limit:
        raise InvalidError("Invalid 'properties' field: too large")


def kept_properties(properties: Any) -> Any:
    """What Braze keeps of an event's or purchase's properties: the first 256 [3.1]."""
    if isinstance(properties, dict) and len(properties) > MAX_PROPERTIES:
        return dict(list(properties.items())[:MAX_PROPERTIES])
    return properties


def _check_event(obj: dict[str, Any]) -> None:
    name = obj.get("name")
    if (
        not isinstance(name, str)
        or not name
        or len(name) > MAX_STRING_LENGTH
        or name.startswith("$")
    ):
        raise InvalidError("invalid event name")
    parse_time(obj.get("time"))
    _check_properties(obj.get("properties"), EVENT_PROPERTY_RESERVED, MAX_NESTED_BYTES)
    if "app_id" in obj and not isinstance(obj["app_id"], str):
        raise InvalidError("app_id must be a string")


def _check_purchase(obj: dict[str, Any]) -> None:
    product_id = obj.get("product_id")
    if not isinstance(product_id, str) or not product_id or len(product_id) > MAX_STRING_LENGTH:
        raise InvalidError("invalid product_id")
    currency = obj.get("currency")
    if not isinstance(currency, str) or len(currency) != 3 or not currency.isalpha():
        raise InvalidError("invalid currency")
    price = obj.get("price")
    if isinstance(price, bool) or not isinstance(price, (int, float)) or not math.isfinite(price):
        raise InvalidError("invalid price")
    quantity = obj.get("quantity", 1)
    if (
        isinstance(quantity, bool)
        or not isinstance(quantity, int)
        or not 1 <= quantity <= MAX_PURCHASE_QUANTITY
    ):
        raise InvalidError(f"quantity must be an integer from 1 to {MAX_PURCHASE_QUANTITY}")
    parse_time(obj.get("time"))
    _check_properties(
        obj.get("properties"), PURCHASE_PROPERTY_RESERVED, MAX_PURCHASE_PROPERTY_BYTES
    )


_CHECKS: dict[str, Callable[[dict[str, Any]], None]] = {
    "attributes": _check_attributes_object,
    "events": _check_event,
    "purchases": _check_purchase,
}
