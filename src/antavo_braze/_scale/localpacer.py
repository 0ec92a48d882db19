"""One Braze request budget for the processes of one machine, without Redis.

:class:`SharedMemoryPacer` is the :class:`~antavo_braze.Pacer` protocol over a block of shared
memory and one inter-process lock: every process forked after it was made draws on the same
budget (``Syncer.sync_members(..., workers=N)`` uses it). It keeps what
:class:`~antavo_braze.InProcessPacer` keeps — what Braze's headers say is left, a 429's pause,
the configured burst and hourly budgets — where every process sees it.

The burst budget is counted from the answers, as :class:`~antavo_braze.InProcessPacer`'s is
(one rule for both: ``burst_wait`` in ``_http/pacing.py``): a request takes a slot when it is
sent and gives it back ``per`` seconds after its answer came. Braze (and a fake) counts a
request when it arrives, which is after it was sent and before it was answered, so however
the network delays one request against another, no ``per``-second window on the server ever
sees more than ``requests`` of them. In a steady stream this costs nothing (a slot comes back
``per`` seconds after it was last used, as with a count from the send).
"""

from __future__ import annotations

import math
import multiprocessing
import time as _time
from collections.abc import Mapping
from typing import Any

from .._braze.headers import limit, remaining, reset_in_seconds, retry_after_seconds
from .._braze.limits import TRACK_RATE_REQUESTS, TRACK_RATE_SECONDS
from .._fork import reset_after_fork
from .._http.pacing import POLL_SECONDS, burst_wait
from ..exceptions import ConfigurationError

__all__ = ["SharedMemoryPacer"]

_NEW_WINDOW_SLACK = 0.5  # as InProcessPacer: reset readings in whole seconds jitter
_NONE = math.nan  # "not known" in a slot of doubles

# Slots of the shared block (doubles), then the ring of answer times.
_BUDGET, _LIMIT, _WINDOW_END, _HOLD, _IN_FLIGHT, _HOUR, _HOUR_COUNT, _HEAD, _COUNT = range(9)
_RING = 9


class SharedMemoryPacer:
    """A request budget shared by this process and every process forked after it was made.

    ``requests`` per ``per`` seconds is the burst budget (Braze's ``/users/track`` default:
    3,000 per 3 s; ``None`` to rely on Braze's headers alone), ``hourly`` an optional hourly
    budget. What any process learns from Braze — ``X-RateLimit-Remaining`` reaching 0, a
    429's ``Retry-After`` — holds back all of them, never longer than ``max_wait`` seconds.
    For processes on several machines, use :class:`~antavo_braze.RedisPacer`.
    """

    def __init__(
        self,
        *,
        requests: int | None = TRACK_RATE_REQUESTS,
        per: float = TRACK_RATE_SECONDS,
        hourly: int | None = None,
        max_wait: float = 300.0,
    ) -> None:
        if requests is not None and requests < 1:
            raise ConfigurationError("requests must be at least 1")
        if hourly is not None and hourly < 1:
            raise ConfigurationError("hourly must be at least 1")
        if per <= 0 or max_wait < 0:
            raise ConfigurationError("per must be positive and max_wait not negative")
        if "fork" not in multiprocessing.get_all_start_methods():
            raise ConfigurationError("SharedMemoryPacer needs fork() (Linux, macOS)")
        context = multiprocessing.get_context("fork")
        self.requests = requests
        self.per = float(per)
        self.hourly = hourly
        self.max_wait = float(max_wait)
        self._ring_size = requests or 0
        self._lock = context.Lock()
        self._shared: Any = context.RawArray("d", _RING + self._ring_size)
        for slot in (_BUDGET, _LIMIT, _WINDOW_END):
            self._shared[slot] = _NONE
        self._shared[_HOUR] = -1.0
        self._mine = 0  # requests this process has in flight (given back when it is done)
        self.waited = 0.0  # seconds this process's requests were held
        self._held_since: float | None = None
        reset_after_fork(self)

    def __repr__(self) -> str:
        return (
            f"SharedMemoryPacer(requests={self.requests}, per={self.per}, "
            f"hourly={self.hourly}, in_flight={int(self._shared[_IN_FLIGHT])})"
        )

    def _after_fork(self) -> None:
        # The block and the lock are the parent's (that is the point); the counts are ours.
        self._mine = 0
        self._held_since = None
        self.waited = 0.0

    def release(self) -> None:
        """Give back the slots of this process's requests that will never be answered (call it
        when a process stops sending for good, e.g. after an interrupt)."""
        with self._lock:
            shared = self._shared
            shared[_IN_FLIGHT] = max(0.0, shared[_IN_FLIGHT] - self._mine)
            self._mine = 0

    def acquire(self) -> None:
        """Block until a request may go; then count it against the budget."""
        while (wait := self.try_acquire()) > 0:
            _time.sleep(wait)

    def _recent(self, now: float) -> int:
        """Answers within the last ``per`` seconds (the older ones leave the ring)."""
        shared = self._shared
        head, count, size = int(shared[_HEAD]), int(shared[_COUNT]), self._ring_size
        cutoff = now - self.per
        while count and shared[_RING + head] <= cutoff:
            head = (head + 1) % size
            count -= 1
        shared[_HEAD], shared[_COUNT] = head, count
        return count

    def _configured_wait(self, now: float) -> float:
        shared = self._shared
        wait = 0.0
        if self.requests is not None:
            answered = self._recent(now)
            wait = burst_wait(
                answered=answered,
                in_flight=int(shared[_IN_FLIGHT]),
                requests=self.requests,
                oldest_answer=shared[_RING + int(shared[_HEAD])],
                per=self.per,
                now=now,
            )
        if self.hourly is not None:
            epoch = _time.time()
            hour = int(epoch // 3600)
            if shared[_HOUR] == hour and shared[_HOUR_COUNT] >= self.hourly:
                wait = max(wait, (hour + 1) * 3600 - epoch)
        return wait

    def try_acquire(self) -> float:
        """Count a request against the budget and return 0, or return the seconds to wait."""
        with self._lock:
            shared = self._shared
            now = _time.monotonic()
            window_end = shared[_WINDOW_END]
            if window_end == window_end and now >= window_end:  # a fresh window
                shared[_BUDGET], shared[_WINDOW_END] = shared[_LIMIT], _NONE
            wait = max(shared[_HOLD] - now, self._configured_wait(now))
            budget = shared[_BUDGET]
            if wait <= 0 and budget == budget and budget <= 0:
                if shared[_WINDOW_END] == shared[_WINDOW_END]:
                    wait = shared[_WINDOW_END] - now
                elif shared[_IN_FLIGHT]:
                    wait = POLL_SECONDS  # the window's end arrives with the next response
                else:
                    shared[_BUDGET] = _NONE  # nothing will tell us more: try
                    wait = 0
            if wait > 0:
                if self._held_since is None:
                    self._held_since = now
                return float(wait)
            if self._held_since is not None:
                self.waited += now - self._held_since
                self._held_since = None
            if budget == budget:
                shared[_BUDGET] = budget - 1
            if self.hourly is not None:
                hour = int(_time.time() // 3600)
                same = shared[_HOUR] == hour
                shared[_HOUR], shared[_HOUR_COUNT] = hour, shared[_HOUR_COUNT] + 1 if same else 1
            shared[_IN_FLIGHT] += 1
            self._mine += 1
            return 0.0

    def observe(self, status: int | None, headers: Mapping[str, str]) -> None:
        """Give the request's slot back (it counts for ``per`` more seconds), and learn from
        the response's headers (a 429 holds every process)."""
        with self._lock:
            shared = self._shared
            now = _time.monotonic()
            if self._mine:
                self._mine -= 1
                shared[_IN_FLIGHT] = max(0.0, shared[_IN_FLIGHT] - 1)
            if self._ring_size:
                self._recent(now)
                head, count, size = int(shared[_HEAD]), int(shared[_COUNT]), self._ring_size
                if count == size:  # an answer we never counted out: the oldest one leaves
                    head, count = (head + 1) % size, count - 1
                shared[_RING + (head + count) % size] = now
                shared[_HEAD], shared[_COUNT] = head, count + 1
            self._learn(status, headers, now)

    def _learn(self, status: int | None, headers: Mapping[str, str], now: float) -> None:
        shared = self._shared
        now_epoch = _time.time()
        if status == 429:
            wait = retry_after_seconds(headers, now_epoch)
            if wait is not None and wait <= self.max_wait:
                shared[_HOLD] = max(shared[_HOLD], now + wait)
            return
        fresh = limit(headers)
        if fresh is not None:
            shared[_LIMIT] = fresh
        left = remaining(headers)
        reset_in = reset_in_seconds(headers, now_epoch)
        if left is None or reset_in is None:
            return
        window_end = min(now + reset_in, now + self.max_wait)  # never held past max_wait
        # Requests still in flight were sent after this response's count was taken.
        budget = left - shared[_IN_FLIGHT]
        known_end, known_budget = shared[_WINDOW_END], shared[_BUDGET]
        if (
            known_end != known_end
            or known_budget != known_budget
            or window_end > known_end + _NEW_WINDOW_SLACK
        ):
            shared[_WINDOW_END], shared[_BUDGET] = window_end, budget
        else:
            shared[_BUDGET] = min(known_budget, budget)
