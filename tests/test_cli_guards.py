"""The CLI never surprises: guarded clears, honest exit codes, dry runs that show what goes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import antavo_braze as ab
from antavo_braze.testing import FakeBraze

from .servers import free_port
from .test_cli import braze_env, run


def write_mapping(folder: Path, config: dict[str, Any]) -> Path:
    """A mapping file in ``folder``."""
    path = folder / "mapping.json"
    path.write_text(json.dumps(config))
    return path


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Records as JSON Lines."""
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


TIER_MAPPING = {
    "when_missing": "clear",
    "fields": [
        {"loyalty_field": "score", "remote_field": "loyalty_points", "type": "number"},
        {"loyalty_field": "email", "remote_field": "email"},
        {"loyalty_field": "tiers.0.name", "remote_field": "loyalty_tier"},
    ],
}


def seed(fake: FakeBraze, count: int) -> None:
    """Braze holds points, an email and a Gold tier for ``count`` members."""
    with fake.client() as client:
        report = ab.Syncer(client, TIER_MAPPING).sync_members(
            {"id": f"m-{n}", "score": n, "email": f"m{n}@example.com", "tiers": [{"name": "Gold"}]}
            for n in range(count)
        )
    assert report.succeeded == count


def held(fake: FakeBraze, name: str) -> int:
    """How many profiles hold ``name``."""
    return sum(name in profile for profile in fake.profiles.values())


def test_a_csv_without_a_column_clears_nothing(fake: FakeBraze, tmp_path: Path) -> None:
    """A CSV with no email or tiers column leaves every email and tier in Braze (exit 0)."""
    seed(fake, 150)
    mapping = write_mapping(tmp_path, TIER_MAPPING)
    members = tmp_path / "members.csv"
    members.write_text("id,score\n" + "".join(f"m-{n},{n + 1}\n" for n in range(150)))
    result = run(
        "sync", "members", "--mapping", str(mapping), "--input", str(members), "--quiet",
        env=braze_env(fake),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert (held(fake, "email"), held(fake, "loyalty_tier")) == (150, 150)
    assert fake.profiles["m-3"]["loyalty_points"] == 4
    assert "email (-> email)" in result.stdout  # reported: found in no record
    assert "cleared" not in result.stdout.replace("nor cleared", "")


def test_the_guard_stops_a_mass_clear_and_exits_1(fake: FakeBraze, tmp_path: Path) -> None:
    """Tiers gone for every member: the run stops clearing (exit 1); --allow-mass-clear goes on."""
    seed(fake, 150)
    mapping = write_mapping(tmp_path, TIER_MAPPING)
    rows = [{"id": f"m-{n}", "score": n, "tiers": []} for n in range(150)]
    members = write_jsonl(tmp_path / "members.jsonl", rows)
    args = ["sync", "members", "--mapping", str(mapping), "--input", str(members), "--quiet"]
    stopped = run(*args, env=braze_env(fake))
    assert stopped.returncode == 1, stopped.stdout + stopped.stderr
    assert "STOPPED clearing loyalty_tier: 100 of the first 100 members" in stopped.stdout
    assert held(fake, "loyalty_tier") == 150
    allowed = run(*args, "--allow-mass-clear", env=braze_env(fake))
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    assert held(fake, "loyalty_tier") == 0
    assert "loyalty_tier x150" in allowed.stdout


def test_a_rerun_that_sends_nothing_prints_no_clears(fake: FakeBraze, tmp_path: Path) -> None:
    """With --state, a downgrade clears once; the unchanged re-run says nothing of clears."""
    mapping = write_mapping(tmp_path, TIER_MAPPING)
    gold = [{"id": f"m-{n}", "score": n, "tiers": [{"name": "Gold"}]} for n in range(3)]
    lost = [{"id": f"m-{n}", "score": n, "tiers": []} for n in range(3)]
    state = ["--state", str(tmp_path / "state.sqlite"), "--quiet", "--mapping", str(mapping)]
    for rows, cleared in ((gold, 0), (lost, 3), (lost, 0)):
        members = write_jsonl(tmp_path / "m.jsonl", rows)
        result = run("sync", "members", "--input", str(members), *state, env=braze_env(fake))
        assert result.returncode == 0, result.stdout + result.stderr
        assert ("loyalty_tier x3" in result.stdout) == (cleared == 3)
    assert held(fake, "loyalty_tier") == 0
    assert "skipped 3: unchanged" in result.stdout


def test_exit_codes(fake: FakeBraze, tmp_path: Path) -> None:
    """0 all sent, 1 a failure or a dropped value, 2 Redis down (one line), 4 nothing to send."""
    points = {"loyalty_field": "score", "remote_field": "loyalty_points", "type": "number"}
    mapping = write_mapping(tmp_path, {"fields": [points]})
    base = ["sync", "members", "--mapping", str(mapping), "--quiet", "--input"]
    good = write_jsonl(tmp_path / "good.jsonl", [{"id": "a", "score": 1}])
    assert run(*base, str(good), env=braze_env(fake)).returncode == 0
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"id": "a", "score": 1}, {"id": "b", "score": "x"}])
    failed = run(*base, str(bad), env=braze_env(fake))
    assert failed.returncode == 1
    assert "--dead-letter FILE" in failed.stdout  # how to keep them
    dropped = run(*base, str(bad), "--on-invalid-field", "drop_field", env=braze_env(fake))
    assert dropped.returncode == 1
    assert "left out (drop_field): score x1 (e.g. 'x': cannot coerce" in dropped.stdout
    nothing = write_jsonl(tmp_path / "none.jsonl", [{"id": f"m{n}", "points": n} for n in range(9)])
    skipped = run(*base, str(nothing), env=braze_env(fake))
    assert skipped.returncode == 4, skipped.stdout
    assert "skipped 9: no mapped field present" in skipped.stdout
    redis_down = f"redis://127.0.0.1:{free_port()}/0"
    down = run(*base, str(good), "--state", redis_down, env=braze_env(fake))
    assert down.returncode == 2
    assert "Traceback" not in down.stderr
    assert len(down.stderr.strip().splitlines()) == 1
    assert "cannot reach the state store" in down.stderr


def test_events_given_to_sync_members_get_one_grouped_hint(fake: FakeBraze, tmp_path: Path) -> None:
    """The wrong kind of file: one summary line with the count and the fix, not 500 lines."""
    mapping = write_mapping(tmp_path, TIER_MAPPING)
    events = write_jsonl(
        tmp_path / "events.jsonl",
        [{"customer": f"m-{n}", "action": "opt_in", "data": {}} for n in range(500)],
    )
    result = run(
        "sync", "members", "--mapping", str(mapping), "--input", str(events), "--quiet",
        env=braze_env(fake),
    )  # fmt: skip
    assert result.returncode == 1
    assert "500 x [validation] id: " in result.stdout
    assert "the record has no 'id' (it looks like an event" in result.stdout
    assert "use `sync events`" in result.stdout
    assert result.stdout.count("\n") < 12


def test_max_failures_stops_a_run_that_fails_every_record(fake: FakeBraze, tmp_path: Path) -> None:
    """--max-failures 20 reads no further than needed when every record fails."""
    mapping = write_mapping(tmp_path, TIER_MAPPING)
    rows = [{"id": f"m-{n}", "score": "12,5"} for n in range(5000)]
    members = write_jsonl(tmp_path / "m.jsonl", rows)
    result = run(
        "sync", "members", "--mapping", str(mapping), "--input", str(members), "--quiet",
        "--max-failures", "20", env=braze_env(fake),
    )  # fmt: skip
    assert result.returncode == 1
    assert "stopped early: the first 20 records all failed" in result.stdout
    total = int(result.stdout.split(" records:")[0])
    assert 20 <= total < 5000


def test_dry_run_shows_bodies(tmp_path: Path) -> None:
    """--dry-run --show 1 prints the first request body; no credentials needed."""
    mapping = write_mapping(tmp_path, TIER_MAPPING)
    members = write_jsonl(tmp_path / "m.jsonl", [{"id": "m-1", "score": "7"}])
    result = run(
        "sync", "members", "--mapping", str(mapping), "--input", str(members), "--quiet",
        "--dry-run", "--show", "1",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    body = result.stdout.split("request body: ", 1)[1].split("\ndry run")[0]
    assert json.loads(body) == {"attributes": [{"external_id": "m-1", "loyalty_points": 7}]}
    assert "dry run, nothing sent: 1 record: 1 would be sent in 1 request," in result.stdout


def test_utf16_json_lines_are_one_clear_error_then_read_with_the_encoding(tmp_path: Path) -> None:
    """A UTF-16 JSON Lines file read as UTF-8 exits 2 with one line naming --encoding, no
    traceback; with --encoding utf-16 every record reads (a dry run)."""
    mapping = write_mapping(tmp_path, TIER_MAPPING)
    members = tmp_path / "m.jsonl"
    rows = [{"id": "m-1", "score": 7}, {"id": "m-2", "score": 8}]
    members.write_bytes("".join(json.dumps(row) + "\n" for row in rows).encode("utf-16"))
    command = ("sync", "members", "--mapping", str(mapping), "--input", str(members), "--quiet")
    refused = run(*command, "--dry-run")
    assert refused.returncode == 2, refused
    assert "looks like UTF-16" in refused.stderr
    assert "--encoding utf-16" in refused.stderr
    assert "Traceback" not in refused.stderr
    read = run(*command, "--dry-run", "--encoding", "utf-16")
    assert read.returncode == 0, read.stderr
    assert "2 records: 2 would be sent in 1 request" in read.stdout, read.stdout


def test_two_replays_of_one_dead_letter_do_not_double_events(
    fake: FakeBraze, tmp_path: Path
) -> None:
    """A cron job replaying the same file twice: the second is refused (exit 2); --again forces."""
    dead = write_jsonl(
        tmp_path / "dead.jsonl",
        [
            {
                "version": 1, "kind": "event", "index": n, "record_id": f"m-{n}",
                "stage": "braze", "reason": "HTTP 503", "retryable": True, "outcome": "failed",
                "record": {"customer": f"m-{n}", "action": "point_add"},
                "objects": [{"array": "events", "object": {
                    "external_id": f"m-{n}", "name": "earned", "time": "2026-01-01T00:00:00Z"}}],
            }
            for n in range(7)
        ],
    )  # fmt: skip
    dead.chmod(0o600)  # as the SDK writes dead letters (replay rewrites it, marked)
    first = run("replay", str(dead), "--quiet", env=braze_env(fake))
    assert first.returncode == 0, first.stdout + first.stderr
    assert len(fake.events) == 7
    marked = [json.loads(line) for line in dead.read_text().splitlines()]
    assert all(entry["replayed_at"] for entry in marked)
    second = run("replay", str(dead), "--quiet", env=braze_env(fake))
    assert second.returncode == 2
    assert "replayed before" in second.stderr
    assert "--again" in second.stderr
    assert len(fake.events) == 7
    forced = run("replay", str(dead), "--quiet", "--again", env=braze_env(fake))
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert len(fake.events) == 14


def test_fake_braze_command_is_used_by_sync(tmp_path: Path) -> None:
    """`antavo-braze fake` prints what to export; a sync against it lands in its --dump file."""
    dump = tmp_path / "held.json"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRAZE_")}
    command = ["fake", "--port", str(port), "--dump", str(dump)]
    server = subprocess.Popen(
        [sys.executable, "-m", "antavo_braze.cli", *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert server.stdout is not None
        lines = [server.stdout.readline() for _ in range(4)]
        exports = dict(
            line.strip().removeprefix("export ").split("=", 1) for line in lines if "export" in line
        )
        assert exports["BRAZE_REST_ENDPOINT"] == f"http://127.0.0.1:{port}"
        mapping = write_mapping(tmp_path, TIER_MAPPING)
        members = write_jsonl(tmp_path / "m.jsonl", [{"id": "m-1", "score": "12"}])
        synced = run(
            "sync", "members", "--mapping", str(mapping), "--input", str(members), "--quiet",
            env=exports,
        )  # fmt: skip
        assert synced.returncode == 0, synced.stdout + synced.stderr
        # Current as soon as the sync returns: written before each answer, not on a timer.
        assert json.loads(dump.read_text())["profiles"] == {"m-1": {"loyalty_points": 12}}
        assert dump.stat().st_mode & 0o077 == 0
    finally:
        server.send_signal(signal.SIGINT)
        out, err = server.communicate(timeout=30)
    assert server.returncode == 0, err
    assert "stopped: it holds 1 profile, 0 events, 0 purchases" in out


def validate(mapping: Path, records: Path, *more: str) -> subprocess.CompletedProcess[str]:
    """validate MAPPING --input FILE."""
    return run("validate", str(mapping), "--input", str(records), *more)


def test_validate_input_wrong_types_and_decimal_commas(tmp_path: Path) -> None:
    """Declared types the values do not have, and decimal commas: exit 1, field, count, example."""
    mapping = write_mapping(
        tmp_path,
        {
            "fields": [
                {"loyalty_field": "score", "remote_field": "loyalty_points", "type": "number"},
                {"loyalty_field": "vip", "remote_field": "vip", "type": "boolean"},
                {"loyalty_field": "tags", "remote_field": "tags", "type": "array"},
                {"loyalty_field": "tier", "remote_field": "loyalty_tier", "type": "string"},
            ]
        },
    )
    rows = [
        {"id": f"m-{n}", "score": f"{n},5", "vip": "sometimes", "tags": "a,b",
         "tier": {"name": "Gold"}}
        for n in range(50)
    ]  # fmt: skip
    result = validate(mapping, write_jsonl(tmp_path / "m.jsonl", rows))
    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout
    assert "sample: all 50 records of" in out
    assert "score -> loyalty_points (number): found in 50 of 50: 0 valid, 50 invalid" in out
    assert "e.g. line 1: '0,5'" in out
    assert "hint: decimal comma: export with a decimal point (12.5) (50 values)" in out
    assert "vip -> vip (boolean): found in 50 of 50: 0 valid, 50 invalid" in out
    assert 'a list written in one cell: add "split": ","' in out
    assert "the value is an object: map a path inside it, e.g. '.name'" in out
    assert "a sync would fail or store wrong types: score (50 invalid)" in out


def test_validate_input_latin1_csv(tmp_path: Path) -> None:
    """A Latin-1 CSV read as UTF-8: its unreadable rows are counted per column, with the fix."""
    mapping = write_mapping(
        tmp_path,
        {"fields": [{"loyalty_field": "first_name", "remote_field": "first_name"}]},
    )
    members = tmp_path / "m.csv"
    names = ["Zoé", "Ann", "Jürgen", "Bob"] * 10
    members.write_bytes(
        ("id;first_name\n" + "".join(f"m-{n};{name}\n" for n, name in enumerate(names))).encode(
            "latin-1"
        )
    )
    result = validate(mapping, members)
    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout
    assert "first_name -> first_name (inferred): found in 20 of 40: 20 valid" in out
    assert "20 unreadable" in out
    assert "bytes that are not valid utf-8" in out
    assert "--encoding cp1252" in out
    fixed = validate(mapping, members, "--encoding", "cp1252")
    assert fixed.returncode == 0, fixed.stdout
    assert "40 valid, 0 invalid" in fixed.stdout


def test_validate_input_unix_seconds_in_csv(tmp_path: Path) -> None:
    """Unix-second dates in CSV, untyped: advice is 'date' by majority (one odd value too)."""
    mapping = write_mapping(
        tmp_path,
        {
            "fields": [
                {"loyalty_field": "optin_at", "remote_field": "loyalty_optin_at"},
                {"loyalty_field": "vip", "remote_field": "vip"},
            ]
        },
    )
    members = tmp_path / "m.csv"
    lines = [f"m-{n},{1735689600 + n * 86400},{n % 2}" for n in range(199)] + ["m-x,soon,1"]
    members.write_text("id,optin_at,vip\n" + "\n".join(lines) + "\n")
    result = validate(mapping, members)
    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout
    assert "optin_at -> loyalty_optin_at (inferred): found in 200 of 200" in out
    assert "199 of 200 values: declare type: date (they look like unix seconds)" in out
    assert "declare type: boolean if these are yes/no flags" in out
    assert "a sync would fail or store wrong types: optin_at (wrong type)" in out


def test_ca_bundle_option_and_environment(tmp_path: Path) -> None:
    """A TLS-inspecting proxy's CA: --ca-bundle or BRAZE_CA_BUNDLE, not only SSL_CERT_FILE."""
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    mapping = write_mapping(tmp_path, TIER_MAPPING)
    members = write_jsonl(tmp_path / "m.jsonl", [{"id": "m-1", "score": 1}])
    args = ["sync", "members", "--mapping", str(mapping), "--input", str(members), "--quiet"]
    with FakeBraze(ssl_context=context) as fake:
        untrusted = run(*args, env=braze_env(fake))
        assert untrusted.returncode == 2
        assert "TLS certificate verification failed" in untrusted.stderr
        option = run(*args, "--ca-bundle", str(bundle), env=braze_env(fake))
        assert option.returncode == 0, option.stderr
        from_env = run(*args, env={**braze_env(fake), "BRAZE_CA_BUNDLE": str(bundle)})
        assert from_env.returncode == 0, from_env.stderr
        missing = run(*args, "--ca-bundle", str(tmp_path / "none.pem"), env=braze_env(fake))
        assert missing.returncode == 2
        assert "CA bundle not found" in missing.stderr
    assert fake.profiles == {"m-1": {"loyalty_points": 1}}


def test_redis_going_away_mid_run_is_one_line_and_exit_2(fake: FakeBraze, tmp_path: Path) -> None:
    """The state store's Redis stops during a sync: one line on stderr, exit 2, no traceback."""
    from antavo_braze.testing import RedisServerMissingError, redis_server

    points = {"loyalty_field": "score", "remote_field": "loyalty_points", "type": "number"}
    mapping = write_mapping(tmp_path, {"fields": [points]})
    lines = [json.dumps({"id": f"m-{n}", "score": n}) + "\n" for n in range(6000)]
    server = redis_server()
    try:
        url = server.__enter__()
    except RedisServerMissingError as exc:
        pytest.skip(str(exc))
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRAZE_")}
    sync = subprocess.Popen(
        [sys.executable, "-m", "antavo_braze.cli", "sync", "members", "--mapping", str(mapping),
         "--input", "-", "--format", "jsonl", "--state", url, "--quiet"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**env, **braze_env(fake)},
    )  # fmt: skip
    assert sync.stdin is not None
    try:
        sync.stdin.write("".join(lines[:3000]))
        sync.stdin.flush()
        deadline = time.monotonic() + 60
        while len(fake.profiles) < 1000 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(fake.profiles) >= 1000  # sending (reads run ahead of it)
    finally:
        server.__exit__(None, None, None)  # Redis goes away
    with contextlib.suppress(BrokenPipeError):  # it may have stopped reading already
        sync.stdin.write("".join(lines[3000:]))
    out, err = sync.communicate(timeout=120)
    assert sync.returncode == 2, out + err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert "Redis unreachable" in err  # names what failed, and why
    assert "Connection refused" in err
