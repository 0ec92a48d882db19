"""State stores and dead-letter files."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

import antavo_braze as ab
from antavo_braze._state import fingerprint


def test_fingerprint_distinguishes_types() -> None:
    """True, 1 and 1.0 are different values to Braze, so their fingerprints differ."""
    assert len({fingerprint(True), fingerprint(1), fingerprint(1.0)}) == 3
    assert fingerprint({"b": 1, "a": 2}) == fingerprint({"a": 2, "b": 1})


def test_sqlite_store_persists_and_merges(tmp_path: Path) -> None:
    """Values survive reopening; updates merge per field."""
    path = tmp_path / "s.db"
    store = ab.SqliteStateStore(path)
    store.put_many([("m", {"a": "1", "b": "2"})])
    store.put_many([("m", {"b": "3"})])
    store.close()
    again = ab.SqliteStateStore(path)
    assert again.get("m") == {"a": "1", "b": "3"}
    assert again.get("x") is None
    assert len(again) == 1
    assert "s.db" in repr(again)
    assert isinstance(again, ab.StateStore)


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


def test_jsonl_dead_letter_round_trip(tmp_path: Path) -> None:
    """Entries written are read back in order; odd values are stringified."""
    path = tmp_path / "dead.jsonl"
    sink = ab.JsonlDeadLetter(path)
    sink.write({"n": 1, "odd": object.__name__})
    sink.write({"n": 2, "when": Path("x")})
    assert [e["n"] for e in ab.read_dead_letters(path)] == [1, 2]
    assert sink.count == 2
    assert "dead.jsonl" in repr(sink)


def test_reading_bad_dead_letters(tmp_path: Path) -> None:
    """Missing files and broken lines are configuration errors with the line number."""
    with pytest.raises(ab.ConfigurationError, match="cannot read"):
        list(ab.read_dead_letters(tmp_path / "none.jsonl"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"a": 1}) + "\n\n{broken\n")
    with pytest.raises(ab.ConfigurationError, match=":3: not a JSON line"):
        list(ab.read_dead_letters(bad))
    bad.write_text("[1]\n")
    with pytest.raises(ab.ConfigurationError, match="not a dead-letter entry"):
        list(ab.read_dead_letters(bad))


def test_memory_dead_letter() -> None:
    """MemoryDeadLetter keeps JSON-ready copies."""
    sink = ab.MemoryDeadLetter()
    sink.write({"a": (1, 2)})
    assert sink.entries == [{"a": [1, 2]}]
    assert len(sink) == 1
