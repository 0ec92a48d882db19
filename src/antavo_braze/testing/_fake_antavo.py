"""FakeAntavo: a real HTTP server that reads like Antavo's REST API, for tests and demos.

It verifies every request's Escher signature the way Antavo does, with a verifier written
here from the published algorithm (reference ``antavo-api.md`` section 2.2), independent of
the escherauth signer the client uses: a mistake on either side shows up as a 401. It serves
``GET /customers/{id}``, ``GET /customers?updated_at.gt=`` and ``GET /customers/-/events``
with their filters and offset paging, answers 429 beyond a chosen rate, and injects faults.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import itertools
import json
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from datetime import date, datetime, timezone
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from attrs import frozen

from .._antavo.client import AntavoClient
from .._http.retry import RetryPolicy
from ._serving import BackgroundServer, QuietServer

__all__ = ["AntavoFault", "FakeAntavo", "RecordedAntavoRequest", "verify_signature"]

ALGORITHM = "ANTAVO-HMAC-SHA256"
_AUTH = re.compile(
    r"^ANTAVO-HMAC-SHA256 Credential=([A-Za-z0-9/\-_ ]+), ?SignedHeaders=([a-z0-9\-;]+), ?"
    r"Signature=([0-9a-f]{64})$"
)
_DOTS = re.compile(r"([^/]+/\.\./?|/\./|//|/\.$|/\.\.$)")
_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


@frozen
class RecordedAntavoRequest:
    """One request FakeAntavo received: method, raw ``target`` (path and query), headers
    (names as sent), and the status it answered."""

    method: str
    target: str
    headers: tuple[tuple[str, str], ...]
    status: int

    @property
    def path(self) -> str:
        """The path, without the query."""
        return self.target.split("?", 1)[0]

    @property
    def query(self) -> dict[str, str]:
        """The query parameters, decoded."""
        return dict(parse_qsl(urlsplit(self.target).query, keep_blank_values=True))


@frozen
class AntavoFault:
    """An injected answer: ``status`` with ``body`` (JSON-ready data, or bytes sent as they
    are; ``None``: Antavo's error envelope), or
    ``drop`` the connection without an answer; for ``count`` requests to paths starting with
    ``path`` (any path when empty)."""

    status: int = 503
    body: Any = None
    drop: bool = False
    count: int = 1
    path: str = ""


def _canonical_query(query: str) -> str:
    pairs = parse_qsl(query.replace(";", "%3b"), keep_blank_values=True)
    encoded = [
        f"{quote(k, safe='!*')}={quote(v, safe='!*')}"
        for k, v in pairs
        if k != "X-Antavo-Signature"
    ]
    return "&".join(sorted(encoded))


def _canonical_path(path: str) -> str:
    changed = 1
    while changed:
        path, changed = _DOTS.subn("/", path, 1)
    return path


def _collapse(value: str) -> str:
    parts = value.split('"')
    for index in range(0, len(parts), 2):
        parts[index] = re.sub(r"\s+", " ", parts[index])
    return '"'.join(parts).strip()


def _request_time(value: str) -> datetime | None:
    for form in ("%Y%m%dT%H%M%SZ", "%a, %d %b %Y %H:%M:%S GMT"):
        with contextlib.suppress(ValueError):
            return datetime.strptime(value, form).replace(tzinfo=timezone.utc)
    return None


def verify_signature(
    method: str,
    target: str,
    headers: Mapping[str, str] | list[tuple[str, str]],
    body: bytes,
    *,
    api_key: str,
    api_secret: str,
    stack: str,
    now: float,
    clock_skew: float = 300.0,
) -> str | None:
    """``None`` when the request carries a valid Antavo signature, else why not.

    Written from the published algorithm: canonical request (method, path, sorted
    re-encoded query, signed headers, body hash), string to sign, the signing key derived
    from ``"ANTAVO" + secret`` over the date and each scope part, and HMAC-SHA256.
    """
    items = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
    by_name: dict[str, list[str]] = {}
    for name, value in items:
        by_name.setdefault(name.lower(), []).append(value)
    auth = by_name.get("authorization")
    if not auth:
        return "the Authorization header is missing"
    match = _AUTH.match(auth[0])
    if match is None:
        return "the Authorization header is not an ANTAVO-HMAC-SHA256 signature"
    credential, signed, signature = match.groups()
    key, _, rest = credential.partition("/")
    short_date, _, scope = rest.partition("/")
    if key != api_key:
        return "unknown API key"
    if scope != f"{stack}/api/antavo_request":
        return f"the credential scope {scope!r} is not {stack}/api/antavo_request"
    signed_names = signed.split(";")
    if "date" not in signed_names or "host" not in signed_names:
        return "the date and host headers must be signed"
    if any(name not in by_name for name in signed_names):
        return "a signed header is missing"
    moment = _request_time(by_name["date"][0])
    if moment is None:
        return "the Date header is not a date"
    if moment.strftime("%Y%m%d") != short_date:
        return "the credential date does not match the request date"
    if abs(moment.timestamp() - now) > clock_skew:
        return "the request date is not within the accepted time range (clock skew)"
    path, _, query = target.partition("?")
    if dict(parse_qsl(query, keep_blank_values=True)).get("api_key") != api_key:
        return "the api_key query parameter is missing or is not the credential's key"
    canonical_headers = "\n".join(
        f"{name}:{','.join(_collapse(v) for v in by_name[name])}" for name in sorted(signed_names)
    )
    canonical = "\n".join(
        [
            method.upper(),
            _canonical_path(path),
            _canonical_query(query),
            canonical_headers,
            "",
            ";".join(sorted(signed_names)),
            hashlib.sha256(body).hexdigest() if body else _EMPTY_SHA256,
        ]
    )
    long_date = moment.strftime("%Y%m%dT%H%M%SZ")
    to_sign = "\n".join(
        [
            ALGORITHM,
            long_date,
            f"{short_date}/{scope}",
            hashlib.sha256(canonical.encode()).hexdigest(),
        ]
    )
    signing_key = hmac.new(("ANTAVO" + api_secret).encode(), short_date.encode(), "sha256").digest()
    for part in scope.split("/"):
        signing_key = hmac.new(signing_key, part.encode(), "sha256").digest()
    expected = hmac.new(signing_key, to_sign.encode(), "sha256").hexdigest()
    if not hmac.compare_digest(expected, signature):
        return "the signatures do not match"
    return None


def _moment(value: Any, what: str) -> datetime:
    """A UTC datetime from unix seconds, a datetime (naive = UTC), a date or an ISO 8601
    string (``Z``, ``+00:00`` or ``+0000``); anything else is a ``ValueError`` naming
    ``what`` (refused when it is added, not when a client reads it)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return datetime.fromtimestamp(value, timezone.utc)
        except (OverflowError, OSError, ValueError):
            pass
    elif isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
        return moment.astimezone(timezone.utc)
    elif isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=timezone.utc)
    elif isinstance(value, str):
        seconds = _epoch(value)
        if seconds is not None:
            return datetime.fromtimestamp(seconds, timezone.utc)
    raise ValueError(
        f"{what}: {value!r} is not a time; give unix seconds, a datetime or an ISO 8601 "
        "string such as '2026-01-01T00:00:00Z'"
    )


def _iso(value: Any, what: str) -> str:
    """An event timestamp as Antavo writes it: ``2026-12-06T09:12:01.000Z``."""
    moment = _moment(value, what)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _unix_seconds(value: Any, what: str) -> int | float:
    """A customer's ``updated_at`` as Antavo returns it: unix seconds (numbers kept)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        _moment(value, what)  # in range
        return value
    moment = _moment(value, what)
    seconds = moment.timestamp()
    return int(seconds) if seconds.is_integer() else seconds


def _epoch(text: str) -> float | None:
    """An ISODate filter value as epoch seconds (``2023-01-05``, ``...T13:28:55``, with
    ``Z``, ``+0000`` or ``+00:00``), else ``None``."""
    value = text.strip()
    if value.endswith("Z"):
        value = value[:-1] + "+00:00"
    value = re.sub(r"([+-]\d{2})(\d{2})$", r"\1:\2", value)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def _error(kind: str, code: int, message: str) -> dict[str, Any]:
    return {"error": {"type": kind, "code": code, "message": message}}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: QuietServer

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: tests read fake.requests

    def do_GET(self) -> None:
        self.server.fake._handle(self)

    def do_POST(self) -> None:
        self.server.fake._handle(self)


class FakeAntavo(BackgroundServer):
    """An in-process Antavo look-alike on ``127.0.0.1`` (random port); a context manager.

    ``add_customer(dict)``, ``update_customer(id, **fields)`` (moves ``updated_at``),
    ``add_event(dict)``; ``client(**kw)`` is an :class:`~antavo_braze.AntavoClient` wired to
    it. ``rate_limit`` requests per ``rate_window`` seconds, then 429 (no headers, as
    Antavo); :meth:`fail_next` injects faults; ``on_request`` (a callable taking the path)
    runs before each answer, e.g. to change data while a client pages through it;
    ``clock_offset`` seconds shift the fake's clock (a skew test). What it received is in
    ``requests``; ``status_counts`` counts its answers by status.
    """

    def __init__(
        self,
        api_key: str = "test-key",
        api_secret: str = "test-secret",
        stack: str = "test",
        *,
        rate_limit: int | None = None,
        rate_window: float = 60.0,
        clock: Callable[[], float] = time.time,
        record: bool = True,
    ) -> None:
        self.api_key = api_key
        self.api_secret = api_secret
        self.stack = stack
        self.rate_limit = rate_limit
        self.rate_window = rate_window
        self.clock_offset = 0.0
        self.record = record
        self.on_request: Callable[[str], None] | None = None
        self._clock = clock
        self._lock = threading.RLock()
        self._faults: list[AntavoFault] = []
        self._window: tuple[int, int] = (-1, 0)
        self._sequence = itertools.count(1)
        self.customers: dict[str, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self.requests: list[RecordedAntavoRequest] = []
        self.status_counts: Counter[int] = Counter()  # answers by status (also unrecorded)

    # --- lifecycle -------------------------------------------------------------------------

    def _make_server(self) -> QuietServer:
        return QuietServer(("127.0.0.1", 0), _Handler)

    def __repr__(self) -> str:
        url = self.url if self._server else None
        return (
            f"FakeAntavo(url={url!r}, customers={len(self.customers)}, events={len(self.events)})"
        )

    @property
    def url(self) -> str:
        """The base URL to use as the Antavo API endpoint."""
        if self._server is None:
            raise RuntimeError("FakeAntavo is not running; use it as a context manager")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def client(self, **kwargs: Any) -> AntavoClient:
        """An :class:`AntavoClient` wired to this server (fast retries, no pacing, no lag
        unless given)."""
        kwargs.setdefault("retry", RetryPolicy(wait_initial=0.001, wait_max=0.01, wait_jitter=0.0))
        kwargs.setdefault("requests_per_minute", 1_000_000)
        kwargs.setdefault("stack", self.stack)
        kwargs.setdefault("lag", 0.0)
        api_key = kwargs.pop("api_key", self.api_key)
        api_secret = kwargs.pop("api_secret", self.api_secret)
        return AntavoClient(self.url, api_key, api_secret, **kwargs)

    def now(self) -> float:
        """The fake's clock (epoch seconds, ``clock_offset`` included)."""
        return self._clock() + self.clock_offset

    # --- data --------------------------------------------------------------------------------

    def add_customer(self, customer: Mapping[str, Any]) -> dict[str, Any]:
        """Add (or replace) a customer object; ``updated_at`` (unix seconds, a datetime or
        an ISO 8601 string; served as unix seconds, as Antavo does) defaults to now. A value
        that is not a time is a ``ValueError``."""
        record = dict(customer)
        if "id" not in record:
            raise ValueError("a customer needs an 'id'")
        record["id"] = str(record["id"])
        if "updated_at" in record:
            record["updated_at"] = _unix_seconds(
                record["updated_at"], f"customer {record['id']}: updated_at"
            )
        else:
            record["updated_at"] = int(self.now())
        with self._lock:
            self.customers[record["id"]] = record
        return record

    def update_customer(self, customer_id: str, **fields: Any) -> dict[str, Any]:
        """Change a customer's fields; ``updated_at`` moves to now (always forward)."""
        if "updated_at" in fields:
            fields["updated_at"] = _unix_seconds(
                fields["updated_at"], f"customer {customer_id}: updated_at"
            )
        with self._lock:
            record = self.customers[str(customer_id)]
            record.update(fields)
            if "updated_at" not in fields:
                record["updated_at"] = max(int(self.now()), int(record.get("updated_at", 0)) + 1)
            return record

    def add_event(self, event: Mapping[str, Any]) -> dict[str, Any]:
        """Add an event (Antavo's shape: ``action``, ``Customer`` / ``customer``,
        ``timestamp``, ``properties`` or ``data``); an ``id`` is made if absent, newer than
        every earlier one (ids sort as Antavo stored the events)."""
        record = dict(event)
        customer = record.pop("customer", None)
        if "Customer" not in record:
            if isinstance(customer, Mapping):
                customer = customer.get("id")
            if customer is None:
                raise ValueError("an event needs a customer")
            record["Customer"] = {"id": str(customer)}
        record["timestamp"] = _iso(
            record.get("timestamp", self.now()),
            f"event {record['id']}: timestamp" if "id" in record else "event timestamp",
        )
        data = record.pop("data", None)
        if isinstance(data, Mapping) and "properties" not in record:
            record["properties"] = [{"name": k, "label": k, "value": v} for k, v in data.items()]
        record.setdefault("properties", [])
        record.setdefault("points", 0)
        with self._lock:
            if "id" not in record:
                record["id"] = f"{int(self.now()) & 0xFFFFFFFF:08x}{next(self._sequence):016x}"
            self.events.append(record)
        return record

    def fail_next(
        self,
        status: int = 503,
        *,
        count: int = 1,
        body: Any = None,
        drop: bool = False,
        path: str = "",
    ) -> None:
        """Answer the next ``count`` requests (to paths starting with ``path``) with
        ``status`` (and ``body``), or drop their connections."""
        with self._lock:
            self._faults.append(AntavoFault(status, body, drop, count, path))

    # --- serving ---------------------------------------------------------------------------

    def _handle(self, handler: _Handler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(min(length, 1_000_000)) if length else b""
        target = handler.path
        headers = list(handler.headers.items())
        path = unquote(target.split("?", 1)[0])
        if self.on_request is not None:
            self.on_request(path)
        fault = self._take_fault(path)
        if fault is not None and fault.drop:
            self._record(handler.command, target, headers, 0)
            with contextlib.suppress(OSError):
                handler.connection.shutdown(2)
            handler.close_connection = True
            return
        if fault is not None:
            answer = fault.body
            if answer is None:
                answer = _error("ServerException", 0, "Injected fault")
            self._answer(handler, target, headers, fault.status, answer)
            return
        if self._over_rate():
            self._answer(handler, target, headers, 429, _error("TooManyRequests", 0, "Too many"))
            return
        problem = verify_signature(
            handler.command,
            target,
            headers,
            body,
            api_key=self.api_key,
            api_secret=self.api_secret,
            stack=self.stack,
            now=self.now(),
        )
        if problem is not None:
            answer = {"error": {"message": "Unauthorized", "code": 2132, "resendable": False}}
            answer["error"]["detail"] = problem
            self._answer(handler, target, headers, 401, answer)
            return
        query = dict(parse_qsl(urlsplit(target).query, keep_blank_values=True))
        status, answer = self._route(handler.command, path, query)
        self._answer(handler, target, headers, status, answer)

    def _take_fault(self, path: str) -> AntavoFault | None:
        with self._lock:
            for index, fault in enumerate(self._faults):
                if path.startswith(fault.path):
                    if fault.count <= 1:
                        del self._faults[index]
                    else:
                        self._faults[index] = AntavoFault(
                            fault.status, fault.body, fault.drop, fault.count - 1, fault.path
                        )
                    return fault
        return None

    def _over_rate(self) -> bool:
        if self.rate_limit is None:
            return False
        with self._lock:
            window = int(self.now() // self.rate_window)
            current, count = self._window
            count = count + 1 if current == window else 1
            self._window = (window, count)
            return count > self.rate_limit

    def _record(
        self, method: str, target: str, headers: list[tuple[str, str]], status: int
    ) -> None:
        if self.record:
            with self._lock:
                self.requests.append(RecordedAntavoRequest(method, target, tuple(headers), status))

    def _answer(
        self,
        handler: _Handler,
        target: str,
        headers: list[tuple[str, str]],
        status: int,
        answer: Any,
    ) -> None:
        self._record(handler.command, target, headers, status)
        with self._lock:
            self.status_counts[status] += 1
        data = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def _route(self, method: str, path: str, query: dict[str, str]) -> tuple[int, Any]:
        if method != "GET":
            return 405, _error("MethodNotAllowedException", 0, "Method not allowed")
        limit, offset = _int(query.get("limit"), 100), _int(query.get("offset"), 0)
        if limit is None or offset is None or limit < 1 or offset < 0:
            return 400, _error("BadRequestException", 0, "limit and offset must be numbers")
        if path == "/customers/-/events":
            return self._events(query, limit, offset)
        if path == "/customers":
            return self._changed(query, limit, offset)
        if path.startswith("/customers/") and path.count("/") == 2:
            with self._lock:
                customer = self.customers.get(path[len("/customers/") :])
                found = None if customer is None else json.loads(json.dumps(customer))
            if found is None:
                return 404, _error("NotFoundException", 160212, "Customer not found")
            return 200, found
        return 404, _error("NotFoundException", 0, "Not Found")

    def _changed(self, query: dict[str, str], limit: int, offset: int) -> tuple[int, Any]:
        after = query.get("updated_at.gt")
        if after is None:
            return 400, _error("BadRequestException", 160211, "Empty search criteria")
        since = _epoch(after)
        if since is None:
            return 400, _error("BadRequestException", 0, f"Invalid datetime: {after}")
        with self._lock:
            found = [
                (float(c.get("updated_at", 0)), c["id"])
                for c in self.customers.values()
                if float(c.get("updated_at", 0)) > since
            ]
        found.sort()  # oldest change first: a customer changed again moves to the end
        return 200, [{"id": customer_id} for _, customer_id in found[offset : offset + limit]]

    def _events(self, query: dict[str, str], limit: int, offset: int) -> tuple[int, Any]:
        bounds = []
        for operator in ("gt", "gte", "lt", "lte"):
            text = query.get(f"timestamp.{operator}")
            if text is not None:
                moment = _epoch(text)
                if moment is None:
                    return 400, _error("BadRequestException", 0, f"Invalid datetime: {text}")
                bounds.append((operator, moment))
        order = query.get("order", "desc")
        with self._lock:
            events = [dict(e) for e in self.events]
        chosen = []
        for event in events:
            moment = _epoch(event["timestamp"]) or 0.0
            if all(_holds(operator, moment, bound) for operator, bound in bounds):
                chosen.append(event)
        if order == "asc":
            chosen.sort(key=lambda e: e["id"])
        else:
            chosen.sort(key=lambda e: (e["timestamp"], e["id"]), reverse=True)
        return 200, {"total": len(chosen), "data": chosen[offset : offset + limit]}


def _holds(operator: str, value: float, bound: float) -> bool:
    if operator == "gt":
        return value > bound
    if operator == "gte":
        return value >= bound
    if operator == "lt":
        return value < bound
    return value <= bound


def _int(text: str | None, default: int) -> int | None:
    if text is None:
        return default
    try:
        return int(text)
    except ValueError:
        return None
