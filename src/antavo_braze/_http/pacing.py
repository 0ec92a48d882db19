"""Proactive pacing from Braze's rate-limit headers, behind a small interface.

The send loop asks a pacer for a slot before every attempt (``try_acquire`` when the pacer has
it, so the loop keeps reading answers while a window refills; ``acquire`` otherwise) and tells it
how every attempt ended (``observe``). :class:`InProcessPacer` keeps the budget in this process;
:class:`~antavo_braze.RedisPacer` shares one budget between processes.
"""

from __future__ import annotations

import threading
import time as _time
from collections import deque
from collections.abc import Mapping
from typing import Protocol, runtime_checkable

from .._braze.headers import limit, remaining, reset_in_seconds, retry_after_seconds
from .._fork import reset_after_fork

__all__ = [
    "POLL_SECONDS",
    "SYSTEM_CLOCK",
    "Clock",
    "InProcessPacer",
    "NonBlockingPacer",
    "Pacer",
    "SystemClock",
    "burst_wait",
]

# A reset this much later than the known one starts a new window (reset readings in whole
# seconds jitter by up to one second).
_NEW_WINDOW_SLACK = 0.5
POLL_SECONDS = 0.005  # how soon to ask again when only an answer can free a slot


def burst_wait(
    *, answered: int, in_flight: int, requests: int, oldest_answer: float, per: float, now: float
) -> float:
    """Seconds until one more request may go under a burst budget of ``requests`` per ``per``
    seconds, counted from the answers (0: it may go now).

    A request holds its slot from its send until ``per`` seconds after its answer. Braze
    counts a request when it arrives, after its send and before its answer, so every request
    Braze counts in a ``per``-second window still held its slot at that window's last
    instant: however the network delays one request against another, no window sees more
    than ``requests``. ``answered``: answers within the last ``per`` seconds, the oldest at
    ``oldest_answer`` (unused when there is none); ``in_flight``: requests sent, not answered.
    """
    if answered + in_flight < requests:
        return 0.0
    if answered:
        return oldest_answer + per - now  # the oldest answer's slot comes back first
    return POLL_SECONDS  # every slot is in flight: one comes back with an answer


class Clock(Protocol):
    """Time as the pacers see it: monotonic seconds, epoch seconds, and a way to wait."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back."""

    def time(self) -> float:
        """Seconds since the epoch (to read ``X-RateLimit-Reset``)."""

    def sleep(self, seconds: float) -> None:
        """Block for ``seconds``."""


class SystemClock:
    """The real clock."""

    monotonic = staticmethod(_time.monotonic)
    time = staticmethod(_time.time)
    sleep = staticmethod(_time.sleep)


SYSTEM_CLOCK = SystemClock()


@runtime_checkable
class Pacer(Protocol):
    """Hands out send slots and learns from responses."""

    def acquire(self) -> None:
        """Block until one more request may be sent."""

    def observe(self, status: int | None, headers: Mapping[str, str]) -> None:
        """Learn from a response (``status`` ``None``: the attempt failed without one)."""


@runtime_checkable
class NonBlockingPacer(Pacer, Protocol):
    """A :class:`Pacer` that can also answer without blocking (the client then never stalls
    its responses while a window refills); :class:`InProcessPacer` is one."""

    def try_acquire(self) -> float:
        """Take a send slot and return 0, or return the seconds until one may be free."""


class InProcessPacer:
    """Holds requests when ``X-RateLimit-Remaining`` says the window is spent, until its reset.

    It counts requests in flight against the remaining budget, so concurrent senders do not
    overshoot the window together, and holds everyone after a 429 for the wait Braze asked.
    No hold is ever longer than ``max_wait`` seconds (the client passes its policy's
    ``max_rate_limit_wait``). ``requests`` per ``per`` seconds and ``hourly`` set a budget up
    front (your contract's limits, from Braze's API Usage Dashboard) instead of waiting for
    the headers to tell. The burst budget is counted from the answers, as
    :class:`~antavo_braze.SharedMemoryPacer`'s: a request takes a slot when it is sent and
    gives it back ``per`` seconds after its answer, so no ``per`` seconds at Braze (which
    counts a request when it arrives) ever see more than ``requests``. ``clock`` is for tests.
    """

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        max_wait: float | None = None,
        requests: int | None = None,
        per: float = 3.0,
        hourly: int | None = None,
    ) -> None:
        if requests is not None and requests < 1:
            raise ValueError("requests must be at least 1")
        if hourly is not None and hourly < 1:
            raise ValueError("hourly must be at least 1")
        if per <= 0:
            raise ValueError("per must be positive")
        self._clock = clock or SYSTEM_CLOCK
        self._max_wait = max_wait
        self._window_requests = requests
        self._per = per
        self._hourly = hourly
        # Monotonic answer times within the last `per` (each holds a slot until `per` after
        # it); never more than `requests` of them, as every answer first took a slot.
        self._answers: deque[float] = deque(maxlen=requests or 0)
        self._hour: tuple[int, int] = (-1, 0)  # (clock hour, requests counted in it)
        self._lock = threading.Lock()
        self._budget: float | None = None  # requests we may still send in this window
        self._limit: float | None = None  # X-RateLimit-Limit: a fresh window's budget
        self._window_end: float | None = None  # monotonic time the window resets
        self._hold_until = 0.0
        self._in_flight = 0
        self._held_since: float | None = None  # when the current hold began
        self.waited = 0.0  # total seconds requests were held
        reset_after_fork(self)

    def __repr__(self) -> str:
        return (
            f"InProcessPacer(budget={self._budget}, in_flight={self._in_flight}, "
            f"waited={self.waited:.3f})"
        )

    def _after_fork(self) -> None:
        # A lock held by another thread at fork() stays held forever in the child.
        self._lock = threading.Lock()
        self._in_flight = 0
        self._held_since = None

    def acquire(self) -> None:
        """Block until a request may go; then count it against the budget."""
        while (wait := self.try_acquire()) > 0:
            self._clock.sleep(wait)

    def _configured_wait(self, now: float) -> float:
        """Seconds until the configured budget (burst window, hourly) allows one more."""
        wait = 0.0
        if self._window_requests is not None:
            answers = self._answers
            while answers and answers[0] <= now - self._per:
                answers.popleft()
            wait = burst_wait(
                answered=len(answers),
                in_flight=self._in_flight,
                requests=self._window_requests,
                oldest_answer=answers[0] if answers else now,
                per=self._per,
                now=now,
            )
        if self._hourly is not None:
            epoch = self._clock.time()
            hour = int(epoch // 3600)
            current, count = self._hour
            if current == hour and count >= self._hourly:
                wait = max(wait, (hour + 1) * 3600 - epoch)
        return wait

    def try_acquire(self) -> float:
        """Count a request against the budget and return 0, or return the seconds to wait.

        The non-blocking form of :meth:`acquire`, for a caller that has other work (such as
        reading the responses that will refill the budget) while it waits.
        """
        with self._lock:
            now = self._clock.monotonic()
            if self._window_end is not None and now >= self._window_end:
                self._budget, self._window_end = self._limit, None  # a fresh window
            wait = max(self._hold_until - now, self._configured_wait(now))
            if wait <= 0 and self._budget is not None and self._budget <= 0:
                if self._window_end is not None:
                    wait = self._window_end - now
                elif self._in_flight:
                    wait = POLL_SECONDS  # the window's end arrives with the next response
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
            if self._hourly is not None:
                hour = int(self._clock.time() // 3600)
                current, count = self._hour
                self._hour = (hour, count + 1 if current == hour else 1)
            self._in_flight += 1
            return 0.0

    def observe(self, status: int | None, headers: Mapping[str, str]) -> None:
        """Give the request's slot back (it counts for ``per`` more seconds), and update the
        budget from the response's headers (and hold everyone after a 429)."""
        with self._lock:
            self._in_flight = max(0, self._in_flight - 1)
            now = self._clock.monotonic()
            if self._window_requests is not None:
                self._answers.append(now)  # full: the oldest, never counted out, leaves
            now_epoch = self._clock.time()
            cap = now + self._max_wait if self._max_wait is not None else None
            if status == 429:
                wait = retry_after_seconds(headers, now_epoch)
                if wait is not None and (self._max_wait is None or wait <= self._max_wait):
                    self._hold_until = max(self._hold_until, now + wait)
                return
            fresh = limit(headers)
            if fresh is not None:
                self._limit = fresh
            left = remaining(headers)
            reset_in = reset_in_seconds(headers, now_epoch)
            if left is None or reset_in is None:
                return
            window_end = now + reset_in
            if cap is not None:
                window_end = min(window_end, cap)  # headers never hold us past max_wait
            # Requests still in flight were sent after this response's count was taken.
            budget = left - self._in_flight
            if (
                self._window_end is None
                or self._budget is None
                or window_end > self._window_end + _NEW_WINDOW_SLACK
            ):
                self._window_end, self._budget = window_end, budget
            else:
                self._budget = min(self._budget, budget)
