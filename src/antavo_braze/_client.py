"""The Braze REST client: with its transport (``_transport``), the only place that does I/O.

It knows Braze's wire objects and nothing about Antavo or the mapping. Single requests go
through urllib3's connection pool; batches go up to ``max_in_flight`` at once on one
thread's non-blocking connections, never two touching the same ``external_id`` (Braze does not
order separate requests); proactive pacing; retries.
"""

from __future__ import annotations

import contextlib
import heapq
import ipaddress
import logging
import os
import random
import re
import selectors
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import date, datetime
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import requests
import urllib3
from attrs import field, frozen
from requests.adapters import HTTPAdapter
from requests.utils import DEFAULT_CA_BUNDLE_PATH

from ._batching import MAX_BODY_BYTES, MAX_OBJECTS, Batch, BatchMode, Item, pack
from ._coerce import coerce_date
from ._converter import unstructure_attributes, unstructure_event, unstructure_purchase
from ._json import loads
from ._ratelimit import InProcessPacer, NonBlockingPacer, Pacer
from ._retry import RetryPolicy, backoff_delay, is_retryable_status, retry_after_seconds
from ._transport import Connection, encode_request
from ._version import __version__
from .exceptions import (
    AuthenticationError,
    BadRequestError,
    BrazeAPIError,
    ConfigurationError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    TransportError,
)
from .models import AttributesObject, BrazeObject, EventObject, PurchaseObject

__all__ = [
    "INSTANCES",
    "PERMISSIONS",
    "BatchOutcome",
    "BrazeClient",
    "RejectedObject",
    "TrackResult",
    "to_item",
]

log = logging.getLogger("antavo_braze")

INSTANCES = {
    **{f"US-0{n}": f"https://rest.iad-0{n}.braze.com" for n in range(1, 9)},
    "US-10": "https://rest.us-10.braze.com",
    "EU-01": "https://rest.fra-01.braze.eu",
    "EU-02": "https://rest.fra-02.braze.eu",
    "AU-01": "https://rest.au-01.braze.com",
    "ID-01": "https://rest.id-01.braze.com",
    "JP-01": "https://rest.jp-01.braze.com",
    "KR-01": "https://rest.kr-01.braze.com",
}
PERMISSIONS = ("users.track", "events.list", "events.data_series", "events.get")
_EVENTS_LIST_PAGE = 250
_CONNECT_THREADS = 16
_CONNECT_POLL = 0.002  # seconds between looks at connections being opened
_JUST_NOW = 0.001  # seconds
_REDACTED = "[REDACTED]"
_LINK_NEXT = re.compile(r'<([^>]+)>\s*;\s*rel="?next"?')


class _Secret:
    """Holds the API key; every text form of it is redacted."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def redact(self, text: str) -> str:
        return text.replace(self._value, _REDACTED) if self._value else text

    def __repr__(self) -> str:
        return "'***'"

    __str__ = __repr__

    def __reduce__(self) -> Any:
        raise TypeError("the API key cannot be pickled")


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_endpoint(endpoint: str) -> str:
    """The base URL for an instance name (``US-03``) or REST endpoint URL (path prefix kept)."""
    text = endpoint.strip()
    if not text:
        raise ConfigurationError("the Braze REST endpoint is empty")
    instance = INSTANCES.get(text.upper())
    if instance is not None:
        return instance
    if "://" not in text:
        text = "https://" + text
    parts = urlsplit(text)
    host = parts.hostname or ""
    if not host:
        raise ConfigurationError(f"not a Braze REST endpoint: {endpoint!r}")
    if parts.scheme == "http" and not _is_loopback(host):
        raise ConfigurationError(
            f"the Braze endpoint must use https (plain http only for loopback tests): {endpoint!r}"
        )
    if parts.scheme not in ("http", "https"):
        raise ConfigurationError(f"unsupported scheme {parts.scheme!r} in {endpoint!r}")
    if parts.query or parts.fragment:
        raise ConfigurationError(f"the endpoint takes no query or fragment: {endpoint!r}")
    netloc = parts.netloc.rsplit("@", 1)[-1]  # never keep credentials from a URL
    return f"{parts.scheme}://{netloc}{parts.path.rstrip('/')}"


def to_item(obj: BrazeObject, tag: Any = None) -> Item:
    """A Braze wire object in its JSON-ready form, ready to batch."""
    cls = obj.__class__
    if cls is AttributesObject:
        return Item("attributes", unstructure_attributes(obj), obj.external_id, tag)  # type: ignore[arg-type]
    if cls is EventObject:
        return Item("events", unstructure_event(obj), obj.external_id, tag)  # type: ignore[arg-type]
    if cls is PurchaseObject:
        return Item("purchases", unstructure_purchase(obj), obj.external_id, tag)  # type: ignore[arg-type]
    raise TypeError(f"not a Braze object: {type(obj).__name__}")


@frozen
class Response:
    """A Braze HTTP response: status, headers (case-insensitive) and body bytes."""

    status_code: int
    headers: Mapping[str, str]
    content: bytes

    @property
    def text(self) -> str:
        """The body decoded as UTF-8 (invalid bytes replaced)."""
        return self.content.decode("utf-8", "replace")


@frozen
class RejectedObject:
    """An object that did not reach Braze: its array and index in the caller's input."""

    input_array: str
    index: int
    stage: str  # "braze": Braze refused it; "transport": the request never got an answer
    reason: str


@frozen
class TrackResult:
    """What :meth:`BrazeClient.track` achieved: requests made, objects accepted, rejections."""

    requests: int
    accepted: int
    rejected: tuple[RejectedObject, ...] = ()

    @property
    def ok(self) -> bool:
        """True when Braze accepted every object."""
        return not self.rejected


@frozen
class BatchOutcome:
    """The result of sending one batch: per-item rejections, or the error that sank it."""

    batch: Batch
    rejected: Mapping[int, str] = field(factory=dict)  # item number in batch -> reason
    error: Exception | None = None
    stage: str | None = None
    warnings: tuple[str, ...] = ()
    attempts: int = 0

    @property
    def retryable(self) -> bool:
        """True when the whole request failed in a way a later retry may fix (5xx, 429, network)."""
        return isinstance(self.error, (ServerError, RateLimitError, TransportError))

    def failure(self, item_number: int) -> tuple[str, str] | None:
        """``(stage, reason)`` if item ``item_number`` of the batch failed, else ``None``."""
        if self.error is not None:
            return self.stage or "braze", str(self.error)
        reason = self.rejected.get(item_number)
        return None if reason is None else ("braze", reason)


class BrazeClient:
    """A Braze REST client for ``/users/track`` and the custom-event read endpoints.

    ``endpoint`` is the REST endpoint URL or an instance name (``"US-03"``); https is required
    except on loopback hosts. The API key never appears in repr, logs or exceptions.
    ``pacer``, ``clock``, ``wall_clock``, ``sleep`` and ``jitter`` are injectable for tests and
    for a rate budget shared between processes. ``ca_bundle`` is a CA file to verify TLS with
    instead of requests' bundle (e.g. behind a TLS-inspecting proxy).
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
        batch_mode: BatchMode = "combined",
        max_objects: int = MAX_OBJECTS,
        pacer: Pacer | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        jitter: Callable[[], float] = random.random,
        ca_bundle: str | None = None,
    ) -> None:
        if not isinstance(api_key, str) or not api_key.strip():
            raise ConfigurationError("the Braze API key is empty")
        if max_in_flight < 1:
            raise ConfigurationError("max_in_flight must be at least 1")
        if batch_mode not in ("combined", "legacy"):
            raise ConfigurationError(
                f"batch_mode must be 'combined' or 'legacy', not {batch_mode!r}"
            )
        if not 1 <= max_objects <= MAX_OBJECTS:
            raise ConfigurationError(f"max_objects must be between 1 and {MAX_OBJECTS}")
        if timeout <= 0:
            raise ConfigurationError("timeout must be positive")
        self.endpoint = resolve_endpoint(endpoint)
        self._key = _Secret(api_key.strip())
        self.app_id = app_id
        self.timeout = timeout
        self.retry = retry if retry is not None else RetryPolicy()
        self.max_in_flight = max_in_flight
        self.batch_mode: BatchMode = batch_mode
        self.max_objects = max_objects
        self._sleep = sleep
        self._wall_clock = wall_clock
        self._jitter = jitter
        self.pacer: Pacer = (
            pacer
            if pacer is not None
            else InProcessPacer(
                clock=clock,
                wall_clock=wall_clock,
                sleep=sleep,
                max_wait=self.retry.max_rate_limit_wait,
            )
        )
        self.user_agent = f"antavo-braze-python/{__version__} requests/{requests.__version__}"
        self._session = requests.Session()
        self._session.verify = True
        self._session.trust_env = False  # proxies/netrc from the environment could leak the key
        adapter = HTTPAdapter(
            pool_connections=1, pool_maxsize=max_in_flight, max_retries=0, pool_block=True
        )
        self._session.mount("https://", adapter)
        self._session.mount("http://", adapter)
        # Requests go straight to the session's urllib3 pool: requests' per-request machinery
        # (preparing, merging settings, hooks) costs ~0.8 ms of CPU, more than the rest of a
        # /users/track call. TLS is verified against requests' CA bundle, as requests would.
        # The one TLS setting for both the pool and the concurrent sender's connections.
        self._tls: dict[str, Any] = {}
        if self.endpoint.startswith("https://"):
            self._tls = {
                "cert_reqs": "CERT_REQUIRED",
                "ca_certs": ca_bundle or DEFAULT_CA_BUNDLE_PATH,
            }
        pool_kwargs = {"timeout": urllib3.Timeout(connect=timeout, read=timeout), **self._tls}
        self._pool = adapter.poolmanager.connection_from_url(self.endpoint, pool_kwargs=pool_kwargs)
        self._base_path = urlsplit(self.endpoint).path
        self._clock = clock
        self._idle: list[Connection] = []  # keep-alive connections of the concurrent sender
        self._idle_lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None  # opens connections
        self._executor_lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self.requests_sent = 0  # HTTP requests made, retries included

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **kwargs: Any) -> BrazeClient:
        """Build a client from ``BRAZE_REST_ENDPOINT``, ``BRAZE_API_KEY`` and ``BRAZE_APP_ID``."""
        env = os.environ if environ is None else environ
        missing = [n for n in ("BRAZE_REST_ENDPOINT", "BRAZE_API_KEY") if not env.get(n)]
        if missing:
            raise ConfigurationError(f"set {' and '.join(missing)} in the environment")
        return cls(
            env["BRAZE_REST_ENDPOINT"],
            env["BRAZE_API_KEY"],
            env.get("BRAZE_APP_ID") or None,
            **kwargs,
        )

    def __repr__(self) -> str:
        return (
            f"BrazeClient(endpoint={self.endpoint!r}, app_id={self.app_id!r}, "
            f"max_in_flight={self.max_in_flight}, batch_mode={self.batch_mode!r})"
        )

    def __enter__(self) -> BrazeClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the connecting threads and the pooled connections."""
        with self._executor_lock:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None
        self._drop_idle()
        self._session.close()

    # --- HTTP with pacing and retries -------------------------------------------------------

    def _headers(self, body: bytes | None) -> dict[str, str]:
        headers = {
            "Authorization": f"Bearer {self._key.reveal()}",
            "User-Agent": self.user_agent,
            "Accept": "application/json",
        }
        if body is not None:
            headers["Content-Type"] = "application/json"
        return headers

    def _error(self, response: Response, path: str, message: str | None = None) -> BrazeAPIError:
        status = response.status_code
        body = self._key.redact(response.text or "")
        text = message or f"Braze answered HTTP {status} to {path}: {body[:300]}"
        if status == 401:
            return AuthenticationError(status, body, text + " (check the API key and instance)")
        if status == 403:
            return PermissionDeniedError(status, body, text)
        if status in (400, 413, 415):
            return BadRequestError(status, body, text)
        if status == 429:
            return RateLimitError(status, body, text)
        if 500 <= status <= 599:
            return ServerError(status, body, text)
        return BrazeAPIError(status, body, text)

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: bytes | None = None,
    ) -> Response:
        """Send one request with pacing and retries; return the 2xx response or raise."""
        url = self._base_path + path
        if params:
            url += "?" + urlencode(params)
        headers = self._headers(body)
        attempt = 0
        while True:
            attempt += 1
            self.pacer.acquire()
            self._count_request()
            try:
                raw = self._pool.urlopen(
                    method,
                    url,
                    body=body,
                    headers=headers,
                    retries=False,
                    redirect=False,
                    assert_same_host=False,
                )
                response = Response(raw.status, raw.headers, raw.data)
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                self.pacer.observe(None, {})
                self._sleep(self._transport_retry_delay(method, path, exc, attempt))
                continue
            self.pacer.observe(response.status_code, response.headers)
            if response.status_code < 300:
                return response
            self._sleep(self._retry_delay(method, path, response, attempt))

    def _count_request(self) -> None:
        with self._stats_lock:
            self.requests_sent += 1

    def _transport_retry_delay(self, method: str, path: str, exc: Exception, attempt: int) -> float:
        """Seconds before retrying after a failure without response, or raise TransportError."""
        reason = self._key.redact(f"{type(exc).__name__}: {exc}")
        if attempt >= self.retry.attempts:
            raise TransportError(
                f"{method} {path} failed after {attempt} attempt(s): {reason}"
            ) from None
        delay = backoff_delay(self.retry, attempt, self._jitter())
        log.warning("%s %s: %s; retry %d in %.2fs", method, path, reason, attempt, delay)
        return delay

    def _retry_delay(self, method: str, path: str, response: Response, attempt: int) -> float:
        """Seconds before retrying a non-2xx response, or raise the error it stands for."""
        policy = self.retry
        status = response.status_code
        if not is_retryable_status(status):
            raise self._error(response, path)
        if status == 429:
            delay_or_none = retry_after_seconds(response.headers, self._wall_clock())
            if delay_or_none is not None and delay_or_none > policy.max_rate_limit_wait:
                raise self._error(
                    response,
                    path,
                    f"rate limited: Braze asked to wait {delay_or_none:.0f}s, more than "
                    f"max_rate_limit_wait={policy.max_rate_limit_wait:.0f}s",
                )
            delay = (
                backoff_delay(policy, attempt, self._jitter())
                if delay_or_none is None
                else delay_or_none
            )
        else:
            delay = backoff_delay(policy, attempt, self._jitter())
        if attempt >= policy.attempts:
            exhausted = f"rate limited: HTTP 429 after {attempt} attempt(s)"
            raise self._error(response, path, exhausted if status == 429 else None)
        log.warning("%s %s: HTTP %d; retry %d in %.2fs", method, path, status, attempt, delay)
        return delay

    def _get_json(self, path: str, params: Mapping[str, Any] | None = None) -> tuple[Any, Response]:
        response = self.request("GET", path, params=params)
        try:
            payload = loads(response.content)
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            raise BrazeAPIError(
                response.status_code,
                self._key.redact(response.text[:300]),
                f"Braze answered {path} with invalid JSON",
            )
        return payload, response

    # --- /users/track ----------------------------------------------------------------------

    def _connector(self) -> ThreadPoolExecutor:
        """Threads that open connections (a TLS handshake must not stall the send loop)."""
        with self._executor_lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    max_workers=min(self.max_in_flight, _CONNECT_THREADS),
                    thread_name_prefix="antavo-braze-connect",
                )
            return self._executor

    def pack(self, groups: Iterable[Sequence[Item]]) -> Iterator[Batch]:
        """Pack groups of items into request batches with this client's limits."""
        return pack(
            groups, mode=self.batch_mode, max_objects=self.max_objects, max_bytes=MAX_BODY_BYTES
        )

    def send_batch(self, batch: Batch) -> BatchOutcome:
        """Send one batch; failures become the outcome (only 401/403 raise)."""
        if batch.oversize:
            return BatchOutcome(
                batch,
                error=BadRequestError(
                    413, "", f"object of {len(batch.body)} bytes exceeds Braze's 4 MB request limit"
                ),
                stage="validation",
            )
        try:
            response = self.request("POST", "/users/track", body=batch.body)
        except (AuthenticationError, PermissionDeniedError):
            raise
        except BrazeAPIError as exc:
            return BatchOutcome(batch, error=exc, stage="braze")
        except TransportError as exc:
            return BatchOutcome(batch, error=exc, stage="transport")
        return self._track_outcome(batch, response)

    def _track_outcome(self, batch: Batch, response: Response) -> BatchOutcome:
        try:
            payload = loads(response.content) if response.content else {}
        except ValueError:
            payload = {}
        errors = payload.get("errors") if isinstance(payload, dict) else None
        if not errors:
            return BatchOutcome(batch)
        where = {position: number for number, position in enumerate(batch.positions)}
        rejected: dict[int, str] = {}
        warnings: list[str] = []
        for error in errors:
            if not isinstance(error, dict):
                warnings.append(self._key.redact(str(error)))
                continue
            reason = self._key.redact(str(error.get("type") or error.get("message") or error))
            number = where.get((error.get("input_array"), error.get("index")))  # type: ignore[arg-type]
            if number is None:
                warnings.append(reason)  # Braze did not say which object; nothing to fail
            else:
                rejected[number] = reason
        for text in warnings:
            log.warning("Braze reported an error it did not attribute to an object: %s", text)
        return BatchOutcome(batch, rejected=rejected, warnings=tuple(warnings))

    def send_batches(self, batches: Iterable[Batch]) -> Iterator[BatchOutcome]:
        """Send batches with up to ``max_in_flight`` in flight; yield outcomes as they finish.

        Batches are pulled lazily (memory stays bounded), and a batch touching an
        ``external_id`` that an in-flight batch touches waits for it. With more than one in
        flight, requests share one thread on non-blocking connections (see ``_transport``).
        """
        if self.max_in_flight == 1:
            for batch in batches:
                yield self.send_batch(batch)
            return
        yield from _ConcurrentSender(self, batches).run()

    def _open_connection(self) -> Connection:
        """A new connection to the endpoint: TCP, and TLS verified as requests would."""
        parts = urlsplit(self.endpoint)
        host = parts.hostname or ""
        connection: urllib3.connection.HTTPConnection
        if parts.scheme == "https":
            connection = urllib3.connection.HTTPSConnection(
                host, parts.port or 443, timeout=self.timeout, **self._tls
            )
        else:
            connection = urllib3.connection.HTTPConnection(
                host, parts.port or 80, timeout=self.timeout
            )
        connection.connect()
        sock, connection.sock = connection.sock, None  # the loop owns the socket now
        assert sock is not None
        return Connection(sock)

    def _idle_connection(self) -> Connection | None:
        with self._idle_lock:
            return self._idle.pop() if self._idle else None

    def _keep_idle(self, connections: Iterable[Connection]) -> None:
        with self._idle_lock:
            self._idle.extend(connections)
            extra = self._idle[self.max_in_flight :]
            del self._idle[self.max_in_flight :]
        for connection in extra:
            connection.close()

    def _drop_idle(self) -> None:
        with self._idle_lock:
            stale, self._idle = self._idle, []
        for connection in stale:
            connection.close()

    def track(
        self,
        attributes: Iterable[AttributesObject] = (),
        events: Iterable[EventObject] = (),
        purchases: Iterable[PurchaseObject] = (),
    ) -> TrackResult:
        """Send Braze objects, batched; return which ones Braze rejected (by array and index)."""
        arrays: tuple[tuple[str, Iterable[BrazeObject]], ...] = (
            ("attributes", attributes),
            ("events", events),
            ("purchases", purchases),
        )
        groups = [
            [to_item(obj, (array, index))]
            for array, objects in arrays
            for index, obj in enumerate(objects)
        ]
        rejected: list[RejectedObject] = []
        requests_before = self.requests_sent
        accepted = 0
        for outcome in self.send_batches(self.pack(groups)):
            for number, item in enumerate(outcome.batch.items):
                failure = outcome.failure(number)
                if failure is None:
                    accepted += 1
                else:
                    array, index = item.tag
                    rejected.append(RejectedObject(array, index, *failure))
        rejected.sort(key=lambda r: (r.input_array, r.index))
        return TrackResult(
            requests=self.requests_sent - requests_before,
            accepted=accepted,
            rejected=tuple(rejected),
        )

    # --- read endpoints --------------------------------------------------------------------

    def list_event_names(self) -> list[str]:
        """Every custom event name (GET /events/list, all pages of 250)."""
        names: list[str] = []
        page = 0
        while True:
            payload, _ = self._get_json("/events/list", {"page": page})
            batch = payload.get("events") or []
            names.extend(batch)
            if len(batch) < _EVENTS_LIST_PAGE:
                return names
            page += 1

    def list_events(self) -> list[dict[str, Any]]:
        """Every custom event with its details (GET /events, following the ``Link`` cursor)."""
        events: list[dict[str, Any]] = []
        params: dict[str, Any] | None = None
        seen: set[str] = set()
        while True:
            payload, response = self._get_json("/events", params)
            events.extend(payload.get("events") or [])
            match = _LINK_NEXT.search(response.headers.get("Link", ""))
            if match is None:
                return events
            cursor = parse_qs(urlsplit(match.group(1)).query).get("cursor", [None])[0]
            if cursor is None or cursor in seen:
                return events
            seen.add(cursor)
            params = {"cursor": cursor}

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
        if not 1 <= length <= 100:
            raise ConfigurationError("length must be between 1 and 100")
        if unit not in ("day", "hour"):
            raise ConfigurationError("unit must be 'day' or 'hour'")
        params: dict[str, Any] = {"event": name, "length": length, "unit": unit}
        if ending_at is not None:
            params["ending_at"] = coerce_date(ending_at)
        if app_id is not None:
            params["app_id"] = app_id
        if segment_id is not None:
            params["segment_id"] = segment_id
        payload, _ = self._get_json("/events/data_series", params)
        return list(payload.get("data") or [])

    def check_permissions(self) -> dict[str, bool]:
        """Which of the permissions the sync uses this key has. Probes change no data.

        Raises :class:`AuthenticationError` for an invalid key.
        """
        probes: dict[str, Callable[[], Response]] = {
            # An empty track request: authorised keys get past the permission check, and there
            # is nothing in it to write.
            "users.track": lambda: self.request("POST", "/users/track", body=b'{"attributes":[]}'),
            "events.list": lambda: self.request("GET", "/events/list", params={"page": 0}),
            "events.data_series": lambda: self.request(
                "GET",
                "/events/data_series",
                params={"event": "antavo_braze_permission_probe", "length": 1},
            ),
            "events.get": lambda: self.request("GET", "/events"),
        }
        result: dict[str, bool] = {}
        for permission, probe in probes.items():
            try:
                probe()
            except PermissionDeniedError:
                result[permission] = False
            except BadRequestError:
                # Past authorisation, a refusal of the probe itself still proves the permission.
                result[permission] = True
            else:
                result[permission] = True
        return result


class _Job:
    """One batch on its way: attempts so far and, while waiting for a retry, when it is due."""

    __slots__ = ("attempt", "batch")

    def __init__(self, batch: Batch) -> None:
        self.batch = batch
        self.attempt = 0


class _ConcurrentSender:
    """The loop behind :meth:`BrazeClient.send_batches`: many requests, one thread.

    Each round starts what may start (due retries first, then new batches whose profiles are
    not in flight, as the pacer allows), then waits for socket events, retry times or the
    pacer. Every batch ends in exactly one outcome; 401/403 raise, as from ``send_batch``.
    """

    def __init__(self, client: BrazeClient, batches: Iterable[Batch]) -> None:
        self.client = client
        self.source = iter(batches)
        self.exhausted = False
        self.waiting: Batch | None = None  # next batch, held back while its profiles are busy
        self.held: _Job | None = None  # a job the pacer said to wait for (it goes first)
        self.busy: set[str] = set()
        self.retries: list[tuple[float, int, _Job, float]] = []  # (due, seq, job, delay) heap
        self.sequence = 0
        self.active: dict[Connection, _Job] = {}
        self.connecting: list[tuple[Future[Connection], _Job]] = []
        self.idle: list[Connection] = []
        self.outcomes: deque[BatchOutcome] = deque()
        self.pacer_wait = 0.0
        self.slept_to = float("-inf")  # retries due up to here have been waited for
        self.selector = selectors.DefaultSelector()
        self.path = "/users/track"
        self.target = client._base_path + self.path
        self.host = urlsplit(client.endpoint).netloc.rpartition("@")[2]
        self.headers = client._headers(b"")
        pacer = client.pacer
        self.try_acquire = pacer.try_acquire if isinstance(pacer, NonBlockingPacer) else None

    def run(self) -> Iterator[BatchOutcome]:
        try:
            while True:
                self._start_jobs()
                while self.outcomes:
                    yield self.outcomes.popleft()
                if self._done():
                    return
                self._wait()
                while self.outcomes:
                    yield self.outcomes.popleft()
        finally:
            self._close()

    # --- starting requests -----------------------------------------------------------------

    def _done(self) -> bool:
        return (
            not self.active
            and not self.connecting
            and not self.retries
            and self.waiting is None
            and self.held is None
            and self.exhausted
        )

    def _next_job(self) -> _Job | None:
        if self.held is not None:
            job, self.held = self.held, None
            return job
        if self.retries and self.retries[0][0] <= max(self.client._clock(), self.slept_to):
            return heapq.heappop(self.retries)[2]
        while True:
            if self.waiting is None:
                if self.exhausted:
                    return None
                self.waiting = next(self.source, None)
                if self.waiting is None:
                    self.exhausted = True
                    return None
            batch = self.waiting
            if not self.busy.isdisjoint(batch.external_ids):
                return None  # same profile in flight: wait for it
            self.waiting = None
            if batch.oversize:
                self.outcomes.append(self.client.send_batch(batch))  # answered without sending
                continue
            self.busy |= batch.external_ids
            return _Job(batch)

    def _start_jobs(self) -> None:
        self.pacer_wait = 0.0
        while len(self.active) + len(self.connecting) < self.client.max_in_flight:
            job = self._next_job()
            if job is None:
                return
            if self.try_acquire is None:
                self.client.pacer.acquire()
            else:
                wait = self.try_acquire()
                if wait > 0:
                    self.pacer_wait, self.held = wait, job
                    return
            job.attempt += 1
            self.client._count_request()
            connection = self._reusable_connection()
            if connection is None:
                future = self.client._connector().submit(self.client._open_connection)
                self.connecting.append((future, job))
            else:
                self._send(connection, job)

    def _reusable_connection(self) -> Connection | None:
        """An idle keep-alive connection the server has not closed meanwhile (as urllib3
        checks before reusing one), or ``None``."""
        while True:
            connection = self.idle.pop() if self.idle else self.client._idle_connection()
            if connection is None or not connection.dropped():
                return connection
            connection.close()

    def _send(self, connection: Connection, job: _Job) -> None:
        request = encode_request("POST", self.target, self.host, self.headers, job.batch.body)
        connection.start(request, time.monotonic() + self.client.timeout)
        self.active[connection] = job
        try:
            sent = connection.write()
        except OSError as exc:
            self._failed(connection, exc)
            return
        events = selectors.EVENT_READ if sent else selectors.EVENT_READ | selectors.EVENT_WRITE
        self.selector.register(connection, events)

    def _retry_in(self, job: _Job, delay: float) -> None:
        self.sequence += 1
        heapq.heappush(self.retries, (self.client._clock() + delay, self.sequence, job, delay))

    # --- waiting and answers ---------------------------------------------------------------

    def _timeout(self) -> float | None:
        waits = []
        if self.pacer_wait:
            waits.append(self.pacer_wait)
        if self.retries:
            waits.append(max(0.0, self.retries[0][0] - self.client._clock()))
        if self.connecting:
            waits.append(_CONNECT_POLL)
        if self.active:
            now = time.monotonic()
            waits.append(max(0.0, min(c.deadline for c in self.active) - now))
        return min(waits) if waits else None

    def _wait(self) -> None:
        timeout = self._timeout()
        if not self.active and not self.connecting:
            # Nothing on the wire: only a retry time or the pacer to wait for. Whatever the
            # injected clock says afterwards, a retry waited for is due.
            wait = timeout or 0.0
            if self.retries and not self.pacer_wait:
                due, _, _, delay = self.retries[0]
                self.slept_to = due
                # Just scheduled: sleep the backoff exactly as the policy computed it (the
                # microseconds since then are not worth a different number in logs and tests).
                if delay - wait < _JUST_NOW:
                    wait = delay
            self.client._sleep(wait)
            return
        for key, mask in self.selector.select(timeout):
            connection: Connection = key.fileobj  # type: ignore[assignment]
            try:
                if mask & selectors.EVENT_WRITE and connection.writing and connection.write():
                    self.selector.modify(connection, selectors.EVENT_READ)
                if mask & selectors.EVENT_READ and connection.read():
                    self._answered(connection)
            except OSError as exc:
                self._failed(connection, exc)
        self._check_connects()
        now = time.monotonic()
        for connection in [c for c in self.active if c.deadline <= now]:
            self._failed(connection, TimeoutError(f"no response within {self.client.timeout}s"))

    def _check_connects(self) -> None:
        pending = []
        for future, job in self.connecting:
            if not future.done():
                pending.append((future, job))
                continue
            try:
                connection = future.result()
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                self._transport_failure(job, exc)
                continue
            self._send(connection, job)
        self.connecting = pending

    def _answered(self, connection: Connection) -> None:
        self.selector.unregister(connection)
        job = self.active.pop(connection)
        parser = connection.parser
        assert parser.status is not None
        response = Response(parser.status, parser.headers, bytes(parser.body))
        if parser.keep_alive and not connection.writing:
            self.idle.append(connection)
        else:  # closing, or it answered before taking the whole body: not reusable
            connection.close()
        client = self.client
        client.pacer.observe(response.status_code, response.headers)
        if response.status_code < 300:
            self._finish(job, client._track_outcome(job.batch, response))
            return
        try:
            delay = client._retry_delay("POST", self.path, response, job.attempt)
        except (AuthenticationError, PermissionDeniedError):
            self._finish(job, None)
            raise
        except BrazeAPIError as exc:
            self._finish(job, BatchOutcome(job.batch, error=exc, stage="braze"))
            return
        self._retry_in(job, delay)

    def _failed(self, connection: Connection, exc: Exception) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(connection)
        job = self.active.pop(connection)
        connection.close()
        self._transport_failure(job, exc)

    def _transport_failure(self, job: _Job, exc: Exception) -> None:
        self.client.pacer.observe(None, {})
        try:
            delay = self.client._transport_retry_delay("POST", self.path, exc, job.attempt)
        except TransportError as error:
            self._finish(job, BatchOutcome(job.batch, error=error, stage="transport"))
            return
        self._retry_in(job, delay)

    def _finish(self, job: _Job, outcome: BatchOutcome | None) -> None:
        self.busy -= job.batch.external_ids
        if outcome is not None:
            self.outcomes.append(outcome)

    def _close(self) -> None:
        """Abandon what is in flight (only when the caller stops early or an error is raised)."""
        for connection in self.active:
            connection.close()
        for future, _ in self.connecting:
            future.add_done_callback(_close_when_connected)
        self.client._keep_idle(self.idle)
        self.selector.close()


def _close_when_connected(future: Future[Connection]) -> None:
    if not future.cancelled() and future.exception() is None:
        future.result().close()
