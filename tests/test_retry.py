"""Retry policy and the pure wait computations."""

from __future__ import annotations

import email.utils

import pytest
from hypothesis import given
from hypothesis import strategies as st

import antavo_braze as ab
from antavo_braze._retry import (
    backoff_delay,
    is_retryable_status,
    reset_in_seconds,
    retry_after_seconds,
)

NOW = 1_800_000_000.0


def test_defaults_match_the_contract() -> None:
    """RetryPolicy() has the documented defaults."""
    policy = ab.RetryPolicy()
    assert (
        policy.attempts,
        policy.wait_initial,
        policy.wait_max,
        policy.wait_jitter,
        policy.max_rate_limit_wait,
    ) == (5, 0.5, 30.0, 1.0, 300.0)


def test_policy_validates() -> None:
    """Zero attempts or negative waits are refused."""
    with pytest.raises(ValueError, match="attempts"):
        ab.RetryPolicy(attempts=0)
    with pytest.raises(ValueError, match="wait_initial"):
        ab.RetryPolicy(wait_initial=-1)


@pytest.mark.parametrize(
    ("status", "retryable"),
    [
        (429, True),
        (500, True),
        (502, True),
        (503, True),
        (504, True),
        (408, True),
        (400, False),
        (401, False),
        (403, False),
        (404, False),
        (413, False),
        (415, False),
    ],
)
def test_retryable_statuses(status: int, retryable: bool) -> None:
    """429, 408 and 5xx retry; 400/401/403/404 never."""
    assert is_retryable_status(status) is retryable


def test_backoff_doubles_and_caps() -> None:
    """Waits double from wait_initial up to wait_max, plus jitter."""
    policy = ab.RetryPolicy(wait_initial=0.5, wait_max=4.0, wait_jitter=1.0)
    assert [backoff_delay(policy, n, 0.0) for n in range(1, 6)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert backoff_delay(policy, 1, 0.5) == 1.0
    assert backoff_delay(policy, 10, 0.99) == 4.0


@given(
    retry=st.integers(1, 10_000),
    jitter=st.floats(0, 1, exclude_max=True),
    initial=st.floats(0, 10),
    maximum=st.floats(0, 100),
    spread=st.floats(0, 5),
)
def test_backoff_is_bounded_and_monotonic(
    retry: int, jitter: float, initial: float, maximum: float, spread: float
) -> None:
    """The wait is never negative, never over wait_max, and never shrinks with more retries."""
    policy = ab.RetryPolicy(wait_initial=initial, wait_max=maximum, wait_jitter=spread)
    delay = backoff_delay(policy, retry, jitter)
    assert 0 <= delay <= maximum
    assert backoff_delay(policy, retry + 1, jitter) >= delay


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"X-Ratelimit-Retry-After": "7"}, 7.0),
        ({"x-ratelimit-retry-after": "3"}, 3.0),
        ({"Retry-After": "12"}, 12.0),
        ({"retry-after": email.utils.formatdate(NOW + 30, usegmt=True)}, 30.0),
        ({"X-RateLimit-Reset": str(int(NOW + 42))}, 42.0),
        ({"x-ratelimit-reset": "15"}, 15.0),
        ({"X-RateLimit-Reset": str(int(NOW - 5))}, 0.0),
        ({"Retry-After": "soon"}, None),
        ({}, None),
        ({"Retry-After": "nan"}, None),
    ],
)
def test_retry_after_readings(headers: dict[str, str], expected: float | None) -> None:
    """Braze's wait headers in all their spellings, and both readings of X-RateLimit-Reset."""
    assert retry_after_seconds(headers, NOW) == expected


def test_reset_reading_threshold() -> None:
    """Large X-RateLimit-Reset values are epoch seconds, small ones seconds remaining."""
    assert reset_in_seconds({"X-RateLimit-Reset": "3600"}, NOW) == 3600
    assert reset_in_seconds({"X-RateLimit-Reset": str(NOW + 3600)}, NOW) == 3600
    assert reset_in_seconds({"X-RateLimit-Reset": "x"}, NOW) is None
