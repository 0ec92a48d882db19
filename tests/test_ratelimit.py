"""Proactive pacing with an injected clock: no test sleeps for real."""

from __future__ import annotations

import math
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import antavo_braze as ab
from antavo_braze._http.pacing import POLL_SECONDS, burst_wait

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
    """requests/per caps a burst before any header says so, and a slot comes back ``per``
    seconds after its request's ANSWER (not its send, as before: Braze counts a request when
    it arrives, so a window counted from the sends let a late arrival meet the next burst)."""
    clock = FakeClock()
    p = ab.InProcessPacer(clock=clock, requests=3, per=3.0)
    for _ in range(3):
        p.acquire()
    assert clock.waits == []
    assert p.try_acquire() == POLL_SECONDS  # all three in flight: only an answer frees a slot
    clock.now += 1.0
    p.observe(201, {})  # answered 1 s after it was sent
    assert p.try_acquire() == 3.0  # its slot comes back 3 s after the answer, not 2 s
    clock.now += 0.5
    p.observe(None, {})  # a failed try gives its slot back the same way
    p.observe(500, {})
    p.acquire()
    assert clock.waits == [2.5]  # the first answer's slot, 3 s after it
    assert p.try_acquire() == 0.5  # the two later answers' slots come back 3.5 s after the first
    p.acquire()
    p.acquire()
    assert p.try_acquire() == POLL_SECONDS  # three in flight again


def test_configured_burst_budget_keeps_no_more_than_requests_answers() -> None:
    """Answers that never took a slot (more observe() than acquire()) are not kept beyond
    the budget: memory stays bounded, and the budget still lets requests go later."""
    clock = FakeClock()
    p = ab.InProcessPacer(clock=clock, requests=2, per=3.0)
    for _ in range(1000):
        p.observe(201, {})
    assert len(p._answers) == 2
    assert p.try_acquire() == 3.0
    clock.now += 3.0
    assert p.try_acquire() == 0


def test_burst_wait_decision() -> None:
    """The one rule both pacers follow: room → 0; full with recent answers → until the oldest
    answer's slot comes back; every slot in flight → a short poll."""
    decide = {"requests": 3, "per": 3.0, "now": 10.0, "oldest_answer": 8.0}
    assert burst_wait(answered=1, in_flight=1, **decide) == 0.0
    assert burst_wait(answered=1, in_flight=2, **decide) == 1.0
    assert burst_wait(answered=3, in_flight=0, **decide) == 1.0
    assert burst_wait(answered=0, in_flight=3, **decide) == POLL_SECONDS


_STATUSES = st.sampled_from([200, 201, 400, 429, 500, None])


@settings(max_examples=300, deadline=None)
@given(
    requests=st.integers(1, 5),
    per=st.integers(1, 4),
    steps=st.lists(
        st.tuples(st.booleans(), st.integers(0, 8), st.integers(0, 50), _STATUSES), max_size=80
    ),
)
def test_no_instant_holds_more_than_the_budget(
    requests: int, per: int, steps: list[tuple[bool, int, int, int | None]]
) -> None:
    """Whatever the order of sends and answers, no instant lies in more than ``requests``
    intervals [send, answer + per): as Braze counts a request somewhere in [send, answer],
    no ``per``-second window at Braze sees more than ``requests``. And a request is held
    only when that many slots are taken."""
    clock = FakeClock()
    p = ab.InProcessPacer(clock=clock, requests=requests, per=float(per))
    in_flight: list[float] = []  # send times
    held: list[tuple[float, float]] = []  # [send, answer + per)
    for send, half_seconds, pick, status in steps:
        clock.now += half_seconds / 2  # exact in binary: no rounding at the window's edge
        now = clock.now
        if send:
            taken = sum(end > now for _, end in held) + len(in_flight)
            wait = p.try_acquire()
            assert (wait == 0) == (taken < requests), (wait, taken)
            if wait == 0:
                in_flight.append(now)
        elif in_flight:
            sent = in_flight.pop(pick % len(in_flight))
            p.observe(status, {})
            held.append((sent, now + per))
    held += [(sent, math.inf) for sent in in_flight]
    for instant, _ in held:
        assert sum(start <= instant < end for start, end in held) <= requests


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
