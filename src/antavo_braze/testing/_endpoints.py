"""FakeBraze's endpoints, one pure function each: (request, account, what is held) -> Verdict.

They read what the fake holds through :class:`Held` and change nothing: what Braze would go on
to do (store objects, queue merges and deletes) is in the :class:`~._rules.Verdict`, and the
fake applies it (``_profiles.Profiles.apply``). :func:`handle` is the whole oracle: Braze's
answer to any request, given the account and what it holds (rate limits aside: they count
requests over time, ``_budgets``). The readers at the bottom check each endpoint's parameters.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any, Protocol

from attrs import frozen

from . import _rules as rules
from ._profiles import Profiles
from ._rules import Account, Reply, Request, Verdict, message

__all__ = ["ROUTES", "Held", "answer", "handle"]


class Held(Protocol):
    """What the read endpoints' answers depend on (``_profiles.Profiles`` is one)."""

    def sorted_event_names(self) -> list[str]: ...

    def event_times(self, name: str) -> list[datetime]: ...

    def attribute_rows(self) -> list[dict[str, Any]]: ...

    def exported(self, ids: list[str], fields: list[str]) -> tuple[list[Any], list[str]]: ...


Endpoint = Callable[[Request, Account, Held, Any], Verdict]


def handle(request: Request, account: Account | None = None, held: Held | None = None) -> Reply:
    """Braze's answer to ``request`` (by default: the default account, nothing held)."""
    account = account or Account()
    return answer(request, account, held if held is not None else Profiles()).reply


def answer(request: Request, account: Account, held: Held, body: Any = rules.UNPARSED) -> Verdict:
    """The gate, then the endpoint (``body``: the track body when already parsed)."""
    refused = rules.gate(request, account.keys)
    if refused is not None:
        return Verdict(refused)
    return ROUTES[request.method, request.path](request, account, held, body)


def track(request: Request, account: Account, held: Held, body: Any) -> Verdict:
    return rules.judge_track(request, account, body)


def events_list(request: Request, account: Account, held: Held, body: Any) -> Verdict:
    """``GET /events/list``: 250 names a page, alphabetical [4]."""
    page = read_page(request.query)
    if isinstance(page, Reply):
        return Verdict(page)
    size = rules.EVENTS_LIST_PAGE
    names = held.sorted_event_names()[page * size : (page + 1) * size]
    return Verdict(Reply(200, {}, {"message": "success", "events": names}))


def events_get(request: Request, account: Account, held: Held, body: Any) -> Verdict:
    """``GET /events``: 50 a page, the others through the ``Link`` header [4]."""
    start = read_cursor(request.query)
    if isinstance(start, Reply):
        return Verdict(start)
    names = held.sorted_event_names()
    size = rules.EVENTS_PAGE
    events: list[dict[str, Any]] = [
        {
            "name": n,
            "description": None,
            "included_in_analytics_report": False,
            "status": "Active",
            "tag_names": [],
        }
        for n in names[start : start + size]
    ]
    links = []
    url = account.url
    if start > 0:
        links.append(f'<{url}/events?cursor={cursor(max(0, start - size))}>; rel="prev"')
    if start + size < len(names):
        links.append(f'<{url}/events?cursor={cursor(start + size)}>; rel="next"')
    headers = {"Link": ",".join(links)} if links else {}
    return Verdict(Reply(200, headers, {"message": "success", "events": events}))


def data_series(request: Request, account: Account, held: Held, body: Any) -> Verdict:
    """``GET /events/data_series``: counts per day or hour, up to ``ending_at`` [4]."""
    series = read_series(request.query, datetime.now(rules.UTC))
    if isinstance(series, Reply):
        return Verdict(series)
    times = held.event_times(series.event)
    data = []
    for start in series.starts:
        count = sum(1 for t in times if start <= t < start + series.step)
        label = (
            start.date().isoformat()
            if series.unit == "day"
            else start.isoformat().replace("+00:00", "Z")
        )
        data.append({"time": label, "count": count})
    return Verdict(Reply(200, {}, {"message": "success", "data": data}))


def custom_attributes(request: Request, account: Account, held: Held, body: Any) -> Verdict:
    """``GET /custom_attributes``: 50 a page, the next in ``Link`` (braze-2026.md 1.5)."""
    rows = held.attribute_rows()
    start = read_cursor(request.query)
    if isinstance(start, Reply):
        return Verdict(start)
    size = rules.CUSTOM_ATTRIBUTES_PAGE
    headers: dict[str, str] = {}
    if start + size < len(rows):
        next_page = f"{account.url}/custom_attributes?cursor={cursor(start + size)}"
        headers["Link"] = f'<{next_page}>; rel="next"'
    page = rows[start : start + size]
    return Verdict(Reply(200, headers, {"message": "success", "attributes": page}))


def export(request: Request, account: Account, held: Held, body: Any) -> Verdict:
    """``POST /users/export/ids`` (braze-2026.md 1.6)."""
    body, problem = read_object(request.body)
    if problem is not None:
        return Verdict(problem, body)
    asked = read_export(body)
    if isinstance(asked, Reply):
        return Verdict(asked, body)
    users, invalid = held.exported(*asked)
    payload: dict[str, Any] = {"message": "success", "users": users}
    if invalid:
        payload["invalid_user_ids"] = invalid
    return Verdict(Reply(201, {}, payload), body)


def merge(request: Request, account: Account, held: Held, body: Any) -> Verdict:
    """``POST /users/merge``: answered at once, applied later (braze-2026.md 1.4)."""
    body, problem = read_object(request.body)
    if problem is not None:
        return Verdict(problem, body)
    pairs = read_merge(body)
    if isinstance(pairs, Reply):
        return Verdict(pairs, body)
    return Verdict(message(200, "success"), body, merges=tuple(pairs))


def delete(request: Request, account: Account, held: Held, body: Any) -> Verdict:
    """``POST /users/delete``: ``deleted`` counts what is queued (braze-2026.md 1.3)."""
    body, problem = read_object(request.body)
    if problem is not None:
        return Verdict(problem, body)
    ids = read_delete(body)
    if isinstance(ids, Reply):
        return Verdict(ids, body)
    reply = Reply(202, {}, {"message": "success", "deleted": len(ids)})
    return Verdict(reply, body, deletes=tuple(ids))


ROUTES: dict[tuple[str, str], Endpoint] = {
    ("POST", "/users/track"): track,
    ("GET", "/events/list"): events_list,
    ("GET", "/events"): events_get,
    ("GET", "/events/data_series"): data_series,
    ("GET", "/custom_attributes"): custom_attributes,
    ("POST", "/users/export/ids"): export,
    ("POST", "/users/merge"): merge,
    ("POST", "/users/delete"): delete,
}


# --- the other endpoints' parameters ----------------------------------------------------------


def read_page(query: Mapping[str, str]) -> int | Reply:
    """``?page=`` of ``GET /events/list`` [4]."""
    try:
        return int(query.get("page", "0"))
    except ValueError:
        return message(400, "page must be an integer")


def read_cursor(query: Mapping[str, str]) -> int | Reply:
    """``?cursor=`` of ``GET /events`` and ``GET /custom_attributes``: an offset, as base64."""
    if "cursor" not in query:
        return 0
    try:
        return int(base64.urlsafe_b64decode(query["cursor"]).decode())
    except (ValueError, UnicodeDecodeError):
        return message(400, "invalid cursor")


def cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(str(offset).encode()).decode()


@frozen
class Series:
    """The parameters of ``GET /events/data_series`` [4]: the name and the buckets' starts."""

    event: str
    unit: str
    step: timedelta
    starts: tuple[datetime, ...]


def read_series(query: Mapping[str, str], now: datetime) -> Series | Reply:
    try:
        name = query["event"]
        length = int(query["length"])
        unit = query.get("unit", "day")
        ending = rules.parse_time(query["ending_at"]) if "ending_at" in query else now
    except (KeyError, ValueError, rules.InvalidError) as exc:
        return message(400, f"invalid parameters: {exc}")
    if unit not in ("day", "hour") or not 1 <= length <= 100:
        return message(400, "unit must be day or hour; length 1-100")
    step = timedelta(days=1) if unit == "day" else timedelta(hours=1)
    if unit == "day":
        last = ending.replace(hour=0, minute=0, second=0, microsecond=0)
    else:
        last = ending.replace(minute=0, second=0, microsecond=0)
    return Series(name, unit, step, tuple(last - step * i for i in reversed(range(length))))


def read_object(raw: bytes) -> tuple[Any, Reply | None]:
    """A JSON object body: (body, None), or (what was read, the 400 to answer)."""
    body = rules.loads_or_unparsed(raw)
    if body is rules.UNPARSED:
        return None, message(400, "Invalid JSON: syntax or parse error")
    if not isinstance(body, dict):
        return body, message(400, "Invalid request body")
    return body, None


def read_export(body: dict[str, Any]) -> tuple[list[str], list[str]] | Reply:
    """``POST /users/export/ids``: (external_ids, fields_to_export) (braze-2026.md 1.6)."""
    ids = body.get("external_ids")
    fields = body.get("fields_to_export")
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        return message(400, "external_ids must be an array of strings")
    if len(ids) > rules.IDS_PER_REQUEST:
        return message(400, f"at most {rules.IDS_PER_REQUEST} external_ids")
    if not isinstance(fields, list) or not all(isinstance(f, str) for f in fields):
        return message(400, "fields_to_export is required")
    return ids, fields


def read_merge(body: dict[str, Any]) -> list[tuple[str, str]] | Reply:
    """``POST /users/merge``: (merged, kept) external id pairs (braze-2026.md 1.4)."""
    updates = body.get("merge_updates")
    if not isinstance(updates, list) or len(updates) > rules.IDS_PER_REQUEST:
        return message(400, f"merge_updates must be an array of at most {rules.IDS_PER_REQUEST}")
    pairs = []
    for update in updates:
        try:
            merge = update["identifier_to_merge"]["external_id"]
            keep = update["identifier_to_keep"]["external_id"]
        except (KeyError, TypeError):
            return message(
                400, "each merge update needs identifier_to_merge and identifier_to_keep"
            )
        pairs.append((str(merge), str(keep)))
    return pairs


def read_delete(body: dict[str, Any]) -> list[str] | Reply:
    """``POST /users/delete``: the external ids (braze-2026.md 1.3)."""
    ids = body.get("external_ids")
    if (
        not isinstance(ids, list)
        or not all(isinstance(i, str) for i in ids)
        or len(ids) > rules.IDS_PER_REQUEST
    ):
        return message(
            400, f"external_ids must be an array of at most {rules.IDS_PER_REQUEST} strings"
        )
    return list(ids)
