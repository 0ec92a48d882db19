"""Retry policy and the pure wait computations."""

from __future__ import annotations

import email.utils

import pytest
from hypothesis import given
from hypothesis import strategies as st

import antavo_braze as ab
from antavo_braze._braze.headers import reset_in_seconds, retry_after_seconds
from antavo_braze._http.retry import backoff_delay, is_retryable_status

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


# --- decide_retry: the one decision after every attempt ------------------------------------------

POLICIES = st.builds(
    ab.RetryPolicy,
    attempts=st.integers(1, 8),
    wait_initial=st.floats(0, 5),
    wait_max=st.floats(0, 60),
    wait_jitter=st.floats(0, 2),
    max_rate_limit_wait=st.floats(0, 600),
)
OUTCOMES = st.one_of(
    st.builds(ab.AttemptOutcome, status=st.integers(100, 599)),
    st.builds(
        ab.AttemptOutcome,
        status=st.just(429),
        headers=st.dictionaries(
            st.sampled_from(["Retry-After", "X-Ratelimit-Retry-After", "X-RateLimit-Reset"]),
            st.integers(0, 10_000).map(str),
        ),
    ),
    st.builds(ab.AttemptOutcome, failure=st.sampled_from(["transport", "tls", "unmendable"])),
    st.builds(ab.AttemptOutcome, status=st.integers(200, 299), failure=st.just("invalid_answer")),
)


@given(POLICIES, OUTCOMES, st.integers(1, 10), st.floats(0, 1, exclude_max=True))
def test_decide_retry_properties(
    policy: ab.RetryPolicy, outcome: ab.AttemptOutcome, attempt: int, jitter: float
) -> None:
    """Never more attempts than the policy allows; client errors, 401/403, TLS and other
    unmendable failures are never retried; no wait is negative or longer than the policy
    allows; what is retried is retryable (the dead letter's answer is the same decision)."""
    decision = ab.decide_retry(policy, outcome, attempt, NOW, jitter)
    if decision.retry:
        assert attempt < policy.attempts
        assert 0 <= decision.wait <= max(policy.wait_max, policy.max_rate_limit_wait)
        assert outcome.failure not in ("tls", "unmendable")
        assert decision.retryable
        if outcome.failure is None and outcome.status is not None:
            assert is_retryable_status(outcome.status)
        assert decision.rate_limited is (outcome.status == 429 and outcome.failure is None)
    else:
        assert decision.reason
    unmendable = outcome.failure in ("tls", "unmendable")
    fatal = unmendable or (outcome.failure is None and outcome.status in (401, 403))
    assert decision.fatal is fatal
    # Not retryable only when the request itself was refused (400, 404, ...): a setup failure
    # (fatal) may go once fixed.
    refused = (
        outcome.failure is None
        and outcome.status is not None
        and not is_retryable_status(outcome.status)
        and not fatal
    )
    assert decision.retryable is not refused


def test_decide_retry_waits_what_braze_asks() -> None:
    """A 429 waits X-Ratelimit-Retry-After (or Retry-After); over the cap it stops."""
    policy = ab.RetryPolicy(max_rate_limit_wait=60)
    asked = ab.AttemptOutcome(429, {"X-Ratelimit-Retry-After": "7"})
    assert ab.decide_retry(policy, asked, 1, NOW, 0.5) == ab.RetryDecision(
        True, 7.0, rate_limited=True, retryable=True
    )
    too_long = ab.decide_retry(policy, ab.AttemptOutcome(429, {"Retry-After": "3600"}), 1, NOW, 0)
    assert not too_long.retry
    assert "3600" in too_long.reason
    assert "max_rate_limit_wait" in too_long.reason


def test_decide_retry_backoff_follows_the_policy() -> None:
    """5xx and transport failures back off exponentially with jitter, then stop."""
    policy = ab.RetryPolicy(attempts=5, wait_initial=0.5, wait_max=2.0, wait_jitter=1.0)
    outcome = ab.AttemptOutcome(503)
    waits = [ab.decide_retry(policy, outcome, n, NOW, 0.25).wait for n in range(1, 5)]
    assert waits == [0.75, 1.25, 2.0, 2.0]
    last = ab.decide_retry(policy, ab.AttemptOutcome(failure="transport"), 5, NOW, 0.25)
    assert (last.retry, last.reason) == (False, "transport after 5 attempt(s)")


def test_decide_retry_stops_at_once_for_tls_and_credentials() -> None:
    """TLS verification, 401 and 403 are fatal on the first attempt; 400 stops, not fatal."""
    policy = ab.RetryPolicy()
    for outcome in (
        ab.AttemptOutcome(failure="tls"),
        ab.AttemptOutcome(401),
        ab.AttemptOutcome(403),
    ):
        decision = ab.decide_retry(policy, outcome, 1, NOW, 0)
        assert (decision.retry, decision.fatal) == (False, True)
    bad = ab.decide_retry(policy, ab.AttemptOutcome(400), 1, NOW, 0)
    assert (bad.retry, bad.fatal) == (False, False)


def test_header_numbers_are_bounded() -> None:
    """A 1 MB header value is ignored, not parsed (linear time, no huge float parsing)."""
    assert retry_after_seconds({"Retry-After": "9" * 1_000_000}, NOW) is None
    assert reset_in_seconds({"X-RateLimit-Reset": "1" * 1_000_000}, NOW) is None
    assert reset_in_seconds({"X-RateLimit-Reset": " " * 1_000_000 + "5"}, NOW) == 5.0  # strip
