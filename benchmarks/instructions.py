"""Instructions per member, counted by valgrind's callgrind: a repeatable pipeline figure.

Wall-clock figures on a shared VM move by ±20% between runs; instruction counts do not. This
counts the instructions a dry run of N members costs (input generated and frozen out of the
GC first, then subtracted), with the standard library's json and with orjson. Pass the Python
of another install (``--against /path/to/venv/bin/python``, e.g. a venv with an earlier
release) to print both side by side. Needs valgrind; prints figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

N = int(os.environ.get("BENCH_N", "10000"))

# Runs inside the measured interpreter: generate, freeze, and (with RUN set) sync.
PROGRAM = """
import gc, os, sys
sys.path.insert(0, {benchmarks!r})
from _common import MAPPING, members
import antavo_braze as ab
records = list(members({n}))
gc.freeze()
if os.environ.get("RUN"):
    client = ab.BrazeClient("http://127.0.0.1:1", "bench")
    ab.Syncer(client, MAPPING).dry_run("members", records)
"""


def count(python: str, script: Path, backend: str, run: bool) -> int:
    # A fixed hash seed: dict layouts, and so instruction counts, repeat exactly.
    env = {**os.environ, "ANTAVO_BRAZE_JSON": backend, "RUN": "1" if run else ""}
    env["PYTHONHASHSEED"] = "0"
    out = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", python, str(script)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    line = next(x for x in out.stderr.splitlines() if "Collected" in x)
    return int(line.split()[-1])


def per_member(python: str, script: Path, backend: str) -> int:
    return (count(python, script, backend, True) - count(python, script, backend, False)) // N


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--against", help="the Python of another install to compare with")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        print("instructions: valgrind is not installed; skipped")
        return
    with tempfile.TemporaryDirectory() as folder:
        script = Path(folder) / "pipeline_once.py"
        script.write_text(PROGRAM.format(benchmarks=str(Path(__file__).parent), n=N))
        print(f"instructions per member (callgrind), dry run of {N:,} members, 10 fields:")
        pythons = [("this install", sys.executable)]
        if args.against:
            pythons.insert(0, ("--against", args.against))
        results: dict[str, list[int]] = {}
        for label, python in pythons:
            results[label] = [per_member(python, script, b) for b in ("json", "orjson")]
            json_count, orjson_count = results[label]
            print(f"  {label:13} json {json_count:>8,}   orjson {orjson_count:>8,}")
        if args.against:
            old, new = results["--against"], results["this install"]
            ratios = "   ".join(
                f"{name} {n / o - 1:+.1%}"
                for name, o, n in zip(("json", "orjson"), old, new, strict=True)
            )
            print(f"  change       {ratios}")


if __name__ == "__main__":
    main()
