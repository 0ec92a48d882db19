"""The Braze REST client: the only module that does I/O.

It knows Braze's wire objects and nothing about Antavo or the mapping. One pooled
``requests.Session``; up to ``max_in_flight`` requests at once, never two touching the same
``external_id`` (Braze does not order separate requests); proactive pacing; retries.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import queue
import random
import re
import threading
import time
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
from ._ratelimit import InProcessPacer, Pacer
from ._retry import RetryPolicy, backoff_delay, is_retryable_status, retry_after_seconds
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
    for a rate budget shared between processes.
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
        pool_kwargs: dict[str, Any] = {"timeout": urllib3.Timeout(connect=timeout, read=timeout)}
        if self.endpoint.startswith("https://"):
            pool_kwargs.update(cert_reqs="CERT_REQUIRED", ca_certs=DEFAULT_CA_BUNDLE_PATH)
        self._pool = adapter.poolmanager.connection_from_url(self.endpoint, pool_kwargs=pool_kwargs)
        self._base_path = urlsplit(self.endpoint).path
        self._executor: ThreadPoolExecutor | None = None
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
        """Release the worker threads and pooled connections."""
        with self._executor_lock:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None
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
        policy = self.retry
        attempt = 0
        while True:
            attempt += 1
            self.pacer.acquire()
            with self._stats_lock:
                self.requests_sent += 1
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
                reason = self._key.redact(f"{type(exc).__name__}: {exc}")
                if attempt >= policy.attempts:
                    raise TransportError(
                        f"{method} {path} failed after {attempt} attempt(s): {reason}"
                    ) from None
                delay = backoff_delay(policy, attempt, self._jitter())
                log.warning("%s %s: %s; retry %d in %.2fs", method, path, reason, attempt, delay)
                self._sleep(delay)
                continue
            status = response.status_code
            self.pacer.observe(status, response.headers)
            if status < 300:
                return response
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
            self._sleep(delay)

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

    def _executor_for_sends(self) -> ThreadPoolExecutor:
        with self._executor_lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    max_workers=self.max_in_flight, thread_name_prefix="antavo-braze"
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
        ``external_id`` that an in-flight batch touches waits for it.
        """
        if self.max_in_flight == 1:
            for batch in batches:
                yield self.send_batch(batch)
            return
        executor = self._executor_for_sends()
        in_flight: dict[Future[BatchOutcome], Batch] = {}
        # Finished futures arrive here (cheaper than concurrent.futures.wait over all of them).
        finished: queue.SimpleQueue[Future[BatchOutcome]] = queue.SimpleQueue()
        busy: set[str] = set()
        source = iter(batches)
        waiting: Batch | None = None
        exhausted = False
        try:
            while True:
                while len(in_flight) < self.max_in_flight:
                    if waiting is None:
                        if exhausted:
                            break
                        waiting = next(source, None)
                        if waiting is None:
                            exhausted = True
                            break
                    if not busy.isdisjoint(waiting.external_ids):
                        break  # same profile in flight: wait for it
                    future = executor.submit(self.send_batch, waiting)
                    in_flight[future] = waiting
                    future.add_done_callback(finished.put)
                    busy |= waiting.external_ids
                    waiting = None
                if not in_flight:
                    return
                done = finished.get()
                busy -= in_flight.pop(done).external_ids
                yield done.result()
        finally:
            for future in in_flight:
                future.cancel()

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
