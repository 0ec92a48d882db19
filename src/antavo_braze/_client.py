"""The Braze REST client: a small composition of the endpoint, a connection pool, a pacer and
the one send loop (``_http``). With the transport, the only place that does I/O.

It knows Braze's wire objects and nothing about Antavo or the mapping.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import threading
from collections.abc import Generator, Iterable, Iterator, Mapping
from datetime import date, datetime
from typing import Any
from urllib.parse import urlencode

from . import _users
from ._braze.limits import (
    OPTIONAL_PERMISSIONS,
    PERMISSIONS,
    REQUIRED_PERMISSIONS,
)
from ._build.answers import (
    RejectedObject,
    TrackResult,
    batch_outcome,
    oversize_outcome,
    settle_track,
)
from ._build.batching import Batch, BatchLimits, BatchMode, BatchOutcome, pack
from ._build.schema import CustomAttribute
from ._build.wire import track_items
from ._http import (
    DEFAULT_GRACE,
    BrazeResponse,
    CallOptions,
    CallStats,
    ConnectionPool,
    Exchange,
    Interrupt,
    IterSource,
    KeyRegistry,
    Result,
    SendLoop,
    resolve_proxy,
)
from ._http.endpoint import parse_endpoint
from ._http.pacing import InProcessPacer, Pacer
from ._http.retry import RetryPolicy
from ._telemetry import Telemetry, log_fields, traced
from ._version import __version__
from .exceptions import (
    AntavoBrazeError,
    ConfigurationError,
)
from .models import AttributesObject, EventObject, PurchaseObject

__all__ = [
    "OPTIONAL_PERMISSIONS",
    "PERMISSIONS",
    "REQUIRED_PERMISSIONS",
    "BatchOutcome",
    "BrazeClient",
    "RejectedObject",
    "TrackResult",
]

log = logging.getLogger("antavo_braze.client")

_REDACTED = "[REDACTED]"
_KEY = re.compile(r"[\x20-\x7e]+")  # printable ASCII: a CR or LF can never inject a header
TRACK = "/users/track"


class _Secret:
    """Holds the API key; every text form of it is redacted: whole occurrences in any letter
    case and its base64 forms, never a part of another word (a short key inside "known")."""

    __slots__ = ("_pattern", "_value")

    def __init__(self, value: str) -> None:
        self._value = value
        raw = value.encode()
        forms = {base64.b64encode(raw), base64.urlsafe_b64encode(raw)}
        encoded = {f.decode() for f in forms} | {f.decode().rstrip("=") for f in forms}
        alternatives = [f"(?i:{re.escape(value)})"]
        alternatives += [re.escape(form) for form in sorted(encoded, key=len, reverse=True)]
        self._pattern = re.compile(rf"(?<![A-Za-z0-9])(?:{'|'.join(alternatives)})(?![A-Za-z0-9])")

    def reveal(self) -> str:
        return self._value

    def redact(self, text: str) -> str:
        return self._pattern.sub(_REDACTED, text) if self._value else text

    def __repr__(self) -> str:
        return "'***'"

    __str__ = __repr__

    def __reduce__(self) -> Any:
        raise TypeError("the API key cannot be pickled")


class BrazeClient:
    """A Braze REST client for ``/users/track`` and the custom-event read endpoints.

    ``endpoint`` is the REST endpoint URL or an instance name (``"US-03"``); https is required
    except to localhost or a loopback address. Every request goes through one send loop with
    up to ``max_in_flight`` requests at once; ``timeout`` bounds each whole request. Proxies
    come from ``HTTPS_PROXY``/``HTTP_PROXY``/``NO_PROXY`` (``trust_env``) or ``proxy``;
    ``ca_bundle`` is a CA file to verify TLS with instead of the system's trust store.
    ``limits`` (or ``batch_mode``) sets how much one request holds; ``pacer`` shares a rate
    budget (e.g. :class:`~antavo_braze.RedisPacer`). ``app_id`` is added to every event and
    purchase that has none. The API key never appears in repr, logs or exceptions.
    ``tracer_provider`` / ``meter_provider``: OpenTelemetry providers for a span per call and
    per HTTP try and the request metrics (the ``otel`` extra; default: the global ones).
    """

    def __init__(
        self,
        endpoint: str,
        api_key: str,
        app_id: str | None = None,
        *,
        timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        max_in_flight: int = 4,
        batch_mode: BatchMode | None = None,
        limits: BatchLimits | None = None,
        pacer: Pacer | None = None,
        ca_bundle: str | os.PathLike[str] | None = None,
        proxy: str | None = None,
        trust_env: bool = True,
        tracer_provider: Any = None,
        meter_provider: Any = None,
    ) -> None:
        limits = _checked_options(api_key, max_in_flight, timeout, batch_mode, limits)
        target = parse_endpoint(endpoint)
        self.endpoint = target.url
        self._key = _Secret(api_key.strip())
        self.app_id = app_id
        self.timeout = float(timeout)
        self.retry = retry if retry is not None else RetryPolicy()
        self.max_in_flight = max_in_flight
        self.limits = limits
        self.pacer: Pacer = (
            pacer if pacer is not None else InProcessPacer(max_wait=self.retry.max_rate_limit_wait)
        )
        self.user_agent = f"antavo-braze-python/{__version__}"
        self._pool = ConnectionPool(
            target,
            max_idle=max_in_flight,
            ca_bundle=None if ca_bundle is None else os.fspath(ca_bundle),
            proxy=resolve_proxy(target, proxy, trust_env),
        )
        self._registry = KeyRegistry()
        self._telemetry = Telemetry(tracer_provider, meter_provider)
        self._lock = threading.Lock()
        self._closed = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **kwargs: Any) -> BrazeClient:
        """Build a client from ``BRAZE_REST_ENDPOINT``, ``BRAZE_API_KEY`` and ``BRAZE_APP_ID``
        (and ``BRAZE_CA_BUNDLE``: the CA file of a TLS-inspecting proxy, unless ``ca_bundle``
        is given)."""
        return cls(*_from_env(os.environ if environ is None else environ, kwargs), **kwargs)

    def __repr__(self) -> str:
        proxy = self._pool.proxy
        via = f", proxy={proxy.url!r}" if proxy is not None else ""
        return (
            f"BrazeClient(endpoint={self.endpoint!r}, app_id={self.app_id!r}, "
            f"max_in_flight={self.max_in_flight}, limits={self.limits!r}{via})"
        )

    @property
    def batch_mode(self) -> BatchMode:
        """``"combined"`` or ``"legacy"`` (see :class:`BatchLimits`)."""
        return self.limits.mode

    @property
    def proxy(self) -> str | None:
        """The proxy requests go through (without credentials), if any."""
        return None if self._pool.proxy is None else self._pool.proxy.url

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called; a closed client refuses to send."""
        return self._closed

    def __enter__(self) -> BrazeClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the pooled connections and the connecting threads; the client is then unusable."""
        self._closed = True
        self._pool.close()

    # --- the send path -------------------------------------------------------------------

    def _headers(self) -> list[tuple[bytes, bytes]]:
        # Built per call, never kept on the client: its attributes hold no copy of the key.
        return [
            (b"host", self._pool.target.authority.encode()),
            (b"authorization", b"Bearer " + self._key.reveal().encode("ascii")),
            (b"user-agent", self.user_agent.encode()),
            (b"accept", b"application/json"),
            (b"accept-encoding", b"identity"),
            (b"content-type", b"application/json"),
        ]

    def _loop(
        self,
        stats: CallStats | None = None,
        *,
        interrupt: Interrupt | None = None,
        give_up_after: int | None = None,
        grace: float | None = None,
        telemetry: Telemetry | None = None,
    ) -> SendLoop:
        if self._closed:
            raise ConfigurationError("this BrazeClient is closed")
        active = (telemetry or self._telemetry).active()
        if active is not None:
            active.server = (self._pool.target.host, self._pool.target.port)
        grace = DEFAULT_GRACE if grace is None else grace
        stats = CallStats() if stats is None else stats
        return SendLoop(
            self._pool,
            self.pacer,
            self.retry,
            CallOptions(self.timeout, grace, give_up_after, interrupt, stats),
            headers=self._headers(),
            max_in_flight=self.max_in_flight,
            registry=self._registry,
            redact=self._key.redact,
            telemetry=active,
        )

    def _send(
        self, method: str, path: str, params: Mapping[str, Any] | None, body: bytes | None
    ) -> Result:
        exchange = Exchange(method, path, body, query=urlencode(params) if params else "")
        loop = self._loop()
        (result,) = loop.run(IterSource([exchange], self._registry))
        return result

    def _request(
        self,
        method: str,
        path: str,
        params: Mapping[str, Any] | None = None,
        body: bytes | None = None,
    ) -> tuple[BrazeResponse, dict[str, Any]]:
        result = self._send(method, path, params, body)
        if result.error is not None:
            result.error.retryable = result.retryable  # the retry policy's one answer
            raise result.error
        assert result.response is not None
        return result.response, result.payload

    @traced("request")
    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: bytes | None = None,
    ) -> BrazeResponse:
        """Send one request (pacing and retries included) to any Braze endpoint; return the
        2xx answer whose body is a JSON object, or raise the error it ended with."""
        return self._request(method, path, params, body)[0]

    # --- /users/track ----------------------------------------------------------------------

    @traced("track")
    def track(
        self,
        attributes: Iterable[AttributesObject | Mapping[str, Any]] = (),
        events: Iterable[EventObject | Mapping[str, Any]] = (),
        purchases: Iterable[PurchaseObject | Mapping[str, Any]] = (),
    ) -> TrackResult:
        """Send Braze objects — models or plain wire dicts exactly as Braze documents them —
        batched; return which ones were refused, by array and index.

        Plain dicts reach every Braze feature (``_merge_objects``, ``$add``/``$remove``/
        ``$update``, ``subscription_groups``, ``user_alias``) and are checked against the same
        limits first: an object that breaks one is rejected with stage ``"validation"``.

        When a request fails as a whole after its retries, the typed error is raised once every
        batch is done (:class:`ServerError`, :class:`RateLimitError`, :class:`BadRequestError`,
        :class:`BrazeAPIError`, :class:`TransportError`), with ``.result`` the call's
        :class:`TrackResult` and the cause chained; 401, 403 and unmendable connection failures
        stop the call at once (what was not sent is rejected with stage ``"interrupted"``).
        """
        where, refused, groups = track_items(
            (("attributes", attributes), ("events", events), ("purchases", purchases)),
            self.app_id,
        )
        stats = CallStats()
        outcomes = send_batches(self, pack(groups, self.limits), stats=stats)
        accepted, rejected, warnings, error = settle_track(outcomes, where, groups)
        rejected.extend(
            RejectedObject(array, index, "validation", why) for array, index, why in refused
        )
        rejected.sort(key=lambda r: (r.input_array, r.index))
        if warnings:
            log.warning(
                "Braze reported %d error(s) it did not attribute to an object: %s",
                len(warnings),
                "; ".join(warnings[:5]),
                extra=log_fields("track", endpoint=f"POST {TRACK}", count=len(warnings)),
            )
        result = TrackResult(
            requests=stats.requests,
            accepted=accepted,
            rejected=tuple(rejected),
            warnings=tuple(warnings),
        )
        if error is not None:
            error.result = result
            raise error
        return result

    # --- read endpoints and probes (the logic lives in _users) ---------------------------

    @traced("list_event_names")
    def list_event_names(self) -> list[str]:
        """Every custom event name (GET /events/list, all pages of 250)."""
        return _users.list_event_names(self)

    @traced("list_events")
    def list_events(self) -> list[dict[str, Any]]:
        """Every custom event with its details (GET /events, following the ``Link`` cursor)."""
        return _users.list_events(self)

    @traced("event_series")
    def event_series(
        self,
        name: str,
        length: int,
        unit: str = "day",
        ending_at: datetime | date | str | None = None,
        app_id: str | None = None,
        segment_id: str | None = None,
    ) -> list[dict[str, Any]]:
        """Occurrences of event ``name`` per ``unit`` over ``length`` units (1-100)."""
        return _users.event_series(self, name, length, unit, ending_at, app_id, segment_id)

    @traced("check_permissions")
    def check_permissions(self) -> dict[str, bool]:
        """Which of the permissions the SDK uses this key has (probes change no data).

        ``users.track`` is all a sync needs (:data:`REQUIRED_PERMISSIONS`); the others are
        optional (:data:`OPTIONAL_PERMISSIONS`): the read endpoints, the schema check, the
        audit, merges and deletes. Raises :class:`AuthenticationError` for an invalid key.
        """
        return _users.check_permissions(self)

    # --- beyond /users/track (the logic lives in _users) ----------------------------------

    @traced("custom_attributes")
    def custom_attributes(self) -> list[CustomAttribute]:
        """Every custom attribute Braze holds with its type and status (GET
        /custom_attributes, every page; paced under that endpoint's 1,000 per hour)."""
        return _users.custom_attributes(self)

    @traced("export_users")
    def export_users(
        self, external_ids: Iterable[str], fields: Iterable[str]
    ) -> list[dict[str, Any]]:
        """What Braze holds for ``external_ids``: one ``{"external_id": ..., field: value}``
        per profile found, with only the listed ``fields`` it has (POST /users/export/ids,
        50 ids per request, paced under that endpoint's own limit)."""
        return _users.export_users(self, external_ids, fields)

    @traced("merge_users")
    def merge_users(self, pairs: Iterable[tuple[str, str]]) -> int:
        """Merge each ``(merge, keep)`` pair's first profile into the second (POST
        /users/merge, 50 per request); return how many Braze accepted."""
        return _users.merge_users(self, pairs)

    @traced("delete_users")
    def delete_users(self, external_ids: Iterable[str]) -> int:
        """Delete the profiles of ``external_ids`` (POST /users/delete, 50 per request);
        return how many Braze queued (verify with :meth:`export_users`)."""
        return _users.delete_users(self, external_ids)


def send_batches(
    client: BrazeClient,
    batches: Iterable[Batch],
    *,
    stats: CallStats | None = None,
    interrupt: Interrupt | None = None,
    give_up_after: int | None = None,
    grace: float | None = None,
    telemetry: Telemetry | None = None,
) -> Generator[BatchOutcome, None, None]:
    """The seam between the Syncer and the client (one door, as httpx's transport has one
    method): ``batches`` in, each one's :class:`BatchOutcome` out as it finishes. A fatal
    failure (401, 403, TLS, Braze unreachable) stops the loop taking work: what was queued
    comes back not sent, what was in flight finishes, and then the error is raised (so every
    batch is accounted for). ``telemetry``: the caller's, when it has its own providers."""
    loop = client._loop(
        stats,
        interrupt=interrupt,
        give_up_after=give_up_after,
        grace=grace,
        telemetry=telemetry,
    )

    def exchanges() -> Iterator[Exchange]:
        for batch in batches:
            if batch.oversize:
                oversize.append(batch)
                continue
            yield Exchange("POST", TRACK, batch.body, keys=batch.keys, tag=batch)

    oversize: list[Batch] = []
    source = IterSource(exchanges(), client._registry)
    results = loop.run(source)
    fatal: AntavoBrazeError | None = None
    for result in results:
        while oversize:
            yield oversize_outcome(oversize.pop())
        if result.fatal and fatal is None:
            fatal = result.error
            loop.halt(source, f"the run stopped at {type(fatal).__name__}")
        yield batch_outcome(result, client._key.redact)
    while oversize:
        yield oversize_outcome(oversize.pop())
    if fatal is not None:
        raise fatal


def telemetry_of(client: BrazeClient) -> Telemetry:
    """The client's telemetry (spans, metrics), shared by a Syncer built on it."""
    return client._telemetry


def _checked_options(
    api_key: Any,
    max_in_flight: Any,
    timeout: Any,
    batch_mode: BatchMode | None,
    limits: BatchLimits | None,
) -> BatchLimits:
    """The client's limits, once every option is known good (else ConfigurationError)."""
    if not isinstance(api_key, str) or not api_key.strip():
        raise ConfigurationError("the Braze API key is empty")
    if not _KEY.fullmatch(api_key.strip()):
        raise ConfigurationError("the Braze API key must be printable ASCII (no line breaks)")
    if not isinstance(max_in_flight, int) or max_in_flight < 1:
        raise ConfigurationError("max_in_flight must be at least 1")
    if not timeout > 0:
        raise ConfigurationError("timeout must be positive")
    if batch_mode is not None and batch_mode not in ("combined", "legacy"):
        raise ConfigurationError(f"batch_mode must be 'combined' or 'legacy', not {batch_mode!r}")
    if limits is None:
        return BatchLimits(mode=batch_mode or "combined")
    if batch_mode is not None and batch_mode != limits.mode:
        raise ConfigurationError(f"batch_mode={batch_mode!r} contradicts limits={limits!r}")
    return limits


def _from_env(env: Mapping[str, str], kwargs: dict[str, Any]) -> tuple[str, str, str | None]:
    """``(endpoint, api_key, app_id)`` from the environment; fills ``kwargs["ca_bundle"]``
    from ``BRAZE_CA_BUNDLE`` unless given, and checks the file exists."""
    missing = [n for n in ("BRAZE_REST_ENDPOINT", "BRAZE_API_KEY") if not env.get(n)]
    if missing:
        raise ConfigurationError(f"set {' and '.join(missing)} in the environment")
    if kwargs.get("ca_bundle") is None and env.get("BRAZE_CA_BUNDLE"):
        kwargs["ca_bundle"] = env["BRAZE_CA_BUNDLE"]
    bundle = kwargs.get("ca_bundle")
    if bundle is not None and not os.path.isfile(bundle):
        raise ConfigurationError(f"CA bundle not found: {os.fspath(bundle)}")
    return env["BRAZE_REST_ENDPOINT"], env["BRAZE_API_KEY"], env.get("BRAZE_APP_ID") or None
