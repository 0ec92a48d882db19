"""Peak memory of a streamed sync: the CLI syncs N members from a JSONL file into FakeBraze.

Runs `antavo-braze sync members` (in-process main(), so its own peak RSS can be read) for
N = 100,000 and 1,000,000 generated members; FakeBraze runs in another process. Prints the
peak RSS of each run and their ratio; asserts nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import MAPPING, machine, members
from _server import fake_braze_process

SIZES = [int(n) for n in os.environ.get("BENCH_SIZES", "100000,1000000").split(",")]
RUNNER = (
    "import resource, sys; from antavo_braze.cli import main; rc = main(sys.argv[1:]); "
    "print('MAXRSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); "
    "sys.exit(rc)"
)


def write_members(path: Path, count: int) -> None:
    with path.open("w") as file:
        for record in members(count):
            file.write(json.dumps(record) + "\n")


def main() -> None:
    print(f"memory: streamed CLI sync from JSONL, max_in_flight=8; {machine()}")
    results = {}
    with (
        tempfile.TemporaryDirectory() as folder,
        fake_braze_process(record=False, validate=False) as (url, _),
    ):
        mapping = Path(folder) / "mapping.json"
        mapping.write_text(json.dumps(MAPPING))
        for count in SIZES:
            data = Path(folder) / f"members-{count}.jsonl"
            write_members(data, count)
            env = {**os.environ, "BRAZE_REST_ENDPOINT": url, "BRAZE_API_KEY": "test-key"}
            started = time.perf_counter()
            result = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    RUNNER,
                    "sync",
                    "members",
                    "--mapping",
                    str(mapping),
                    "--input",
                    str(data),
                    "--max-in-flight",
                    "8",
                ],
                capture_output=True,
                text=True,
                env=env,
                check=False,
            )
            seconds = time.perf_counter() - started
            peak = int(result.stderr.rsplit("MAXRSS_KB", 1)[1].split()[0]) / 1024
            summary = result.stdout.strip().splitlines()[0]
            progress_lines = result.stderr.count("records (")
            results[count] = peak
            print(
                f"  N={count:>9,}  peak RSS {peak:6.1f} MiB  {seconds:6.1f} s  exit "
                f"{result.returncode}  progress lines {progress_lines}  [{summary}]"
            )
            data.unlink()
    if len(results) > 1:
        small, large = results[min(results)], results[max(results)]
        print(f"  ratio peak({max(results):,}) / peak({min(results):,}) = {large / small:.2f}")


if __name__ == "__main__":
    main()
