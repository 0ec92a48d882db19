"""What OpenTelemetry support costs: the same work with ``opentelemetry`` absent (its modules
blocked), installed with no provider configured (the default: must be within 2%), imported by
the application but with no provider (every hook then asks, and is told "none"), and with an
SDK tracer and meter provider recording everything.

Two workloads: the pipeline benchmark's dry run (map + coerce + batch + serialize N members,
no network), and a real sync of the same members to FakeBraze in its own process over
loopback (every HTTP try passes the telemetry hooks). Each round runs every variant in a
fresh process, alternating, so that a noisy moment on a shared machine hits all alike; the
best round counts. ``BENCH_OLD_SRC=/path/to/old/src`` adds the code before this change (a
``git worktree add`` of main) as one more variant. Prints figures; asserts nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

N = int(os.environ.get("BENCH_N", "100000"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
OLD_SRC = os.environ.get("BENCH_OLD_SRC")

BLOCK = """
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name == "opentelemetry" or name.startswith("opentelemetry."):
            raise ImportError(name)
sys.meta_path.insert(0, _Block())
"""


def child() -> None:
    """One round of one variant: print the seconds of each workload as JSON."""
    variant = os.environ["BENCH_VARIANT"]
    if variant == "absent":
        exec(BLOCK)
    if variant == "old":
        sys.path.insert(0, OLD_SRC or "")
    if variant == "imported":
        import opentelemetry.metrics
        import opentelemetry.trace  # noqa: F401
    from _common import MAPPING, members

    import antavo_braze as ab

    options: dict[str, object] = {}
    if variant == "recording":
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
        meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
        options = {"tracer_provider": tracer_provider, "meter_provider": meter_provider}
    records = list(members(N))
    url = os.environ["BENCH_URL"]
    with ab.BrazeClient(url, "test-key", max_in_flight=4, **options) as client:
        syncer = ab.Syncer(client, MAPPING)
        started = time.perf_counter()
        dry = syncer.dry_run("members", records)
        pipeline = time.perf_counter() - started
        started = time.perf_counter()
        report = syncer.sync_members(records)
        sync = time.perf_counter() - started
    assert dry.succeeded == report.succeeded == N, report
    loaded = any(name.startswith("opentelemetry") for name in sys.modules)
    print(json.dumps({"pipeline": pipeline, "sync": sync, "otel_loaded": loaded,
                      "module": ab.__file__}))  # fmt: skip


def main() -> None:
    if os.environ.get("BENCH_VARIANT"):
        child()
        return
    from _common import machine
    from _server import fake_braze_process

    variants = ["absent", "idle", "imported", "recording"] + (["old"] if OLD_SRC else [])
    labels = {
        "absent": "opentelemetry not installed",
        "idle": "installed, no provider (default)",
        "imported": "imported by the app, no provider",
        "recording": "SDK providers, recording all",
        "old": "before this change (main)",
    }
    print(f"telemetry: N={N:,} members, best of {ROUNDS} rounds, alternating; {machine()}")
    best: dict[str, dict[str, float]] = {v: {} for v in variants}
    with fake_braze_process(record=False, validate=False) as (url, _):
        for _ in range(ROUNDS):
            for variant in variants:
                env = {**os.environ, "BENCH_VARIANT": variant, "BENCH_URL": url}
                done = subprocess.run(
                    [sys.executable, __file__], env=env, capture_output=True, text=True, check=True
                )
                figures = json.loads(done.stdout.strip().splitlines()[-1])
                if variant == "absent":
                    assert not figures["otel_loaded"], "the block did not hold"
                if variant == "old":
                    assert figures["module"].startswith(OLD_SRC or "-"), figures["module"]
                for name in ("pipeline", "sync"):
                    best[variant][name] = min(best[variant].get(name, 1e9), figures[name])
    base = best["absent"]
    for name, what in (("pipeline", "dry run (no network)"), ("sync", "sync over loopback")):
        print(f" {what}:")
        for variant in variants:
            seconds = best[variant][name]
            change = (seconds / base[name] - 1) * 100
            print(
                f"  {labels[variant]:34} {N / seconds:>9,.0f} members/s  "
                f"({seconds:.3f} s, {change:+.1f}% vs not installed)"
            )


if __name__ == "__main__":
    main()
