"""FakeBraze: a real HTTP server on loopback that behaves like Braze's REST API.

It validates ``/users/track`` as Braze does, keeps profiles, events and purchases as plain data,
serves the custom-event read endpoints, sends rate-limit headers, and injects faults on demand.

This module is the facade: lifecycle, knobs, faults, reset and what it holds. The oracle is
pure: ``_rules`` (Braze's rules and its own copy of Braze's numbers) and ``_endpoints`` (one
function per route, ``handle(request) -> Reply``). Around it: ``_profiles`` (what is held,
written as Braze writes it), ``_budgets`` (rate limits) and ``_server`` (the socket shell).
"""

from __future__ import annotations

import random
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from .._client import BrazeClient
from .._http.retry import RetryPolicy
from . import _rules as rules
from ._budgets import Budgets
from ._profiles import Profiles
from ._rules import Request
from ._server import Fault, RecordedRequest, Shell, make_server
from ._serving import BackgroundServer, QuietServer

__all__ = ["FakeBraze", "Fault", "RecordedRequest"]

_PERMISSIONS = tuple(sorted(rules.ALL_PERMISSIONS))


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
    ``connections`` counts the connections accepted; ``store`` holds the rest of what it keeps
    (attribute types, values ignored for their type, merges and deletes applied).
    """

    def __init__(
        self,
        api_key: str = "test-key",
        *,
        permissions: Iterable[str] = _PERMISSIONS,
        batch_mode: str = "combined",
        rate_limit: int | None = None,
        rate_window: float = 1.0,
        reset_style: str = "epoch",
        latency: float = 0.0,
        prefix: str = "",
        record: bool = True,
        validate: bool = True,
        max_body_bytes: int = rules.MAX_BODY_BYTES,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Callable[[], float] = time.time,
        ssl_context: ssl.SSLContext | None = None,
        identity_delay: float = 0.0,
        export_rate_limit: int | None = None,
        identity_rate_limit: int | None = None,
        identity_rate_window: float = rules.IDENTITY_RATE_SECONDS,
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
        self.export_rate_limit = export_rate_limit
        self.identity_rate_limit = identity_rate_limit
        self.identity_rate_window = identity_rate_window
        self._host, self._port = host, port
        self.clock = clock
        self._ssl_context = ssl_context
        self._faults: list[Fault] = []
        self._fault_rate = 0.0
        self._fault_status = 503
        self._random = random.Random(0)
        self._blocked: set[str] = set()
        # What it holds (testing/_profiles.py): the same objects as the attributes below.
        self.store = Profiles(identity_delay)
        self._lock: threading.Lock = self.store.lock
        self.profiles = self.store.profiles
        self.events = self.store.events
        self.purchases = self.store.purchases
        self.event_names = self.store.event_names
        self.requests: list[RecordedRequest] = []
        self.status_counts: Counter[int] = Counter()
        self.objects_received = 0
        self.connections = 0
        self.overlapping_requests = 0  # track requests that touched a profile already in flight
        self.budgets = Budgets(self)
        self._account_knobs: tuple[Any, ...] = ()
        self._account = rules.Account()
        self.shell = Shell(self)

    # --- lifecycle -------------------------------------------------------------------------

    def _make_server(self) -> QuietServer:
        server = make_server(self._host, self._port)
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
        self.shell.close_idle()

    # --- configuration and fault injection -------------------------------------------------

    @property
    def attribute_types(self) -> dict[str, str]:
        """Custom attribute name -> Braze ``data_type`` (``"Number"``, ``"Time"``, ...), as
        fixed by the first value written."""
        with self._lock:
            return dict(self.store.types)

    def set_attribute(self, name: str, data_type: str, status: str = "Active") -> None:
        """Declare custom attribute ``name`` as Braze would hold it (``status``
        ``"Blocklisted"``: Braze keeps none of its values)."""
        with self._lock:
            self.store.types[name] = data_type
            self.store.status[name] = status

    def add_key(self, api_key: str, permissions: Iterable[str] = _PERMISSIONS) -> None:
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
            self.store.reset()
            self.requests.clear()
            self._faults.clear()
            self._fault_rate = 0.0
            self._random = random.Random(0)
            self._blocked.clear()
            self.status_counts.clear()
            self.objects_received = 0
            self.connections = 0
            self.overlapping_requests = 0
            self.shell.reset()
        self.budgets.reset()

    # --- what the shell and the endpoints ask --------------------------------------------------

    def account(self) -> rules.Account:
        """The settings the oracle answers by, as they are now (the knobs can change; built
        again only when one did)."""
        knobs = (self.batch_mode, self.validate, self.max_body_bytes, self._server, self.prefix)
        if knobs != self._account_knobs:
            self._account = rules.Account(
                batch_mode=self.batch_mode,
                validate=self.validate,
                max_body_bytes=self.max_body_bytes,
                blocked=self._blocked,  # the live set, read only: block() adds to it
                keys=self._keys,  # the live dict: add_key() adds to it
                url=self.url,
            )
            self._account_knobs = knobs
        return self._account

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

    def _record(self, request: Request, status: int, recorded: Any = None) -> None:
        """Count an answer and keep the request (before the answer leaves)."""
        key = request.api_key
        with self._lock:
            self.status_counts[status] += 1
            if self.record:
                self.requests.append(
                    RecordedRequest(
                        request.method,
                        request.path,
                        request.query,
                        recorded,
                        status,
                        key is not None and key in self._keys,
                        request.headers.get("user-agent"),
                    )
                )
