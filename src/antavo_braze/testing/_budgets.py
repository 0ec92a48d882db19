"""FakeBraze's rate limits: requests counted in fixed windows, as Braze counts them (its hourly
limits reset on the clock hour, ``shared/reference/braze-api.md`` 1.4).

``/users/track`` gets the fake's ``rate_limit`` per ``rate_window`` with ``X-RateLimit-*``
headers (1.5); ``/users/export/ids`` ``export_rate_limit`` per second; ``/users/merge`` and
``/users/delete`` share ``identity_rate_limit`` per ``identity_rate_window``
(``braze-2026.md`` 1.3, 1.6). Past a limit: 429 with ``Retry-After``.
"""

from __future__ import annotations

import math
import threading
import time
from typing import TYPE_CHECKING

from . import _rules as rules
from ._rules import Reply, message

if TYPE_CHECKING:
    from ._fake import FakeBraze

__all__ = ["Budgets", "FixedWindow"]


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


_IDENTITY = frozenset({"/users/merge", "/users/delete"})


class Budgets:
    """The rate limits of one FakeBraze (its knobs are read at each request)."""

    def __init__(self, fake: FakeBraze) -> None:
        self.fake = fake
        self.track = FixedWindow()
        self.export = FixedWindow()
        self.identity = FixedWindow()

    def reset(self) -> None:
        self.track.reset()
        self.export.reset()
        self.identity.reset()

    def spend(self, path: str) -> tuple[Reply | None, dict[str, str]]:
        """Count a request that passed the gate: (the 429 to answer or None, the rate-limit
        headers for the answer)."""
        if path == "/users/track":
            return self._spend_track()
        fake = self.fake
        if path == "/users/export/ids" and fake.export_rate_limit is not None:
            count, _end = self.export.count(time.time(), rules.EXPORT_RATE_SECONDS)
            if count > fake.export_rate_limit:
                return message(429, "Rate Limited", _retry_after(1)), {}
        elif path in _IDENTITY and fake.identity_rate_limit is not None:
            now = time.time()
            count, end = self.identity.count(now, fake.identity_rate_window)
            if count > fake.identity_rate_limit:
                return message(429, "Rate Limited", _retry_after(end - now)), {}
        return None, {}

    def _spend_track(self) -> tuple[Reply | None, dict[str, str]]:
        fake = self.fake
        limit = fake.rate_limit
        if limit is None:
            return None, {}
        now = fake.clock()
        count, end = self.track.count(now, fake.rate_window)
        wait = max(1, math.ceil(end - now))
        if count > limit:
            return message(429, "Rate Limited", _retry_after(wait)), {}
        reset = str(math.ceil(end)) if fake.reset_style == "epoch" else str(wait)
        return None, {
            "X-RateLimit-Limit": str(limit),
            "X-RateLimit-Remaining": str(limit - count),
            "X-RateLimit-Reset": reset,
        }
