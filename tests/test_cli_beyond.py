"""The command line beyond /users/track: validate --against-braze, sync --check-schema,
erasures on sync, audit, and check's optional permissions (real subprocesses, FakeBraze)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import antavo_braze as ab
from antavo_braze.testing import FakeAntavo, FakeBraze

from .test_beyond_track import IDENTITY_MAPPING, MEMBER_MAPPING, members
from .test_cli import braze_env, run


def write(path: Path, data: object) -> str:
    """Write JSON (or JSON Lines for a list of records) and return the path."""
    if isinstance(data, list):
        path.write_text("".join(json.dumps(r) + "\n" for r in data))
    else:
        path.write_text(json.dumps(data))
    return str(path)


def test_validate_against_braze(fake: FakeBraze, client: ab.BrazeClient, tmp_path: Path) -> None:
    """Exit 1 listing each attribute whose type Braze holds differently; exit 0 when all fit."""
    client.track(attributes=[{"external_id": "seed", "loyalty_points": "many"}])
    mapping = write(tmp_path / "m.json", MEMBER_MAPPING)
    bad = run("validate", mapping, "--against-braze", env=braze_env(fake))
    assert bad.returncode == 1, bad.stderr
    assert "loyalty_points: mapping number, Braze String" in bad.stdout
    fake.reset()
    client.track(attributes=[{"external_id": "seed", "loyalty_points": 5}])
    good = run("validate", mapping, "--against-braze", env=braze_env(fake))
    assert good.returncode == 0, good.stdout + good.stderr
    assert "every mapped attribute fits" in good.stdout


def test_sync_check_schema_refuses_to_start(
    fake: FakeBraze, client: ab.BrazeClient, tmp_path: Path
) -> None:
    """--check-schema stops before sending anything when the mapping does not fit Braze."""
    client.track(attributes=[{"external_id": "seed", "loyalty_since": 17}])
    before = len(fake.requests)
    mapping = write(tmp_path / "m.json", MEMBER_MAPPING)
    records = write(tmp_path / "members.jsonl", members(5))
    args = ["sync", "members", "--mapping", mapping, "--input", records, "--check-schema"]
    refused = run(*args, env=braze_env(fake))
    assert refused.returncode == 2
    assert "loyalty_since" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert [r.path for r in fake.requests[before:]] == ["/custom_attributes"]
    fake.reset()
    accepted = run(*args, env=braze_env(fake))
    assert accepted.returncode == 0, accepted.stderr
    assert len(fake.profiles) == 5


def test_sync_events_erasures_need_allow_deletes(
    fake: FakeBraze, client: ab.BrazeClient, tmp_path: Path
) -> None:
    """Without --allow-deletes an erasure fails (exit 1); with it the profile is deleted."""
    client.track(attributes=[{"external_id": "gone", "points": 1}])
    mapping = write(tmp_path / "m.json", IDENTITY_MAPPING)
    events = write(tmp_path / "events.jsonl", [{"customer": "gone", "action": "erase"}])
    args = ["sync", "events", "--mapping", mapping, "--input", events, "--quiet"]
    refused = run(*args, env=braze_env(fake))
    assert refused.returncode == 1
    assert "allow_deletes" in refused.stdout
    assert "gone" in fake.profiles
    done = run(*args, "--allow-deletes", env=braze_env(fake))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "deleted (verified) 1" in done.stdout
    assert "gone" not in fake.profiles


def test_sync_mass_delete_guard_exits_1(
    fake: FakeBraze, client: ab.BrazeClient, tmp_path: Path
) -> None:
    """200 erasures in a run of 200 stop at the guard: exit 1, nothing deleted."""
    client.track(attributes=[{"external_id": f"e{n}", "points": n} for n in range(200)])
    mapping = write(tmp_path / "m.json", IDENTITY_MAPPING)
    events = write(
        tmp_path / "events.jsonl", [{"customer": f"e{n}", "action": "erase"} for n in range(200)]
    )
    result = run(
        "sync", "events", "--mapping", mapping, "--input", events, "--allow-deletes", "--quiet",
        env=braze_env(fake),
    )  # fmt: skip
    assert result.returncode == 1
    assert "mass-delete guard" in result.stdout
    assert len(fake.profiles) == 200


def test_audit_from_a_file_with_report_json_and_fix(
    fake: FakeBraze, client: ab.BrazeClient, tmp_path: Path
) -> None:
    """audit exits 1 on drift and writes a private JSON report; --fix mends it (exit 0)."""
    rows = members(80)
    assert ab.Syncer(client, MEMBER_MAPPING).sync_members(rows).ok
    with fake._lock:
        fake.profiles["m5"]["loyalty_tier"] = "bronze"
        del fake.profiles["m6"]
    mapping = write(tmp_path / "m.json", MEMBER_MAPPING)
    records = write(tmp_path / "members.jsonl", rows)
    report_path = tmp_path / "audit.json"
    args = ["audit", "--mapping", mapping, "--input", records, "--quiet"]
    found = run(*args, "--report-json", str(report_path), env=braze_env(fake))
    assert found.returncode == 1, found.stderr
    assert "audited 80 members: 2 drifted, 1 not in Braze" in found.stdout
    saved = json.loads(report_path.read_text())
    assert saved["fields"]["loyalty_tier"] == {
        "equal": 78,
        "different": 1,
        "missing": 1,
        "examples": [
            {"external_id": "m5", "kind": "different", "expected": "gold", "found": "bronze"},
            {"external_id": "m6", "kind": "missing", "expected": "silver", "found": None},
        ],
    }
    assert stat.S_IMODE(os.stat(report_path).st_mode) == 0o600
    fixed = run(*args, "--fix", env=braze_env(fake))
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert fake.profiles["m5"]["loyalty_tier"] == "gold"
    assert "m6" in fake.profiles
    clean = run(*args, env=braze_env(fake))
    assert clean.returncode == 0
    assert "0 drifted" in clean.stdout


def test_audit_needs_an_input(fake: FakeBraze, tmp_path: Path) -> None:
    """audit without --input or --from-antavo is a one-line usage error."""
    mapping = write(tmp_path / "m.json", MEMBER_MAPPING)
    result = run("audit", "--mapping", mapping, env=braze_env(fake))
    assert result.returncode == 2
    assert "--input FILE or --from-antavo" in result.stderr


def antavo_env(antavo: FakeAntavo) -> dict[str, str]:
    """Antavo credentials pointing at the fake."""
    return {
        "ANTAVO_API_URL": antavo.url,
        "ANTAVO_STACK": antavo.stack,
        "ANTAVO_API_KEY": antavo.api_key,
        "ANTAVO_API_SECRET": antavo.api_secret,
    }


def tracked_attributes(fake: FakeBraze, since: int) -> list[dict[str, object]]:
    """Every attribute object FakeBraze received in /users/track after request ``since``."""
    return [
        attributes
        for request in fake.requests[since:]
        if request.path == "/users/track"
        for attributes in request.body.get("attributes", [])
    ]


def test_audit_from_antavo_counts_drift_and_fixes_only_the_drifted_fields(
    fake: FakeBraze, client: ab.BrazeClient, tmp_path: Path
) -> None:
    """audit --from-antavo reads every customer (also those changed a moment ago), counts the
    drift exactly, and --fix sends only the drifted fields."""
    rows = members(30)
    with FakeAntavo() as antavo:
        for row in rows:  # updated_at: now, inside any pull's safety lag
            antavo.add_customer(row)
        assert ab.Syncer(client, MEMBER_MAPPING).sync_members(rows).ok
        with fake._lock:
            fake.profiles["m5"]["loyalty_tier"] = "bronze"  # gold in Antavo
            fake.profiles["m7"]["loyalty_points"] = 1  # 107 in Antavo
            del fake.profiles["m6"]
        env = {**braze_env(fake), **antavo_env(antavo)}
        mapping = write(tmp_path / "m.json", MEMBER_MAPPING)
        report_path = tmp_path / "audit.json"
        args = ["audit", "--mapping", mapping, "--from-antavo", "--quiet"]
        found = run(*args, "--report-json", str(report_path), env=env)
        assert found.returncode == 1, found.stdout + found.stderr
        assert "audited 30 members: 3 drifted, 1 not in Braze" in found.stdout
        fields = json.loads(report_path.read_text())["fields"]
        assert {name: (f["equal"], f["different"], f["missing"]) for name, f in fields.items()} == {
            "loyalty_points": (28, 1, 1),
            "loyalty_tier": (28, 1, 1),
            "loyalty_since": (29, 0, 1),
            "newsletter": (29, 0, 1),
            "first_name": (29, 0, 1),
        }
        # One list page and each customer once: signed, read in full, nothing else.
        paths = [r.path for r in antavo.requests]
        assert paths.count("/customers") == 1
        assert sorted(p for p in paths if p != "/customers") == sorted(
            f"/customers/{row['id']}" for row in rows
        )
        assert all(r.status == 200 for r in antavo.requests)
        before = len(fake.requests)
        fixed = run(*args, "--fix", env=env)
        assert fixed.returncode == 0, fixed.stdout + fixed.stderr
        sent = sorted(tracked_attributes(fake, before), key=lambda a: str(a["external_id"]))
        assert [sorted(a) for a in sent] == [
            ["external_id", "loyalty_tier"],
            ["external_id", "first_name", "loyalty_points", "loyalty_since", "loyalty_tier",
             "newsletter"],
            ["external_id", "loyalty_points"],
        ]  # fmt: skip
        assert [
            (a["external_id"], a.get("loyalty_tier"), a.get("loyalty_points")) for a in sent
        ] == [
            ("m5", "gold", None),
            ("m6", "silver", 106),
            ("m7", None, 107),
        ]
        clean = run(*args, env=env)
        assert clean.returncode == 0, clean.stdout + clean.stderr
        assert "audited 30 members: 0 drifted" in clean.stdout


def test_audit_from_antavo_without_credentials(fake: FakeBraze, tmp_path: Path) -> None:
    """--from-antavo without Antavo's credentials is a one-line usage error naming them."""
    mapping = write(tmp_path / "m.json", MEMBER_MAPPING)
    result = run("audit", "--mapping", mapping, "--from-antavo", env=braze_env(fake))
    assert result.returncode == 2
    assert "ANTAVO_API_KEY" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_marks_the_optional_permissions(fake: FakeBraze) -> None:
    """check lists every permission; the optional ones say which feature needs them."""
    fake.add_key("track-only", ["users.track"])
    result = run(
        "check",
        env={"BRAZE_REST_ENDPOINT": fake.url, "BRAZE_API_KEY": "track-only"},
    )
    assert result.returncode == 0, result.stderr
    lines = {line.split()[1]: line for line in result.stdout.splitlines() if line[:7].strip()}
    assert lines["users.track"].startswith("ok")
    assert "required" in lines["users.track"]
    for name, feature in (
        ("custom_attributes.get", "--check-schema"),
        ("users.export.ids", "audit"),
        ("users.merge", "merge"),
        ("users.delete", "delete"),
    ):
        assert lines[name].startswith("MISSING"), lines[name]
        assert "optional" in lines[name]
        assert feature in lines[name]
