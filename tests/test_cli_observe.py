"""The CLI's observability: ``--report-json``, progress with percentage and ETA, and log lines
that never run into the progress line (real subprocesses, a real pseudo-terminal)."""

from __future__ import annotations

import io
import json
import logging
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

import antavo_braze as ab
from antavo_braze import cli
from antavo_braze.testing import FakeBraze

from .conftest import DATA


def cli_env(fake: FakeBraze) -> dict[str, str]:
    """The environment with credentials pointing at the fake."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRAZE_")}
    env.update({"BRAZE_REST_ENDPOINT": fake.url, "BRAZE_API_KEY": fake.api_key})
    return env


def run(fake: FakeBraze, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the CLI against the fake."""
    return subprocess.run(
        [sys.executable, "-m", "antavo_braze.cli", *args],
        capture_output=True,
        text=True,
        env=cli_env(fake),
        timeout=120,
        check=False,
    )


def write_members(path: Path, count: int, bad: int = 0) -> Path:
    lines = [json.dumps({"id": f"member-{n}", "score": n}) for n in range(count)]
    lines += [json.dumps({"id": f"bad-{n}", "score": f"secret-{n}"}) for n in range(bad)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_sync_report_json(fake: FakeBraze, tmp_path: Path) -> None:
    """--report-json writes counts, grouped failures, requests by status, timings and the
    exit code, owner-only, without member ids or values."""
    members = write_members(tmp_path / "m.jsonl", 10, bad=2)
    out = tmp_path / "report.json"
    fake.inject(times=1, status=503)
    mapping = str(DATA / "mapping.json")
    args = ["sync", "members", "--mapping", mapping, "--input", str(members)]
    done = run(fake, *args, "--report-json", str(out), "--quiet")
    assert done.returncode == 1, done.stderr
    data = json.loads(out.read_text())
    assert data["command"] == "sync"
    assert data["exit_code"] == 1
    assert data["ok"] is False
    assert data["counts"]["total"] == 12
    assert data["counts"]["succeeded"] == 10
    (group,) = data["failures"]
    assert (group["stage"], group["field"], group["count"]) == ("validation", "score", 2)
    assert group["lines"] == [11, 12]
    assert data["requests"] == 2
    assert data["requests_by_status"]["503"] == 1
    assert data["retries"] == 1
    assert data["timings"]["started_at"] <= data["timings"]["finished_at"]
    assert data["timings"]["elapsed_seconds"] >= 0
    assert "watermark" in data
    text = out.read_text()
    assert "secret-" not in text
    assert "bad-0" not in text
    assert oct(out.stat().st_mode & 0o777) == "0o600"


def test_replay_report_json(fake: FakeBraze, tmp_path: Path) -> None:
    """replay --report-json reports the resend like a sync."""
    dead = tmp_path / "dead.jsonl"
    fake.inject(times=5, status=503)
    with fake.client() as client:  # fast retries: the records fail into the dead letter
        syncer = ab.Syncer(client, DATA / "mapping.json", dead_letter=dead)
        first = syncer.sync_members([{"id": f"member-{n}", "score": n} for n in range(3)])
        syncer.close()
    assert first.failed == 3
    out = tmp_path / "replay.json"
    again = run(fake, "replay", str(dead), "--report-json", str(out), "--quiet")
    assert again.returncode == 0, again.stderr
    data = json.loads(out.read_text())
    assert (data["command"], data["exit_code"]) == ("replay", 0)
    assert data["counts"]["succeeded"] == 3


def test_progress_line_shows_percentage_and_eta() -> None:
    """With a known total the progress line has the percentage and the time left."""
    progress = ab.Progress(
        done=250, succeeded=240, failed=5, skipped=5, requests=4, elapsed=5.0, total=1000
    )
    line = progress.line()
    assert "250/1,000 records (25%, 50/s, ETA 0:00:15)" in line
    unknown = ab.Progress(done=250, succeeded=250, failed=0, skipped=0, requests=4, elapsed=5.0)
    assert "%" not in unknown.line()
    assert "ETA" not in unknown.line()
    one = ab.Progress(done=1, succeeded=1, failed=0, skipped=0, requests=1, elapsed=1.0)
    assert one.line().startswith("1 record (")  # the singular for one


@given(
    done=st.integers(0, 10**9),
    total=st.integers(0, 10**9),
    elapsed=st.floats(0, 10**6, allow_nan=False),
)
def test_progress_fraction_and_eta_are_bounded(done: int, total: int, elapsed: float) -> None:
    """The fraction stays within 0-1 and the ETA is never negative, whatever the counts."""
    progress = ab.Progress(
        done=done, succeeded=done, failed=0, skipped=0, requests=0, elapsed=elapsed, total=total
    )
    if progress.fraction is not None:
        assert 0.0 <= progress.fraction <= 1.0
    if progress.eta is not None:
        assert progress.eta >= 0
    assert progress.line()


def test_input_size_counts_records(tmp_path: Path) -> None:
    """The progress total is the number of records of a JSON Lines or CSV file (a CSV
    header and a missing last newline included correctly); unknown for stdin and .gz."""
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text('{"id": 1}\n{"id": 2}\n{"id": 3}')
    csv = tmp_path / "m.csv"
    csv.write_text("id,score\n1,2\n3,4\n")
    parser = cli.build_parser()

    def size(path: str) -> int | None:
        args = parser.parse_args(["sync", "members", "--mapping", "m", "--input", path])
        return cli._input_size(args)

    assert size(str(jsonl)) == 3
    assert size(str(csv)) == 2
    assert size("-") is None
    assert size(str(tmp_path / "m.jsonl.gz")) is None


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_log_lines_clear_the_progress_line(monkeypatch: object) -> None:
    """A log record written while a progress line is on the terminal starts on a cleared
    line; the progress line is drawn again by its next update."""
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)  # type: ignore[attr-defined]
    line = cli._ProgressLine(terminal, total=100)
    handler = cli._TerminalHandler()
    logger = logging.getLogger("antavo_braze.test_progress")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        line(ab.Progress(done=10, succeeded=10, failed=0, skipped=0, requests=1, elapsed=1.0))
        logger.warning("POST /users/track: HTTP 503; retry 1 in 0.50s")
        line._last = 0.0
        line(ab.Progress(done=20, succeeded=20, failed=0, skipped=0, requests=2, elapsed=2.0))
        line.close()
    finally:
        logger.removeHandler(handler)
    text = terminal.getvalue()
    assert "10/100 records (10%" in text
    assert "\r\x1b[KPOST /users/track: HTTP 503" in text
    before_log = text.split("POST /users/track")[0]
    assert before_log.endswith("\r\x1b[K")
    assert text.endswith("\n")


def test_progress_and_logs_on_a_real_terminal(fake: FakeBraze, tmp_path: Path) -> None:
    """On a pseudo-terminal a sync shows percentage and ETA, and the retry warning that
    comes mid-run starts on a line of its own."""
    members = write_members(tmp_path / "m.jsonl", 3000)
    mapping = str(DATA / "mapping.json")
    command = ["sync", "members", "--mapping", mapping, "--input", str(members)]
    slowly = ["--rate", "20/1", "--max-in-flight", "1"]  # about 2 s: progress is shown
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "antavo_braze.cli", *command, *slowly],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=terminal,
        env=cli_env(fake),
    )
    os.close(terminal)
    output = b""
    injected = False
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            if not injected and b"ETA" in output:
                fake.inject(times=1, status=503)  # a retry warning while progress is shown
                injected = True
            ready, _, _ = select.select([controller], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(controller, 65536)
                except OSError:  # the process closed the terminal
                    break
                if not chunk:
                    break
                output += chunk
            elif process.poll() is not None:
                break
    finally:
        process.wait(timeout=60)
        os.close(controller)
    assert process.returncode == 0, output
    text = output.decode()
    assert "/3,000 records (" in text
    assert "%" in text
    assert "ETA " in text
    assert injected
    before, found, _ = text.partition("HTTP 503; retry")
    assert found, text
    start = before.rsplit("\n", 1)[-1].rsplit("\x1b[K", 1)
    # The warning's line holds nothing of the progress line before it.
    assert len(start) == 2, repr(before[-200:])
    assert "records (" not in start[1], repr(before[-200:])
