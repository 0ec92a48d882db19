"""What Braze last accepted per member, for change detection (stdlib sqlite3)."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Mapping
from os import PathLike
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

__all__ = ["MemoryStateStore", "SqliteStateStore", "StateStore", "fingerprint"]


def fingerprint(value: Any) -> str:
    """A canonical JSON text of a coerced value: equal texts mean Braze holds the same value.

    (Plain ``==`` would call ``True == 1 == 1.0`` unchanged, which Braze does not.)
    """
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@runtime_checkable
class StateStore(Protocol):
    """Remembers, per member, the fingerprint of each attribute value Braze accepted."""

    def get(self, member_id: str) -> dict[str, str] | None:
        """The stored fingerprints for ``member_id`` (``None`` if never synced)."""

    def put_many(self, updates: Iterable[tuple[str, Mapping[str, str]]]) -> None:
        """Merge ``(member_id, {field: fingerprint})`` updates into the store."""


class MemoryStateStore:
    """A state store in a dict: for tests, notebooks and one-process runs."""

    def __init__(self) -> None:
        self._data: dict[str, dict[str, str]] = {}
        self._lock = threading.Lock()

    def get(self, member_id: str) -> dict[str, str] | None:
        with self._lock:
            found = self._data.get(member_id)
            return None if found is None else dict(found)

    def put_many(self, updates: Iterable[tuple[str, Mapping[str, str]]]) -> None:
        with self._lock:
            for member_id, fields in updates:
                self._data.setdefault(member_id, {}).update(fields)

    def __len__(self) -> int:
        return len(self._data)


class SqliteStateStore:
    """A state store in an SQLite file; safe for several processes on one machine (WAL mode)."""

    def __init__(self, path: str | PathLike[str], *, timeout: float = 30.0) -> None:
        self.path = Path(path)
        self._timeout = timeout
        self._local = threading.local()
        with self._connection() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS member_state ("
                " external_id TEXT PRIMARY KEY, fields TEXT NOT NULL)"
            )

    def __repr__(self) -> str:
        return f"SqliteStateStore({str(self.path)!r})"

    def _connection(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=self._timeout, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db = db
        return db

    def get(self, member_id: str) -> dict[str, str] | None:
        row = (
            self._connection()
            .execute("SELECT fields FROM member_state WHERE external_id = ?", (member_id,))
            .fetchone()
        )
        return None if row is None else dict(json.loads(row[0]))

    def put_many(self, updates: Iterable[tuple[str, Mapping[str, str]]]) -> None:
        db = self._connection()
        # One write transaction: other processes wait (busy timeout) instead of failing.
        db.execute("BEGIN IMMEDIATE")
        try:
            for member_id, fields in updates:
                row = db.execute(
                    "SELECT fields FROM member_state WHERE external_id = ?", (member_id,)
                ).fetchone()
                merged = {} if row is None else json.loads(row[0])
                merged.update(fields)
                db.execute(
                    "INSERT OR REPLACE INTO member_state (external_id, fields) VALUES (?, ?)",
                    (member_id, json.dumps(merged, sort_keys=True)),
                )
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def __len__(self) -> int:
        return int(self._connection().execute("SELECT COUNT(*) FROM member_state").fetchone()[0])

    def close(self) -> None:
        """Close this thread's connection."""
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None
