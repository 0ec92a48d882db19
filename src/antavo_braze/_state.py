"""What Braze last accepted per member, for change detection.

Stores keep, per member and field, a keyed hash of the value Braze accepted (never the value:
state files hold no emails or birth dates). Each store has its own ``secret`` for the hash,
kept with the data, so that every process sharing a store computes the same hashes.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from os import PathLike
from typing import Protocol, runtime_checkable

from ._sqlite import SqliteFile

__all__ = ["MemoryStateStore", "SqliteStateStore", "StateStore", "get_many"]

_IN_CHUNK = 500  # ids per SELECT ... IN (...)


@runtime_checkable
class StateStore(Protocol):
    """Remembers, per member, the hash of each attribute value Braze accepted.

    A store may also offer ``get_many(ids)`` (one round trip per batch) and a ``secret``
    (bytes) keying the hashes; without one, the hashes are plain SHA-256.
    """

    def get(self, member_id: str) -> dict[str, str] | None:
        """The stored hashes for ``member_id`` (``None`` if never synced)."""

    def put_many(self, updates: Iterable[tuple[str, Mapping[str, str]]]) -> None:
        """Merge ``(member_id, {field: hash})`` updates into the store."""


def get_many(store: StateStore, ids: Sequence[str]) -> dict[str, dict[str, str]]:
    """The stored hashes of ``ids`` (those with any), in one call when the store can."""
    batch = getattr(store, "get_many", None)
    if callable(batch):
        found: dict[str, dict[str, str]] = batch(ids)
        return found
    out = {}
    for member_id in ids:
        prints = store.get(member_id)
        if prints is not None:
            out[member_id] = prints
    return out


class MemoryStateStore:
    """A state store in a dict: for tests, notebooks and one-process runs."""

    def __init__(self) -> None:
        self._data: dict[str, dict[str, str]] = {}
        self._lock = threading.Lock()
        self.secret = os.urandom(32)

    def get(self, member_id: str) -> dict[str, str] | None:
        with self._lock:
            found = self._data.get(member_id)
            return None if found is None else dict(found)

    def get_many(self, ids: Sequence[str]) -> dict[str, dict[str, str]]:
        with self._lock:
            return {i: dict(self._data[i]) for i in ids if i in self._data}

    def put_many(self, updates: Iterable[tuple[str, Mapping[str, str]]]) -> None:
        with self._lock:
            for member_id, fields in updates:
                self._data.setdefault(member_id, {}).update(fields)

    def __len__(self) -> int:
        return len(self._data)


class SqliteStateStore:
    """A state store in an SQLite file (created ``0600``); safe for several processes on one
    machine (WAL mode). Each thread and each forked child opens its own connection."""

    def __init__(self, path: str | PathLike[str], *, timeout: float = 30.0) -> None:
        self._file = SqliteFile(path, timeout=timeout, synchronous="NORMAL")
        self.path = self._file.path
        with self._file.use() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS member_state ("
                " external_id TEXT PRIMARY KEY, fields TEXT NOT NULL)"
            )
            db.execute(
                "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)"
            )
            db.execute(
                "INSERT OR IGNORE INTO meta (name, value) VALUES ('secret', ?)",
                (os.urandom(32).hex(),),
            )
            row = db.execute("SELECT value FROM meta WHERE name = 'secret'").fetchone()
        self.secret = bytes.fromhex(row[0])

    def __repr__(self) -> str:
        return f"SqliteStateStore({str(self.path)!r})"

    def get(self, member_id: str) -> dict[str, str] | None:
        with self._file.use() as db:
            query = "SELECT fields FROM member_state WHERE external_id = ?"
            row = db.execute(query, (member_id,)).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def get_many(self, ids: Sequence[str]) -> dict[str, dict[str, str]]:
        out: dict[str, dict[str, str]] = {}
        unique = list(dict.fromkeys(ids))
        with self._file.use() as db:
            for start in range(0, len(unique), _IN_CHUNK):
                chunk = unique[start : start + _IN_CHUNK]
                marks = ",".join("?" * len(chunk))
                query = (
                    f"SELECT external_id, fields FROM member_state WHERE external_id IN ({marks})"
                )
                for member_id, fields in db.execute(query, chunk):
                    out[member_id] = dict(json.loads(fields))
        return out

    def put_many(self, updates: Iterable[tuple[str, Mapping[str, str]]]) -> None:
        with self._file.write() as db:
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

    def __len__(self) -> int:
        with self._file.use() as db:
            return int(db.execute("SELECT COUNT(*) FROM member_state").fetchone()[0])

    def close(self) -> None:
        """Close this thread's connection."""
        self._file.close()
