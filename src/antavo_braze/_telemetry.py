"""OpenTelemetry traces and metrics, optional (the ``otel`` extra: ``opentelemetry-api`` only).

A span per public call (``antavo_braze.sync_members``, ...) and one per HTTP try; counters of
records by outcome, requests by status and rate-limit wait seconds; a gauge of the background
senders' queue depth. Attributes carry counts, methods, statuses and reasons — never a member's
id or values.

Nothing here costs anything unless telemetry is configured: :meth:`Telemetry.active` answers
``None`` (the hot paths then skip every hook) when the package is missing, or when no provider
was given and none was set globally. ``opentelemetry`` is never imported by the SDK itself
until the application has imported it (an application that configures it has; importing it
for nothing would cost every run the collector time of its objects). Providers set globally
later are picked up by the next call.
"""

from __future__ import annotations

import functools
import sys
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from ._version import __version__

if TYPE_CHECKING:
    from ._http.retry import AttemptOutcome, RetryDecision

__all__ = ["LOG_FIELDS", "Active", "Telemetry", "Try", "log_fields", "traced", "traced_items"]

NAME = "antavo_braze"
_MAX_LINKS = 128  # links from a sender window's span to the submissions it carries

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

# The structured fields a log record of the SDK may carry (as ``extra``: attributes of the
# record, for JSON formatters). Counts, names and reasons only: never a member's id or values.
LOG_FIELDS = (
    "call",  # what was running: sync, pull, track, request, http, antavo, sender, serve, redis
    "kind",  # member, event, attributes, replay
    "endpoint",  # "POST /users/track" (no query, no host: the logger's client knows it)
    "status",  # an HTTP status
    "attempt",
    "wait",  # seconds
    "reason",
    "stage",
    "field",
    "count",
    "total",
    "succeeded",
    "failed",
    "skipped",
    "requests",
    "elapsed",
)
_LOG_FIELDS = frozenset(LOG_FIELDS)


def log_fields(call: str, **fields: Any) -> dict[str, Any]:
    """The ``extra`` of a log record: ``call`` and the other documented fields given."""
    assert _LOG_FIELDS.issuperset(fields), set(fields) - _LOG_FIELDS
    return {"call": call, **fields}


_UNLOADED: Any = object()
_otel: Any = _UNLOADED  # the loaded API (a namespace) or None when it is not installed
_load_lock = threading.Lock()


def _api() -> Any:
    """The OpenTelemetry API modules, loaded once the application has imported them;
    ``None`` until then, and for good when they are not installed."""
    global _otel
    if _otel is _UNLOADED:
        if "opentelemetry" not in sys.modules:
            return None  # not configured by anyone (yet): look again on the next call
        with _load_lock:
            if _otel is _UNLOADED:
                try:
                    from opentelemetry import context, metrics, trace
                    from opentelemetry.metrics import _internal as metrics_internal
                except ImportError:
                    _otel = None
                else:
                    _otel = _Api(context, metrics, trace, metrics_internal)
    return _otel


class _Api:
    __slots__ = ("context", "metrics", "proxy_meter_provider", "trace")

    def __init__(self, context: Any, metrics: Any, trace: Any, metrics_internal: Any) -> None:
        self.context = context
        self.metrics = metrics
        self.trace = trace
        # The global default before an application sets one: "not configured". (The API
        # names the tracing one publicly, the metrics one only privately; without it, the
        # global meter provider is always used: its instruments are cheap no-ops until set.)
        self.proxy_meter_provider = getattr(metrics_internal, "_ProxyMeterProvider", ())


class Try(Protocol):
    """One HTTP try as the hooks see it (the send loop's ``Exchange``, the Antavo client's
    ``_Try``). ``path`` is a route without member ids (``/customers/{id}``)."""

    method: str
    path: str
    attempt: int
    tag: Any
    span: Any


class _Instruments:
    """The SDK's metric instruments on one meter."""

    def __init__(self, meter: Any) -> None:
        self.records = meter.create_counter(
            "antavo_braze.records",
            unit="{record}",
            description="Input records by outcome (succeeded, failed, skipped).",
        )
        self.requests = meter.create_counter(
            "antavo_braze.requests",
            unit="{request}",
            description="HTTP tries to Braze and Antavo by service and status "
            "(error: no usable answer).",
        )
        self.rate_limit_wait = meter.create_counter(
            "antavo_braze.rate_limit.wait",
            unit="s",
            description="Seconds waited because Braze or Antavo asked to (429).",
        )
        self.senders: weakref.WeakSet[Any] = weakref.WeakSet()
        meter.create_observable_gauge(
            "antavo_braze.sender.queue_depth",
            callbacks=[self._observe_queues],
            unit="{change}",
            description="Changes in the background senders: queued, or in flight.",
        )

    def _observe_queues(self, _options: Any) -> Iterator[Any]:
        observation = _api().metrics.Observation
        queued = in_flight = 0
        for sender in list(self.senders):
            stats = sender.stats()
            queued += stats.queued
            in_flight += stats.in_flight
        yield observation(queued, {"antavo_braze.state": "queued"})
        yield observation(in_flight, {"antavo_braze.state": "in_flight"})


# One instrument set per meter: the SDK hands out one meter per name, and an observable gauge
# registered twice under one name would lose its second callback.
_instruments: dict[int, tuple[Any, _Instruments]] = {}
_instruments_lock = threading.Lock()


def _instruments_for(meter: Any) -> _Instruments:
    with _instruments_lock:
        found = _instruments.get(id(meter))
        if found is None or found[0] is not meter:
            found = (meter, _Instruments(meter))
            _instruments[id(meter)] = found
        return found[1]


class Active:
    """Telemetry resolved for one call: a tracer and/or instruments (either may be ``None``)."""

    __slots__ = ("instruments", "server", "service", "tracer")

    def __init__(self, tracer: Any, instruments: _Instruments | None) -> None:
        self.tracer = tracer
        self.instruments = instruments
        self.server: tuple[str, int] | None = None
        self.service = "braze"  # which API the tries go to: "braze" or "antavo"

    # --- one HTTP try (called by the send loop) --------------------------------------------

    def start_try(self, exchange: Try) -> None:
        """Open the span of ``exchange``'s next try (a child of the current context)."""
        if self.tracer is None:
            return
        attributes: dict[str, Any] = {
            "http.request.method": exchange.method,
            "url.path": exchange.path,
            "antavo_braze.attempt": exchange.attempt,
        }
        if exchange.attempt > 1:
            attributes["http.request.resend_count"] = exchange.attempt - 1
        if self.server is not None:
            attributes["server.address"], attributes["server.port"] = self.server
        items = getattr(exchange.tag, "items", None)
        if items is not None:
            attributes["antavo_braze.objects"] = len(items)
        exchange.span = self.tracer.start_span(
            f"{exchange.method} {exchange.path}",
            kind=_api().trace.SpanKind.CLIENT,
            attributes=attributes,
        )

    def end_try(
        self,
        exchange: Try,
        outcome: AttemptOutcome | None,
        decision: RetryDecision | None = None,
        exc: BaseException | None = None,
        payload: Any = None,
    ) -> None:
        """Close the span of ``exchange``'s try and count it: answered (``outcome``; the
        JSON ``payload`` of an accepted answer), failed (``exc``) or abandoned (neither)."""
        status = None if outcome is None else outcome.status
        error = None
        if exc is not None:
            error = type(exc).__name__
        elif outcome is None:
            error = "interrupted"
        elif outcome.failure is not None:
            error = outcome.failure
        elif status is not None and status >= 400:
            error = str(status)
        if self.instruments is not None:
            label = "error" if status is None else str(status)
            self.instruments.requests.add(
                1,
                {
                    "http.request.method": exchange.method,
                    "http.response.status_code": label,
                    "antavo_braze.service": self.service,
                },
            )
            if decision is not None and decision.retry and decision.rate_limited:
                self.instruments.rate_limit_wait.add(
                    decision.wait, {"antavo_braze.service": self.service}
                )
        span = exchange.span
        if span is None:
            return
        exchange.span = None
        attributes: dict[str, Any] = {}  # set at once: each call takes the span's lock
        if status is not None:
            attributes["http.response.status_code"] = status
        if isinstance(payload, dict):
            errors = payload.get("errors")
            if isinstance(errors, list):
                attributes["antavo_braze.partial_errors"] = len(errors)
        if decision is not None:
            attributes["antavo_braze.retry"] = decision.retry
            if decision.retry:
                attributes["antavo_braze.retry_wait"] = decision.wait
        if error is not None:
            attributes["error.type"] = error
            span.set_status(_api().trace.StatusCode.ERROR, error)
        span.set_attributes(attributes)
        span.end()

    # --- one call ----------------------------------------------------------------------------

    def count_records(self, kind: str, succeeded: int, failed: int, skipped: int) -> None:
        """Add a finished call's records, by outcome."""
        if self.instruments is None:
            return
        counts = {"succeeded": succeeded, "failed": failed, "skipped": skipped}
        for outcome, count in counts.items():
            if count:
                self.instruments.records.add(
                    count, {"antavo_braze.kind": kind, "antavo_braze.outcome": outcome}
                )


class Telemetry:
    """Where the spans and metrics of a client, Syncer or sender go.

    ``tracer_provider`` / ``meter_provider``: OpenTelemetry providers; ``None`` uses the
    global ones once the application has set them (and nothing until then).
    """

    __slots__ = ("_meter", "_meter_provider", "_tracer", "_tracer_provider")

    def __init__(self, tracer_provider: Any = None, meter_provider: Any = None) -> None:
        if (tracer_provider is not None or meter_provider is not None) and _api() is None:
            from .exceptions import ConfigurationError

            raise ConfigurationError(
                "tracer_provider / meter_provider need OpenTelemetry: pip install "
                "opentelemetry-api (or the otel extra: pip install '.[otel]' in a checkout)"
            )
        self._tracer_provider = tracer_provider
        self._meter_provider = meter_provider
        self._tracer: tuple[Any, Any] | None = None  # (provider, tracer)
        self._meter: tuple[Any, Any] | None = None  # (provider, meter)

    @property
    def configured(self) -> bool:
        """Whether providers were given here (not only the global ones)."""
        return self._tracer_provider is not None or self._meter_provider is not None

    def active(self) -> Active | None:
        """This call's tracer and instruments, or ``None`` when there is nowhere to send
        them (no ``opentelemetry``, no provider given or set globally)."""
        api = _api()
        if api is None:
            return None
        tracer = self._resolve_tracer(api)
        meter = self._resolve_meter(api)
        if tracer is None and meter is None:
            return None
        return Active(tracer, None if meter is None else _instruments_for(meter))

    def _resolve_tracer(self, api: Any) -> Any:
        provider = self._tracer_provider
        if provider is None:
            provider = api.trace.get_tracer_provider()
            if isinstance(provider, api.trace.ProxyTracerProvider):
                return None
        cached = self._tracer
        if cached is None or cached[0] is not provider:
            cached = self._tracer = (provider, provider.get_tracer(NAME, __version__))
        return cached[1]

    def _resolve_meter(self, api: Any) -> Any:
        provider = self._meter_provider
        if provider is None:
            provider = api.metrics.get_meter_provider()
            if isinstance(provider, api.proxy_meter_provider):
                return None
        cached = self._meter
        if cached is None or cached[0] is not provider:
            cached = self._meter = (provider, provider.get_meter(NAME, __version__))
        return cached[1]

    def watch(self, sender: Any) -> None:
        """Report ``sender``'s queue depth (through its ``stats()``) while it lives."""
        active = self.active()
        if active is not None and active.instruments is not None:
            active.instruments.senders.add(sender)

    # --- context propagation ----------------------------------------------------------------

    @staticmethod
    def capture() -> Any:
        """The caller's current context (to carry a submission's trace into the sender), or
        ``None`` when no trace is being recorded."""
        api = _api()
        if api is None:
            return None
        if not api.trace.get_current_span().get_span_context().is_valid:
            return None
        return api.context.get_current()

    @contextmanager
    def window(self, contexts: Iterable[Any], changes: int) -> Iterator[None]:
        """The span of a sender window: a child of the first submitter's context, linked
        to the other submitters' spans, so each caller's trace shows the send it led to."""
        active = self.active()
        tracer = None if active is None else active.tracer
        if tracer is None:
            yield
            return
        api = _api()
        parent = None
        links: list[Any] = []
        seen: set[tuple[int, int]] = set()
        for context in contexts:
            if context is None:
                continue
            if parent is None:
                parent = context
            span_context = api.trace.get_current_span(context).get_span_context()
            key = (span_context.trace_id, span_context.span_id)
            if key not in seen and len(links) < _MAX_LINKS:
                seen.add(key)
                links.append(api.trace.Link(span_context))
        with tracer.start_as_current_span(
            "antavo_braze.sender.send",
            context=parent,
            links=links,
            attributes={"antavo_braze.changes": changes},
        ):
            yield


def _report_attributes(span: Any, report: Any) -> None:
    for name in ("total", "succeeded", "failed", "skipped", "requests", "retries"):
        value = getattr(report, name, None)
        if isinstance(value, int):
            span.set_attribute(f"antavo_braze.{name}", value)
    failures = getattr(report, "failures", None)
    if failures:
        stages: dict[str, int] = {}
        for failure in failures:
            stages[failure.stage] = stages.get(failure.stage, 0) + 1
        for stage, count in stages.items():
            span.set_attribute(f"antavo_braze.failed.{stage}", count)


def traced(name: str) -> Callable[[F], F]:
    """A span ``antavo_braze.<name>`` around a public method of an object with a
    ``_telemetry`` (:class:`Telemetry`); a returned report (or one carried by the error
    raised, ``.report``) adds its counts. No provider configured: the method runs as is."""
    span_name = f"{NAME}.{name}"

    def decorate(method: F) -> F:
        @functools.wraps(method)
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            active = self._telemetry.active()
            if active is None or active.tracer is None:
                return method(self, *args, **kwargs)
            with active.tracer.start_as_current_span(
                span_name,
                attributes={"antavo_braze.call": name},
                record_exception=False,
                set_status_on_exception=False,
            ) as span:
                try:
                    result = method(self, *args, **kwargs)
                except BaseException as exc:
                    report = getattr(exc, "report", None)
                    if report is not None:
                        _report_attributes(span, report)
                    span.set_attribute("error.type", type(exc).__name__)
                    span.set_status(_api().trace.StatusCode.ERROR, type(exc).__name__)
                    raise
                if hasattr(result, "failures") and hasattr(result, "total"):
                    _report_attributes(span, result)
                return result

        return wrapper  # type: ignore[return-value]

    return decorate


def traced_items(telemetry: Telemetry, name: str, items: Iterator[T]) -> Iterator[T]:
    """``items`` (a lazy public call's answer, e.g. pages read on demand) inside a span
    ``antavo_braze.<name>`` with the count of items read. Its parent is the caller's context
    when the call was made, not where the items are consumed; it is current only while an
    item is fetched, never across a ``yield`` (a context attached in a generator cannot be
    detached elsewhere). No provider configured: ``items`` as they are."""
    active = telemetry.active()
    if active is None or active.tracer is None:
        return items
    return _items_in_span(active.tracer, f"{NAME}.{name}", name, items, Telemetry.capture())


def _items_in_span(
    tracer: Any, span_name: str, name: str, items: Iterator[T], parent: Any
) -> Iterator[T]:
    trace = _api().trace
    span = tracer.start_span(span_name, context=parent, attributes={"antavo_braze.call": name})
    count = 0
    try:
        while True:
            with trace.use_span(span, record_exception=False, set_status_on_exception=False):
                try:
                    item = next(items)
                except StopIteration:
                    return
            count += 1
            yield item
    except GeneratorExit:  # the consumer stopped reading: not an error
        raise
    except BaseException as exc:
        span.set_attribute("error.type", type(exc).__name__)
        span.set_status(trace.StatusCode.ERROR, type(exc).__name__)
        raise
    finally:
        close = getattr(items, "close", None)
        if callable(close):
            close()
        span.set_attribute("antavo_braze.count", count)
        span.end()
