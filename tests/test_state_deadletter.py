"""State stores and dead-letter files: keyed hashes, owner-only files, a versioned schema."""

from __future__ import annotations

import json
import multiprocessing
import os
import stat
from pathlib import Path

import pytest

import antavo_braze as ab
from antavo_braze._run.deadletter import entry_from_json, entry_to_json
from antavo_braze._run.tally import fingerprint

SECRET = b"k" * 32


def entry(**changes: object) -> ab.DeadLetterEntry:
    """A retryable member entry."""
    fields: dict[str, object] = {
        "kind": "member",
        "index": 3,
        "record_id": "m-3",
        "stage": "transport",
        "reason": "timed out",
        "retryable": True,
        "record": {"id": "m-3", "score": 3},
        "objects": (
            ab.DeadLetterObject("attributes", {"external_id": "m-3", "loyalty_points": 3}),
        ),
    }
    fields.update(changes)
    return ab.DeadLetterEntry(**fields)  # type: ignore[arg-type]


def mode(path: Path) -> int:
    """The permission bits of ``path``."""
    return stat.S_IMODE(path.stat().st_mode)


def test_fingerprint_distinguishes_types_and_hides_values() -> None:
    """True, 1 and 1.0 differ to Braze; the hash is keyed and never the value itself."""
    assert len({fingerprint(v, SECRET) for v in (True, 1, 1.0)}) == 3
    assert fingerprint({"b": 1, "a": 2}, SECRET) == fingerprint({"a": 2, "b": 1}, SECRET)
    assert fingerprint("a@example.com", SECRET) != fingerprint("a@example.com", b"other")
    assert "example" not in fingerprint("a@example.com", SECRET)


def test_sqlite_store_persists_and_merges(tmp_path: Path) -> None:
    """Values survive reopening (with the same secret); updates merge per field."""
    path = tmp_path / "s.db"
    store = ab.SqliteStateStore(path)
    store.put_many([("m", {"a": "1", "b": "2"})])
    store.put_many([("m", {"b": "3"})])
    secret = store.secret
    store.close()
    again = ab.SqliteStateStore(path)
    assert again.secret == secret
    assert again.get("m") == {"a": "1", "b": "3"}
    assert again.get_many(["m", "x", "m"]) == {"m": {"a": "1", "b": "3"}}
    assert again.get("x") is None
    assert len(again) == 1
    assert "s.db" in repr(again)
    assert isinstance(again, ab.StateStore)


def test_state_and_dead_letter_files_are_owner_only(tmp_path: Path) -> None:
    """Files with member data are created 0600 whatever the umask, and refuse symlinks."""
    old = os.umask(0o022)
    try:
        ab.SqliteStateStore(tmp_path / "s.db").put_many([("m", {"a": "1"})])
        ab.JsonlDeadLetter(tmp_path / "d.jsonl").write(entry())
    finally:
        os.umask(old)
    for name in ("s.db", "d.jsonl"):
        assert mode(tmp_path / name) == 0o600, name
    for name in ("s.db-wal", "s.db-shm"):
        if (tmp_path / name).exists():
            assert mode(tmp_path / name) == 0o600, name
    target = tmp_path / "elsewhere.jsonl"
    link = tmp_path / "link.jsonl"
    link.symlink_to(target)
    with pytest.raises(ab.ConfigurationError, match="symbolic link"):
        ab.JsonlDeadLetter(link)
    with pytest.raises(ab.ConfigurationError, match="symbolic link"):
        ab.SqliteStateStore(link)
    assert not target.exists()


def _writer(path: str, worker: int) -> None:
    store = ab.SqliteStateStore(path)
    for batch in range(20):
        store.put_many([(f"w{worker}-{batch}-{i}", {"v": str(i)}) for i in range(10)])


def test_sqlite_store_several_processes(tmp_path: Path) -> None:
    """Several processes writing one store lose nothing."""
    path = str(tmp_path / "shared.db")
    ab.SqliteStateStore(path)
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_writer, args=(path, n)) for n in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert [w.exitcode for w in workers] == [0, 0, 0]
    assert len(ab.SqliteStateStore(path)) == 600


def test_sqlite_rollback_on_error(tmp_path: Path) -> None:
    """A failing batch leaves the store unchanged."""
    store = ab.SqliteStateStore(tmp_path / "s.db")

    def updates():  # type: ignore[no-untyped-def]
        yield ("a", {"x": "1"})
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        store.put_many(updates())
    assert store.get("a") is None


def test_dead_letter_entry_round_trip(tmp_path: Path) -> None:
    """Entries are written as versioned JSON lines with every field and read back equal."""
    path = tmp_path / "dead.jsonl"
    sink = ab.JsonlDeadLetter(path)
    first, second = entry(), entry(index=None, record_id=None, outcome="unknown", line=7)
    sink.write(first)
    sink.write(second)
    assert list(ab.read_dead_letters(path)) == [first, second]
    line = json.loads(path.read_text().splitlines()[1])
    assert line["version"] == 1
    assert line["record_id"] is None  # null, never the string "None"
    assert set(line) == {
        "version", "kind", "index", "line", "record_id", "stage", "reason", "retryable",
        "outcome", "record", "objects", "replays", "field", "value", "time",
    }  # fmt: skip
    assert sink.count == 2
    assert "dead.jsonl" in repr(sink)
    assert entry_from_json(json.loads(entry_to_json(first))) == first


def test_a_new_dead_letter_file_starts_empty(tmp_path: Path) -> None:
    """A sink starts its file afresh unless asked to append (runs never pile up)."""
    path = tmp_path / "dead.jsonl"
    ab.JsonlDeadLetter(path).write(entry())
    ab.JsonlDeadLetter(path).write(entry(index=4))
    assert [e.index for e in ab.read_dead_letters(path)] == [4]
    ab.JsonlDeadLetter(path, append=True).write(entry(index=5))
    assert [e.index for e in ab.read_dead_letters(path)] == [4, 5]


def test_reading_bad_dead_letters(tmp_path: Path) -> None:
    """Missing files, broken lines and other files are configuration errors with the line."""
    with pytest.raises(ab.ConfigurationError, match="cannot read"):
        list(ab.read_dead_letters(tmp_path / "none.jsonl"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(entry_to_json(entry()) + "\n\n{broken\n")
    with pytest.raises(ab.ConfigurationError, match=r":3: .*is this a dead-letter file"):
        list(ab.read_dead_letters(bad))
    bad.write_text(json.dumps({"id": "m-1", "score": 3}) + "\n")  # a members input file
    with pytest.raises(ab.ConfigurationError, match=":1: not a dead-letter entry"):
        list(ab.read_dead_letters(bad))
    bad.write_text(entry_to_json(entry()).replace('"version":1', '"version":9') + "\n")
    with pytest.raises(ab.ConfigurationError, match="version 9"):
        list(ab.read_dead_letters(bad))
    bad.write_bytes(b"\xff\xfe\n")
    with pytest.raises(ab.ConfigurationError, match="not UTF-8"):
        list(ab.read_dead_letters(bad))


def test_memory_dead_letter() -> None:
    """MemoryDeadLetter keeps the entries themselves."""
    sink = ab.MemoryDeadLetter()
    sink.write(entry())
    assert sink.entries == [entry()]
    assert len(sink) == 1
