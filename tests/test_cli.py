"""The antavo-braze command line, run as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from antavo_braze._demo import DEMO_MAPPING, sample_members
from antavo_braze.testing import FakeBraze

from .conftest import DATA


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the CLI with the given arguments."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("BRAZE_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "antavo_braze.cli", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=120,
        check=False,
    )


def braze_env(fake: FakeBraze) -> dict[str, str]:
    """Credentials pointing at the fake."""
    return {"BRAZE_REST_ENDPOINT": fake.url, "BRAZE_API_KEY": fake.api_key}


def test_demo() -> None:
    """The demo needs no credentials and prints the report and a member's profile."""
    result = run("demo", "--members", "5", "--events", "8")
    assert result.returncode == 0, result.stderr
    assert "6 records: 5 succeeded, 1 failed, 0 skipped" in result.stdout
    assert "What Braze now holds for member-0000000" in result.stdout
    assert '"loyalty_tier"' in result.stdout


def test_validate(tmp_path: Path) -> None:
    """validate says OK for a good mapping and lists every problem for a bad one."""
    good = run("validate", str(DATA / "full_mapping.json"))
    assert good.returncode == 0
    assert "valid mapping (18 fields, 4 events, 2 triggers)" in good.stdout
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps({"fields": [{"loyalty_field": "a", "remote_field": "$x", "type": "nubmer"}]})
    )
    result = run("validate", str(bad))
    assert result.returncode == 2
    assert "$.fields[0].type: unknown type 'nubmer'" in result.stderr
    assert "$.fields[0].remote_field" in result.stderr
    assert "Traceback" not in result.stderr
    missing = run("validate", str(tmp_path / "nope.json"))
    assert (missing.returncode, "Traceback" in missing.stderr) == (2, False)


def test_sync_members_jsonl_with_progress_and_dead_letter(fake: FakeBraze, tmp_path: Path) -> None:
    """sync members from JSONL: report on stdout, failures in the dead letter, exit 1."""
    mapping = tmp_path / "mapping.json"
    mapping.write_text(json.dumps(DEMO_MAPPING))
    members = tmp_path / "members.jsonl"
    rows = list(sample_members(500))
    rows[10]["score"] = "lots"
    members.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    dead = tmp_path / "dead.jsonl"
    result = run(
        "sync",
        "members",
        "--mapping",
        str(mapping),
        "--input",
        str(members),
        "--dead-letter",
        str(dead),
        env=braze_env(fake),
    )
    assert result.returncode == 1, result.stderr
    assert "500 records: 499 succeeded, 1 failed" in result.stdout
    assert len(fake.profiles) == 499
    assert json.loads(dead.read_text())["record_id"] == "member-0000010"
    assert "records (" in result.stderr  # the final progress line


def test_sync_events_csv_dry_run(tmp_path: Path) -> None:
    """A CSV dry run needs no credentials and sends nothing."""
    events = tmp_path / "events.csv"
    events.write_text(
        "customer,action,timestamp,data.points\n"
        "m-1,point_add,2026-01-01T00:00:00Z,10\n"
        "m-2,point_add,,x\n"
        "m-3,daily_login,2026-01-01T00:00:00Z,\n"
    )
    result = run(
        "sync",
        "events",
        "--mapping",
        str(DATA / "mapping.json"),
        "--input",
        str(events),
        "--dry-run",
        "--quiet",
    )
    assert result.returncode == 1
    assert "dry run: 1 request bodies would be sent" in result.stdout
    assert "3 records: 1 succeeded, 1 failed, 1 skipped" in result.stdout


def test_sync_with_state(fake: FakeBraze, tmp_path: Path) -> None:
    """A second run with --state sends nothing for unchanged members."""
    members = tmp_path / "m.csv"
    members.write_text("id,score,tiers.0.name\na,1,Gold\nb,2,Silver\n")
    args = [
        "sync",
        "members",
        "--mapping",
        str(DATA / "mapping.json"),
        "--input",
        str(members),
        "--state",
        str(tmp_path / "s.db"),
        "--send",
        "changed",
        "--quiet",
    ]
    assert run(*args, env=braze_env(fake)).returncode == 0
    second = run(*args, env=braze_env(fake))
    assert "2 records: 0 succeeded, 0 failed, 2 skipped" in second.stdout
    assert fake.profiles["a"] == {"loyalty_points": 1, "loyalty_tier": "Gold"}


def test_replay(fake: FakeBraze, tmp_path: Path) -> None:
    """replay resends a dead letter's retryable records."""
    dead = tmp_path / "dead.jsonl"
    dead.write_text(
        json.dumps(
            {
                "version": 1,
                "kind": "member",
                "index": 0,
                "record_id": "a",
                "stage": "transport",
                "reason": "timed out",
                "retryable": True,
                "objects": [{"array": "attributes", "object": {"external_id": "a", "x": 1}}],
            }
        )
        + "\n"
    )
    result = run("replay", str(dead), "--quiet", env=braze_env(fake))
    assert result.returncode == 0, result.stderr
    assert fake.profiles["a"] == {"x": 1}
    assert run("replay", str(tmp_path / "none.jsonl")).returncode == 2


def test_check(fake: FakeBraze) -> None:
    """check: users.track is all a sync needs (exit 0); without it exit 1; a bad key exits 3."""
    ok = run("check", env=braze_env(fake))
    assert ok.returncode == 0
    assert "ok      users.track" in ok.stdout
    fake.add_key("partial", ["users.track"])
    partial = run("check", env={**braze_env(fake), "BRAZE_API_KEY": "partial"})
    assert partial.returncode == 0, partial.stdout
    assert "MISSING events.list" in partial.stdout
    assert "optional" in partial.stdout
    fake.add_key("reader", ["events.list"])
    reader = run("check", env={**braze_env(fake), "BRAZE_API_KEY": "reader"})
    assert reader.returncode == 1
    assert "lacks users.track" in reader.stdout
    bad = run("check", env={**braze_env(fake), "BRAZE_API_KEY": "wrong-key-123"})
    assert bad.returncode == 3
    assert "wrong-key-123" not in bad.stderr
    assert "Traceback" not in bad.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["sync", "members", "--mapping", str(DATA / "mapping.json"), "--input", "nope.jsonl"],
        [
            "sync",
            "members",
            "--mapping",
            str(DATA / "mapping.json"),
            "--input",
            str(DATA / "mapping.json").replace(".json", ".txt"),
        ],
        ["check"],
    ],
)
def test_user_mistakes_are_one_line(args: list[str]) -> None:
    """Missing files, unsupported formats and missing credentials exit 2 without a traceback."""
    result = run(*args)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("antavo-braze: error:")


def test_broken_jsonl_line(tmp_path: Path) -> None:
    """A broken input line fails alone, with its line number, and the run goes on."""
    bad = tmp_path / "m.jsonl"
    bad.write_text('{"id": "a", "score": 1}\n{oops\n{"id": "b", "score": 2}\n')
    dead = tmp_path / "dead.jsonl"
    result = run(
        "sync",
        "members",
        "--mapping",
        str(DATA / "mapping.json"),
        "--input",
        str(bad),
        "--dry-run",
        "--dead-letter",
        str(dead),
    )
    assert result.returncode == 1, result.stderr
    assert "3 records: 2 succeeded, 1 failed" in result.stdout
    entry = json.loads(dead.read_text())
    assert (entry["stage"], entry["line"], entry["index"]) == ("input", 2, 1)
    assert f"failed records written to {dead}" in result.stdout


def test_version() -> None:
    """--version prints the version."""
    assert run("--version").stdout.startswith("antavo-braze ")
