"""The Antavo client: Escher-signed reads of customers and events, paced, retried, paged.

It knows Antavo's API and nothing of Braze. Signing is escherauth's (the reference
implementation of Escher, by the protocol's authors) on a ``requests.Session``, with
Antavo's parameters (reference ``antavo-api.md`` section 2). Antavo sends no rate-limit
headers: the client paces itself at ``requests_per_minute``. Retries follow the same
:func:`~antavo_braze.decide_retry` as the Braze client.
"""

from __future__ import annotations

import email.utils
import json
import logging
import math
import os
import random
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import date, datetime, timedelta, timezone
from typing import Any
from urllib.parse import quote, urlsplit

import requests
from escherauth import EscherRequestsAuth

from .._http.endpoint import is_loopback
from .._http.pacing import InProcessPacer
from .._http.retry import AttemptOutcome, RetryDecision, RetryPolicy, decide_retry
from .._telemetry import Telemetry, log_fields, traced, traced_items
from ..exceptions import (
    AuthenticationError,
    BadRequestError,
    BrazeAPIError,
    ConfigurationError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    TransportError,
)
from .paging import walk
from .shapes import (
    customer_ids,
    event_customer,
    event_envelope,
    format_time,
    is_stack_name,
    stack_of,
    to_utc,
    updated_at,
)

__all__ = ["ESCHER_OPTIONS", "AntavoClient", "credential_scope"]

log = logging.getLogger("antavo_braze.antavo")

# Antavo's Escher parameters, as its own PHP SDK sets them (reference section 2).
ESCHER_OPTIONS: Mapping[str, str] = {
    "algo_prefix": "ANTAVO",
    "vendor_key": "Antavo",
    "auth_header_name": "Authorization",
    "date_header_name": "Date",
}
CLOCK_SKEW = 300  # seconds Escher accepts between the request's Date and the server's clock
PAGE_SIZE = 100  # the largest page the reference dares to ask for (section 3.2)
MAX_BODY = 16 * 1024 * 1024  # bytes: a longer answer is not Antavo's
TimeLike = datetime | date | str | float | int
_KEY_IN_QUERY = re.compile(r"(api_key=)[^&\s\"']+")
CUSTOMER_ROUTE = "/customers/{id}"  # what spans and logs name: never the customer's id


def credential_scope(stack: str) -> str:
    """Antavo's Escher credential scope for ``stack``."""
    return f"{stack}/api/antavo_request"


class _RedactKeys(logging.Filter):
    """urllib3 logs each request's URL at DEBUG, and Antavo's key travels in the query:
    log records pass through this filter, which replaces the key's value."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(
            isinstance(a, str) and "api_key=" in a for a in record.args
        ):
            record.args = tuple(
                _KEY_IN_QUERY.sub(r"\1***", a) if isinstance(a, str) else a for a in record.args
            )
        return True


_REDACT = _RedactKeys()
logging.getLogger("urllib3.connectionpool").addFilter(_REDACT)


class AntavoClient:
    """Reads Antavo: ``customer(id)``, ``changed_customers(since, until)``, ``events(since,
    until, actions=)``.

    ``endpoint`` is the API base URL (``https://api.st2.antavo.com``) or a stack name
    (``"st2"``); https is required except on loopback hosts. ``stack`` is the credential
    scope's first part, read from an ``api.<stack>.antavo.com`` host (give it for any other
    host). ``session`` brings your own ``requests.Session`` (proxies, mTLS, instrumentation);
    the client then never closes it. ``lag`` seconds: how far behind now a window closes by
    default. ``page_size``: items per list page (at most 100). ``tracer_provider`` /
    ``meter_provider``: OpenTelemetry providers for a span per call
    (``antavo_braze.antavo.customer``, ``….changed_customers``, ``….events``) and per HTTP
    try, and the requests counter (``None``: the global ones, once set).
    """

    def __init__(
        self,
        endpoint: str,
        api_key: str,
        api_secret: str,
        *,
        stack: str | None = None,
        requests_per_minute: int = 1500,
        timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        session: requests.Session | None = None,
        lag: float = 60.0,
        page_size: int = PAGE_SIZE,
        tracer_provider: Any = None,
        meter_provider: Any = None,
    ) -> None:
        if not api_key or not isinstance(api_key, str):
            raise ConfigurationError("the Antavo API key is empty (ANTAVO_API_KEY)")
        if not api_secret or not isinstance(api_secret, str):
            raise ConfigurationError("the Antavo API secret is empty (ANTAVO_API_SECRET)")
        if not re.fullmatch(r"[A-Za-z0-9/\-_ ]+", api_key):
            raise ConfigurationError(
                "the Antavo API key holds characters an Escher credential cannot carry "
                "(letters, digits, '-', '_' only): check ANTAVO_API_KEY"
            )
        if requests_per_minute < 1:
            raise ConfigurationError("requests_per_minute must be at least 1")
        if not 1 <= page_size <= PAGE_SIZE:
            raise ConfigurationError(f"page_size must be between 1 and {PAGE_SIZE}")
        if timeout <= 0 or lag < 0:
            raise ConfigurationError("timeout must be positive and lag not negative")
        self.endpoint, found_stack = _base_url(endpoint)
        self.stack = stack or found_stack
        if not self.stack:
            raise ConfigurationError(
                f"the Antavo stack is unknown for {self.endpoint}: pass stack= (or set "
                "ANTAVO_STACK), e.g. 'st2' for api.st2.antavo.com; it is the first part of "
                "the signature's credential scope <stack>/api/antavo_request"
            )
        if not is_stack_name(self.stack):
            raise ConfigurationError(f"not an Antavo stack name: {self.stack!r}")
        self.requests_per_minute = requests_per_minute
        self.timeout = float(timeout)
        self.retry = retry or RetryPolicy()
        self.lag = float(lag)
        self.page_size = page_size
        self._telemetry = Telemetry(tracer_provider, meter_provider)
        parts = urlsplit(self.endpoint)
        self._server = (
            parts.hostname or "",
            parts.port or (443 if parts.scheme == "https" else 80),
        )
        self._api_key = api_key
        self._auth = EscherRequestsAuth(
            api_key, api_secret, credential_scope(self.stack), dict(ESCHER_OPTIONS)
        )
        self._owns_session = session is None
        self._session = session if session is not None else requests.Session()
        self._pacer = InProcessPacer(requests=requests_per_minute, per=60.0)
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._closed = False
        self.requests = 0  # requests made (tries, retries included)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **kwargs: Any) -> AntavoClient:
        """A client from ``ANTAVO_API_URL`` (or ``ANTAVO_STACK``), ``ANTAVO_API_KEY``,
        ``ANTAVO_API_SECRET``, and ``ANTAVO_STACK`` when the URL does not name the stack."""
        env = os.environ if environ is None else environ
        url = env.get("ANTAVO_API_URL") or env.get("ANTAVO_STACK")
        missing = [n for n in ("ANTAVO_API_KEY", "ANTAVO_API_SECRET") if not env.get(n)]
        if not url:
            missing.insert(0, "ANTAVO_API_URL (or ANTAVO_STACK)")
        if missing:
            raise ConfigurationError(f"set {' and '.join(missing)} in the environment")
        assert url is not None
        kwargs.setdefault("stack", env.get("ANTAVO_STACK") or None)
        return cls(url, env["ANTAVO_API_KEY"], env["ANTAVO_API_SECRET"], **kwargs)

    def __repr__(self) -> str:
        return (
            f"AntavoClient(endpoint={self.endpoint!r}, stack={self.stack!r}, "
            f"requests_per_minute={self.requests_per_minute})"
        )

    def __reduce__(self) -> Any:
        raise TypeError("an AntavoClient holds credentials and cannot be pickled")

    def __enter__(self) -> AntavoClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the session this client opened (one passed in stays open)."""
        self._closed = True
        if self._owns_session:
            self._session.close()

    # --- reading -----------------------------------------------------------------------------

    @traced("antavo.customer")
    def customer(self, customer_id: str, *, fields: Sequence[str] | None = None) -> dict[str, Any]:
        """One customer object as Antavo returns it (what ``sync_members`` takes);
        ``fields`` asks for Antavo's extra attributes (``groups``, ``purchases.ytd``, ...)."""
        text = str(customer_id)
        if not text or len(text) > 512:
            raise ConfigurationError(f"not a customer id: {text[:80]!r}")
        params = {} if not fields else {"fields": ",".join(fields)}
        body = self._get(f"/customers/{quote(text, safe='')}", params, route=CUSTOMER_ROUTE)
        if not isinstance(body, dict):
            raise ServerError(200, "", f"Antavo answered a customer that is not an object: {text}")
        return body

    def changed_customers(
        self, since: TimeLike, until: TimeLike | None = None
    ) -> Iterator[dict[str, Any]]:
        """Every customer whose ``updated_at`` is after ``since`` and not after ``until``
        (default: now minus ``lag``), all pages, each fetched in full. A customer changed
        again while the window is read (``updated_at`` past ``until``) is left for the next
        window, which will see it."""
        return traced_items(
            self._telemetry, "antavo.changed_customers", self._changed_customers(since, until)
        )

    def _changed_customers(
        self, since: TimeLike, until: TimeLike | None
    ) -> Iterator[dict[str, Any]]:
        start, end = self.window(since, until)
        params = {"updated_at.gt": format_time(start)}
        limit = end.timestamp()
        for customer_id in walk(self._get, "/customers", params, self.page_size, _customers_page):
            try:
                customer = self.customer(customer_id)
            except BrazeAPIError as exc:
                if exc.status_code != 404:
                    raise
                log.warning(
                    "a customer listed as changed was gone (404) when read: skipped",
                    extra=log_fields("antavo", status=404, reason="gone"),
                )
                continue
            changed = updated_at(customer)
            if changed is not None and changed > limit:
                continue  # changed again since: the next window holds its newer state
            yield customer

    def events(
        self,
        since: TimeLike,
        until: TimeLike | None = None,
        *,
        actions: Sequence[str] | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Every event with ``since <= timestamp < until`` (default: now minus ``lag``),
        all pages, oldest first, as envelopes ``sync_events`` takes (with Antavo's ``id``);
        ``actions`` keeps only those actions. Each event comes once, also when the pages
        move while they are read."""
        return traced_items(self._telemetry, "antavo.events", self._events(since, until, actions))

    def _events(
        self, since: TimeLike, until: TimeLike | None, actions: Sequence[str] | None
    ) -> Iterator[dict[str, Any]]:
        start, end = self.window(since, until)
        params = {
            "timestamp.gte": format_time(start),
            "timestamp.lt": format_time(end),
            "order": "asc",
        }
        wanted = None if actions is None else set(actions)
        for event in walk(self._get, "/customers/-/events", params, self.page_size, _events_page):
            if wanted is None or event.get("action") in wanted:
                yield event_envelope(event)

    def window(self, since: TimeLike, until: TimeLike | None = None) -> tuple[datetime, datetime]:
        """``(since, until)`` as whole UTC seconds; ``until`` defaults to now minus ``lag``
        (a window is closed before it is read)."""
        start = to_utc(since)
        end = self.closed_until() if until is None else to_utc(until)
        if end < start:
            raise ConfigurationError(
                f"the window ends before it starts: since {format_time(start)}, "
                f"until {format_time(end)}"
            )
        return start, end

    def closed_until(self) -> datetime:
        """Now minus ``lag``, in whole seconds: the end of the newest closed window. With
        ``lag=0`` (tests against the fake) the next whole second, so that what happened up
        to now is in the window."""
        if self.lag == 0:
            return to_utc(math.ceil(time.time()))
        return to_utc(datetime.now(timezone.utc) - timedelta(seconds=self.lag))

    # --- one request -------------------------------------------------------------------------

    def _url(self, path: str) -> str:
        return self.endpoint + path

    def _query(self, params: Mapping[str, str]) -> str:
        # Built here, every value percent-encoded (":" %3A, "," %2C, "+" %2B, space %20): what
        # is signed is what is sent, and no literal "+" reaches Antavo (reference 2.2).
        pairs = [("api_key", self._api_key), *params.items()]
        return "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in pairs)

    def _redact(self, text: str) -> str:
        return _KEY_IN_QUERY.sub(r"\1***", text).replace(self._api_key, "***")

    def _get(self, path: str, params: Mapping[str, str], *, route: str | None = None) -> Any:
        """GET ``path`` with ``params``, signed, paced and retried; the parsed JSON body.
        ``route``: ``path`` as spans and logs name it, without member ids."""
        if self._closed:
            raise ConfigurationError("this AntavoClient is closed")
        if os.getpid() != self._pid and self._owns_session:  # a forked child: its own session
            self._session = requests.Session()
            self._pid = os.getpid()
        url = f"{self._url(path)}?{self._query(params)}"
        shown = f"GET {self._url(path)}"
        endpoint = f"GET {route or path}"
        active = self._telemetry.active()
        if active is not None:
            active.server = self._server
            active.service = "antavo"
        attempt = 0
        while True:
            attempt += 1
            self._pacer.acquire()
            with self._lock:
                self.requests += 1
            tried = _Try(route or path, attempt)
            if active is not None:
                active.start_try(tried)
            try:
                outcome, body, status, headers, error = self._attempt(url)
            except BaseException as exc:
                self._pacer.observe(None, {})  # its slot comes back, as for a failed try
                if active is not None:
                    active.end_try(tried, None, exc=exc)
                raise
            self._pacer.observe(status, headers)
            if outcome is None:
                if active is not None:
                    active.end_try(tried, AttemptOutcome(status=status))
                return body
            decision = decide_retry(self.retry, outcome, attempt, time.time(), random.random())
            if active is not None:
                active.end_try(tried, outcome, decision)
            if decision.retry:
                log.info(
                    "Antavo %s: %s; retry %d in %.1fs",
                    endpoint,
                    f"HTTP {status}" if status is not None else outcome.failure,
                    attempt,
                    decision.wait,
                    extra=log_fields(
                        "antavo",
                        endpoint=endpoint,
                        status=status,
                        attempt=attempt,
                        wait=decision.wait,
                        reason=_reason(outcome, decision),
                    ),
                )
                time.sleep(decision.wait)
                continue
            raise _failure(self._redact, shown, status, headers, body, error, attempt)

    def _attempt(
        self, url: str
    ) -> tuple[AttemptOutcome | None, Any, int | None, dict[str, str], str | None]:
        """One try: ``(None, body, ...)`` on success, else the outcome to decide on."""
        deadline = time.monotonic() + self.timeout
        try:
            response = self._session.get(
                url,
                auth=self._auth,
                timeout=(self.timeout, self.timeout),
                stream=True,
                allow_redirects=False,
                headers={"Accept": "application/json"},
            )
        except requests.RequestException as exc:
            reason = self._redact(f"{type(exc).__name__}: {exc}")[:300]
            return AttemptOutcome(failure="transport"), None, None, {}, reason
        with response:
            headers = {k.lower(): v for k, v in response.headers.items()}
            try:
                raw = _read_bounded(response, deadline)
            except (requests.RequestException, OSError, ValueError) as exc:
                reason = self._redact(f"{type(exc).__name__}: {exc}")[:300]
                return AttemptOutcome(failure="transport"), None, None, headers, reason
        status = response.status_code
        text = raw.decode("utf-8", "replace")
        try:
            body = json.loads(text) if text.strip() else None
        except ValueError:
            body = None
        if 200 <= status < 300:
            if body is None:
                reason = "not Antavo's answer: the body is not JSON"
                return AttemptOutcome(failure="invalid_answer"), None, status, headers, reason
            return None, body, status, headers, None
        return AttemptOutcome(status=status, headers=headers), body, status, headers, text[:300]


class _Try:
    """One GET as the telemetry hooks see it (the shape of the send loop's exchange)."""

    __slots__ = ("attempt", "path", "span")
    method = "GET"
    tag = None

    def __init__(self, path: str, attempt: int) -> None:
        self.path = path
        self.attempt = attempt
        self.span: Any = None


def _reason(outcome: AttemptOutcome, decision: RetryDecision) -> str:
    if decision.rate_limited:
        return "rate_limited"
    return outcome.failure or f"http_{outcome.status}"


def _base_url(endpoint: str) -> tuple[str, str | None]:
    """The API base URL and the stack its host names (if it does)."""
    if not isinstance(endpoint, str) or not endpoint.strip():
        raise ConfigurationError("the Antavo endpoint is empty (ANTAVO_API_URL or ANTAVO_STACK)")
    text = endpoint.strip()
    if is_stack_name(text):
        return f"https://api.{text}.antavo.com", text
    try:
        parts = urlsplit(text if "://" in text else "https://" + text)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        raise ConfigurationError(f"not an Antavo API URL: {endpoint!r}") from None
    if parts.scheme not in ("http", "https") or not host:
        raise ConfigurationError(
            f"not an Antavo API URL: {endpoint!r} (expected e.g. https://api.st2.antavo.com)"
        )
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ConfigurationError(
            f"the Antavo endpoint takes no credentials, query or fragment: {parts.netloc!r}"
        )
    if parts.scheme == "http" and not is_loopback(host):
        raise ConfigurationError(
            f"the Antavo endpoint must use https (plain http only to a loopback address, for "
            f"tests): {endpoint!r}"
        )
    shown_host = f"[{host}]" if ":" in host else host
    authority = shown_host if port is None else f"{shown_host}:{port}"
    return f"{parts.scheme}://{authority}{parts.path.rstrip('/')}", stack_of(host)


def _read_bounded(response: requests.Response, deadline: float) -> bytes:
    chunks, size = [], 0
    for chunk in response.iter_content(65536):
        size += len(chunk)
        if size > MAX_BODY:
            raise ValueError(f"the answer is larger than {MAX_BODY} bytes")
        if time.monotonic() > deadline:
            raise ValueError("the answer took longer than the timeout")
        chunks.append(chunk)
    return b"".join(chunks)


def _customers_page(body: Any) -> tuple[list[Any], list[str], int | None]:
    try:
        ids = customer_ids(body)
    except ValueError as exc:
        raise ServerError(200, "", f"Antavo's customer list is not readable: {exc}") from None
    return ids, ids, None


def _events_page(body: Any) -> tuple[list[Any], list[str], int | None]:
    data = body.get("data") if isinstance(body, Mapping) else body
    if not isinstance(data, list):
        raise ServerError(200, "", "Antavo's event list has no 'data' list")
    ids = []
    for event in data:
        event_id = event.get("id") if isinstance(event, Mapping) else None
        if not isinstance(event_id, str) or not event_id or len(event_id) > 512:
            raise ServerError(200, "", f"an Antavo event without a usable id: {str(event)[:80]}")
        if event_customer(event) is None:
            raise ServerError(200, "", f"Antavo event {event_id} names no customer")
        ids.append(event_id)
    total = body.get("total") if isinstance(body, Mapping) else None
    return data, ids, total if isinstance(total, int) and not isinstance(total, bool) else None


def _antavo_error(body: Any) -> tuple[str, Any, str]:
    """Antavo's error envelope ``{"error": {"type", "code", "message"}}``, if the body is one."""
    error = body.get("error") if isinstance(body, Mapping) else None
    if not isinstance(error, Mapping):
        return "", None, ""
    kind = error.get("type")
    message = error.get("message")
    return (
        str(kind)[:80] if kind else "",
        error.get("code"),
        str(message)[:200] if message else "",
    )


def _hint(status: int, headers: Mapping[str, str]) -> str:
    """What to check after a refusal (the causes Antavo documents; reference section 4)."""
    if status == 401:
        skew = _clock_skew(headers)
        clock = (
            f"this machine's clock is {skew:.0f} s off Antavo's (Escher allows {CLOCK_SKEW} s): "
            "sync it (NTP)"
            if skew is not None and abs(skew) > CLOCK_SKEW
            else "this machine's clock (NTP; Escher allows 300 s of skew)"
        )
        return (
            "Antavo refused the signature or the key: check ANTAVO_API_KEY and "
            "ANTAVO_API_SECRET, the stack in the credential scope (<stack>/api/antavo_request), "
            f"and {clock}"
        )
    if status == 403:
        return (
            "Antavo refused this caller: its IP filter (Management UI > API settings) may not "
            "allow this machine's address, or the API refuses this key"
        )
    if status == 429:
        return (
            "Antavo's rate limit (1,500 requests a minute on shared stacks): lower "
            "requests_per_minute"
        )
    return ""


def _clock_skew(headers: Mapping[str, str]) -> float | None:
    """Seconds this machine's clock is ahead of the server's ``Date``, if it sent one."""
    value = headers.get("date")
    if not value or len(value) > 64:
        return None
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        return None
    return time.time() - moment.timestamp()


def _failure(
    redact: Callable[[str], str],
    shown: str,
    status: int | None,
    headers: Mapping[str, str],
    body: Any,
    error: str | None,
    attempts: int,
) -> Exception:
    """The typed error for a request that failed for good, with Antavo's code and a
    hint; never the key or the secret."""
    tries = f"after {attempts} attempt(s)"
    if status is None or 200 <= status < 300:  # no answer, or not Antavo's
        exc: Exception = TransportError(f"Antavo {shown} failed {tries}: {error}")
        return exc
    kind, code, message = _antavo_error(body)
    what = f"{kind} {code}: {message}".strip(": ") if (kind or code or message) else ""
    said = f" ({what})" if what else ""
    text = redact(json.dumps(body)[:300] if body is not None else (error or ""))
    hint = _hint(status, headers)
    full = f"Antavo answered HTTP {status}{said} to {shown} {tries}" + (f". {hint}" if hint else "")
    full = redact(full)
    error_type: type[BrazeAPIError] = {
        401: AuthenticationError,
        403: PermissionDeniedError,
        400: BadRequestError,
        429: RateLimitError,
    }.get(status, ServerError if status >= 500 else BrazeAPIError)
    api_error = error_type(status, text, full)
    api_error.service = "antavo"  # type: ignore[attr-defined]
    api_error.antavo_code = code  # type: ignore[attr-defined]
    api_error.hint = hint  # type: ignore[attr-defined]
    return api_error
