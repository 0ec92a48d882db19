"""Pipeline benchmark (no network): map + coerce + batch + serialize 100,000 members.

Compares the SDK with the simplest hand-written loop (no validation, json.dumps into 75-object
bodies), and the SDK's list input (a batch serialized at a time) with the same members from an
iterator (each object serialized as it is built). Runs itself with and without orjson
(ANTAVO_BRAZE_JSON=json forces the stdlib), then with orjson and the compiled hot path (the
coercion rules and record builders built with mypyc, as `HATCH_BUILD_HOOK_ENABLE_MYPYC=true`
builds a wheel; compiled here from the same source into a temporary folder; skipped, saying
why, without mypyc or a C compiler). Prints figures; asserts nothing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import MAPPING, machine, members, reference_bodies

import antavo_braze as ab
from antavo_braze import _json
from antavo_braze._build import coerce

N = int(os.environ.get("BENCH_N", "100000"))
ROUNDS = 7


def sdk(records: list[dict[str, object]]) -> int:
    client = ab.BrazeClient("http://127.0.0.1:1", "bench")
    syncer = ab.Syncer(client, MAPPING)
    report = syncer.dry_run("members", records)
    assert report.succeeded == len(records), report
    return report.requests


def sdk_stream(records: list[dict[str, object]]) -> int:
    """The same members from an iterator: each object is serialized as it is built (the
    iterator could reuse its dicts), not a batch at a time."""
    client = ab.BrazeClient("http://127.0.0.1:1", "bench")
    report = ab.Syncer(client, MAPPING).dry_run("members", iter(records))
    assert report.succeeded == len(records), report
    return report.requests


def reference(records: list[dict[str, object]]) -> int:
    return sum(1 for _ in reference_bodies(records))


def run_once() -> None:
    records = list(members(N))
    # Alternate the two so that a noisy moment on a shared machine hits both alike; keep the best.
    sdk_times: list[float] = []
    stream_times: list[float] = []
    ref_times: list[float] = []
    for _ in range(ROUNDS):
        for function, times in (
            (sdk, sdk_times),
            (sdk_stream, stream_times),
            (reference, ref_times),
        ):
            started = time.perf_counter()
            function(records)
            times.append(time.perf_counter() - started)
    sdk_time, stream_time, ref_time = min(sdk_times), min(stream_times), min(ref_times)
    build = coerce.BUILD
    print(
        f"  json={_json.BACKEND:6} {build:8}  sdk {N / sdk_time:>9,.0f} members/s   "
        f"reference {N / ref_time:>9,.0f} members/s   ratio {ref_time / sdk_time:.2f}   "
        f"(from an iterator: {N / stream_time:>9,.0f} members/s)"
    )


def main() -> None:
    if os.environ.get("BENCH_CHILD"):
        run_once()
        return
    print(
        f"pipeline: N={N:,} members, 10 fields (all 7 types), best of {ROUNDS}, alternating; "
        f"{machine()}"
    )
    for backend in ("json", "orjson"):
        env = {**os.environ, "BENCH_CHILD": "1", "ANTAVO_BRAZE_JSON": backend}
        subprocess.run([sys.executable, __file__], env=env, check=True)
    with tempfile.TemporaryDirectory() as folder:
        problem = compile_hot_path(Path(folder))
        if problem is not None:
            print(f"  compiled hot path: not measured ({problem})")
            return
        path = os.pathsep.join(filter(None, [folder, os.environ.get("PYTHONPATH")]))
        env = {**os.environ, "BENCH_CHILD": "1", "ANTAVO_BRAZE_JSON": "orjson", "PYTHONPATH": path}
        subprocess.run([sys.executable, __file__], env=env, check=True)


def compiled_modules() -> list[str]:
    """What the wheel build hook compiles: pyproject.toml's mypyc ``include`` (one list)."""
    import tomllib

    config = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    include = config["tool"]["hatch"]["build"]["targets"]["wheel"]["hooks"]["mypyc"]["include"]
    return [path.removeprefix("/src/") for path in include]


def compile_hot_path(folder: Path) -> str | None:
    """Copy the package into ``folder`` and compile its hot modules with mypyc there (as the
    wheel build hook does); ``None`` when done, else why not."""
    mypyc = shutil.which("mypyc", path=str(Path(sys.executable).parent)) or shutil.which("mypyc")
    if mypyc is None:
        return "mypyc is not installed: pip install mypy"
    skip = shutil.ignore_patterns("*.so", "__pycache__")
    shutil.copytree(Path(ab.__file__).parent, folder / "antavo_braze", ignore=skip)
    done = subprocess.run(
        [mypyc, "--ignore-missing-imports", *compiled_modules()],
        cwd=folder, capture_output=True, text=True,
    )  # fmt: skip
    if done.returncode != 0:
        return "mypyc failed: " + (done.stdout + done.stderr).strip().splitlines()[-1][:200]
    return None


if __name__ == "__main__":
    main()
