"""Retry policy and the one pure function that decides what follows an attempt.

Like urllib3's ``Retry``, the policy is configuration plus pure decisions: the send loop
reports how an attempt ended (:class:`AttemptOutcome`), :func:`decide_retry` answers whether
and how long to wait (:class:`RetryDecision`). No clock, no randomness, no I/O in here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from attrs import field, frozen, validators

from .._braze.headers import retry_after_seconds

__all__ = [
    "RETRYABLE_STATUSES",
    "AttemptOutcome",
    "RetryDecision",
    "RetryPolicy",
    "backoff_delay",
    "decide_retry",
    "is_retryable_status",
]

# Statuses worth another try besides every server error (is_retryable_status): request
# timeout and rate limited [braze-api.md 1.7, 1.8].
RETRYABLE_STATUSES = frozenset({408, 429})
# Answers no retry can change and no other record could get past: stop the whole sync.
FATAL_STATUSES = frozenset({401, 403})

# "transport": no usable answer (connection, timeout, broken framing); "invalid_answer": a 2xx
# that is not Braze's answer; "tls": the certificate did not verify; "unmendable": a failure no
# retry can mend (TLS protocol version, a name that does not resolve, a proxy refusing).
Failure = Literal["transport", "tls", "invalid_answer", "unmendable"]
_UNMENDABLE: frozenset[str] = frozenset({"tls", "unmendable"})


@frozen
class RetryPolicy:
    """How hard to try: ``attempts`` counts every try (the first included).

    Waits grow exponentially from ``wait_initial`` up to ``wait_max``, plus up to ``wait_jitter``
    seconds of random jitter. A 429 waits what Braze asks; a demand longer than
    ``max_rate_limit_wait`` fails the request instead of hanging.
    """

    attempts: int = field(default=5, validator=validators.ge(1))
    wait_initial: float = field(default=0.5, validator=validators.ge(0))
    wait_max: float = field(default=30.0, validator=validators.ge(0))
    wait_jitter: float = field(default=1.0, validator=validators.ge(0))
    max_rate_limit_wait: float = field(default=300.0, validator=validators.ge(0))


@frozen
class AttemptOutcome:
    """How one attempt ended: a complete HTTP answer (``status``) and/or a ``failure``.

    ``failure`` is ``"transport"`` (connection, timeout, broken framing), ``"tls"`` (the
    certificate did not verify), ``"unmendable"`` (TLS protocol version, unknown host name, a
    proxy refusing the tunnel) or ``"invalid_answer"`` (a 2xx that is not Braze's answer).
    """

    status: int | None = None
    headers: Mapping[str, str] = field(factory=dict)
    failure: Failure | None = None


@frozen
class RetryDecision:
    """What follows an attempt: ``retry`` after ``wait`` seconds, or stop (``fatal``: stop
    everything, no record can succeed). ``reason`` explains a stop; ``rate_limited`` marks
    waits Braze asked for; ``retryable``: a later try may succeed — what was retried here, and
    the fatal failures of the setup (key, permission, TLS, proxy, host name) once fixed; never
    a refusal of the request itself (400, 404, ...). The dead letter records it for ``replay``."""

    retry: bool
    wait: float = 0.0
    reason: str = ""
    rate_limited: bool = False
    fatal: bool = False
    retryable: bool = False


def is_retryable_status(status: int) -> bool:
    """429, 408 and 5xx are retried; 400/401/403/404 (and every other 4xx) never."""
    return status in RETRYABLE_STATUSES or 500 <= status <= 599


def backoff_delay(policy: RetryPolicy, retry: int, jitter_fraction: float) -> float:
    """The wait before retry number ``retry`` (1 = first); ``jitter_fraction`` is in [0, 1)."""
    exponent = min(retry - 1, 64)  # past this, wait_max has long been reached
    base = policy.wait_initial * (2.0**exponent)
    return min(policy.wait_max, base + policy.wait_jitter * jitter_fraction)


def decide_retry(
    policy: RetryPolicy,
    outcome: AttemptOutcome,
    attempt: int,
    now: float,
    jitter_fraction: float,
) -> RetryDecision:
    """Whether attempt number ``attempt`` (1 = first) is followed by another, and when.

    ``now`` is epoch seconds (to read ``X-RateLimit-Reset`` and HTTP dates); the caller draws
    ``jitter_fraction`` in [0, 1). A successful attempt never comes here.
    """
    status = outcome.status
    if outcome.failure in _UNMENDABLE:
        what = "TLS certificate verification failed" if outcome.failure == "tls" else "not retried"
        return RetryDecision(False, reason=what, fatal=True, retryable=True)
    if outcome.failure is None and status is not None and not is_retryable_status(status):
        # 401/403 are about the setup, not the record: once the key is fixed it may go.
        fatal = status in FATAL_STATUSES
        return RetryDecision(False, reason=f"HTTP {status}", fatal=fatal, retryable=fatal)
    if status == 429 and outcome.failure is None:
        asked = retry_after_seconds(outcome.headers, now)
        if asked is not None and asked > policy.max_rate_limit_wait:
            return RetryDecision(
                False,
                reason=f"rate limited: Braze asked to wait {asked:.0f}s, more than "
                f"max_rate_limit_wait={policy.max_rate_limit_wait:.0f}s",
                retryable=True,
            )
        if attempt >= policy.attempts:
            return RetryDecision(
                False,
                reason=f"rate limited: HTTP 429 after {attempt} attempt(s)",
                retryable=True,
            )
        wait = asked if asked is not None else backoff_delay(policy, attempt, jitter_fraction)
        return RetryDecision(True, wait, rate_limited=True, retryable=True)
    if attempt >= policy.attempts:
        what = f"HTTP {status}" if outcome.failure is None else outcome.failure
        return RetryDecision(False, reason=f"{what} after {attempt} attempt(s)", retryable=True)
    return RetryDecision(True, backoff_delay(policy, attempt, jitter_fraction), retryable=True)
