"""Every error the SDK raises, rooted at :class:`AntavoBrazeError`.

The tree::

    AntavoBrazeError
    ├── ConfigurationError        bad endpoint, key, option or environment
    │   └── MappingError          invalid mapping config (lists every problem with its path)
    ├── CoercionError             a value cannot take its Braze type (names value, type, reason)
    ├── BrazeAPIError             Braze answered with an error status (status_code, body)
    │   ├── AuthenticationError   401: the key is invalid or from another workspace/instance
    │   ├── PermissionDeniedError 403: the key lacks the endpoint's permission
    │   ├── BadRequestError       400 (also 413/415): the request itself is malformed
    │   ├── RateLimitError        429 after every retry, or a wait longer than allowed
    │   └── ServerError           5xx after every retry
    └── TransportError            connection errors and timeouts after every retry; TLS
                                  verification failures; Braze unreachable

    SyncInterrupted (a KeyboardInterrupt, not an error): a sync stopped by Ctrl-C or SIGTERM;
    ``.report`` accounts for every record read so far.

Messages never contain the API key: bodies echoed by Braze are redacted before they are stored.
:func:`error_for_status` is the one table from an HTTP status to its error class.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AntavoBrazeError",
    "AuthenticationError",
    "BadRequestError",
    "BrazeAPIError",
    "CoercionError",
    "ConfigurationError",
    "MappingError",
    "PermissionDeniedError",
    "QueueFull",
    "RateLimitError",
    "ServerError",
    "SyncInterrupted",
    "TransportError",
    "error_for_status",
    "short_repr",
]

_MAX_SHOWN_VALUE = 80


def short_repr(value: object, limit: int = _MAX_SHOWN_VALUE) -> str:
    """``repr(value)`` cut to ``limit`` characters (member data is shown, never dumped)."""
    try:
        text = repr(value)
    except Exception:  # a hostile __repr__ must not hide the real error
        text = f"<{type(value).__name__}>"
    if len(text) > limit:
        return text[: limit - 3] + "..."
    return text


_short_repr = short_repr


class AntavoBrazeError(Exception):
    """Root of every error raised by antavo_braze.

    An error that ends a request says which: ``method``, ``url`` (the full URL called; never
    a secret in it), ``path`` (the endpoint, e.g. ``/users/track``) and ``attempts``; its
    cause is chained (``__cause__``: the ``OSError`` of a refused connection, say), and
    ``retryable`` says whether a later try may succeed (decided once, by the retry policy).
    Raised in the middle of a sync it carries ``report`` (the partial
    :class:`~antavo_braze.SyncReport`); raised by ``client.track()``, ``result`` (the call's
    :class:`~antavo_braze.TrackResult`).
    """

    method: str | None = None
    url: str | None = None
    path: str | None = None
    attempts: int | None = None
    retryable: bool | None = None
    report: Any = None
    result: Any = None


class ConfigurationError(AntavoBrazeError):
    """The SDK was configured wrongly (endpoint, key, options, environment)."""


class MappingError(ConfigurationError):
    """A mapping config is invalid; ``problems`` lists each one as ``"<path>: <message>"``."""

    def __init__(self, problems: list[str] | tuple[str, ...]) -> None:
        self.problems: tuple[str, ...] = tuple(problems)
        count = len(self.problems)
        header = f"invalid mapping ({count} problem{'s' if count != 1 else ''})"
        super().__init__(header + "".join(f"\n  {p}" for p in self.problems))

    def _repr_html_(self) -> str:
        from html import escape

        items = "".join(f"<li><code>{escape(p)}</code></li>" for p in self.problems)
        return f"<b>MappingError</b>: {len(self.problems)} problem(s)<ul>{items}</ul>"


class CoercionError(AntavoBrazeError, ValueError):
    """A value cannot be coerced to its Braze type.

    ``value``, ``type`` (the Braze type name) and ``reason`` say what went wrong; ``field`` is the
    path of the offending value inside its record when known (e.g. ``score`` or ``items[2].price``)
    and ``record_id`` the member or event it belongs to.
    """

    def __init__(
        self,
        value: object,
        type: str,
        reason: str,
        *,
        field: str | None = None,
        record_id: str | None = None,
    ) -> None:
        self.value = value
        self.type = type
        self.reason = reason
        self.field = field
        self.record_id = record_id
        super().__init__(self._message())

    def _message(self) -> str:
        where = ""
        if self.record_id is not None:
            where += f"record {self.record_id!r}: "
        if self.field is not None:
            where += f"field {self.field!r}: "
        return f"{where}{self.plain_reason()}"

    def plain_reason(self) -> str:
        """The message without the record and field (reports have columns for those)."""
        return f"cannot coerce {_short_repr(self.value)} to {self.type}: {self.reason}"

    def at(self, field: str | None = None, record_id: str | None = None) -> CoercionError:
        """Return a copy located at ``field`` (prefixed to an inner path) of ``record_id``."""
        if field is not None and self.field is not None:
            joiner = "" if self.field.startswith("[") else "."
            field = f"{field}{joiner}{self.field}"
        elif field is None:
            field = self.field
        return CoercionError(
            self.value,
            self.type,
            self.reason,
            field=field,
            record_id=record_id if record_id is not None else self.record_id,
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild_coercion_error,
            (self.value, self.type, self.reason, self.field, self.record_id),
        )

    def _repr_html_(self) -> str:
        from html import escape

        return f"<b>CoercionError</b>: {escape(str(self))}"


def _rebuild_coercion_error(
    value: object, type: str, reason: str, field: str | None, record_id: str | None
) -> CoercionError:
    return CoercionError(value, type, reason, field=field, record_id=record_id)


class BrazeAPIError(AntavoBrazeError):
    """Braze answered with an error status; ``status_code`` and the (redacted) ``body``."""

    def __init__(self, status_code: int, body: str, message: str | None = None) -> None:
        self.status_code = status_code
        self.body = body
        super().__init__(message or f"Braze answered HTTP {status_code}: {body[:300]}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.status_code, self.body, str(self)), self.__dict__)


class AuthenticationError(BrazeAPIError):
    """401: the API key is invalid, from another workspace, or the instance URL is wrong."""


class PermissionDeniedError(BrazeAPIError):
    """403: the API key lacks the permission this endpoint needs."""


class BadRequestError(BrazeAPIError):
    """400 (and 413/415): Braze refused the request itself; retrying cannot help."""


class RateLimitError(BrazeAPIError):
    """429 after every retry, or Braze asked for a wait longer than ``max_rate_limit_wait``."""


class ServerError(BrazeAPIError):
    """5xx after every retry."""


# The one translation table, status -> error class (5xx: ServerError; others: BrazeAPIError).
_STATUS_ERRORS: dict[int, type[BrazeAPIError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    413: BadRequestError,  # the body is over Braze's 4 MB
    415: BadRequestError,  # Content-Type missing or wrong
    429: RateLimitError,
}


def error_for_status(
    status: int, body: str, message: str | None = None, *, permission: str | None = None
) -> BrazeAPIError:
    """The typed error for an error answer with ``status`` and (redacted) ``body``.

    ``message`` replaces the default text; a 401 adds what to check, a 403 the missing
    ``permission`` when the caller knows which the endpoint needs.
    """
    error_class = _STATUS_ERRORS.get(status)
    if error_class is None:
        error_class = ServerError if 500 <= status <= 599 else BrazeAPIError
    text = message or f"Braze answered HTTP {status}: {body[:300]}"
    if status == 401:
        text += " (check the API key and instance)"
    elif status == 403 and permission is not None:
        text += f" (the API key lacks the {permission} permission)"
    return error_class(status, body, text)


class TransportError(AntavoBrazeError):
    """Connection errors and timeouts after every retry; failures no retry can mend (TLS,
    a name that does not resolve, a proxy refusing the tunnel) at once; a 2xx that is not
    Braze's answer after every retry; Braze unreachable."""


class QueueFull(AntavoBrazeError):  # noqa: N818 - the name DESIGN.md promises
    """A :class:`~antavo_braze.BackgroundSender` had no room for a submission
    (``on_full="raise"``, or ``"block"`` with a ``timeout`` that ran out): nothing was
    queued, so the caller still holds the change."""


class SyncInterrupted(KeyboardInterrupt):
    """A sync stopped by Ctrl-C (SIGINT) or SIGTERM; ``report`` holds the partial outcome.

    Every record read so far is in it: what Braze answered is counted as answered, the rest
    failed with stage ``"interrupted"`` (retryable, and in the dead letter). ``signal`` is the
    signal number. A ``KeyboardInterrupt``, so that ``except Exception`` does not swallow it.
    """

    def __init__(self, report: Any, signal: int) -> None:
        super().__init__(f"sync interrupted: {report.summary()}")
        self.report = report
        self.signal = signal
