"""Proactive pacing from Braze's rate-limit headers, behind a two-method interface.

The client calls :meth:`Pacer.acquire` before every request and :meth:`Pacer.observe` with every
response; its concurrent sender calls ``try_acquire`` instead when the pacer has one
(:class:`NonBlockingPacer`). :class:`InProcessPacer` keeps the budget in this process; a budget
shared by many processes (e.g. in Redis for a backfill spread over workers) only has to
implement the same two methods.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Protocol, runtime_checkable

from ._retry import _header, _number, reset_in_seconds, retry_after_seconds

__all__ = ["InProcessPacer", "NonBlockingPacer", "Pacer"]

# A reset this much later than the known one starts a new window (reset readings in whole
# seconds jitter by up to one second).
_NEW_WINDOW_SLACK = 0.5
_POLL = 0.005


@runtime_checkable
class Pacer(Protocol):
    """Hands out send slots and learns from responses."""

    def acquire(self) -> None:
        """Block until one more request may be sent."""

    def observe(self, status: int | None, headers: Mapping[str, str]) -> None:
        """Learn from a response (``status`` ``None``: the request failed without one)."""


@runtime_checkable
class NonBlockingPacer(Pacer, Protocol):
    """A :class:`Pacer` that can also answer without blocking (the client then never stalls
    its responses while a window refills); :class:`InProcessPacer` is one."""

    def try_acquire(self) -> float:
        """Take a send slot and return 0, or return the seconds until one may be free."""


class InProcessPacer:
    """Holds requests when ``X-RateLimit-Remaining`` says the window is spent, until its reset.

    It also counts requests in flight against the remaining budget, so several threads do not
    overshoot the window together, and pauses everyone after a 429 for the wait Braze asked.
    ``clock`` is monotonic seconds, ``wall_clock`` epoch seconds, ``sleep`` blocks: all injected
    so tests need not wait.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        max_wait: float | None = None,
    ) -> None:
        self._clock = clock
        self._wall_clock = wall_clock
        self._sleep = sleep
        self._max_wait = max_wait
        self._lock = threading.Lock()
        self._budget: float | None = None  # requests we may still send in this window
        self._limit: float | None = None  # X-RateLimit-Limit: a fresh window's budget
        self._window_end: float | None = None  # monotonic time the window resets
        self._hold_until = 0.0
        self._in_flight = 0
        self._held_since: float | None = None  # when the current hold began
        self.waited = 0.0  # total seconds spent holding requests, for reports and tests

    def __repr__(self) -> str:
        return (
            f"InProcessPacer(budget={self._budget}, in_flight={self._in_flight}, "
            f"waited={self.waited:.3f})"
        )

    def acquire(self) -> None:
        """Block until a request may go; then count it against the budget."""
        while (wait := self.try_acquire()) > 0:
            self._sleep(wait)

    def try_acquire(self) -> float:
        """Count a request against the budget and return 0, or return the seconds to wait.

        The non-blocking form of :meth:`acquire`, for a caller that has other work (such as
        reading the responses that will refill the budget) while it waits.
        """
        with self._lock:
            now = self._clock()
            if self._window_end is not None and now >= self._window_end:
                self._budget, self._window_end = self._limit, None  # a fresh window
            wait = self._hold_until - now
            if wait <= 0 and self._budget is not None and self._budget <= 0:
                if self._window_end is not None:
                    wait = self._window_end - now
                elif self._in_flight:
                    wait = _POLL  # the window's end arrives with the next response
                else:
                    self._budget = None  # nothing will tell us more: try
                    wait = 0
            if wait > 0:
                if self._held_since is None:
                    self._held_since = now
                return wait
            if self._held_since is not None:
                self.waited += now - self._held_since
                self._held_since = None
            if self._budget is not None:
                self._budget -= 1
            self._in_flight += 1
            return 0.0

    def observe(self, status: int | None, headers: Mapping[str, str]) -> None:
        """Update the budget from a response's headers (and hold everyone after a 429)."""
        with self._lock:
            self._in_flight = max(0, self._in_flight - 1)
            now = self._clock()
            now_epoch = self._wall_clock()
            if status == 429:
                wait = retry_after_seconds(headers, now_epoch)
                if wait is not None and (self._max_wait is None or wait <= self._max_wait):
                    self._hold_until = max(self._hold_until, now + wait)
                return
            limit = _number(_header(headers, "X-RateLimit-Limit"))
            if limit is not None:
                self._limit = limit
            remaining = _number(_header(headers, "X-RateLimit-Remaining"))
            reset_in = reset_in_seconds(headers, now_epoch)
            if remaining is None or reset_in is None:
                return
            window_end = now + reset_in
            # Requests still in flight were sent after this response's count was taken.
            budget = remaining - self._in_flight
            if (
                self._window_end is None
                or self._budget is None
                or window_end > self._window_end + _NEW_WINDOW_SLACK
            ):
                self._window_end, self._budget = window_end, budget
            else:
                self._budget = min(self._budget, budget)
