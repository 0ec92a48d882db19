"""Proactive pacing with an injected clock: no test sleeps for real."""

from __future__ import annotations

import threading

import pytest

import antavo_braze as ab

from .conftest import FakeClock


def pacer(clock: FakeClock) -> ab.InProcessPacer:
    """An InProcessPacer on the fake clock."""
    return ab.InProcessPacer(clock=clock)


def test_sends_freely_without_headers() -> None:
    """With no rate-limit information nothing waits."""
    clock = FakeClock()
    p = pacer(clock)
    for _ in range(100):
        p.acquire()
        p.observe(201, {})
    assert clock.waits == []


def test_holds_until_reset_when_remaining_is_zero() -> None:
    """Remaining 0 holds the next request until the window resets (epoch reading)."""
    clock = FakeClock()
    p = pacer(clock)
    p.acquire()
    p.observe(
        201,
        {
            "X-RateLimit-Limit": "10",
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": str(int(clock.now + 3)),
        },
    )
    p.acquire()
    assert clock.waits == [3.0]
    assert p.waited == 3.0


def test_seconds_remaining_reading() -> None:
    """A small X-RateLimit-Reset is read as seconds remaining (MAU contracts)."""
    clock = FakeClock()
    p = pacer(clock)
    p.acquire()
    p.observe(201, {"x-ratelimit-remaining": "0", "x-ratelimit-reset": "2"})
    p.acquire()
    assert clock.waits == [2.0]


def test_budget_counts_requests_in_flight() -> None:
    """With 2 left and 2 more already in flight, the next request waits for the reset."""
    clock = FakeClock()
    p = pacer(clock)
    for _ in range(3):
        p.acquire()
    p.observe(201, {"X-RateLimit-Remaining": "2", "X-RateLimit-Reset": str(int(clock.now + 5))})
    p.acquire()
    assert clock.waits == [5.0]


def test_budget_is_spent_locally() -> None:
    """Remaining N lets exactly N more requests go before the reset."""
    clock = FakeClock()
    p = pacer(clock)
    p.acquire()
    p.observe(
        201,
        {
            "X-RateLimit-Limit": "4",
            "X-RateLimit-Remaining": "3",
            "X-RateLimit-Reset": str(int(clock.now + 1)),
        },
    )
    for _ in range(3):
        p.acquire()
    assert clock.waits == []
    p.acquire()
    assert clock.waits == [1.0]


def test_429_pauses_everyone() -> None:
    """After a 429 asking for 4 s, every sender waits that long."""
    clock = FakeClock()
    p = pacer(clock)
    p.acquire()
    p.observe(429, {"X-Ratelimit-Retry-After": "4"})
    p.acquire()
    assert clock.waits == [4.0]


def test_429_longer_than_max_wait_is_not_held() -> None:
    """A wait over max_wait is left to the client to fail, not held here."""
    clock = FakeClock()
    p = ab.InProcessPacer(clock=clock, max_wait=10)
    p.acquire()
    p.observe(429, {"Retry-After": "3600"})
    p.acquire()
    assert clock.waits == []


def test_fresh_window_uses_the_known_limit() -> None:
    """After a reset the budget is the last known limit, so a burst cannot overshoot it."""
    clock = FakeClock()
    p = pacer(clock)
    p.acquire()
    p.observe(
        201,
        {
            "X-RateLimit-Limit": "2",
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": str(int(clock.now + 1)),
        },
    )
    p.acquire()  # waits for the reset, takes 1 of 2
    p.acquire()  # takes 2 of 2
    assert clock.waits == [1.0]
    waiter = threading.Thread(target=p.acquire)  # third: must wait for a response
    waiter.start()
    waiter.join(0.05)
    assert waiter.is_alive()
    p.observe(
        201,
        {
            "X-RateLimit-Limit": "2",
            "X-RateLimit-Remaining": "5",
            "X-RateLimit-Reset": str(int(clock.now + 1)),
        },
    )
    waiter.join(2)
    assert not waiter.is_alive()


def test_pacer_protocol() -> None:
    """InProcessPacer satisfies the Pacer protocol a shared budget would implement."""
    assert isinstance(pacer(FakeClock()), ab.Pacer)
    assert "budget" in repr(pacer(FakeClock()))


def test_headers_never_hold_longer_than_max_wait() -> None:
    """Remaining 0 with a reset an hour away holds for max_wait at most (a 2xx's headers)."""
    clock = FakeClock()
    p = ab.InProcessPacer(clock=clock, max_wait=30)
    p.acquire()
    p.observe(201, {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(int(clock.now + 3600))})
    p.acquire()
    assert clock.waits == [30.0]


def test_configured_burst_budget() -> None:
    """requests/per caps a burst window before any header says so."""
    clock = FakeClock()
    p = ab.InProcessPacer(clock=clock, requests=3, per=3.0)
    for _ in range(3):
        p.acquire()
    assert clock.waits == []
    p.acquire()
    assert clock.waits == [3.0]  # the 4th waits until the first three leave the window
    p.acquire()
    p.acquire()
    assert p.try_acquire() == 3.0  # 3 in this window again: the next waits a full window


def test_configured_hourly_budget() -> None:
    """An hourly budget waits for the next clock hour once spent (Braze's fixed hours)."""
    clock = FakeClock(start=3600.0 * 500_000 + 3000)  # 10 minutes before an hour turns
    p = ab.InProcessPacer(clock=clock, hourly=2)
    p.acquire()
    p.acquire()
    p.acquire()
    assert clock.waits == [600.0]


def test_bad_budget_settings() -> None:
    """Budgets must be positive."""
    for kwargs in ({"requests": 0}, {"hourly": 0}, {"per": 0}):
        with pytest.raises(ValueError, match="must be"):
            ab.InProcessPacer(**kwargs)  # type: ignore[arg-type]
