"""Retry policy and the pure functions that decide whether and how long to wait."""

from __future__ import annotations

import email.utils
from collections.abc import Mapping

from attrs import field, frozen, validators

__all__ = [
    "RETRYABLE_STATUSES",
    "RetryPolicy",
    "backoff_delay",
    "is_retryable_status",
    "reset_in_seconds",
    "retry_after_seconds",
]

# Statuses worth another try: rate limited, request timeout and every server error.
RETRYABLE_STATUSES = frozenset({408, 429})
# X-RateLimit-Reset above this is an epoch timestamp (2001-09-09); below, seconds remaining.
_EPOCH_THRESHOLD = 1_000_000_000


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


def is_retryable_status(status: int) -> bool:
    """429, 408 and 5xx are retried; 400/401/403/404 (and every other 4xx) never."""
    return status in RETRYABLE_STATUSES or 500 <= status <= 599


def backoff_delay(policy: RetryPolicy, retry: int, jitter_fraction: float) -> float:
    """The wait before retry number ``retry`` (1 = first); ``jitter_fraction`` is in [0, 1)."""
    exponent = min(retry - 1, 64)  # past this, wait_max has long been reached
    base = policy.wait_initial * (2.0**exponent)
    return min(policy.wait_max, base + policy.wait_jitter * jitter_fraction)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        value = headers.get(name.lower())
    if value is None:
        lowered = name.lower()
        for key, item in headers.items():
            if key.lower() == lowered:
                return item
    return value


def _number(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return value if value == value and value not in (float("inf"), float("-inf")) else None


def reset_in_seconds(headers: Mapping[str, str], now_epoch: float) -> float | None:
    """Seconds until the rate-limit window resets, from ``X-RateLimit-Reset``.

    Braze documents two readings: epoch seconds (general page) and seconds remaining (MAU
    contracts). Values above 10^9 are read as epoch seconds, smaller ones as seconds remaining.
    """
    value = _number(_header(headers, "X-RateLimit-Reset"))
    if value is None:
        return None
    if value >= _EPOCH_THRESHOLD:
        return max(0.0, value - now_epoch)
    return max(0.0, value)


def retry_after_seconds(headers: Mapping[str, str], now_epoch: float) -> float | None:
    """How long a 429 asks us to wait: ``X-Ratelimit-Retry-After``, ``Retry-After`` (seconds or
    an HTTP date), else ``X-RateLimit-Reset``; ``None`` when no header says."""
    value = _number(_header(headers, "X-Ratelimit-Retry-After"))
    if value is not None:
        return max(0.0, value)
    retry_after = _header(headers, "Retry-After")
    value = _number(retry_after)
    if value is not None:
        return max(0.0, value)
    if retry_after:
        try:
            moment = email.utils.parsedate_to_datetime(retry_after)
        except (TypeError, ValueError):
            moment = None
        if moment is not None and moment.tzinfo is not None:
            return max(0.0, moment.timestamp() - now_epoch)
    return reset_in_seconds(headers, now_epoch)
