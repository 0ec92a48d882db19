"""What Braze last accepted per member, for change detection.

Stores keep, per member and field, a keyed hash of the value Braze accepted (never the value:
state files hold no emails or birth dates). The hash key is never kept with the hashes: a
stolen state file alone gives nothing (low-entropy values such as a birth date or a points
balance would be recovered in a second from an unkeyed or co-located key). It comes from
``ANTAVO_BRAZE_STATE_KEY`` (every process sharing a store sets the same), else from an
owner-only file next to the SQLite file (``<state>.key``), made by the first process.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
from collections.abc import Iterable, Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Protocol, runtime_checkable

from ._files import check_private
from ._sqlite import SqliteFile
from .exceptions import ConfigurationError

__all__ = ["STATE_KEY_ENV", "MemoryStateStore", "SqliteStateStore", "StateStore", "get_many"]

STATE_KEY_ENV = "ANTAVO_BRAZE_STATE_KEY"
_IN_CHUNK = 500  # ids per SELECT ... IN (...)


def key_from_env(key: str | bytes | None = None) -> bytes | None:
    """The hash key given (``key``) or set in ``ANTAVO_BRAZE_STATE_KEY``; ``None`` if neither."""
    given = key if key is not None else os.environ.get(STATE_KEY_ENV) or None
    if given is None:
        return None
    data = given.encode() if isinstance(given, str) else given
    if len(data) < 16:
        raise ConfigurationError(f"{STATE_KEY_ENV} must be at least 16 characters long")
    return data


def _key_file(path: Path, migrated: str | None) -> bytes:
    """The key in the owner-only file ``path``, made now (from ``migrated``, an old store's
    key, else random) if it does not exist; two processes racing make one file."""
    check_private(path)
    try:
        if not path.exists():
            fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
            try:
                with os.fdopen(fd, "w", encoding="ascii") as handle:
                    handle.write((migrated or os.urandom(32).hex()) + "\n")
                    handle.flush()
                    os.fsync(handle.fileno())
                with contextlib.suppress(FileExistsError):  # another process made it first
                    os.link(temporary, path)
            finally:
                os.unlink(temporary)
            check_private(path)
        key = bytes.fromhex(path.read_text(encoding="ascii")[:200].strip())
    except OSError as exc:
        raise ConfigurationError(
            f"cannot keep the state key in {path}: {exc.strerror} (or set {STATE_KEY_ENV})"
        ) from None
    except (ValueError, UnicodeDecodeError):
        key = b""
    if len(key) < 16:
        raise ConfigurationError(f"{path}: not a state key (64 hex digits)")
    return key


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
    machine (WAL mode). Each thread and each forked child opens its own connection.

    The hashes' key: ``key``, else ``ANTAVO_BRAZE_STATE_KEY``, else the owner-only file
    ``<path>.key`` (made by the first process; keep it out of backups of the state file)."""

    def __init__(
        self,
        path: str | PathLike[str],
        *,
        timeout: float = 30.0,
        key: str | bytes | None = None,
    ) -> None:
        self._file = SqliteFile(path, timeout=timeout, synchronous="NORMAL")
        self.path = self._file.path
        db = self._file.connection()
        db.execute(
            "CREATE TABLE IF NOT EXISTS member_state ("
            " external_id TEXT PRIMARY KEY, fields TEXT NOT NULL)"
        )
        db.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
        # Stores made before the key moved out kept it here: it moves to the key file (the
        # hashes stay valid), or is dropped when the key comes from the environment.
        row = db.execute("SELECT value FROM meta WHERE name = 'secret'").fetchone()
        secret = key_from_env(key)
        self.key_file: Path | None = None
        if secret is None:
            self.key_file = self.path.with_name(self.path.name + ".key")
            secret = _key_file(self.key_file, None if row is None else str(row[0]))
        if row is not None:
            db.execute("DELETE FROM meta WHERE name = 'secret'")
        self.secret = secret

    def __repr__(self) -> str:
        return f"SqliteStateStore({str(self.path)!r})"

    def get(self, member_id: str) -> dict[str, str] | None:
        row = (
            self._file.connection()
            .execute("SELECT fields FROM member_state WHERE external_id = ?", (member_id,))
            .fetchone()
        )
        return None if row is None else dict(json.loads(row[0]))

    def get_many(self, ids: Sequence[str]) -> dict[str, dict[str, str]]:
        db = self._file.connection()
        out: dict[str, dict[str, str]] = {}
        unique = list(dict.fromkeys(ids))
        for start in range(0, len(unique), _IN_CHUNK):
            chunk = unique[start : start + _IN_CHUNK]
            marks = ",".join("?" * len(chunk))
            query = f"SELECT external_id, fields FROM member_state WHERE external_id IN ({marks})"
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
        return int(
            self._file.connection().execute("SELECT COUNT(*) FROM member_state").fetchone()[0]
        )

    def close(self) -> None:
        """Close this thread's connection."""
        self._file.close()
