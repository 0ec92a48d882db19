"""The antavo-braze command line, run as a real subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

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


def sync_args(kind: str, records: str, mapping: Path = DATA / "mapping.json") -> list[str]:
    """The arguments of a sync of ``records`` with ``mapping``."""
    return ["sync", kind, "--mapping", str(mapping), "--input", records]


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
        *sync_args("events", str(events)),
        "--dry-run",
        "--quiet",
    )
    assert result.returncode == 1
    # Nothing was sent, so nothing "succeeded".
    assert "dry run, nothing sent: 3 records: 1 would be sent in 1 request," in result.stdout
    assert "1 would fail, 1 skipped" in result.stdout
    assert "succeeded" not in result.stdout


def test_sync_with_state(fake: FakeBraze, tmp_path: Path) -> None:
    """A second run with --state sends nothing for unchanged members."""
    members = tmp_path / "m.csv"
    members.write_text("id,score,tiers.0.name\na,1,Gold\nb,2,Silver\n")
    args = [
        *sync_args("members", str(members)),
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
    dead.chmod(0o644)  # open to others: refused before anything is sent (it is rewritten)
    refused = run("replay", str(dead), "--quiet", env=braze_env(fake))
    assert refused.returncode == 2
    assert "chmod 600" in refused.stderr
    assert fake.profiles == {}
    dead.chmod(0o600)  # as the SDK writes dead letters
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
            *sync_args("members", str(DATA / "mapping.json").replace(".json", ".txt")),
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
        *sync_args("members", str(bad)),
        "--dry-run",
        "--dead-letter",
        str(dead),
    )
    assert result.returncode == 1, result.stderr
    assert "3 records: 2 would be sent in 1 request, 1 would fail" in result.stdout
    entry = json.loads(dead.read_text())
    assert (entry["stage"], entry["line"], entry["index"]) == ("input", 2, 1)
    assert f"failed records written to {dead}" in result.stdout


def test_version() -> None:
    """--version prints the version."""
    assert run("--version").stdout.startswith("antavo-braze ")


def _popen_sync(fake: FakeBraze, *args: str) -> subprocess.Popen[str]:
    """Start a CLI sync in the background, wired to the fake."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("BRAZE_")}
    full_env.update(braze_env(fake))
    return subprocess.Popen(
        [sys.executable, "-m", "antavo_braze.cli", "sync", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=full_env,
    )


def _wait_for(condition: Any, timeout: float = 60.0) -> None:
    """Poll until ``condition()`` holds (bounded)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.01)


def _dead_ids(path: Path) -> list[str]:
    """Record ids in a dead letter, in file order."""
    return [json.loads(line)["record_id"] for line in path.read_text().splitlines()]


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupted_members_sync_reports_and_resumes(
    tmp_path: Path, signum: int, code: int
) -> None:
    """A signal mid-sync prints the partial report, loses no member, and --resume finishes."""
    mapping = tmp_path / "mapping.json"
    mapping.write_text(json.dumps(DEMO_MAPPING))
    members = tmp_path / "members.jsonl"
    rows = list(sample_members(3000))
    members.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    dead = tmp_path / "dead.jsonl"
    args = ["members", "--mapping", str(mapping), "--input", str(members)]
    args += ["--dead-letter", str(dead), "--max-in-flight", "2", "--quiet"]
    with FakeBraze(api_key="test-key", latency=0.02) as fake:
        proc = _popen_sync(fake, *args)
        _wait_for(lambda: fake.objects_received >= 300)
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == code, err
        assert "records:" in out
        assert "3000 records" not in out  # it stopped reading
        assert "--resume" in err
        checkpoint = dead.with_name(dead.name + ".checkpoint")
        assert checkpoint.exists()
        assert oct(checkpoint.stat().st_mode & 0o777) == "0o600"
        at_fake = set(fake.profiles)
        in_dead = set(_dead_ids(dead))
        # What was cut off is reported as such (a signal right after a batch left cuts off
        # only the requests still unanswered, if any).
        assert ("[interrupted]" in out) == bool(in_dead)
        read = int(out.split(" records:")[0])
        assert 300 <= len(at_fake) <= read < 3000
        assert at_fake | in_dead == {r["id"] for r in rows[:read]}  # what it read: nothing lost
        entries = [json.loads(line) for line in dead.read_text().splitlines()]
        # Failed while Braze holds it only where the answer never came.
        assert all(e["outcome"] == "unknown" for e in entries if e["record_id"] in at_fake)
        resumed = _popen_sync(fake, *args, "--resume")
        out, err = resumed.communicate(timeout=120)
        assert resumed.returncode == 0, err
        assert "3000 records: " in out
        assert "skipped" in out
        assert set(fake.profiles) == {r["id"] for r in rows}
        assert not checkpoint.exists()
        assert dead.read_text() == ""


def test_interrupted_events_sync_sends_each_event_at_most_once_per_run(tmp_path: Path) -> None:
    """Events resumed after SIGINT: each event reaches Braze once unless its answer was lost."""
    events = tmp_path / "events.jsonl"
    lines = [
        {
            "customer": f"m-{i % 50}",
            "action": "point_add",
            "timestamp": "2026-01-01T00:00:00Z",
            "data": {"points": i},
        }
        for i in range(3000)
    ]
    events.write_text("\n".join(json.dumps(e) for e in lines) + "\n")
    dead = tmp_path / "dead.jsonl"
    args = ["events", "--mapping", str(DATA / "mapping.json"), "--input", str(events)]
    args += ["--dead-letter", str(dead), "--max-in-flight", "2", "--quiet"]
    with FakeBraze(api_key="test-key", latency=0.02) as fake:
        proc = _popen_sync(fake, *args)
        _wait_for(lambda: fake.objects_received >= 300)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err
        resumed = _popen_sync(fake, *args, "--resume")
        _, err = resumed.communicate(timeout=120)
        unknown = [json.loads(x) for x in dead.read_text().splitlines()]
        assert all(entry["outcome"] == "unknown" for entry in unknown)
        assert resumed.returncode == 0, err  # what the first run left unknown is its own
        points = [e["properties"]["points"] for e in fake.events]
        assert len(points) == len(set(points))  # never sent twice
        assert set(points) | {e["index"] for e in unknown} == set(range(3000))


def test_interrupted_events_sync_with_the_ledger_sends_each_event_once(tmp_path: Path) -> None:
    """sync events --state, SIGINT, then --resume and a whole second run of the same input:
    each event with an id reaches Braze once; the ledger skips what Braze accepted."""
    events = tmp_path / "events.jsonl"
    lines = [
        {
            "id": f"ev-{i}",
            "customer": f"m-{i % 50}",
            "action": "point_add",
            "timestamp": "2026-01-01T00:00:00Z",
            "data": {"points": i},
        }
        for i in range(3000)
    ]
    events.write_text("\n".join(json.dumps(e) for e in lines) + "\n")
    dead = tmp_path / "dead.jsonl"
    state = tmp_path / "state.db"
    args = ["events", "--mapping", str(DATA / "mapping.json"), "--input", str(events)]
    args += ["--dead-letter", str(dead), "--state", str(state), "--max-in-flight", "2"]
    args += ["--quiet"]
    with FakeBraze(api_key="test-key", latency=0.02) as fake:
        proc = _popen_sync(fake, *args)
        _wait_for(lambda: fake.objects_received >= 300)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err
        read = int(out.split(" records:")[0])
        assert 300 <= read < 3000
        # Cut off in flight (past the grace): Braze may hold it, the ledger cannot know.
        entries = [json.loads(x) for x in dead.read_text().splitlines()]
        unknown = {e["index"] for e in entries if e["outcome"] == "unknown"}
        resumed = _popen_sync(fake, *args, "--resume")
        out, err = resumed.communicate(timeout=120)
        assert resumed.returncode == 0, out + err
        assert out.startswith("3000 records: ")
        points = Counter(e["properties"]["points"] for e in fake.events)
        assert set(points.values()) == {1}  # never sent twice
        assert set(points) | unknown == set(range(3000))  # nothing lost
        again = _popen_sync(fake, *args)  # the same input again, no --resume: the ledger
        out, err = again.communicate(timeout=120)
        assert again.returncode == 0, out + err
        accepted = 3000 - len(unknown)
        assert out.startswith(
            f"3000 records: {len(unknown)} succeeded, 0 failed, {accepted} skipped"
        ), out
        assert f"skipped {accepted}: already sent" in out
        points = Counter(e["properties"]["points"] for e in fake.events)
        assert all(points[i] == 1 for i in range(3000) if i not in unknown)
        assert set(points) == set(range(3000))


def test_malformed_line_among_ten_thousand(fake: FakeBraze, tmp_path: Path) -> None:
    """One malformed line in 10,000 fails alone; every other record is sent and reported."""
    members = tmp_path / "members.jsonl"
    lines = [json.dumps({"id": f"m{i}", "score": i}) for i in range(10_000)]
    lines[5000] = '{"id": "m5000", "score": '
    members.write_text("\n".join(lines) + "\n")
    dead = tmp_path / "dead.jsonl"
    result = run(
        *sync_args("members", str(members)),
        "--dead-letter",
        str(dead),
        "--quiet",
        env=braze_env(fake),
    )
    assert result.returncode == 1, result.stderr
    assert "10000 records: 9999 succeeded, 1 failed" in result.stdout
    entry = json.loads(dead.read_text())
    assert (entry["stage"], entry["line"], entry["index"]) == ("input", 5001, 5000)
    assert len(fake.profiles) == 9999


def test_replay_refuses_a_file_that_is_not_a_dead_letter(fake: FakeBraze, tmp_path: Path) -> None:
    """Replaying the members input by mistake is a usage error that sends nothing."""
    members = tmp_path / "members.jsonl"
    members.write_text(json.dumps({"id": "a", "score": 1}) + "\n")
    result = run("replay", str(members), env=braze_env(fake))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert fake.requests == []


def test_replay_writes_a_fresh_output_beside_the_input(fake: FakeBraze, tmp_path: Path) -> None:
    """What still fails goes to <stem>.replay.jsonl, flat (no nesting), with its kind kept."""
    fake.block("blocked")
    dead = tmp_path / "dead.jsonl"
    entry = {
        "version": 1,
        "kind": "member",
        "index": 3,
        "record_id": "blocked",
        "stage": "transport",
        "reason": "timed out",
        "retryable": True,
        "objects": [{"array": "attributes", "object": {"external_id": "blocked", "x": 1}}],
    }
    dead.write_text(json.dumps(entry) + "\n")
    dead.chmod(0o600)  # as the SDK writes dead letters (it is rewritten, marked)
    result = run("replay", str(dead), "--quiet", env=braze_env(fake))
    assert result.returncode == 1, result.stderr
    output = tmp_path / "dead.replay.jsonl"
    assert f"what remains is in {output}" in result.stdout
    again = json.loads(output.read_text())
    assert (again["kind"], again["record_id"], again["index"]) == ("member", "blocked", 3)
    assert again["objects"] == entry["objects"]
    assert oct(output.stat().st_mode & 0o777) == "0o600"


def test_dry_run_writes_the_dead_letter_it_announces(tmp_path: Path) -> None:
    """A dry run with --dead-letter writes the records that would fail."""
    members = tmp_path / "m.jsonl"
    members.write_text('{"id": "a", "score": "lots"}\n{"id": "b", "score": 2}\n')
    dead = tmp_path / "dead.jsonl"
    result = run(
        *sync_args("members", str(members)),
        "--dry-run",
        "--dead-letter",
        str(dead),
    )
    assert result.returncode == 1
    assert _dead_ids(dead) == ["a"]
    assert f"failed records written to {dead}" in result.stdout


def test_resume_without_checkpoint_is_a_usage_error(tmp_path: Path) -> None:
    """--resume with nothing to resume says so in one line."""
    members = tmp_path / "m.jsonl"
    members.write_text('{"id": "a", "score": 1}\n')
    result = run(
        *sync_args("members", str(members)),
        "--dead-letter",
        str(tmp_path / "dead.jsonl"),
        "--resume",
        env={"BRAZE_REST_ENDPOINT": "http://127.0.0.1:9", "BRAZE_API_KEY": "k"},
    )
    assert result.returncode == 2
    assert "nothing to resume" in result.stderr


def test_logging_flags(fake: FakeBraze, tmp_path: Path) -> None:
    """-v logs retries and the summary on stderr; --quiet hides retries; --log-file keeps them."""
    members = tmp_path / "m.jsonl"
    members.write_text('{"id": "a", "score": 1}\n')
    base = ["sync", "members", "--mapping", str(DATA / "mapping.json"), "--input", str(members)]
    fake.inject(times=1, status=503)
    verbose = run(*base, "-v", env=braze_env(fake))
    assert verbose.returncode == 0, verbose.stderr
    assert "retry 1" in verbose.stderr
    assert "member sync: 1 record: 1 succeeded" in verbose.stderr
    fake.inject(times=1, status=503)
    log = tmp_path / "run.log"
    quiet = run(*base, "--quiet", "--log-file", str(log), env=braze_env(fake))
    assert quiet.returncode == 0
    assert quiet.stderr == ""
    assert "retry 1" in log.read_text()
    assert fake.api_key not in log.read_text()
    assert oct(log.stat().st_mode & 0o777) == "0o600"


@pytest.mark.parametrize(
    ("content", "extra", "expected"),
    [
        ('\ufeffid,score,tags\r\na,1,"[""x""]"\r\nb,2,[]\r\n'.encode(), [], {"tags": ["x"]}),
        (b'id;score;tags\na;1;["x"]\nb;2;[]\n', [], {"tags": ["x"]}),
        (
            "id,score,city\na,1,Zürich\nb,2,Győr\n".encode("latin-1", "replace"),
            ["--encoding", "latin-1"],
            {"city": "Zürich"},
        ),
    ],
    ids=["excel-bom", "semicolons", "latin-1"],
)
def test_everyday_csv_files_sync_every_record(
    fake: FakeBraze, tmp_path: Path, content: bytes, extra: list[str], expected: dict[str, Any]
) -> None:
    """Excel's BOM, ';' separators, Latin-1 with --encoding and JSON cells: all records sync."""
    mapping = tmp_path / "mapping.json"
    mapping.write_text(
        json.dumps(
            {
                "fields": [
                    {"loyalty_field": "score", "remote_field": "points", "type": "number"},
                    {"loyalty_field": "tags", "remote_field": "tags", "type": "array"},
                    {"loyalty_field": "city", "remote_field": "city", "type": "string"},
                ]
            }
        )
    )
    members = tmp_path / "members.csv"
    members.write_bytes(content)
    result = run(*sync_args("members", str(members), mapping), *extra, env=braze_env(fake))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 records: 2 succeeded" in result.stdout
    assert fake.profiles["a"] == {"points": 1, **expected}


def test_format_overrides_an_unknown_suffix(tmp_path: Path) -> None:
    """--format csv reads a file whose suffix says nothing (the help: override the suffix)."""
    plain = tmp_path / "plain.txt"
    plain.write_text("customer,action,timestamp\nm-1,point_add,2026-01-01T00:00:00Z\n")
    result = run(*sync_args("events", str(plain)), "--format", "csv", "--dry-run", "--quiet")
    assert result.returncode == 0, result.stderr
    assert "dry run, nothing sent: 1 record: 1 would be sent in 1 request," in result.stdout
    unnamed = run(*sync_args("events", str(plain)), "--dry-run", "--quiet")
    assert unnamed.returncode == 2
    assert "--format" in unnamed.stderr


def test_a_missing_kind_is_named_by_its_choices() -> None:
    """sync without members|events names the choices, not the internal name 'kind'."""
    result = run("sync", "--mapping", str(DATA / "mapping.json"), "--input", "m.jsonl")
    assert result.returncode == 2
    assert "the following arguments are required: {members,events}" in result.stderr


def test_help_names_the_redis_shorthand_and_the_in_flight_default() -> None:
    """serve --order says what `redis` means; sync --workers gives --max-in-flight's default."""
    wide = {"COLUMNS": "1000"}  # no line breaks inside the help texts
    serve = run("serve", "--help", env=wide).stdout
    assert "--order REDIS_URL" in serve
    assert "this Redis ('redis': the URL in --redis-url-file or ANTAVO_BRAZE_REDIS_URL)" in serve
    sync = run("sync", "--help", env=wide).stdout
    assert "--max-in-flight is per worker (default 1)" in sync
