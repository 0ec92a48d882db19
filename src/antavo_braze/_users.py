"""Braze's endpoints beyond ``/users/track``: attribute schema, profile export, merge, delete,
the custom-event read endpoints and the permission probes (``BrazeClient``'s public methods
delegate here, so the client class stays a composition).

Every request goes through the client's one send path (``client.request`` / ``_request``:
pacing, retries, error mapping, redaction). Each endpoint also has its own budget at Braze,
so each is paced here under that budget too (one :class:`_Throttle` per endpoint and
client), never under ``/users/track``'s: ``/custom_attributes`` 1,000 per hour,
``/users/export/ids`` 40 per second, ``/users/merge`` and ``/users/delete`` 20,000 per
minute together (``shared/reference/braze-2026.md`` 1.3-1.6). It knows Braze's wire objects
only.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import date, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from ._braze.limits import (
    CUSTOM_ATTRIBUTES_RATE,
    EVENTS_LIST_PAGE,
    EXPORT_IDS_RATE,
    IDENTITY_RATE,
    IDS_PER_REQUEST,
    MAX_CUSTOM_ATTRIBUTE_PAGES,
    MAX_EVENT_LIST_PAGES,
    STANDARD_ATTRIBUTES,
)
from ._build.coerce import coerce_date
from ._build.schema import CustomAttribute
from ._fork import reset_after_fork
from ._json import dumps, loads
from .exceptions import (
    BadRequestError,
    BrazeAPIError,
    ConfigurationError,
    PermissionDeniedError,
)

if TYPE_CHECKING:
    from ._client import BrazeClient

__all__ = [
    "PERMISSION_PROBES",
    "check_permissions",
    "custom_attributes",
    "delete_users",
    "event_series",
    "export_users",
    "list_event_names",
    "list_events",
    "merge_users",
    "next_link",
]


class _Throttle:
    """At most ``requests`` per ``per`` seconds (a sliding window), shared by threads; a
    forked child starts with a fresh lock."""

    def __init__(self, requests: int, per: float) -> None:
        self.requests = requests
        self.per = per
        self._sent: deque[float] = deque()
        self._lock = threading.Lock()
        reset_after_fork(self)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()  # one held by another thread at fork() never frees

    def acquire(self) -> None:
        """Block until one more request fits in the window, then count it."""
        while True:
            with self._lock:
                now = time.monotonic()
                while self._sent and self._sent[0] <= now - self.per:
                    self._sent.popleft()
                if len(self._sent) < self.requests:
                    self._sent.append(now)
                    return
                wait = self._sent[0] + self.per - now
            time.sleep(max(wait, 0.001))


_RATES = {
    "custom_attributes": CUSTOM_ATTRIBUTES_RATE,
    "export": EXPORT_IDS_RATE,
    "identity": IDENTITY_RATE,  # /users/merge and /users/delete share one limit
}
_throttles: weakref.WeakKeyDictionary[BrazeClient, dict[str, _Throttle]] = (
    weakref.WeakKeyDictionary()
)
_throttles_lock = threading.Lock()


def _new_registry_lock() -> None:
    global _throttles_lock
    _throttles_lock = threading.Lock()


if hasattr(os, "register_at_fork"):  # pragma: no branch - POSIX
    os.register_at_fork(after_in_child=_new_registry_lock)


def throttle(client: BrazeClient, name: str) -> _Throttle:
    """The client's throttle for endpoint budget ``name`` (made on first use)."""
    with _throttles_lock:
        mine = _throttles.setdefault(client, {})
        if name not in mine:
            mine[name] = _Throttle(*_RATES[name])
        return mine[name]


def _call(
    client: BrazeClient,
    budget: str,
    method: str,
    path: str,
    *,
    params: dict[str, Any] | None = None,
    body: Any = None,
) -> tuple[dict[str, str], dict[str, Any]]:
    """One request under its endpoint's budget: ``(headers, JSON object)``."""
    throttle(client, budget).acquire()
    response = client.request(
        method, path, params=params, body=None if body is None else dumps(body)
    )
    payload = loads(response.content)  # request() answers only with a JSON object
    return response.headers, payload


def _ids(external_ids: Iterable[str], what: str) -> list[str]:
    """The ids, each once, in order; a non-string or empty id is a caller's mistake."""
    if isinstance(external_ids, str):
        raise ConfigurationError(f"{what} takes a list of external ids, not one string")
    out: dict[str, None] = {}
    for external_id in external_ids:
        if not isinstance(external_id, str) or not external_id.strip():
            raise ConfigurationError(f"{what}: {external_id!r} is not an external id")
        out[external_id] = None
    return list(out)


def _chunks(items: Sequence[Any]) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), IDS_PER_REQUEST):
        yield items[start : start + IDS_PER_REQUEST]


# --- GET /custom_attributes ---------------------------------------------------------------


def custom_attributes(client: BrazeClient) -> list[CustomAttribute]:
    """Every custom attribute Braze holds, all pages (50 each, one request per page)."""
    found: list[CustomAttribute] = []
    params: dict[str, Any] | None = None
    seen: set[str] = set()
    for _ in range(MAX_CUSTOM_ATTRIBUTE_PAGES):
        headers, payload = _call(
            client, "custom_attributes", "GET", "/custom_attributes", params=params
        )
        page = payload.get("attributes")
        if page is None:
            page = payload.get("custom_attributes", [])
        if not isinstance(page, list):
            raise BrazeAPIError(200, "", "GET /custom_attributes: 'attributes' is not a list")
        found.extend(CustomAttribute.from_wire(a) for a in page if isinstance(a, dict))
        url = next_link(headers.get("link", ""))
        cursor = None if url is None else parse_qs(urlsplit(url).query).get("cursor", [None])[0]
        if cursor is None or cursor in seen:
            return found
        seen.add(cursor)
        params = {"cursor": cursor}
    raise BrazeAPIError(
        200, "", f"GET /custom_attributes returned more than {MAX_CUSTOM_ATTRIBUTE_PAGES} pages"
    )


# --- POST /users/export/ids ---------------------------------------------------------------


def _export_fields(fields: Iterable[str]) -> tuple[list[str], list[str], list[str]]:
    """``(fields_to_export, standard, custom)``: Braze exports custom attributes as one
    ``custom_attributes`` object, standard ones by name."""
    if isinstance(fields, str):
        raise ConfigurationError("export_users takes a list of field names, not one string")
    names = list(dict.fromkeys(fields))
    for name in names:
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"export_users: {name!r} is not an attribute name")
    standard = [n for n in names if n in STANDARD_ATTRIBUTES]
    custom = [n for n in names if n not in STANDARD_ATTRIBUTES and n != "external_id"]
    to_export = ["external_id", *standard] + (["custom_attributes"] if custom else [])
    return to_export, standard, custom


def export_users(
    client: BrazeClient, external_ids: Iterable[str], fields: Iterable[str]
) -> list[dict[str, Any]]:
    """The profiles Braze holds for ``external_ids``, each as ``{"external_id": ..., field:
    value}`` with only the listed ``fields`` it has (an absent field is left out; an id Braze
    does not know has no entry). 50 ids per request, up to ``max_in_flight`` at once, paced
    under the endpoint's own limit."""
    ids = _ids(external_ids, "export_users")
    to_export, standard, custom = _export_fields(fields)
    chunks = list(_chunks(ids))
    if not chunks:
        return []

    def one(chunk: Sequence[str]) -> list[dict[str, Any]]:
        body = {"external_ids": list(chunk), "fields_to_export": to_export}
        _, payload = _call(client, "export", "POST", "/users/export/ids", body=body)
        users = payload.get("users", [])
        if not isinstance(users, list):
            raise BrazeAPIError(200, "", "POST /users/export/ids: 'users' is not a list")
        return [_flat(user, standard, custom) for user in users if isinstance(user, dict)]

    workers = max(1, min(client.max_in_flight, len(chunks)))
    if workers == 1:
        pages = [one(chunk) for chunk in chunks]
    else:
        with ThreadPoolExecutor(workers, thread_name_prefix="antavo-braze-export") as pool:
            pages = list(pool.map(one, chunks))
    return [user for page in pages for user in page if user.get("external_id") is not None]


def _flat(user: dict[str, Any], standard: list[str], custom: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"external_id": user.get("external_id")}
    for name in standard:
        if name in user:
            out[name] = user[name]
    held = user.get("custom_attributes")
    if isinstance(held, dict):
        for name in custom:
            if name in held:
                out[name] = held[name]
    return out


# --- POST /users/merge and /users/delete --------------------------------------------------


def merge_users(client: BrazeClient, pairs: Iterable[tuple[str, str]]) -> int:
    """Merge each pair's first profile into its second (``/users/merge``, 50 per request);
    return how many merges Braze accepted (it applies them asynchronously)."""
    updates = []
    for pair in pairs:
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
            raise ConfigurationError(f"merge_users takes (merge, keep) pairs, not {pair!r}")
        merge, keep = _ids(pair, "merge_users") if pair[0] != pair[1] else (None, None)
        if merge is None or keep is None:
            raise ConfigurationError(f"merge_users: cannot merge {pair[0]!r} into itself")
        updates.append(
            {
                "identifier_to_merge": {"external_id": merge},
                "identifier_to_keep": {"external_id": keep},
            }
        )
    for chunk in _chunks(updates):
        _call(client, "identity", "POST", "/users/merge", body={"merge_updates": list(chunk)})
    return len(updates)


def delete_users(client: BrazeClient, external_ids: Iterable[str]) -> int:
    """Delete the profiles of ``external_ids`` (``/users/delete``, 50 per request); return
    how many Braze queued (``deleted``). Deletion is asynchronous: verify with
    :func:`export_users`."""
    ids = _ids(external_ids, "delete_users")
    queued = 0
    for chunk in _chunks(ids):
        _, payload = _call(
            client, "identity", "POST", "/users/delete", body={"external_ids": list(chunk)}
        )
        count = payload.get("deleted")
        queued += count if isinstance(count, int) and not isinstance(count, bool) else len(chunk)
    return queued


# --- the custom-event read endpoints and the permission probes ------------------------------


def list_event_names(client: BrazeClient) -> list[str]:
    """Every custom event name (GET /events/list, all pages of 250)."""
    names: list[str] = []
    for page in range(MAX_EVENT_LIST_PAGES):
        _, payload = client._request("GET", "/events/list", {"page": page})
        batch = payload.get("events") or []
        if not isinstance(batch, list):
            raise BrazeAPIError(200, "", "GET /events/list: 'events' is not a list")
        names.extend(str(name) for name in batch)
        if len(batch) < EVENTS_LIST_PAGE:
            return names
    raise BrazeAPIError(
        200, "", f"GET /events/list returned more than {MAX_EVENT_LIST_PAGES} full pages"
    )


def list_events(client: BrazeClient) -> list[dict[str, Any]]:
    """Every custom event with its details (GET /events, following the ``Link`` cursor)."""
    events: list[dict[str, Any]] = []
    params: dict[str, Any] | None = None
    seen: set[str] = set()
    for _ in range(MAX_EVENT_LIST_PAGES):
        response, payload = client._request("GET", "/events", params)
        found = payload.get("events")
        if isinstance(found, list):
            events.extend(e for e in found if isinstance(e, dict))
        url = next_link(response.headers.get("link", ""))
        if url is None:
            return events
        cursor = parse_qs(urlsplit(url).query).get("cursor", [None])[0]
        if cursor is None or cursor in seen:
            return events
        seen.add(cursor)
        params = {"cursor": cursor}
    raise BrazeAPIError(200, "", f"GET /events returned more than {MAX_EVENT_LIST_PAGES} pages")


def event_series(
    client: BrazeClient,
    name: str,
    length: int,
    unit: str = "day",
    ending_at: datetime | date | str | None = None,
    app_id: str | None = None,
    segment_id: str | None = None,
) -> list[dict[str, Any]]:
    """Occurrences of event ``name`` per ``unit`` over ``length`` units (1-100)."""
    if not 1 <= length <= 100:
        raise ConfigurationError("length must be between 1 and 100")
    if unit not in ("day", "hour"):
        raise ConfigurationError("unit must be 'day' or 'hour'")
    params: dict[str, Any] = {"event": name, "length": length, "unit": unit}
    if ending_at is not None:
        params["ending_at"] = coerce_date(ending_at)
    if app_id is not None:
        params["app_id"] = app_id
    if segment_id is not None:
        params["segment_id"] = segment_id
    _, payload = client._request("GET", "/events/data_series", params)
    data = payload.get("data") or []
    return [point for point in data if isinstance(point, dict)] if isinstance(data, list) else []


# Probes for check_permissions that change no data: a read, or a write of nothing.
PERMISSION_PROBES: dict[str, tuple[str, str, dict[str, Any] | None, bytes | None]] = {
    # An empty track request: authorised keys get past the permission check, and there is
    # nothing in it to write.
    "users.track": ("POST", "/users/track", None, b'{"attributes":[]}'),
    "events.list": ("GET", "/events/list", {"page": 0}, None),
    "events.data_series": (
        "GET",
        "/events/data_series",
        {"event": "antavo_braze_permission_probe", "length": 1},
        None,
    ),
    "events.get": ("GET", "/events", None, None),
    "custom_attributes.get": ("GET", "/custom_attributes", None, None),
    "users.export.ids": (
        "POST",
        "/users/export/ids",
        None,
        b'{"external_ids":[],"fields_to_export":["external_id"]}',
    ),
    "users.merge": ("POST", "/users/merge", None, b'{"merge_updates":[]}'),
    "users.delete": ("POST", "/users/delete", None, b'{"external_ids":[]}'),
}


def check_permissions(client: BrazeClient) -> dict[str, bool]:
    """Which of the permissions the SDK uses the client's key has (probes change no data)."""
    result: dict[str, bool] = {}
    for permission, (method, path, params, body) in PERMISSION_PROBES.items():
        try:
            client._request(method, path, params, body)
        except PermissionDeniedError:
            result[permission] = False
        except BadRequestError:
            # Past authorisation, a refusal of the probe itself still proves the permission.
            result[permission] = True
        else:
            result[permission] = True
    return result


def next_link(header: str) -> str | None:
    """The ``rel="next"`` URL of a ``Link`` header (a linear scan; no backtracking regex)."""
    for part in header.split(","):
        url, _, params = part.partition(";")
        url = url.strip()
        if not (url.startswith("<") and url.endswith(">")):
            continue
        for param in params.split(";"):
            name, _, value = param.partition("=")
            if name.strip().lower() == "rel" and "next" in value.strip().strip('"').lower().split():
                return url[1:-1]
    return None
