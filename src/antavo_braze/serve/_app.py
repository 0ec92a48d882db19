"""The webhook receiver as a plain ASGI application (no framework): Antavo's "Webhook message"
workflow node posts events or customers; each request is answered ``202`` only once its
changes are in the sender's queue — on disk when the sender has a spool.

Antavo retries a failed delivery 5 times, 10 s apart, then drops it, and its default timeout
is 1 s: the receiver answers fast (a spool write), says ``503`` when it has no room (Antavo
tries again), and recognises a redelivery (``Idempotency-Key``, else a hash of the body).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import hashlib
import json
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

from .._fork import reset_after_fork
from .._http.endpoint import is_loopback
from .._sender import BackgroundSender, SenderStats, Submission
from .._telemetry import Telemetry, log_fields
from ..exceptions import ConfigurationError, QueueFull
from ._auth import (
    AUTH_ENVS,
    Authenticator,
    auth_from_env,
    signature_plausible,
    signature_verified,
)

__all__ = ["MAX_BODY_BYTES", "create_app", "receipt_for"]

log = logging.getLogger("antavo_braze.serve")

MAX_BODY_BYTES = 1_000_000  # one webhook; larger bodies are refused with 413
MAX_RECORDS = 1000  # records in one webhook
_SUBMIT_TIMEOUT = 0.5  # seconds to wait for queue room before answering 503
DEDUPE_WINDOW = 600.0  # seconds a body hash is remembered (Antavo redelivers within ~1 min)
BODY_TIMEOUT = 10.0  # seconds a request's body may take to arrive
SHUTDOWN_TIMEOUT = 10.0  # seconds the lifespan shutdown gives the sender to send what is queued
_RESULTS = ("accepted", "duplicate", "rejected")
# Webhooks waiting for the spool's committer thread (beyond: 503). One per connection at a
# time: ``antavo-braze serve`` holds at most 256 connections (MAX_CONNECTIONS).
_COMMIT_QUEUE = 256
_CHALLENGE = ((b"www-authenticate", b'Basic realm="antavo"'),)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_ENV: Any = object()

_Group = tuple[Literal["member", "event"], list[Any], str | None, float | None]
# A webhook waiting for the committer: its records, its trace, its answer, when it arrived.
_Waiting = tuple[_Group, Any, asyncio.Future[list[Submission] | None], float]


class _ReplyError(Exception):
    def __init__(self, status: int, message: str, headers: tuple[tuple[bytes, bytes], ...] = ()):
        super().__init__(message)
        self.status = status
        self.headers = headers


def _records(kind: Literal["member", "event"], payload: Any) -> list[Any]:
    """The records of a webhook body: one object, a list, or ``{"events"|"members": [...]}``."""
    wrapper = "events" if kind == "event" else "members"
    if isinstance(payload, dict) and isinstance(payload.get(wrapper), list):
        payload = payload[wrapper]
    records = payload if isinstance(payload, list) else [payload]
    if not records:
        raise _ReplyError(400, f"no {wrapper} in the body")
    if len(records) > MAX_RECORDS:
        raise _ReplyError(413, f"more than {MAX_RECORDS} {wrapper} in one request")
    for number, record in enumerate(records):
        if not isinstance(record, dict):
            raise _ReplyError(400, f"{wrapper}[{number}]: expected a JSON object")
    return records


def _is_loopback_client(scope: Scope) -> bool:
    client = scope.get("client")
    return client is not None and is_loopback(str(client[0]))


def receipt_for(
    path: str, headers: Mapping[str, str], records: list[Any], body: bytes, kind: str
) -> tuple[str, bool]:
    """A webhook's idempotency receipt, and whether it is kept only for the dedupe window
    (else as long as the spool keeps receipts). Scoped by path: the ``Idempotency-Key``
    header compared whole (hashed, never cut), else the Antavo event ids in the body, else
    the body's hash — kept only for the redelivery window, so a genuine repeat is sent."""

    def digest(text: bytes) -> str:
        return hashlib.sha256(text).hexdigest()

    key = headers.get("idempotency-key")
    if key:
        return f"{path} key:{digest(key.encode('utf-8', 'surrogateescape'))}", False
    ids = [record.get("id") for record in records]
    if kind == "event" and all(isinstance(i, (str, int)) and i != "" for i in ids):
        return f"{path} id:{digest(json.dumps(ids).encode())}", False
    return f"{path} body:{digest(body)}", True


class _Receiver:
    def __init__(
        self,
        sender: BackgroundSender,
        auth: Authenticator | None,
        *,
        allow_unauthenticated: bool,
        public_metrics: bool,
        dedupe_window: float,
        body_timeout: float,
        shutdown_timeout: float = SHUTDOWN_TIMEOUT,
    ) -> None:
        self.sender = sender
        self.auth = auth
        self.allow_unauthenticated = allow_unauthenticated
        self.public_metrics = public_metrics
        self.dedupe_window = dedupe_window
        self.body_timeout = body_timeout
        self.shutdown_timeout = shutdown_timeout
        self.webhooks: Counter[str] = Counter()  # by result (_RESULTS)
        self._setup_committer()
        reset_after_fork(self)

    def _setup_committer(self) -> None:
        # Spooled webhooks go to ONE committer thread, which writes all those that arrived
        # during its previous write in one transaction (one disk sync) and hands their
        # answers back to the loop at once: no thread waits per webhook. Only the event
        # loop's thread touches these (no lock).
        self._commit_pool: ThreadPoolExecutor | None = None  # its thread, made on first use
        self._arrived: list[_Waiting] = []  # the next batch
        self._committing = False  # a batch is being written (or is about to be)

    def _after_fork(self) -> None:
        self._setup_committer()  # the parent's thread does not exist in a forked child

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":  # pragma: no cover - websockets are not served
            return
        try:
            status, body, content_type = await self._route(scope, receive)
            headers: tuple[tuple[bytes, bytes], ...] = ()
        except _ReplyError as reply:
            self.webhooks["rejected"] += 1 if reply.status != 503 else 0
            status, content_type = reply.status, b"application/json"
            body = json.dumps({"error": str(reply)}).encode()
            # The request's body may be unread: the connection is not reused.
            headers = (*reply.headers, (b"connection", b"close"))
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", content_type),
                    (b"content-length", str(len(body)).encode()),
                    *headers,
                ],
            }
        )
        await send(
            {"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body}
        )

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                # uvicorn (and gunicorn's Uvicorn worker) re-raise SIGTERM after this: no
                # exit hook runs, so this is the last moment to send what was answered 202.
                close = functools.partial(self.sender.close, self.shutdown_timeout)
                await asyncio.get_running_loop().run_in_executor(None, close)
                pool, self._commit_pool = self._commit_pool, None
                if pool is not None:  # batches after this are refused by the closed sender
                    await asyncio.get_running_loop().run_in_executor(None, pool.shutdown)
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _authenticate(
        self, scope: Scope, receive: Receive, headers: Mapping[str, str]
    ) -> bytes | None:
        """Refuse what is not authenticated, before reading any body it need not read;
        return the body when reading it was part of authenticating (a request signature)."""
        if self.auth is None or self.auth(headers):
            return None
        if signature_plausible(self.auth, headers):
            body = await self._body(receive, headers)
            target = scope.get("raw_path") or scope["path"].encode()
            if scope.get("query_string"):
                target += b"?" + scope["query_string"]
            raw = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
            if signature_verified(self.auth, scope["method"], target.decode("latin-1"), raw, body):
                return body
        raise _ReplyError(401, "unauthorized", _CHALLENGE)

    async def _route(self, scope: Scope, receive: Receive) -> tuple[int, bytes, bytes]:
        method, path = scope["method"], scope["path"]
        if self.auth is None and not self.allow_unauthenticated and not _is_loopback_client(scope):
            raise _ReplyError(403, "not authenticated: only loopback clients are served")
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if path in ("/healthz", "/metrics"):
            if method not in ("GET", "HEAD"):
                raise _ReplyError(405, "use GET or HEAD", ((b"allow", b"GET, HEAD"),))
            if path == "/metrics" and not self.public_metrics:
                await self._authenticate(scope, receive, headers)
            if path == "/healthz":
                return self._health()
            return 200, self.metrics().encode(), b"text/plain; version=0.0.4"
        kinds: dict[str, Literal["member", "event"]] = {
            "/antavo/events": "event",
            "/antavo/members": "member",
        }
        kind = kinds.get(path)
        if kind is None:
            raise _ReplyError(404, "not found")
        if method != "POST":
            raise _ReplyError(405, "use POST", ((b"allow", b"POST"),))
        body = await self._authenticate(scope, receive, headers)
        if body is None:
            body = await self._body(receive, headers)
        try:
            payload = json.loads(body)
        except (ValueError, RecursionError) as exc:
            raise _ReplyError(400, f"the body is not JSON: {str(exc)[:100]}") from None
        records = _records(kind, payload)
        receipt, windowed = receipt_for(path, headers, records, body, kind)
        ttl = self.dedupe_window if windowed else None
        try:
            if self.sender.spool is not None:
                accepted = await self._spooled((kind, records, receipt, ttl))
            else:  # queued in memory: no disk sync to wait for, nor to share
                submit = functools.partial(
                    self.sender.submit_many,
                    kind,
                    records,
                    receipt=receipt,
                    receipt_ttl=ttl,
                    timeout=_SUBMIT_TIMEOUT,
                )
                in_context = functools.partial(contextvars.copy_context().run, submit)  # trace
                accepted = await asyncio.get_running_loop().run_in_executor(None, in_context)
        except QueueFull:
            raise _ReplyError(503, "queue full: try again", ((b"retry-after", b"10"),)) from None
        except ConfigurationError:
            raise _ReplyError(503, "shutting down: try again", ((b"retry-after", b"10"),)) from None
        if accepted is None:
            self.webhooks["duplicate"] += 1
            answer: dict[str, Any] = {"accepted": 0, "duplicate": True}
        else:
            self.webhooks["accepted"] += 1
            refused = [s.result(0).reason for s in accepted if s.done() and not s.result(0).ok]
            answer = {"accepted": len(accepted) - len(refused), "duplicate": False}
            if refused:
                answer["refused"] = refused  # in the dead letter already; resending won't help
        return 202, json.dumps(answer).encode(), b"application/json"

    async def _spooled(self, group: _Group) -> list[Submission] | None:
        """Submit one webhook's records through the committer: answered once they are in
        the spool (synced), as :meth:`BackgroundSender.submit_many` would answer."""
        if len(self._arrived) >= _COMMIT_QUEUE:
            raise QueueFull(f"{len(self._arrived)} webhooks are waiting for the spool")
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[list[Submission] | None] = loop.create_future()
        self._arrived.append((group, Telemetry.capture(), answer, time.monotonic()))
        if not self._committing:
            self._committing = True
            loop.call_soon(self._commit_next, loop)  # the webhooks of this loop turn join it
        return await answer

    def _commit_next(self, loop: asyncio.AbstractEventLoop) -> None:
        """Hand what arrived to the committer thread (on the loop's thread)."""
        batch, self._arrived = self._arrived, []
        if not batch:
            self._committing = False
            return
        if self.sender.closed:  # shut down: no thread is started again
            self._answer(loop, batch, ConfigurationError("the sender is closed"))
            return
        if self._commit_pool is None:
            self._commit_pool = ThreadPoolExecutor(1, thread_name_prefix="antavo-braze-commit")
        # The oldest webhook's wait for queue room counts from its arrival.
        timeout = max(0.0, _SUBMIT_TIMEOUT - (time.monotonic() - batch[0][3]))
        commit = functools.partial(
            self.sender.submit_groups,
            [group for group, _, _, _ in batch],
            timeout=timeout,
            contexts=[context for _, context, _, _ in batch],
        )
        written = loop.run_in_executor(self._commit_pool, commit)  # resolved once per batch
        written.add_done_callback(functools.partial(self._committed, loop, batch))

    def _committed(
        self,
        loop: asyncio.AbstractEventLoop,
        batch: list[_Waiting],
        written: asyncio.Future[list[list[Submission] | Exception | None]],
    ) -> None:
        if written.cancelled():  # pragma: no cover - the loop is closing
            results: list[Any] = [ConfigurationError("the commit was cancelled")] * len(batch)
        elif written.exception() is not None:  # the spool could not be written
            results = [written.exception()] * len(batch)
        else:
            results = written.result()
        for (_, _, answer, _), result in zip(batch, results, strict=True):
            if answer.done():  # its request was cancelled (the client went away)
                continue
            if isinstance(result, BaseException):
                answer.set_exception(result)
            else:
                answer.set_result(result)
        self._commit_next(loop)

    def _answer(
        self, loop: asyncio.AbstractEventLoop, batch: list[_Waiting], error: Exception
    ) -> None:
        for _, _, answer, _ in batch:
            if not answer.done():
                answer.set_exception(error)
        self._commit_next(loop)

    async def _body(self, receive: Receive, headers: Mapping[str, str]) -> bytes:
        """The whole body within ``body_timeout`` seconds (a slow client is cut off)."""
        try:
            return await asyncio.wait_for(self._read_body(receive, headers), self.body_timeout)
        except asyncio.TimeoutError:
            raise _ReplyError(
                408, f"the body did not arrive within {self.body_timeout:g} s"
            ) from None

    async def _read_body(self, receive: Receive, headers: Mapping[str, str]) -> bytes:
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            raise _ReplyError(413, f"body over {MAX_BODY_BYTES} bytes")
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ReplyError(400, "the client went away")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise _ReplyError(413, f"body over {MAX_BODY_BYTES} bytes")
            chunks.append(chunk)
            if not message.get("more_body"):
                return b"".join(chunks)

    def _health(self) -> tuple[int, bytes, bytes]:
        stats = self.sender.stats()
        healthy = not self.sender.closed
        body = {"status": "ok" if healthy else "closed", "queued": stats.queued}
        return (200 if healthy else 503), json.dumps(body).encode(), b"application/json"

    def metrics(self) -> str:
        """The Prometheus text exposition of the receiver's and the sender's counters."""
        stats = self.sender.stats()
        lines = []

        def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
            lines.append(f"# HELP antavo_braze_{name} {help_text}")
            lines.append(f"# TYPE antavo_braze_{name} {kind}")
            lines.extend(f"antavo_braze_{name}{labels} {value}" for labels, value in samples)

        metric(
            "webhooks_total",
            "counter",
            "Webhook requests by result.",
            [(f'{{result="{r}"}}', self.webhooks[r]) for r in _RESULTS],
        )
        metric("received_total", "counter", "Changes received.", [("", stats.received)])
        metric("queued", "gauge", "Changes waiting to be sent.", [("", stats.queued)])
        metric("in_flight", "gauge", "Changes being sent.", [("", stats.in_flight)])
        metric(
            "sent_total",
            "counter",
            "Changes settled, by outcome.",
            [
                ('{outcome="succeeded"}', stats.succeeded),
                ('{outcome="skipped"}', stats.skipped),
            ],
        )
        metric(
            "failed_total", "counter", "Changes failed (in the dead letter).", [("", stats.failed)]
        )
        metric("requests_total", "counter", "Requests made to Braze.", [("", stats.requests)])
        metric(
            "rate_limit_waits_total",
            "counter",
            "Waits for Braze's rate limit (429).",
            [("", stats.rate_limit_waits)],
        )
        _observability_metrics(metric, stats)
        return "\n".join(lines) + "\n"


def _observability_metrics(metric: Callable[..., None], stats: SenderStats) -> None:
    """The OpenTelemetry metrics (``antavo_braze.records``, ``.requests`` by status,
    ``.rate_limit.wait``, ``.sender.queue_depth``) under their Prometheus names."""
    metric(
        "records_total",
        "counter",
        "Changes settled, by outcome.",
        [(f'{{outcome="{o}"}}', getattr(stats, o)) for o in ("succeeded", "failed", "skipped")],
    )
    metric(
        "requests_by_status_total",
        "counter",
        "HTTP tries to Braze by status (error: no usable answer).",
        [(f'{{status="{s}"}}', n) for s, n in stats.requests_by_status.items()],
    )
    metric(
        "rate_limit_wait_seconds_total",
        "counter",
        "Seconds waited because Braze asked to (429).",
        [("", round(stats.rate_limit_wait, 3))],
    )
    metric(
        "sender_queue_depth",
        "gauge",
        "Changes in the sender: queued, or in flight.",
        [('{state="queued"}', stats.queued), ('{state="in_flight"}', stats.in_flight)],
    )


def create_app(
    sender: BackgroundSender,
    *,
    auth: Authenticator | None = _ENV,
    allow_unauthenticated: bool = False,
    public_metrics: bool = False,
    dedupe_window: float = DEDUPE_WINDOW,
    body_timeout: float = BODY_TIMEOUT,
    shutdown_timeout: float = SHUTDOWN_TIMEOUT,
) -> ASGIApp:
    """The webhook receiver as an ASGI app, sending through ``sender``; the ASGI lifespan
    shutdown closes ``sender`` (sending what is queued for up to ``shutdown_timeout`` seconds;
    the rest stays in its spool).

    ``auth``: a callable deciding on a request's headers (:class:`BasicAuth`,
    :class:`JWTAuth`, :class:`EscherAuth`), ``None`` for none, or by default what the
    environment says (:func:`auth_from_env`). Without authentication only loopback clients
    are served (others get ``403``) unless ``allow_unauthenticated=True``.
    ``public_metrics``: ``/metrics`` without authentication. ``dedupe_window``: seconds a
    keyless, id-less webhook's body hash is remembered (a redelivery within it is answered
    "duplicate"). ``body_timeout``: seconds a request's body may take to arrive (``408``).
    """
    if auth is _ENV:
        auth = auth_from_env()
    if auth is None:
        log.warning(
            "webhook requests are not authenticated (set %s, %s, %s or %s)%s",
            *AUTH_ENVS,
            "" if allow_unauthenticated else ": only loopback clients are served",
            extra=log_fields("serve"),
        )
    return _Receiver(
        sender,
        auth,
        allow_unauthenticated=allow_unauthenticated,
        public_metrics=public_metrics,
        dedupe_window=dedupe_window,
        body_timeout=body_timeout,
        shutdown_timeout=shutdown_timeout,
    )
