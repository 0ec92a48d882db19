"""FakeBraze's endpoints: each turns a request that passed the gate into a :class:`Reply`,
using the oracle's pure rules (``_rules``) and what the fake holds (``_profiles``).

Rate limits are counted here in fixed windows (Braze's hourly limits reset on the clock hour,
``shared/reference/braze-api.md`` 1.4): ``/users/track`` with the fake's ``rate_limit`` per
``rate_window``, ``/users/export/ids`` per second, merges and deletes together per
``identity_rate_window``.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from attrs import frozen

from . import _rules as rules
from ._rules import Reply, Request, message

if TYPE_CHECKING:
    from ._fake import FakeBraze

__all__ = ["Answer", "Endpoints", "FixedWindow"]


@frozen
class Answer:
    """An endpoint's reply and the request body to record with it."""

    reply: Reply
    recorded: Any = None


Handler = Callable[[Request, Any], Answer]


class FixedWindow:
    """Requests counted in fixed windows of a given length (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._window: tuple[int, int] = (-1, 0)  # (window number, requests counted in it)

    def reset(self) -> None:
        with self._lock:
            self._window = (-1, 0)

    def count(self, now: float, length: float) -> tuple[int, float]:
        """Count one more request at ``now``: (requests in its window so far, the window's
        end)."""
        number = math.floor(now / length)
        with self._lock:
            current, count = self._window
            count = count + 1 if current == number else 1
            self._window = (number, count)
        return count, (number + 1) * length


def _retry_after(seconds: float) -> dict[str, str]:
    wait = str(max(1, math.ceil(seconds)))
    return {"Retry-After": wait, "X-Ratelimit-Retry-After": wait}


class Endpoints:
    """The handlers of every route FakeBraze serves, keyed by (method, path)."""

    def __init__(self, fake: FakeBraze) -> None:
        self.fake = fake
        self.track_window = FixedWindow()
        self.export_window = FixedWindow()
        self.identity_window = FixedWindow()
        self.routes: dict[tuple[str, str], Handler] = {
            ("POST", "/users/track"): self.track,
            ("GET", "/events/list"): self.events_list,
            ("GET", "/events"): self.events_get,
            ("GET", "/events/data_series"): self.data_series,
            ("GET", "/custom_attributes"): self.custom_attributes,
            ("POST", "/users/export/ids"): self.export,
            ("POST", "/users/merge"): self.merge,
            ("POST", "/users/delete"): self.delete,
        }

    def reset(self) -> None:
        self.track_window.reset()
        self.export_window.reset()
        self.identity_window.reset()

    # --- POST /users/track -------------------------------------------------------------------

    def _track_rate(self) -> tuple[bool, dict[str, str]]:
        fake = self.fake
        limit = fake.rate_limit
        if limit is None:
            return True, {}
        now = fake.clock()
        count, window_end = self.track_window.count(now, fake.rate_window)
        wait = max(1, math.ceil(window_end - now))
        if count > limit:
            return False, _retry_after(wait)
        reset = str(math.ceil(window_end)) if fake.reset_style == "epoch" else str(wait)
        return True, {
            "X-RateLimit-Limit": str(limit),
            "X-RateLimit-Remaining": str(limit - count),
            "X-RateLimit-Reset": reset,
        }

    def track(self, request: Request, body: Any) -> Answer:
        allowed, headers = self._track_rate()
        if not allowed:
            return Answer(message(429, "Rate Limited", headers))
        fake = self.fake
        verdict = rules.judge_track(request, fake.track_rules(), body)
        reply = verdict.reply
        if reply.status == 201:
            received = sum(len(objects) for objects in verdict.accepted.values())
            with fake._lock:
                fake.objects_received += received
            if fake.validate and fake.record:
                fake.store.store(verdict.accepted)
        if headers:
            reply = Reply(reply.status, {**headers, **reply.headers}, reply.body)
        return Answer(reply, verdict.body)

    # --- the read endpoints ------------------------------------------------------------------

    def events_list(self, request: Request, body: Any) -> Answer:
        page = rules.read_page(request.query)
        if isinstance(page, Reply):
            return Answer(page)
        size = rules.EVENTS_LIST_PAGE
        names = self.fake.store.sorted_event_names()[page * size : (page + 1) * size]
        return Answer(Reply(200, {}, {"message": "success", "events": names}))

    def events_get(self, request: Request, body: Any) -> Answer:
        start = rules.read_cursor(request.query)
        if isinstance(start, Reply):
            return Answer(start)
        names = self.fake.store.sorted_event_names()
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
        url = self.fake.url
        if start > 0:
            links.append(f'<{url}/events?cursor={rules.cursor(max(0, start - size))}>; rel="prev"')
        if start + size < len(names):
            links.append(f'<{url}/events?cursor={rules.cursor(start + size)}>; rel="next"')
        headers = {"Link": ",".join(links)} if links else {}
        return Answer(Reply(200, headers, {"message": "success", "events": events}))

    def data_series(self, request: Request, body: Any) -> Answer:
        series = rules.read_series(request.query, datetime.now(rules.UTC))
        if isinstance(series, Reply):
            return Answer(series)
        times = self.fake.store.event_times(series.event)
        data = []
        for start in series.starts:
            count = sum(1 for t in times if start <= t < start + series.step)
            label = (
                start.date().isoformat()
                if series.unit == "day"
                else start.isoformat().replace("+00:00", "Z")
            )
            data.append({"time": label, "count": count})
        return Answer(Reply(200, {}, {"message": "success", "data": data}))

    def custom_attributes(self, request: Request, body: Any) -> Answer:
        rows = self.fake.store.attribute_rows()
        start = rules.read_cursor(request.query)
        if isinstance(start, Reply):
            return Answer(start)
        size = rules.CUSTOM_ATTRIBUTES_PAGE
        headers: dict[str, str] = {}
        if start + size < len(rows):
            next_page = f"{self.fake.url}/custom_attributes?cursor={rules.cursor(start + size)}"
            headers["Link"] = f'<{next_page}>; rel="next"'
        page = rows[start : start + size]
        return Answer(Reply(200, headers, {"message": "success", "attributes": page}))

    # --- POST /users/export/ids, /users/merge, /users/delete --------------------------------

    def export(self, request: Request, body: Any) -> Answer:
        limit = self.fake.export_rate_limit
        if limit is not None:
            count, _end = self.export_window.count(time.time(), rules.EXPORT_RATE_SECONDS)
            if count > limit:
                return Answer(message(429, "Rate Limited", _retry_after(1)))
        body, problem = rules.read_object(request.body)
        if problem is not None:
            return Answer(problem, body)
        asked = rules.read_export(body)
        if isinstance(asked, Reply):
            return Answer(asked, body)
        users, invalid = self.fake.store.export(*asked)
        payload: dict[str, Any] = {"message": "success", "users": users}
        if invalid:
            payload["invalid_user_ids"] = invalid
        return Answer(Reply(201, {}, payload), body)

    def _identity_refused(self) -> Reply | None:
        """The 429 once /users/merge and /users/delete together are over their budget."""
        limit = self.fake.identity_rate_limit
        if limit is None:
            return None
        now = time.time()
        count, window_end = self.identity_window.count(now, self.fake.identity_rate_window)
        if count > limit:
            return message(429, "Rate Limited", _retry_after(window_end - now))
        return None

    def merge(self, request: Request, body: Any) -> Answer:
        refused = self._identity_refused()
        if refused is not None:
            return Answer(refused)
        body, problem = rules.read_object(request.body)
        if problem is not None:
            return Answer(problem, body)
        pairs = rules.read_merge(body)
        if isinstance(pairs, Reply):
            return Answer(pairs, body)
        self.fake.store.merge_later(pairs)
        return Answer(message(200, "success"), body)

    def delete(self, request: Request, body: Any) -> Answer:
        refused = self._identity_refused()
        if refused is not None:
            return Answer(refused)
        body, problem = rules.read_object(request.body)
        if problem is not None:
            return Answer(problem, body)
        ids = rules.read_delete(body)
        if isinstance(ids, Reply):
            return Answer(ids, body)
        self.fake.store.delete_later(ids)
        return Answer(Reply(202, {}, {"message": "success", "deleted": len(ids)}), body)
