"""FakeBraze's endpoints, one pure function each: (request, account, what is held) -> Verdict.

They read what the fake holds through :class:`Held` and change nothing: what Braze would go on
to do (store objects, queue merges and deletes) is in the :class:`~._rules.Verdict`, and the
fake applies it (``_profiles.Profiles.apply``). :func:`handle` is the whole oracle: Braze's
answer to any request, given the account and what it holds (rate limits aside: they count
requests over time, ``_budgets``).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol

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
    page = rules.read_page(request.query)
    if isinstance(page, Reply):
        return Verdict(page)
    size = rules.EVENTS_LIST_PAGE
    names = held.sorted_event_names()[page * size : (page + 1) * size]
    return Verdict(Reply(200, {}, {"message": "success", "events": names}))


def events_get(request: Request, account: Account, held: Held, body: Any) -> Verdict:
    """``GET /events``: 50 a page, the others through the ``Link`` header [4]."""
    start = rules.read_cursor(request.query)
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
        links.append(f'<{url}/events?cursor={rules.cursor(max(0, start - size))}>; rel="prev"')
    if start + size < len(names):
        links.append(f'<{url}/events?cursor={rules.cursor(start + size)}>; rel="next"')
    headers = {"Link": ",".join(links)} if links else {}
    return Verdict(Reply(200, headers, {"message": "success", "events": events}))


def data_series(request: Request, account: Account, held: Held, body: Any) -> Verdict:
    """``GET /events/data_series``: counts per day or hour, up to ``ending_at`` [4]."""
    series = rules.read_series(request.query, datetime.now(rules.UTC))
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
    start = rules.read_cursor(request.query)
    if isinstance(start, Reply):
        return Verdict(start)
    size = rules.CUSTOM_ATTRIBUTES_PAGE
    headers: dict[str, str] = {}
    if start + size < len(rows):
        next_page = f"{account.url}/custom_attributes?cursor={rules.cursor(start + size)}"
        headers["Link"] = f'<{next_page}>; rel="next"'
    page = rows[start : start + size]
    return Verdict(Reply(200, headers, {"message": "success", "attributes": page}))


def export(request: Request, account: Account, held: Held, body: Any) -> Verdict:
    """``POST /users/export/ids`` (braze-2026.md 1.6)."""
    body, problem = rules.read_object(request.body)
    if problem is not None:
        return Verdict(problem, body)
    asked = rules.read_export(body)
    if isinstance(asked, Reply):
        return Verdict(asked, body)
    users, invalid = held.exported(*asked)
    payload: dict[str, Any] = {"message": "success", "users": users}
    if invalid:
        payload["invalid_user_ids"] = invalid
    return Verdict(Reply(201, {}, payload), body)


def merge(request: Request, account: Account, held: Held, body: Any) -> Verdict:
    """``POST /users/merge``: answered at once, applied later (braze-2026.md 1.4)."""
    body, problem = rules.read_object(request.body)
    if problem is not None:
        return Verdict(problem, body)
    pairs = rules.read_merge(body)
    if isinstance(pairs, Reply):
        return Verdict(pairs, body)
    return Verdict(message(200, "success"), body, merges=tuple(pairs))


def delete(request: Request, account: Account, held: Held, body: Any) -> Verdict:
    """``POST /users/delete``: ``deleted`` counts what is queued (braze-2026.md 1.3)."""
    body, problem = rules.read_object(request.body)
    if problem is not None:
        return Verdict(problem, body)
    ids = rules.read_delete(body)
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
