"""`antavo-braze pull`, run as a real subprocess against FakeAntavo and FakeBraze."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from antavo_braze.testing import FakeAntavo, FakeBraze

MAPPING = {
    "fields": [{"loyalty_field": "score", "remote_field": "loyalty_points", "type": "number"}],
    "events": [{"action": "point_add", "name": "loyalty_points_earned"}],
}
T0 = 1_780_000_000
SINCE = "2026-05-28T20:26:40Z"  # T0


@pytest.fixture
def antavo() -> Any:
    with FakeAntavo() as server:
        for number in range(12):
            server.add_customer({"id": f"c-{number}", "score": number, "updated_at": T0 + number})
            server.add_event(
                {"customer": f"c-{number}", "action": "point_add", "timestamp": T0 + number}
            )
        yield server


def environment(antavo: FakeAntavo, braze: FakeBraze, **changes: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BRAZE_", "ANTAVO_"))}
    env.update(
        {
            "BRAZE_REST_ENDPOINT": braze.url,
            "BRAZE_API_KEY": braze.api_key,
            "ANTAVO_API_URL": antavo.url,
            "ANTAVO_STACK": antavo.stack,
            "ANTAVO_API_KEY": antavo.api_key,
            "ANTAVO_API_SECRET": antavo.api_secret,
        }
    )
    env.update(changes)
    return env


def pull(
    antavo: FakeAntavo, braze: FakeBraze, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "antavo_braze.cli", "pull", *args],
        capture_output=True,
        text=True,
        env=environment(antavo, braze, **env),
        timeout=120,
        check=False,
    )


@pytest.fixture
def mapping_file(tmp_path: Path) -> str:
    path = tmp_path / "mapping.json"
    path.write_text(json.dumps(MAPPING))
    return str(path)


def test_pull_members_since(antavo: FakeAntavo, fake: FakeBraze, mapping_file: str) -> None:
    """A one-off pull with --since sends every changed customer and says where to go on."""
    result = pull(antavo, fake, "members", "--mapping", mapping_file, "--since", SINCE)
    assert result.returncode == 0, result.stderr
    assert "11 records: 11 succeeded" in result.stdout  # updated_at after since
    assert "watermark: the next pull starts at" in result.stdout
    assert fake.profiles["c-11"]["loyalty_points"] == 11


def test_pull_events_twice_from_the_watermark(
    antavo: FakeAntavo, fake: FakeBraze, mapping_file: str, tmp_path: Path
) -> None:
    """The second pull starts at the first one's watermark: no event goes twice."""
    state = str(tmp_path / "state.db")
    args = ["events", "--mapping", mapping_file, "--state", state]
    first = pull(antavo, fake, *args, "--since", SINCE)
    assert first.returncode == 0, first.stderr
    assert "12 records: 12 succeeded" in first.stdout
    again = pull(antavo, fake, *args, "--since", SINCE)  # the same window again: the ledger
    assert again.returncode == 0, again.stderr
    assert "skipped 12: already sent" in again.stdout
    third = pull(antavo, fake, *args)
    assert third.returncode == 0, third.stderr
    assert "0 records" in third.stdout
    assert len(fake.events) == 12
    assert (Path(state).stat().st_mode & 0o077) == 0


def test_pull_without_a_start_is_a_usage_error(
    antavo: FakeAntavo, fake: FakeBraze, mapping_file: str
) -> None:
    """Neither --since nor --state: exit 2 with one line, nothing read."""
    result = pull(antavo, fake, "events", "--mapping", mapping_file)
    assert result.returncode == 2
    assert "--since" in result.stderr
    assert "Traceback" not in result.stderr
    assert antavo.requests == []


def test_pull_with_a_bad_secret_exits_3(
    antavo: FakeAntavo, fake: FakeBraze, mapping_file: str
) -> None:
    """Antavo refusing the signature: exit 3, the hint shown, the secret not."""
    result = pull(
        antavo,
        fake,
        "events",
        "--mapping",
        mapping_file,
        "--since",
        SINCE,
        ANTAVO_API_SECRET="not-the-secret",
    )
    assert result.returncode == 3, result.stderr
    assert "Antavo refused the credentials" in result.stderr
    assert "not-the-secret" not in result.stderr + result.stdout


def test_pull_without_antavo_credentials(fake: FakeBraze, mapping_file: str) -> None:
    """No ANTAVO_* variables: exit 2 naming what to set."""
    with FakeAntavo() as antavo:
        result = pull(antavo, fake, "events", "--mapping", mapping_file, "--since", SINCE,
                      ANTAVO_API_SECRET="")  # fmt: skip
    assert result.returncode == 2
    assert "ANTAVO_API_SECRET" in result.stderr


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_follow_pulls_each_cycle_and_stops_cleanly(
    antavo: FakeAntavo, fake: FakeBraze, mapping_file: str, tmp_path: Path, signum: int
) -> None:
    """--follow prints one line per cycle, picks up new events, and stops on SIGTERM or
    SIGINT with 128 + the signal and no traceback."""
    state = str(tmp_path / "state.db")
    with subprocess.Popen(
        [sys.executable, "-m", "antavo_braze.cli", "pull", "events", "--mapping", mapping_file,
         "--state", state, "--since", SINCE, "--follow", "--every", "0.2", "--lag", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment(antavo, fake),
    ) as process:  # fmt: skip
        try:
            assert process.stdout is not None
            first = process.stdout.readline()
            assert "12 records: 12 succeeded" in first
            antavo.add_event({"customer": "c-1", "action": "point_add", "timestamp": time.time()})
            deadline = time.monotonic() + 60
            while len(fake.events) < 13:
                assert time.monotonic() < deadline, "the new event never arrived"
                time.sleep(0.05)
            process.send_signal(signum)
            out, err = process.communicate(timeout=60)
            out = first + out
        finally:
            if process.poll() is None:
                process.kill()
    assert process.returncode == 128 + signum, err
    assert "Traceback" not in err
    assert len(fake.events) == 13
    assert "1 record: 1 succeeded" in out


def test_demo_pulls_from_an_embedded_fake_antavo() -> None:
    """`antavo-braze demo` also pulls from a fake Antavo and shows the ledger at work."""
    result = subprocess.run(
        [sys.executable, "-m", "antavo_braze.cli", "demo", "--members", "3", "--events", "4"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "Pulling from a fake Antavo" in result.stdout
    assert "pull members: 5 records: 5 succeeded" in result.stdout
    assert "skipped as already sent" in result.stdout


def test_pull_report_json_and_check_schema(
    antavo: FakeAntavo, fake: FakeBraze, mapping_file: str, tmp_path: Path
) -> None:
    """pull writes --report-json with its watermark, and --check-schema refuses a mismatch."""
    report_file = tmp_path / "report.json"
    result = pull(
        antavo,
        fake,
        "events",
        "--mapping",
        mapping_file,
        "--since",
        SINCE,
        "--check-schema",
        "--report-json",
        str(report_file),
    )
    assert result.returncode == 0, result.stderr
    written = json.loads(report_file.read_text())
    assert (written["command"], written["exit_code"]) == ("pull events", 0)
    assert written["counts"]["total"] == 12
    assert written["watermark"]
    assert report_file.stat().st_mode & 0o777 == 0o600
    fake.set_attribute("loyalty_points", "String")  # Braze holds it as another type
    unchecked = pull(antavo, fake, "members", "--mapping", mapping_file, "--since", SINCE)
    assert unchecked.returncode == 0  # without the check it goes (and Braze ignores the value)
    checked = pull(
        antavo, fake, "members", "--mapping", mapping_file, "--since", SINCE, "--check-schema"
    )
    assert checked.returncode == 2
    assert "loyalty_points" in checked.stdout + checked.stderr
