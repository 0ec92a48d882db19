"""Observability: OpenTelemetry spans and metrics (SDK in-memory exporter and reader),
structured log records, and the report as JSON. Real HTTP against FakeBraze throughout."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import antavo_braze as ab
from antavo_braze.testing import FakeAntavo, FakeBraze

otel_sdk = pytest.importorskip("opentelemetry.sdk")

from opentelemetry import trace  # noqa: E402
from opentelemetry.sdk.metrics import MeterProvider  # noqa: E402
from opentelemetry.sdk.metrics.export import InMemoryMetricReader  # noqa: E402
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)

MEMBER_IDS = [f"member-{n:03d}" for n in range(30)]
SECRET_VALUE = "Zanzibar-Quokka"  # a member value that must never reach telemetry or logs


class Otel:
    """An SDK tracer and meter provider with in-memory export."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])

    @property
    def providers(self) -> dict[str, Any]:
        return {"tracer_provider": self.tracer_provider, "meter_provider": self.meter_provider}

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def points(self, name: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        found: list[Any] = []
        for resource in data.resource_metrics if data else []:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        found.extend(metric.data.data_points)
        return found


@pytest.fixture
def otel() -> Iterator[Otel]:
    """In-memory OpenTelemetry providers."""
    telemetry = Otel()
    yield telemetry
    telemetry.tracer_provider.shutdown()
    telemetry.meter_provider.shutdown()


def members() -> list[dict[str, Any]]:
    return [
        {"id": member_id, "score": n, "tiers": [{"name": SECRET_VALUE}]}
        for n, member_id in enumerate(MEMBER_IDS)
    ]


def assert_no_member_data(values: Iterator[Any] | list[Any]) -> None:
    """No member id or member value in any of ``values`` (stringified)."""
    for value in values:
        text = str(value)
        assert SECRET_VALUE not in text, text
        assert not any(member_id in text for member_id in MEMBER_IDS), text


def test_sync_span_tree_with_one_retried_request(
    fake: FakeBraze, mapping: ab.Mapping, otel: Otel
) -> None:
    """A sync is one call span; each HTTP try is a child span with method, server, status
    and object counts; the retried try is marked and the report's counts are on the call."""
    fake.inject(times=1, status=503)
    with fake.client(max_in_flight=1, **otel.providers) as client:
        report = ab.Syncer(client, mapping).sync_members(members())
    assert (report.succeeded, report.requests, report.retries) == (30, 2, 1)
    spans = otel.spans()
    (call,) = [s for s in spans if s.name == "antavo_braze.sync_members"]
    tries = [s for s in spans if s.name == "POST /users/track"]
    assert len(tries) == 2
    assert all(s.parent is not None and s.parent.span_id == call.context.span_id for s in tries)
    assert all(s.context.trace_id == call.context.trace_id for s in tries)
    first, second = sorted(tries, key=lambda s: s.start_time or 0)
    assert first.kind == trace.SpanKind.CLIENT
    assert first.attributes is not None
    assert second.attributes is not None
    assert first.attributes["http.request.method"] == "POST"
    assert first.attributes["server.address"] == "127.0.0.1"
    assert first.attributes["server.port"] == int(fake.url.rsplit(":", 1)[1].split("/")[0])
    assert first.attributes["http.response.status_code"] == 503
    assert first.attributes["error.type"] == "503"
    assert first.attributes["antavo_braze.retry"] is True
    assert first.attributes["antavo_braze.objects"] == 30
    assert first.status.status_code == trace.StatusCode.ERROR
    assert second.attributes["http.response.status_code"] in (200, 201)
    assert second.attributes["antavo_braze.attempt"] == 2
    assert second.attributes["http.request.resend_count"] == 1
    assert "error.type" not in second.attributes
    assert call.attributes is not None
    assert call.attributes["antavo_braze.total"] == 30
    assert call.attributes["antavo_braze.succeeded"] == 30
    assert call.attributes["antavo_braze.requests"] == 2
    assert call.attributes["antavo_braze.retries"] == 1


def test_partial_errors_and_failures_are_attributes(
    fake: FakeBraze, mapping: ab.Mapping, otel: Otel
) -> None:
    """Objects Braze refuses show as the try's partial errors and as failed counts on the call."""
    fake.block(MEMBER_IDS[3])
    with fake.client(**otel.providers) as client:
        report = ab.Syncer(client, mapping).sync_members(members()[:5])
    assert report.failed == 1
    spans = otel.spans()
    (call,) = [s for s in spans if s.name == "antavo_braze.sync_members"]
    (http,) = [s for s in spans if s.name == "POST /users/track"]
    assert http.attributes is not None
    assert call.attributes is not None
    assert http.attributes["antavo_braze.partial_errors"] == 1
    assert call.attributes["antavo_braze.failed"] == 1
    assert call.attributes["antavo_braze.failed.braze"] == 1


def test_record_metric_sums_to_the_report_total(
    fake: FakeBraze, mapping: ab.Mapping, otel: Otel
) -> None:
    """antavo_braze.records by outcome adds up to the report; requests are counted by status."""
    fake.inject(times=1, status=503)
    records = [*members()[:10], {"id": "bad", "score": "not a number"}, {"id": "empty"}]
    with fake.client(max_in_flight=1, **otel.providers) as client:
        report = ab.Syncer(client, mapping).sync_members(records)
    outcomes = {
        p.attributes["antavo_braze.outcome"]: p.value for p in otel.points("antavo_braze.records")
    }
    assert sum(outcomes.values()) == report.total == 12
    assert outcomes == {"succeeded": 10, "failed": 1, "skipped": 1}
    statuses = {
        p.attributes["http.response.status_code"]: p.value
        for p in otel.points("antavo_braze.requests")
    }
    assert sum(statuses.values()) == report.requests
    assert statuses["503"] == 1
    assert report.requests_by_status == dict(statuses.items())


def test_rate_limit_wait_seconds_are_counted(
    fake: FakeBraze, mapping: ab.Mapping, otel: Otel
) -> None:
    """A 429's wait is added to antavo_braze.rate_limit.wait and to the report."""
    fake.inject(times=1, status=429, headers={"Retry-After": "0.05"})
    with fake.client(**otel.providers) as client:
        report = ab.Syncer(client, mapping).sync_members(members()[:3])
    (point,) = otel.points("antavo_braze.rate_limit.wait")
    assert point.value == pytest.approx(report.rate_limit_wait)
    assert report.rate_limit_wait >= 0.05
    assert report.rate_limit_waits == 1


def test_trace_context_follows_a_submission_into_the_sender(
    fake: FakeBraze, mapping: ab.Mapping, otel: Otel
) -> None:
    """The sender's window span and its HTTP tries belong to the submitting caller's trace,
    and the queue depth gauge is reported."""
    tracer = otel.tracer_provider.get_tracer("web-app")
    with fake.client(**otel.providers) as client:
        syncer = ab.Syncer(client, mapping)
        with ab.BackgroundSender(syncer, flush_interval=0.05) as sender:
            with tracer.start_as_current_span("POST /checkout") as web:
                submission = sender.submit_member({"id": "m-1", "score": 5})
            with tracer.start_as_current_span("POST /other") as other:
                later = sender.submit_member({"id": "m-2", "score": 6})
            assert submission.result(10).ok
            assert later.result(10).ok
            assert otel.points("antavo_braze.sender.queue_depth")
    spans = otel.spans()
    windows = [s for s in spans if s.name == "antavo_braze.sender.send"]
    assert windows
    window = windows[0]
    assert window.context.trace_id == web.get_span_context().trace_id
    assert window.parent is not None
    assert window.parent.span_id == web.get_span_context().span_id
    tries = [s for s in spans if s.name == "POST /users/track"]
    assert any(
        t.context.trace_id == web.get_span_context().trace_id
        and t.parent is not None
        and t.parent.span_id == window.context.span_id
        for t in tries
    )
    # The other caller's trace: its own window, or a link from the shared one.
    other_id = other.get_span_context().trace_id
    assert any(
        w.context.trace_id == other_id or any(link.context.trace_id == other_id for link in w.links)
        for w in windows
    )


def test_no_member_data_in_spans_metrics_or_logs(
    fake: FakeBraze, mapping: ab.Mapping, otel: Otel, caplog: pytest.LogCaptureFixture
) -> None:
    """Neither span attributes, metric attributes nor any log record (its message and every
    field) carry a member's id or value, whatever happens in the run."""
    fake.inject(times=1, status=503)
    fake.inject(times=1, status=429, headers={"Retry-After": "0.01"})
    fake.block(MEMBER_IDS[4])
    records = [*members(), {"id": MEMBER_IDS[5], "score": SECRET_VALUE}]
    with (
        caplog.at_level(logging.DEBUG, logger="antavo_braze"),
        fake.client(max_in_flight=1, **otel.providers) as client,
    ):
        syncer = ab.Syncer(client, mapping)
        report = syncer.sync_members(records)
        with ab.BackgroundSender(syncer, flush_interval=0.01) as sender:
            sender.submit_member({"id": MEMBER_IDS[6], "score": SECRET_VALUE}).result(10)
            sender.submit_member({"id": MEMBER_IDS[4], "score": 1}).result(10)
    assert report.failed == 2
    for span in otel.spans():
        assert_no_member_data([span.name, *(span.attributes or {}).items()])
        for event in span.events:
            assert_no_member_data(list((event.attributes or {}).items()))
    data = otel.reader.get_metrics_data()
    assert data is not None
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    assert_no_member_data(list(point.attributes.items()))
    ours = [r for r in caplog.records if r.name.startswith("antavo_braze")]
    assert any(r.levelno >= logging.WARNING for r in ours)
    for record in ours:
        if record.levelno >= logging.INFO:
            assert_no_member_data([record.getMessage(), *vars(record).values()])


def test_every_log_record_has_structured_fields(
    fake: FakeBraze, mapping: ab.Mapping, caplog: pytest.LogCaptureFixture
) -> None:
    """Every record the SDK emits names its call and carries only documented fields."""
    from antavo_braze._telemetry import LOG_FIELDS

    fake.inject(times=2, status=503)
    fake.block(MEMBER_IDS[2])
    with (
        caplog.at_level(logging.DEBUG, logger="antavo_braze"),
        fake.client(max_in_flight=1) as client,
    ):
        syncer = ab.Syncer(client, mapping)
        syncer.sync_members(members()[:5])
        with ab.BackgroundSender(syncer, flush_interval=0.01) as sender:
            sender.submit_member({"id": MEMBER_IDS[2], "score": 1}).result(10)
    ours = [r for r in caplog.records if r.name.startswith("antavo_braze.")]
    assert {r.name for r in ours} >= {"antavo_braze.http", "antavo_braze.sync"}
    standard = set(vars(logging.makeLogRecord({})))
    for record in ours:
        extra = set(vars(record)) - standard - {"message", "asctime"}
        assert "call" in extra, record.getMessage()
        assert extra <= set(LOG_FIELDS), extra - set(LOG_FIELDS)
    summary = [r for r in ours if r.getMessage().startswith("member sync:")]
    assert summary
    assert summary[0].total == 5
    failed = [r for r in ours if r.name == "antavo_braze.sender" and "failed" in r.getMessage()]
    assert failed
    assert failed[0].stage == "braze"


def test_the_package_root_has_a_null_handler() -> None:
    """Without logging configured, the SDK prints nothing (a NullHandler on antavo_braze)."""
    handlers = logging.getLogger("antavo_braze").handlers
    assert any(isinstance(h, logging.NullHandler) for h in handlers)


def test_global_providers_are_used_once_set(fake: FakeBraze, mapping: ab.Mapping) -> None:
    """With no provider given and none set globally nothing is recorded; a provider given
    to the Syncer alone still traces its HTTP tries."""
    from antavo_braze._telemetry import Telemetry

    assert Telemetry().active() is None  # the test process sets no global provider
    telemetry = Otel()
    with fake.client() as client:
        ab.Syncer(client, mapping, tracer_provider=telemetry.tracer_provider).sync_members(
            members()[:2]
        )
    names = [s.name for s in telemetry.spans()]
    assert names.count("POST /users/track") == 1
    assert "antavo_braze.sync_members" in names


def test_client_calls_have_spans(fake: FakeBraze, otel: Otel) -> None:
    """A client call (track, check_permissions) is a span with its HTTP tries as children."""
    with fake.client(**otel.providers) as client:
        client.track(attributes=[{"external_id": "x", "a": 1}])
        permissions = client.check_permissions()
    spans = otel.spans()
    (track,) = [s for s in spans if s.name == "antavo_braze.track"]
    (check,) = [s for s in spans if s.name == "antavo_braze.check_permissions"]
    children = [
        s for s in spans if s.parent is not None and s.parent.span_id == check.context.span_id
    ]
    assert len(children) == len(permissions)  # one probe request each
    assert any(s.parent is not None and s.parent.span_id == track.context.span_id for s in spans)


def test_the_api_works_without_opentelemetry(tmp_path: Any) -> None:
    """With the opentelemetry modules blocked the SDK syncs as ever, and asking for a
    provider is a clear ConfigurationError."""
    script = """
import sys

class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "opentelemetry" or name.startswith("opentelemetry."):
            raise ImportError("blocked: " + name)

sys.meta_path.insert(0, Block())
import antavo_braze as ab
from antavo_braze.testing import FakeAntavo, FakeBraze

mapping = {"fields": [{"loyalty_field": "score", "remote_field": "points"}]}
with FakeBraze() as fake, fake.client() as client:
    report = ab.Syncer(client, mapping).sync_members([{"id": "a", "score": 1}])
    assert report.succeeded == 1, report
    try:
        ab.BrazeClient(fake.url, "k", tracer_provider=object())
    except ab.ConfigurationError as exc:
        print("refused:", exc)
assert not any(m.startswith("opentelemetry") for m in sys.modules)
print("ok")
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "refused: tracer_provider / meter_provider need OpenTelemetry" in done.stdout
    assert done.stdout.strip().endswith("ok")


def test_report_to_dict_groups_failures_without_member_data(
    fake: FakeBraze, mapping: ab.Mapping
) -> None:
    """SyncReport.to_dict() is JSON-ready: counts, failures grouped by stage, field and
    reason, requests by status, timings; no member ids or values."""
    fake.inject(times=1, status=503)
    records = [
        *members()[:4],
        {"id": MEMBER_IDS[10], "score": SECRET_VALUE},
        {"id": MEMBER_IDS[11], "score": SECRET_VALUE + "x"},
        {"id": MEMBER_IDS[12]},
    ]
    with fake.client(max_in_flight=1) as client:
        report = ab.Syncer(client, mapping).sync_members(records)
    data = report.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["counts"]["total"] == report.total == 7
    assert data["counts"]["failed"] == 2
    assert data["failures_by_stage"] == {"validation": 2}
    (group,) = data["failures"]
    assert (group["stage"], group["field"], group["count"]) == ("validation", "score", 2)
    assert group["indexes"] == [4, 5]
    assert data["requests"] == 2
    assert data["requests_by_status"] == report.requests_by_status
    assert sum(data["requests_by_status"].values()) == 2
    assert data["timings"]["elapsed_seconds"] >= 0
    assert data["skipped_by_reason"] == {"no mapped field present": 1}
    assert_no_member_data([json.dumps(data)])


def test_serve_metrics_and_failures_logged_without_values(
    fake: FakeBraze, mapping: ab.Mapping, caplog: pytest.LogCaptureFixture
) -> None:
    """GET /metrics serves records by outcome, requests by status, rate-limit wait seconds
    and the queue depth; a failed change is logged with its stage and field, not its value."""
    import asyncio

    from antavo_braze.serve import create_app

    fake.inject(times=1, status=429, headers={"Retry-After": "0.02"})
    with (
        caplog.at_level(logging.WARNING, logger="antavo_braze"),
        fake.client() as client,
        ab.BackgroundSender(ab.Syncer(client, mapping), flush_interval=0.01) as sender,
    ):
        app = create_app(sender, auth=None)
        sender.submit_member({"id": MEMBER_IDS[0], "score": 1})
        sender.submit_member({"id": MEMBER_IDS[1], "score": SECRET_VALUE})
        assert sender.flush(timeout=30)
        answer: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b""}

        async def send(message: Any) -> None:
            answer.append(message)

        scope = {"type": "http", "method": "GET", "path": "/metrics", "headers": [],
                 "client": ("127.0.0.1", 5000)}  # fmt: skip
        asyncio.run(app(scope, receive, send))
    assert answer[0]["status"] == 200
    text = answer[1]["body"].decode()
    stats = sender.stats()
    assert 'antavo_braze_records_total{outcome="succeeded"} 1' in text
    assert 'antavo_braze_records_total{outcome="failed"} 1' in text
    assert 'antavo_braze_requests_by_status_total{status="429"} 1' in text
    assert stats.requests_by_status["429"] == 1
    assert stats.rate_limit_wait >= 0.02
    assert f"antavo_braze_rate_limit_wait_seconds_total {round(stats.rate_limit_wait, 3)}" in text
    assert 'antavo_braze_sender_queue_depth{state="queued"} 0' in text
    failed = [r for r in caplog.records if r.name == "antavo_braze.sender"]
    assert len(failed) == 1
    assert failed[0].field == "score"
    assert_no_member_data([failed[0].getMessage(), *vars(failed[0]).values()])


@pytest.mark.parametrize("first_sync", [True, False], ids=["set-after-a-sync", "set-first"])
def test_global_providers_set_by_the_application(first_sync: bool) -> None:
    """Providers the application sets globally (before the SDK's first call or after it)
    receive the spans and metrics of clients built without any."""
    script = (
        f"FIRST_SYNC = {first_sync}\n"
        + """
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import antavo_braze as ab
from antavo_braze.testing import FakeAntavo, FakeBraze

mapping = {"fields": [{"loyalty_field": "score", "remote_field": "points"}]}
with FakeBraze() as fake, fake.client() as client:
    syncer = ab.Syncer(client, mapping)
    if FIRST_SYNC:
        syncer.sync_members([{"id": "a", "score": 1}])  # nothing set yet: nothing recorded
    exporter, reader = InMemorySpanExporter(), InMemoryMetricReader()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    syncer.sync_members([{"id": "b", "score": 2}, {"id": "c", "score": 3}])
names = sorted(s.name for s in exporter.get_finished_spans())
points = [
    p.value
    for r in reader.get_metrics_data().resource_metrics
    for s in r.scope_metrics
    for m in s.metrics
    if m.name == "antavo_braze.records"
    for p in m.data.data_points
]
print(names, points)
"""
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['POST /users/track', 'antavo_braze.sync_members'] [2]"


def test_asubmit_carries_the_trace_across_the_thread_pool(
    fake: FakeBraze, mapping: ab.Mapping, otel: Otel
) -> None:
    """An asyncio caller's span is the parent of the window its asubmit_member joined."""
    import asyncio

    tracer = otel.tracer_provider.get_tracer("asgi-app")

    async def handler(sender: ab.BackgroundSender) -> int:
        with tracer.start_as_current_span("POST /webhook") as span:
            submission = await sender.asubmit_member({"id": "m-1", "score": 1})
        assert (await submission.aresult()).ok
        return int(span.get_span_context().trace_id)

    with (
        fake.client(**otel.providers) as client,
        ab.BackgroundSender(ab.Syncer(client, mapping), flush_interval=0.01) as sender,
    ):
        trace_id = asyncio.run(handler(sender))
    (window,) = [s for s in otel.spans() if s.name == "antavo_braze.sender.send"]
    assert window.context.trace_id == trace_id


def test_serve_with_a_spool_carries_each_webhooks_trace_into_the_sender(
    fake: FakeBraze, mapping: ab.Mapping, otel: Otel, tmp_path: Path
) -> None:
    """Two webhooks posted at once through a spooled serve app (one committer batch): each
    request's span (set by an ASGI tracing middleware) is in the trace of the window sent."""
    import asyncio

    from antavo_braze.serve import create_app

    tracer = otel.tracer_provider.get_tracer("asgi-middleware")

    async def post(app: Any, member: str) -> tuple[int, int]:
        body = json.dumps({"id": member, "score": 1}).encode()
        answer: list[Any] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body}

        async def send(message: Any) -> None:
            answer.append(message)

        scope = {"type": "http", "method": "POST", "path": "/antavo/members", "headers": [],
                 "client": ("127.0.0.1", 5000)}  # fmt: skip
        with tracer.start_as_current_span("POST /antavo/members") as span:
            await app(scope, receive, send)
        return answer[0]["status"], int(span.get_span_context().trace_id)

    async def both(app: Any) -> list[tuple[int, int]]:
        return list(await asyncio.gather(post(app, "m-1"), post(app, "m-2")))

    with (
        fake.client(**otel.providers) as client,
        ab.BackgroundSender(
            ab.Syncer(client, mapping), flush_interval=0.2, spool=tmp_path / "spool.db"
        ) as sender,
    ):
        answers = asyncio.run(both(create_app(sender, auth=None)))
        assert sender.flush(timeout=30)
    assert [status for status, _ in answers] == [202, 202]
    windows = [s for s in otel.spans() if s.name == "antavo_braze.sender.send"]
    in_windows = {w.context.trace_id for w in windows} | {
        link.context.trace_id for w in windows for link in w.links
    }
    assert {trace_id for _, trace_id in answers} <= in_windows


def test_failed_tries_and_calls_are_marked_as_errors(
    fake: FakeBraze, mapping: ab.Mapping, otel: Otel
) -> None:
    """A dropped connection marks its try with the exception's type; a call that raises
    (credentials refused) is an error span naming the error, not its message."""
    fake.inject(times=1, drop=True)
    with fake.client(**otel.providers) as client:
        report = ab.Syncer(client, mapping).sync_members(members()[:2])
    assert report.succeeded == 2
    dropped = next(s for s in otel.spans() if s.name == "POST /users/track")
    assert dropped.attributes is not None
    assert dropped.attributes["error.type"] not in ("", None)
    assert "http.response.status_code" not in dropped.attributes
    otel.exporter.clear()
    with (
        fake.client(api_key="wrong-key", **otel.providers) as client,
        pytest.raises(ab.AuthenticationError),
    ):
        ab.Syncer(client, mapping).sync_members(members()[:2])
    (call,) = [s for s in otel.spans() if s.name == "antavo_braze.sync_members"]
    assert call.status.status_code == trace.StatusCode.ERROR
    assert call.attributes is not None
    assert call.attributes["error.type"] == "AuthenticationError"
    assert_no_member_data([call.status.description, *call.attributes.values()])


def test_the_sdk_never_imports_opentelemetry_itself() -> None:
    """Installed but not imported by the application, opentelemetry stays unimported
    through a whole sync: no provider can be configured, and nothing is paid for it."""
    script = """
import sys
import antavo_braze as ab
from antavo_braze.testing import FakeAntavo, FakeBraze

mapping = {"fields": [{"loyalty_field": "score", "remote_field": "points"}]}
with FakeBraze() as fake, fake.client() as client:
    syncer = ab.Syncer(client, mapping)
    syncer.sync_members([{"id": "a", "score": 1}])
    with ab.BackgroundSender(syncer) as sender:
        sender.submit_member({"id": "b", "score": 2}).result(10)
print(sorted(m for m in sys.modules if m.startswith("opentelemetry")))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


problems = st.lists(
    st.builds(
        ab.FieldProblem,
        field=st.sampled_from(["score", "tier", "dob"]),
        value=st.text(alphabet="XYZ0123", min_size=1, max_size=8),  # never in a reason's words
        reason=st.sampled_from(["not a number", "too long"]),
    ),
    max_size=3,
)


@given(
    st.lists(
        st.tuples(st.sampled_from(["validation", "braze", "transport"]), problems, st.booleans()),
        max_size=30,
    )
)
def test_failure_groups_count_every_problem_once(
    specs: list[tuple[str, list[ab.FieldProblem], bool]],
) -> None:
    """Groups account for every problem (a failure without problems counts once), group
    names never hold a value, and the most frequent group comes first."""
    from antavo_braze._run.report import failure_groups

    failures = []
    for index, (stage, found, retryable) in enumerate(specs):
        found = [
            ab.FieldProblem(p.field, p.value, f"cannot coerce {p.value} to number: {p.reason}")
            for p in found
        ]
        failures.append(
            ab.RecordFailure(
                index,
                None,
                stage,  # type: ignore[arg-type]
                "some reason",
                retryable=retryable,
                problems=tuple(found),
            )
        )
    groups = failure_groups(failures)
    assert sum(g["count"] for g in groups) == sum(max(1, len(f.problems)) for f in failures)
    counts = [g["count"] for g in groups]
    assert counts == sorted(counts, reverse=True)
    for group in groups:
        assert 0 <= group["retryable"] <= group["count"]
        assert len(group["indexes"]) <= min(group["count"], 5)
    for failure in failures:
        for problem in failure.problems:
            assert all(problem.value not in g["reason"] for g in groups)


T0 = 1_780_000_000  # a moment in 2026: the Antavo customers' updated_at
PULL_MAPPING = {
    "fields": [{"loyalty_field": "score", "remote_field": "loyalty_points", "type": "number"}],
}


@pytest.fixture
def antavo() -> Iterator[FakeAntavo]:
    """A running FakeAntavo holding five customers (member ids and a secret value)."""
    with FakeAntavo() as server:
        for n, member_id in enumerate(MEMBER_IDS[:5]):
            server.add_customer(
                {"id": member_id, "score": n, "tier": SECRET_VALUE, "updated_at": T0 + n}
            )
        yield server


def children(spans: list[ReadableSpan], parent: ReadableSpan) -> list[ReadableSpan]:
    return [s for s in spans if s.parent is not None and s.parent.span_id == parent.context.span_id]


def test_pull_span_tree_with_one_retried_antavo_request(
    fake: FakeBraze, antavo: FakeAntavo, otel: Otel
) -> None:
    """A pull is a span; Antavo's calls (the changed customers, each customer) are its
    descendants with their HTTP tries (method, server, route, status; the retried try marked),
    next to the Braze tries of the sync; no member id or value anywhere; Antavo's tries are
    counted by service and status."""
    antavo.fail_next(503, path="/customers", count=1)  # the first list page, once
    fake.inject(times=1, status=503)
    with (
        fake.client(max_in_flight=1, **otel.providers) as braze,
        antavo.client(**otel.providers) as reader,
    ):
        report = ab.Syncer(braze, PULL_MAPPING).pull_members(reader, since=T0 - 1, until=T0 + 300)
    assert (report.succeeded, report.failed) == (5, 0)
    spans = otel.spans()
    (pull,) = [s for s in spans if s.name == "antavo_braze.pull_members"]
    (changed,) = [s for s in spans if s.name == "antavo_braze.antavo.changed_customers"]
    (sync,) = [s for s in spans if s.name == "antavo_braze.sync_members"]
    assert changed.parent is not None
    assert changed.parent.span_id == pull.context.span_id
    assert sync.parent is not None
    assert sync.parent.span_id == pull.context.span_id
    assert changed.attributes is not None
    assert changed.attributes["antavo_braze.count"] == 5
    pages = [s for s in children(spans, changed) if s.name == "GET /customers"]
    assert len(pages) == 2
    first, second = sorted(pages, key=lambda s: s.start_time or 0)
    assert first.kind == trace.SpanKind.CLIENT
    assert first.attributes is not None
    assert second.attributes is not None
    assert first.attributes["http.request.method"] == "GET"
    assert first.attributes["url.path"] == "/customers"
    assert first.attributes["server.address"] == "127.0.0.1"
    assert first.attributes["server.port"] == int(antavo.url.rsplit(":", 1)[1])
    assert first.attributes["http.response.status_code"] == 503
    assert first.attributes["antavo_braze.retry"] is True
    assert first.status.status_code == trace.StatusCode.ERROR
    assert second.attributes["http.response.status_code"] == 200
    assert second.attributes["http.request.resend_count"] == 1
    customers = [s for s in children(spans, changed) if s.name == "antavo_braze.antavo.customer"]
    assert len(customers) == 5
    for customer in customers:
        (read,) = children(spans, customer)
        assert read.name == "GET /customers/{id}"
        assert read.attributes is not None
        assert read.attributes["url.path"] == "/customers/{id}"
        assert read.attributes["http.response.status_code"] == 200
    braze_tries = [s for s in children(spans, sync) if s.name == "POST /users/track"]
    assert len(braze_tries) == 2
    assert {s.context.trace_id for s in spans} == {pull.context.trace_id}
    for span in spans:
        assert_no_member_data([span.name, *(span.attributes or {}).items()])
    by_service: dict[tuple[str, str], int] = {}
    for point in otel.points("antavo_braze.requests"):
        key = (
            point.attributes["antavo_braze.service"],
            point.attributes["http.response.status_code"],
        )
        by_service[key] = by_service.get(key, 0) + point.value
        assert_no_member_data(list(point.attributes.items()))
    assert by_service[("antavo", "503")] == 1
    assert by_service[("antavo", "200")] == 1 + 5  # the list page, then each customer
    assert by_service[("braze", "503")] == 1


def test_an_antavo_read_that_fails_marks_its_spans(antavo: FakeAntavo, otel: Otel) -> None:
    """A customer read Antavo refuses ends the call span and its try as errors; a consumer
    that stops reading early still ends the list's span."""
    antavo.fail_next(400, path=f"/customers/{MEMBER_IDS[0]}")
    with antavo.client(**otel.providers) as reader:
        with pytest.raises(ab.BadRequestError):
            reader.customer(MEMBER_IDS[0])
        events = reader.events(T0, T0 + 10)
        assert list(events) == []
        changed = reader.changed_customers(T0 - 1, T0 + 300)
        next(changed)
        changed.close()  # type: ignore[attr-defined]
    spans = otel.spans()
    reads = [s for s in spans if s.name == "antavo_braze.antavo.customer"]
    assert len(reads) == 2  # the refused one, then the first changed customer
    (customer,) = [s for s in reads if s.status.status_code == trace.StatusCode.ERROR]
    assert customer.attributes is not None
    assert customer.attributes["error.type"] == "BadRequestError"
    (refused,) = children(spans, customer)
    assert refused.attributes is not None
    assert refused.attributes["http.response.status_code"] == 400
    (listed,) = [s for s in spans if s.name == "antavo_braze.antavo.changed_customers"]
    assert listed.attributes is not None
    assert listed.attributes["antavo_braze.count"] == 1
    assert listed.status.status_code != trace.StatusCode.ERROR
    (read_events,) = [s for s in spans if s.name == "antavo_braze.antavo.events"]
    assert read_events.parent is None
    assert [s.name for s in children(spans, read_events)] == ["GET /customers/-/events"]
    for span in spans:
        assert_no_member_data([span.name, *(span.attributes or {}).items()])


def test_every_log_record_of_a_pull_has_structured_fields(
    fake: FakeBraze, antavo: FakeAntavo, caplog: pytest.LogCaptureFixture
) -> None:
    """A pull with a retried Antavo request, a customer gone, a customer Antavo refuses and a
    Braze failure: every record the SDK emits names its call, carries only documented
    fields, and none at INFO or above carries a member id or value."""
    from antavo_braze._telemetry import LOG_FIELDS

    antavo.fail_next(503, path="/customers", count=1)  # the list page: retried
    antavo.fail_next(404, path=f"/customers/{MEMBER_IDS[1]}")  # gone since it was listed
    antavo.fail_next(400, path=f"/customers/{MEMBER_IDS[3]}")  # refused: the pull fails
    fake.inject(times=2, status=503)
    fake.block(MEMBER_IDS[2])
    with (
        caplog.at_level(logging.DEBUG, logger="antavo_braze"),
        fake.client(max_in_flight=1) as braze,
        antavo.client() as reader,
    ):
        syncer = ab.Syncer(braze, PULL_MAPPING, state=ab.MemoryStateStore())
        with pytest.raises(ab.BadRequestError) as failed:
            syncer.pull_members(reader, since=T0 - 1, until=T0 + 300)
    report = failed.value.report
    assert (report.succeeded, report.failed) == (1, 1)  # member-000; member-002 blocked
    ours = [r for r in caplog.records if r.name.startswith("antavo_braze.")]
    assert {r.name for r in ours} >= {"antavo_braze.antavo", "antavo_braze.sync"}
    standard = set(vars(logging.makeLogRecord({})))
    for record in ours:
        extra = set(vars(record)) - standard - {"message", "asctime"}
        assert "call" in extra, record.getMessage()
        assert extra <= set(LOG_FIELDS), extra - set(LOG_FIELDS)
        if record.levelno >= logging.INFO:
            assert_no_member_data([record.getMessage(), *vars(record).values()])
    retried = [r for r in ours if r.name == "antavo_braze.antavo" and "retry" in r.getMessage()]
    assert [(r.call, r.status, r.endpoint) for r in retried] == [  # type: ignore[attr-defined]
        ("antavo", 503, "GET /customers")
    ]
    gone = [r for r in ours if r.levelno == logging.WARNING and "gone" in r.getMessage()]
    assert [r.status for r in gone] == [404]  # type: ignore[attr-defined]
    (unsettled,) = [r for r in ours if "not settled" in r.getMessage()]
    assert unsettled.call == "pull"  # type: ignore[attr-defined]
    assert unsettled.levelno == logging.WARNING
