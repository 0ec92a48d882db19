"""Braze's rate-limit response headers, read linearly and bounded (a hostile header costs
nothing): ``X-RateLimit-Limit``, ``-Remaining``, ``-Reset`` and, on a 429,
``X-Ratelimit-Retry-After`` or ``Retry-After`` (``shared/reference/braze-api.md`` 1.5;
``braze-2026.md`` 1.1). Used by the retry decision and every pacer. Pure: no clock of its own.
"""

from __future__ import annotations

import email.utils
import math
from collections.abc import Mapping

__all__ = ["header", "limit", "remaining", "reset_in_seconds", "retry_after_seconds"]

# X-RateLimit-Reset above this is an epoch timestamp (2001-09-09); below, seconds remaining.
_EPOCH_THRESHOLD = 1_000_000_000
_MAX_HEADER_NUMBER = 32  # characters: longer header "numbers" are ignored, never parsed


def header(headers: Mapping[str, str], name: str) -> str | None:
    """The value of header ``name`` in any case (the transport stores names lower-cased)."""
    value = headers.get(name.lower())
    if value is None:
        value = headers.get(name)
    if value is None:
        lowered = name.lower()
        for key, item in headers.items():
            if key.lower() == lowered:
                return item
    return value


def _number(text: str | None) -> float | None:
    if text is None:
        return None
    text = text.strip()
    if not text or len(text) > _MAX_HEADER_NUMBER:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def reset_in_seconds(headers: Mapping[str, str], now_epoch: float) -> float | None:
    """Seconds until the rate-limit window resets, from ``X-RateLimit-Reset``.

    Braze documents two readings: epoch seconds (general page) and seconds remaining (MAU
    contracts). Values above 10^9 are read as epoch seconds, smaller ones as seconds remaining.
    """
    value = _number(header(headers, "X-RateLimit-Reset"))
    if value is None:
        return None
    if value >= _EPOCH_THRESHOLD:
        return max(0.0, value - now_epoch)
    return max(0.0, value)


def retry_after_seconds(headers: Mapping[str, str], now_epoch: float) -> float | None:
    """How long a 429 asks us to wait: ``X-Ratelimit-Retry-After``, ``Retry-After`` (seconds or
    an HTTP date), else ``X-RateLimit-Reset``; ``None`` when no header says."""
    value = _number(header(headers, "X-Ratelimit-Retry-After"))
    if value is not None:
        return max(0.0, value)
    retry_after = header(headers, "Retry-After")
    value = _number(retry_after)
    if value is not None:
        return max(0.0, value)
    if retry_after and len(retry_after) <= 64:
        try:
            moment = email.utils.parsedate_to_datetime(retry_after)
        except (TypeError, ValueError, IndexError):
            moment = None
        if moment is not None and moment.tzinfo is not None:
            return max(0.0, moment.timestamp() - now_epoch)
    return reset_in_seconds(headers, now_epoch)


def remaining(headers: Mapping[str, str]) -> float | None:
    """``X-RateLimit-Remaining``, if present and a number."""
    return _number(header(headers, "X-RateLimit-Remaining"))


def limit(headers: Mapping[str, str]) -> float | None:
    """``X-RateLimit-Limit``, if present and a number."""
    return _number(header(headers, "X-RateLimit-Limit"))
