"""FakeBraze: a real HTTP server on loopback that behaves like Braze's REST API.

It validates ``/users/track`` as Braze does, keeps profiles, events and purchases as plain data,
serves the custom-event read endpoints, sends rate-limit headers, and injects faults on demand.
"""

from __future__ import annotations

import base64
import contextlib
import math
import random
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta, timezone
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

from attrs import field, frozen

from .._client import PERMISSIONS, BrazeClient
from .._http.retry import RetryPolicy
from .._json import dumps, loads
from ._beyond import Beyond
from ._serving import BackgroundServer, QuietServer

__all__ = ["FakeBraze", "Fault", "RecordedRequest"]

_PRIMARY_IDS = ("external_id", "user_alias", "braze_id")
_SECONDARY_IDS = ("email", "phone")
_CONTROL_KEYS = frozenset(
    {*_PRIMARY_IDS, *_SECONDARY_IDS, "_update_existing_only", "_merge_objects", "app_id"}
)
_EVENT_RESERVED = frozenset({"time", "event_name"})
_PURCHASE_RESERVED = frozenset(
    {"time", "product_id", "quantity", "event_name", "price", "currency"}
)
_MAX_STRING = 255
_MAX_ARRAY = 500
_MAX_NESTED_BYTES = 100 * 1024
_UTC = timezone.utc


@frozen
class RecordedRequest:
    """A request FakeBraze received (the Authorization header is not kept)."""

    method: str
    path: str
    query: Mapping[str, str]
    body: Any
    status: int
    key_valid: bool
    user_agent: str | None = None

    def __getitem__(self, key: str) -> Any:
        # Plain-data access too: request["body"] is request.body.
        if key not in _RECORDED_FIELDS:
            raise KeyError(key)
        return getattr(self, key)


_RECORDED_FIELDS = frozenset(
    {"method", "path", "query", "body", "status", "key_valid", "user_agent"}
)


@frozen
class Fault:
    """What to do to a coming request instead of (or before) answering it normally."""

    status: int | None = None
    headers: Mapping[str, str] = field(factory=dict)
    body: Any = None  # JSON-ready data, or bytes sent as they are
    drop: bool = False
    delay: float = 0.0
    path: str | None = None


class _InvalidError(Exception):
    pass


_UNPARSED: Any = object()


def _loads_or_unparsed(raw: bytes) -> Any:
    try:
        return loads(raw)
    except ValueError:
        return _UNPARSED


def _parse_time(value: Any) -> datetime:
    if not isinstance(value, str) or not value:
        raise _InvalidError("time must be an ISO 8601 string")
    text = value.strip().replace("Z", "+00:00").replace("z", "+00:00")
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise _InvalidError(f"invalid time {value!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=_UTC)
    if not 0 < moment.year <= 3000:
        raise _InvalidError(f"time {value!r} is out of range")
    return moment.astimezone(_UTC)


def _check_identifiers(obj: dict[str, Any]) -> str:
    primaries = [k for k in _PRIMARY_IDS if k in obj]
    if len(primaries) > 1:
        raise _InvalidError("more than one primary identifier")
    if not primaries and not any(k in obj for k in _SECONDARY_IDS):
        raise _InvalidError(
            "missing identifier (external_id, user_alias, braze_id, email or phone)"
        )
    if "external_id" in obj:
        external_id = obj["external_id"]
        if not isinstance(external_id, str) or not external_id:
            raise _InvalidError("external_id must be a non-empty string")
        if len(external_id.encode()) > 987:
            raise _InvalidError("EXTERNAL_USER_ID_TOO_LARGE")
        return external_id
    if "user_alias" in obj:
        alias = obj["user_alias"]
        if not isinstance(alias, dict) or set(alias) != {"alias_name", "alias_label"}:
            raise _InvalidError("user_alias needs alias_name and alias_label")
        return f"alias:{alias['alias_label']}:{alias['alias_name']}"
    if "braze_id" in obj:
        return f"braze:{obj['braze_id']}"
    return f"{'email' if 'email' in obj else 'phone'}:{obj.get('email') or obj.get('phone')}"


def _check_key(key: Any, where: str) -> None:
    if not isinstance(key, str) or not key:
        raise _InvalidError(f"{where}: keys must be non-empty strings")
    if len(key) > _MAX_STRING:
        raise _InvalidError(f"{where}: key longer than 255 characters")


def _check_scalar_string(value: str, where: str) -> None:
    if len(value) > _MAX_STRING:
        raise _InvalidError(f"{where}: string longer than 255 characters")


def _check_nested(value: Any, where: str, depth: int = 0) -> None:
    if depth > 50:
        raise _InvalidError(f"{where}: nested too deep")
    if value is None:
        raise _InvalidError(f"{where}: null inside a nested attribute")
    if isinstance(value, str):
        _check_scalar_string(value, where)
    elif isinstance(value, dict):
        if set(value) == {"$time"}:
            _parse_time(value["$time"])
            return
        for key, item in value.items():
            _check_key(key, where)
            if key.startswith("$") or "." in key:
                raise _InvalidError(f"{where}: nested keys cannot start with '$' or contain '.'")
            _check_nested(item, f"{where}.{key}", depth + 1)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_nested(item, f"{where}[{index}]", depth + 1)
    elif isinstance(value, float) and not math.isfinite(value):
        raise _InvalidError(f"{where}: not a finite number")


def _size(value: Any) -> int:
    return len(dumps(value))


def _check_attribute(name: str, value: Any) -> None:
    _check_key(name, "attribute")
    if name.startswith("$"):
        raise _InvalidError(f"attribute {name!r}: names cannot start with '$'")
    if value is None or isinstance(value, (bool, int)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _InvalidError(f"attribute {name!r}: not a finite number")
        return
    if isinstance(value, str):
        _check_scalar_string(value, f"attribute {name!r}")
        return
    if isinstance(value, list):
        if all(isinstance(v, dict) for v in value) and value:
            for index, item in enumerate(value):
                _check_nested(item, f"attribute {name!r}[{index}]")
        else:
            for item in value:
                if isinstance(item, (dict, list)) or item is None:
                    raise _InvalidError(f"attribute {name!r}: arrays hold scalars only")
                if isinstance(item, str):
                    _check_scalar_string(item, f"attribute {name!r}")
            if len(value) != len({(type(v) is bool, v) for v in value}):
                raise _InvalidError(f"attribute {name!r}: array values must be unique")
            if len(value) > _MAX_ARRAY:
                raise _InvalidError(f"attribute {name!r}: more than {_MAX_ARRAY} items")
        if _size(value) > _MAX_NESTED_BYTES:
            raise _InvalidError(f"attribute {name!r}: over 100 KB")
        return
    if isinstance(value, dict):
        ops = set(value)
        if ops and ops <= {"add", "remove"}:
            for op in ops:
                if not isinstance(value[op], list):
                    raise _InvalidError(f"attribute {name!r}: '{op}' takes a list")
            return
        if ops == {"inc"}:
            if not isinstance(value["inc"], int) or isinstance(value["inc"], bool):
                raise _InvalidError(f"attribute {name!r}: 'inc' takes an integer")
            return
        if ops and ops <= {"$add", "$remove", "$update"}:
            for op in ops:
                if not isinstance(value[op], list):
                    raise _InvalidError(f"attribute {name!r}: '{op}' takes a list")
            for item in value.get("$add", []):
                _check_nested(item, f"attribute {name!r}.$add")
            for item in value.get("$remove", []) + value.get("$update", []):
                if not isinstance(item, dict) or "$identifier_key" not in item:
                    raise _InvalidError(f"attribute {name!r}: operator items need $identifier_key")
            return
        if set(value) == {"$time"}:
            _parse_time(value["$time"])
            return
        _check_nested(value, f"attribute {name!r}")
        if _size(value) > _MAX_NESTED_BYTES:
            raise _InvalidError(f"attribute {name!r}: over 100 KB")
        return
    raise _InvalidError(
        f"attribute {name!r}: unsupported value"
    )  # pragma: no cover - JSON has no more


def _check_properties(value: Any, reserved: frozenset[str], limit: int) -> None:
    if value is None:
        return
    if not isinstance(value, dict):
        raise _InvalidError("Invalid 'properties' field: must be an object")
    for key, item in value.items():
        _check_key(key, "properties")
        if key.startswith("$") or key in reserved:
            raise _InvalidError(
                f"Invalid 'properties' field: {key!r} is reserved or starts with '$'"
            )
        if isinstance(item, str):
            _check_scalar_string(item, f"property {key!r}")
    if _size(value) > limit:
        raise _InvalidError("Invalid 'properties' field: too large")


def _check_event(obj: dict[str, Any]) -> None:
    name = obj.get("name")
    if not isinstance(name, str) or not name or len(name) > _MAX_STRING or name.startswith("$"):
        raise _InvalidError("invalid event name")
    _parse_time(obj.get("time"))
    _check_properties(obj.get("properties"), _EVENT_RESERVED, _MAX_NESTED_BYTES)
    if "app_id" in obj and not isinstance(obj["app_id"], str):
        raise _InvalidError("app_id must be a string")


def _check_purchase(obj: dict[str, Any]) -> None:
    product_id = obj.get("product_id")
    if not isinstance(product_id, str) or not product_id or len(product_id) > _MAX_STRING:
        raise _InvalidError("invalid product_id")
    currency = obj.get("currency")
    if not isinstance(currency, str) or len(currency) != 3 or not currency.isalpha():
        raise _InvalidError("invalid currency")
    price = obj.get("price")
    if isinstance(price, bool) or not isinstance(price, (int, float)) or not math.isfinite(price):
        raise _InvalidError("invalid price")
    quantity = obj.get("quantity", 1)
    if isinstance(quantity, bool) or not isinstance(quantity, int) or not 1 <= quantity <= 100:
        raise _InvalidError("quantity must be an integer from 1 to 100")
    _parse_time(obj.get("time"))
    _check_properties(obj.get("properties"), _PURCHASE_RESERVED, 50 * 1024)


def _deep_merge(target: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(target)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and set(value) != {"$time"}:
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _apply_attribute(profile: dict[str, Any], name: str, value: Any, merge: bool) -> None:
    if value is None:
        profile.pop(name, None)
        return
    current = profile.get(name)
    if isinstance(value, dict):
        ops = set(value)
        if ops and ops <= {"add", "remove"}:
            items = (
                [v for v in current if v not in value.get("remove", [])]
                if isinstance(current, list)
                else []
            )
            for item in value.get("add", []):
                if item in items:
                    items.remove(item)  # an existing value moves to the end
                items.append(item)
            profile[name] = items[-_MAX_ARRAY:]
            return
        if ops == {"inc"}:
            profile[name] = (current if isinstance(current, int) else 0) + value["inc"]
            return
        if ops and ops <= {"$add", "$remove", "$update"}:
            objects = list(current) if isinstance(current, list) else []
            objects.extend(value.get("$add", []))  # Braze's order: $add, $remove, $update
            for rule in value.get("$remove", []):
                key, match = rule["$identifier_key"], rule.get("$identifier_value")
                objects = [o for o in objects if o.get(key) != match]
            for rule in value.get("$update", []):
                key, match = rule["$identifier_key"], rule.get("$identifier_value")
                new = rule.get("$new_object", {})
                objects = [
                    (_deep_merge(o, new) if merge else {**new, key: match})
                    if o.get(key) == match
                    else o
                    for o in objects
                ]
            if _size(objects) <= _MAX_NESTED_BYTES:  # over the limit: dropped, still "success"
                profile[name] = objects
            return
        if merge and isinstance(current, dict) and set(value) != {"$time"}:
            profile[name] = _deep_merge(current, value)
            return
    profile[name] = value


_REASONS = {status.value: status.phrase for status in HTTPStatus}


class _Exchange:
    """One request being answered: what came in, and the parsed body of a track request."""

    __slots__ = ("body", "handler", "key", "key_valid", "method", "path", "query", "raw")

    def __init__(
        self,
        *,
        handler: _Handler,
        method: str,
        path: str,
        query: dict[str, str],
        raw: bytes,
        key: str | None,
        key_valid: bool,
    ) -> None:
        self.handler = handler
        self.method = method
        self.path = path
        self.query = query
        self.raw = raw
        self.key = key
        self.key_valid = key_valid
        self.body: Any = _UNPARSED


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: without this, Nagle's algorithm and the
    # client's delayed ACK add ~40 ms to every keep-alive response.
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: tests read fake.requests instead

    def setup(self) -> None:
        super().setup()
        with self.server.fake._lock:
            self.server.fake.connections += 1
            self.server.fake._idle_handlers.add(self)  # idle until a request line arrives

    def finish(self) -> None:
        with self.server.fake._lock:
            self.server.fake._idle_handlers.discard(self)
        super().finish()

    def parse_request(self) -> bool:
        """The standard library parses the request line and headers (HTTP framing is never
        ours); a handler that has a request is no longer idle."""
        with self.server.fake._lock:
            self.server.fake._idle_handlers.discard(self)
        return super().parse_request()

    def do_GET(self) -> None:
        self.server.fake._handle(self, "GET")

    def do_POST(self) -> None:
        self.server.fake._handle(self, "POST")


class _Server(QuietServer):
    request_queue_size = 256


class FakeBraze(BackgroundServer):
    """An in-process Braze look-alike on ``127.0.0.1`` (random port), for tests and demos.

    Use it as a context manager; ``url``, ``api_key`` and :meth:`client` connect to it. What it
    holds is plain data: ``profiles``, ``events``, ``purchases``, ``requests``.

    Options: ``batch_mode`` (``"combined"``: 75 objects per request; ``"legacy"``: 75 per array),
    ``rate_limit`` requests per ``rate_window`` seconds on ``/users/track`` (``reset_style``
    ``"epoch"`` or ``"seconds"`` for ``X-RateLimit-Reset``), ``latency`` seconds before every
    answer, ``prefix`` (serve under a path such as ``/braze``), ``record`` (keep requests, events
    and profiles) and ``validate`` (check every object); turn the last two off for load tests.
    ``ssl_context`` (a server-side :class:`ssl.SSLContext`) serves https instead of http.
    ``identity_delay``: seconds before a merge or delete is applied (Braze queues them);
    ``export_rate_limit``: ``/users/export/ids`` requests per second before 429s;
    ``identity_rate_limit``: ``/users/merge`` and ``/users/delete`` requests (together) per
    ``identity_rate_window`` seconds (60: Braze's is 20,000 a minute) before 429s. Custom
    attribute types are fixed by their first value (``attribute_types``; a later value of
    another type is ignored with a success answer, as Braze does).
    ``connections`` counts the connections accepted.
    """

    def __init__(
        self,
        api_key: str = "test-key",
        *,
        permissions: Iterable[str] = PERMISSIONS,
        batch_mode: str = "combined",
        rate_limit: int | None = None,
        rate_window: float = 1.0,
        reset_style: str = "epoch",
        latency: float = 0.0,
        prefix: str = "",
        record: bool = True,
        validate: bool = True,
        max_body_bytes: int = 4_000_000,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Callable[[], float] = time.time,
        ssl_context: ssl.SSLContext | None = None,
        identity_delay: float = 0.0,
        export_rate_limit: int | None = None,
        identity_rate_limit: int | None = None,
        identity_rate_window: float = 60.0,
    ) -> None:
        self.api_key = api_key
        self._keys: dict[str, frozenset[str]] = {api_key: frozenset(permissions)}
        self.batch_mode = batch_mode
        self.rate_limit = rate_limit
        self.rate_window = rate_window
        self.reset_style = reset_style
        self.latency = latency
        self.prefix = prefix.rstrip("/")
        self.record = record
        self.validate = validate
        self.max_body_bytes = max_body_bytes
        self._host, self._port = host, port
        self._clock = clock
        self._ssl_context = ssl_context
        self._idle_handlers: set[_Handler] = set()
        self.connections = 0
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._fault_rate = 0.0
        self._fault_status = 503
        self._random = random.Random(0)
        self._window: tuple[int, int] = (-1, 0)  # (window number, requests counted in it)
        self._blocked: set[str] = set()
        self.profiles: dict[str, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self.purchases: list[dict[str, Any]] = []
        self.requests: list[RecordedRequest] = []
        self.event_names: set[str] = set()
        self.status_counts: Counter[int] = Counter()
        self.objects_received = 0
        self.overlapping_requests = 0  # track requests that touched a profile already in flight
        self._in_flight_ids: dict[str, int] = {}
        # Schema, export, merge and delete (testing/_beyond.py).
        self.beyond = Beyond(
            self,
            identity_delay=identity_delay,
            export_rate_limit=export_rate_limit,
            identity_rate_limit=identity_rate_limit,
            identity_rate_window=identity_rate_window,
        )

    # --- lifecycle -------------------------------------------------------------------------

    def _make_server(self) -> QuietServer:
        server = _Server((self._host, self._port), _Handler)
        if self._ssl_context is not None:
            server.socket = self._ssl_context.wrap_socket(server.socket, server_side=True)
        return server

    def __repr__(self) -> str:
        return (
            f"FakeBraze(url={self.url if self._server else None!r}, profiles={len(self.profiles)})"
        )

    @property
    def url(self) -> str:
        """The base URL to use as the Braze REST endpoint."""
        if self._server is None:
            raise RuntimeError("FakeBraze is not running; use it as a context manager")
        port = self._server.server_address[1]
        scheme = "http" if self._ssl_context is None else "https"
        return f"{scheme}://{self._host}:{port}{self.prefix}"

    def client(self, **kwargs: Any) -> BrazeClient:
        """A :class:`BrazeClient` wired to this server (fast retries unless ``retry`` is given)."""
        kwargs.setdefault("retry", RetryPolicy(wait_initial=0.001, wait_max=0.01, wait_jitter=0.0))
        api_key = kwargs.pop("api_key", self.api_key)
        return BrazeClient(self.url, api_key, **kwargs)

    def close_idle_connections(self) -> None:
        """Close every keep-alive connection waiting for its next request, as servers do after
        an idle timeout (clients must then reconnect)."""
        with self._lock:
            idle = list(self._idle_handlers)
        for handler in idle:
            with contextlib.suppress(OSError):
                handler.connection.shutdown(socket.SHUT_RDWR)

    # --- configuration and fault injection -------------------------------------------------

    @property
    def attribute_types(self) -> dict[str, str]:
        """Custom attribute name -> Braze ``data_type`` (``"Number"``, ``"Time"``, ...), as
        fixed by the first value written."""
        with self._lock:
            return dict(self.beyond.types)

    def set_attribute(self, name: str, data_type: str, status: str = "Active") -> None:
        """Declare custom attribute ``name`` as Braze would hold it (``status``
        ``"Blocklisted"``: Braze keeps none of its values)."""
        with self._lock:
            self.beyond.types[name] = data_type
            self.beyond.status[name] = status

    def add_key(self, api_key: str, permissions: Iterable[str] = PERMISSIONS) -> None:
        """Accept another key, with only the given permissions."""
        with self._lock:
            self._keys[api_key] = frozenset(permissions)

    def inject(self, times: int = 1, **fault: Any) -> None:
        """Apply a :class:`Fault` (``status``, ``headers``, ``body``, ``drop``, ``delay``,
        ``path``) to the next ``times`` matching requests."""
        with self._lock:
            self._faults.extend(Fault(**fault) for _ in range(times))

    def fail_randomly(self, rate: float, status: int = 503, seed: int = 0) -> None:
        """Answer ``rate`` of ``/users/track`` requests with ``status`` (0 turns it off)."""
        with self._lock:
            self._fault_rate, self._fault_status = rate, status
            self._random = random.Random(seed)

    def block(self, external_id: str) -> None:
        """Reject objects for ``external_id`` (Braze's blocklisted "dummy user" error)."""
        with self._lock:
            self._blocked.add(external_id)

    def reset(self) -> None:
        """Forget everything the server learned or was told since it started: profiles,
        events, purchases, event names (``/events/list``), recorded requests, status counts,
        object, connection and overlap counters, the rate-limit window, pending and random
        faults and blocked ids. Kept: the API keys and the construction settings (latency,
        rate limit, batch mode); the listening socket stays open."""
        with self._lock:
            self.profiles.clear()
            self.events.clear()
            self.purchases.clear()
            self.requests.clear()
            self.event_names.clear()
            self._faults.clear()
            self._fault_rate = 0.0
            self._random = random.Random(0)
            self._blocked.clear()
            self._window = (-1, 0)
            self.status_counts.clear()
            self.objects_received = 0
            self.connections = 0
            self.overlapping_requests = 0
            self._in_flight_ids.clear()
            self.beyond.reset()

    # --- request handling ------------------------------------------------------------------

    def _take_fault(self, path: str) -> Fault | None:
        with self._lock:
            for index, fault in enumerate(self._faults):
                if fault.path is None or fault.path == path:
                    return self._faults.pop(index)
            if (
                self._fault_rate
                and path == "/users/track"
                and (self._random.random() < self._fault_rate)
            ):
                return Fault(status=self._fault_status, body={"message": "Service Unavailable"})
        return None

    def _rate_headers(self) -> tuple[bool, dict[str, str]]:
        if self.rate_limit is None:
            return True, {}
        now = self._clock()
        number = math.floor(now / self.rate_window)
        window_end = (number + 1) * self.rate_window
        with self._lock:
            current, count = self._window
            if current != number:
                count = 0
            count += 1
            self._window = (number, count)
        wait = max(1, math.ceil(window_end - now))
        if count > self.rate_limit:
            return False, {"Retry-After": str(wait), "X-Ratelimit-Retry-After": str(wait)}
        reset = str(math.ceil(window_end)) if self.reset_style == "epoch" else str(wait)
        return True, {
            "X-RateLimit-Limit": str(self.rate_limit),
            "X-RateLimit-Remaining": str(self.rate_limit - count),
            "X-RateLimit-Reset": reset,
        }

    def _handle(self, handler: _Handler, method: str) -> None:
        parts = urlsplit(handler.path)
        length = int(handler.headers.get("Content-Length") or 0)
        auth = handler.headers.get("Authorization") or ""
        key = auth[7:] if auth.startswith("Bearer ") else None
        ex = _Exchange(
            handler=handler,
            method=method,
            path=parts.path,
            query={k: v[0] for k, v in parse_qs(parts.query).items()},
            raw=handler.rfile.read(length) if length else b"",
            key=key,
            key_valid=key is not None and key in self._keys,
        )
        if self.prefix:
            if not ex.path.startswith(self.prefix + "/"):
                self._reply(ex, 404, {"message": "Not Found"})
                return
            ex.path = ex.path[len(self.prefix) :]
        fault = self._take_fault(ex.path)
        if fault is not None and fault.delay:
            time.sleep(fault.delay)
        if fault is not None and fault.drop:
            self._record(ex, 0)
            handler.close_connection = True
            with contextlib.suppress(OSError):  # already closed by the peer
                handler.connection.shutdown(socket.SHUT_RDWR)
            return
        ids: set[str] = set()
        if ex.path == "/users/track" and method == "POST":
            ex.body = _loads_or_unparsed(ex.raw)
            ids = self._claim(ex.body)
        try:
            self._respond(ex, fault)
        finally:
            self._release(ids)

    def _claim(self, body: Any) -> set[str]:
        """Note which profiles this request touches, counting overlaps with requests in flight."""
        ids: set[str] = set()
        if body.__class__ is dict:
            for objects in body.values():
                if objects.__class__ is list:
                    ids.update(
                        [
                            external_id
                            for obj in objects
                            if obj.__class__ is dict
                            and (external_id := obj.get("external_id")).__class__ is str
                        ]
                    )
        with self._lock:
            overlap = ids & self._in_flight_ids.keys()
            self.overlapping_requests += bool(overlap)
            for external_id in ids:
                self._in_flight_ids[external_id] = self._in_flight_ids.get(external_id, 0) + 1
        return ids

    def _release(self, ids: set[str]) -> None:
        with self._lock:
            for external_id in ids:
                left = self._in_flight_ids[external_id] - 1
                if left:
                    self._in_flight_ids[external_id] = left
                else:
                    del self._in_flight_ids[external_id]

    def _respond(self, ex: _Exchange, fault: Fault | None) -> None:
        if self.latency:
            time.sleep(self.latency)
        if fault is not None and fault.status is not None:
            default = "success" if 200 <= fault.status < 300 else "injected fault"
            payload = fault.body if fault.body is not None else {"message": default}
            self._reply(ex, fault.status, payload, dict(fault.headers))
            return
        if not ex.key_valid:
            # Braze echoes the key it did not recognise; the client must redact it.
            self._reply(ex, 401, {"message": f"Invalid API key: {ex.key}"})
            return
        route = {
            ("POST", "/users/track"): ("users.track", self._track),
            ("GET", "/events/list"): ("events.list", self._events_list),
            ("GET", "/events"): ("events.get", self._events_get),
            ("GET", "/events/data_series"): ("events.data_series", self._data_series),
            **self.beyond.routes(),
        }.get((ex.method, ex.path))
        if route is None:
            self._reply(ex, 404, {"message": "Not Found"})
            return
        permission, action = route
        assert ex.key is not None
        if permission not in self._keys[ex.key]:
            self._reply(ex, 403, {"message": "Access Denied"})
            return
        headers: dict[str, str] = {}
        if permission == "users.track":
            allowed, headers = self._rate_headers()
            if not allowed:
                self._reply(ex, 429, {"message": "Rate Limited"}, headers)
                return
        status, payload, extra, recorded = action(ex)
        headers.update(extra)
        self._reply(ex, status, payload, headers, recorded)

    def _record(self, ex: _Exchange, status: int, recorded: Any = None) -> None:
        with self._lock:
            self.status_counts[status] += 1
            if self.record:
                self.requests.append(
                    RecordedRequest(
                        ex.method,
                        ex.path,
                        ex.query,
                        recorded,
                        status,
                        ex.key_valid,
                        ex.handler.headers.get("User-Agent"),
                    )
                )

    def _reply(
        self,
        ex: _Exchange,
        status: int,
        payload: Any,
        headers: Mapping[str, str] | None = None,
        recorded: Any = None,
    ) -> None:
        self._record(ex, status, recorded)
        data = payload if isinstance(payload, bytes) else dumps(payload)
        handler = ex.handler
        lines = [
            f"HTTP/1.1 {status} {_REASONS.get(status, '')}",
            f"Server: {handler.version_string()}",
            f"Date: {handler.date_time_string()}",
            "Content-Type: application/json",
            f"Content-Length: {len(data)}",
        ]
        for name, value in (headers or {}).items():
            lines.append(f"{name}: {value}")
            if name.lower() == "connection" and value.lower() == "close":
                handler.close_connection = True
        if not handler.close_connection:
            with self._lock:  # idle before the client can have the answer and act on it
                self._idle_handlers.add(handler)
        # One write: status line, headers and body leave in the same segment.
        handler.wfile.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + data)

    # --- /users/track ----------------------------------------------------------------------

    def _track(self, ex: _Exchange) -> tuple[int, Any, dict[str, str], Any]:
        raw, handler, body = ex.raw, ex.handler, ex.body
        if len(raw) > self.max_body_bytes:
            return 413, {"message": "Request Entity Too Large"}, {}, None
        if "application/json" not in (handler.headers.get("Content-Type") or ""):
            return 415, {"message": "Unsupported Media Type"}, {}, None
        if body is _UNPARSED:
            return 400, {"message": "Invalid JSON: syntax or parse error"}, {}, None
        if not isinstance(body, dict) or set(body) - {"attributes", "events", "purchases"}:
            return 400, {"message": "Invalid request body"}, {}, body
        arrays = {name: body.get(name, []) for name in ("attributes", "events", "purchases")}
        if not all(isinstance(a, list) for a in arrays.values()):
            return 400, {"message": "attributes, events and purchases must be arrays"}, {}, body
        counts = [len(a) for a in arrays.values()]
        too_many = sum(counts) > 75 if self.batch_mode == "combined" else max(counts) > 75
        if too_many:
            return 400, {"message": "Max Input Length Exceeded"}, {}, body
        if not self.validate:
            with self._lock:
                self.objects_received += sum(counts)
            return 201, {"message": "success"}, {}, body if self.record else None
        errors: list[dict[str, Any]] = []
        accepted: dict[str, list[dict[str, Any]]] = {name: [] for name in arrays}
        checks = {
            "attributes": self._check_attributes_object,
            "events": _check_event,
            "purchases": _check_purchase,
        }
        for name, objects in arrays.items():
            for index, obj in enumerate(objects):
                try:
                    if not isinstance(obj, dict):
                        raise _InvalidError("objects must be JSON objects")
                    profile_id = _check_identifiers(obj)
                    if profile_id in self._blocked:
                        raise _InvalidError("BLACKLISTED_EXTERNAL_USER_ID")
                    checks[name](obj)
                except _InvalidError as exc:
                    errors.append({"type": str(exc), "input_array": name, "index": index})
                else:
                    accepted[name].append(obj)
        self._store(accepted)
        payload: dict[str, Any] = {"message": "success"}
        for name, key in (
            ("attributes", "attributes_processed"),
            ("events", "events_processed"),
            ("purchases", "purchases_processed"),
        ):
            if arrays[name]:
                payload[key] = len(accepted[name])
        if errors:
            payload["errors"] = errors
        return 201, payload, {}, body

    @staticmethod
    def _check_attributes_object(obj: dict[str, Any]) -> None:
        if "_update_existing_only" in obj and not isinstance(obj["_update_existing_only"], bool):
            raise _InvalidError("_update_existing_only must be a boolean")
        for name, value in obj.items():
            if name not in _CONTROL_KEYS:
                _check_attribute(name, value)

    def _store(self, accepted: Mapping[str, list[dict[str, Any]]]) -> None:
        with self._lock:
            self.objects_received += sum(len(v) for v in accepted.values())
            if not self.record:
                return
            # Braze processes attributes, then events, then purchases.
            for obj in accepted["attributes"]:
                profile_id = _check_identifiers(obj)
                exists = profile_id in self.profiles
                if obj.get("_update_existing_only") and not exists:
                    continue
                profile = self.profiles.setdefault(profile_id, {})
                merge = obj.get("_merge_objects") is True
                for name, value in obj.items():
                    if (
                        name not in _CONTROL_KEYS
                        or (name in _SECONDARY_IDS and ("external_id" in obj))
                    ) and self.beyond.keeps(name, value):
                        _apply_attribute(profile, name, value, merge)
            for name in ("events", "purchases"):
                for obj in accepted[name]:
                    profile_id = _check_identifiers(obj)
                    if obj.get("_update_existing_only") and profile_id not in self.profiles:
                        continue
                    self.profiles.setdefault(profile_id, {})
                    record = dict(obj)
                    record["time"] = (
                        min(_parse_time(obj["time"]), datetime.now(_UTC))
                        .isoformat()
                        .replace("+00:00", "Z")
                    )
                    if name == "events":
                        self.event_names.add(obj["name"])
                        self.events.append(record)
                    else:
                        self.purchases.append(record)

    # --- read endpoints --------------------------------------------------------------------

    def _sorted_event_names(self) -> list[str]:
        with self._lock:
            return sorted(self.event_names)

    def _events_list(self, ex: _Exchange) -> tuple[int, Any, dict[str, str], Any]:
        query = ex.query
        try:
            page = int(query.get("page", "0"))
        except ValueError:
            return 400, {"message": "page must be an integer"}, {}, None
        names = self._sorted_event_names()[page * 250 : (page + 1) * 250]
        return 200, {"message": "success", "events": names}, {}, None

    def _events_get(self, ex: _Exchange) -> tuple[int, Any, dict[str, str], Any]:
        query = ex.query
        names = self._sorted_event_names()
        try:
            start = (
                int(base64.urlsafe_b64decode(query["cursor"]).decode()) if "cursor" in query else 0
            )
        except (ValueError, UnicodeDecodeError):
            return 400, {"message": "invalid cursor"}, {}, None
        page = names[start : start + 50]
        events: list[dict[str, Any]] = [
            {
                "name": n,
                "description": None,
                "included_in_analytics_report": False,
                "status": "Active",
                "tag_names": [],
            }
            for n in page
        ]
        headers = {}
        links = []
        if start > 0:
            links.append(
                f'<{self.url}/events?cursor={self._cursor(max(0, start - 50))}>; rel="prev"'
            )
        if start + 50 < len(names):
            links.append(f'<{self.url}/events?cursor={self._cursor(start + 50)}>; rel="next"')
        if links:
            headers["Link"] = ",".join(links)
        return 200, {"message": "success", "events": events}, headers, None

    @staticmethod
    def _cursor(offset: int) -> str:
        return base64.urlsafe_b64encode(str(offset).encode()).decode()

    def _data_series(self, ex: _Exchange) -> tuple[int, Any, dict[str, str], Any]:
        query = ex.query
        try:
            name = query["event"]
            length = int(query["length"])
            unit = query.get("unit", "day")
            ending = _parse_time(query["ending_at"]) if "ending_at" in query else datetime.now(_UTC)
        except (KeyError, ValueError, _InvalidError) as exc:
            return 400, {"message": f"invalid parameters: {exc}"}, {}, None
        if unit not in ("day", "hour") or not 1 <= length <= 100:
            return 400, {"message": "unit must be day or hour; length 1-100"}, {}, None
        step = timedelta(days=1) if unit == "day" else timedelta(hours=1)
        if unit == "day":
            last = ending.replace(hour=0, minute=0, second=0, microsecond=0)
        else:
            last = ending.replace(minute=0, second=0, microsecond=0)
        starts = [last - step * i for i in reversed(range(length))]
        with self._lock:
            times = [_parse_time(e["time"]) for e in self.events if e["name"] == name]
        data = []
        for start in starts:
            count = sum(1 for t in times if start <= t < start + step)
            label = (
                start.date().isoformat()
                if unit == "day"
                else start.isoformat().replace("+00:00", "Z")
            )
            data.append({"time": label, "count": count})
        return 200, {"message": "success", "data": data}, {}, None
