"""What Braze last accepted per member, for change detection; which events it accepted;
where the last pull from Antavo ended.

Stores keep, per member and field, a keyed hash of the value Braze accepted (never the value:
state files hold no emails or birth dates). The hash key is never kept with the hashes: a
stolen state file alone gives nothing (low-entropy values such as a birth date or a points
balance would be recovered in a second from an unkeyed or co-located key). It comes from
``ANTAVO_BRAZE_STATE_KEY`` (every process sharing a store sets the same), else from an
owner-only file next to the SQLite file (``<state>.key``), made by the first process.

The event ledger stands in for the idempotency key Braze does not have: the ``id`` of every
event Braze accepted, kept for ``ledger_days`` (default 30) — an event seen again within that
horizon (an overlapping pull, a replay, a resume, a redelivered webhook) is not sent again.
An id older than the horizon is forgotten, so keep the horizon longer than any window you
may pull or replay again. The watermark of each kind of pull (``"members"``, ``"events"``) is
where the next pull starts.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Protocol, runtime_checkable

from ..exceptions import ConfigurationError
from .files import check_private
from .sqlite import SqliteFile

__all__ = [
    "LEDGER_DAYS",
    "STATE_KEY_ENV",
    "MemoryStateStore",
    "SqliteStateStore",
    "StateStore",
    "already_sent",
    "get_many",
    "has_ledger",
    "read_watermark",
    "record_sent",
    "write_watermark",
]

STATE_KEY_ENV = "ANTAVO_BRAZE_STATE_KEY"
_IN_CHUNK = 500  # ids per SELECT ... IN (...)
LEDGER_DAYS = 30.0  # how long an accepted event's id is remembered, by default
_DAY = 86_400.0


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


def has_ledger(store: object) -> bool:
    """Whether ``store`` keeps the event ledger (``sent_events`` and ``record_sent``)."""
    return callable(getattr(store, "sent_events", None)) and callable(
        getattr(store, "record_sent", None)
    )


def already_sent(store: object, ids: Sequence[str]) -> set[str]:
    """Which of ``ids`` the ledger holds (none without a ledger)."""
    if not ids or not has_ledger(store):
        return set()
    found: set[str] = store.sent_events(ids)  # type: ignore[attr-defined]
    return found


def record_sent(store: object, ids: Sequence[str]) -> None:
    """Remember that Braze accepted the events ``ids`` (nothing without a ledger)."""
    if ids and has_ledger(store):
        store.record_sent(ids)  # type: ignore[attr-defined]


def read_watermark(store: object, kind: str) -> str | None:
    """Where the last pull of ``kind`` ended (ISO 8601), if the store keeps one."""
    get = getattr(store, "get_watermark", None)
    if not callable(get):
        raise ConfigurationError(
            f"{type(store).__name__} keeps no watermark: use SqliteStateStore, "
            "RedisStateStore or MemoryStateStore, or pass since="
        )
    value = get(kind)
    return None if value is None else str(value)


def write_watermark(store: object, kind: str, value: str) -> None:
    """Move the watermark of ``kind`` to ``value`` (a store without watermarks keeps none:
    ``report.watermark`` still says it)."""
    put = getattr(store, "set_watermark", None)
    if callable(put):
        put(kind, value)


class MemoryStateStore:
    """A state store in a dict: for tests, notebooks and one-process runs. ``ledger_days``:
    how long accepted event ids are remembered."""

    def __init__(self, *, ledger_days: float = LEDGER_DAYS) -> None:
        self._data: dict[str, dict[str, str]] = {}
        self._lock = threading.Lock()
        self.secret = os.urandom(32)
        self.ledger_days = ledger_days
        self._sent: dict[str, float] = {}
        self._watermarks: dict[str, str] = {}

    def sent_events(self, ids: Sequence[str]) -> set[str]:
        """The ids among ``ids`` recorded as sent within the horizon."""
        cutoff = time.time() - self.ledger_days * _DAY
        with self._lock:
            return {i for i in ids if self._sent.get(i, -1.0) >= cutoff}

    def record_sent(self, ids: Iterable[str]) -> None:
        """Record event ids Braze accepted (and forget those past the horizon)."""
        now = time.time()
        cutoff = now - self.ledger_days * _DAY
        with self._lock:
            for event_id in ids:
                self._sent[event_id] = now
            for event_id in [i for i, t in self._sent.items() if t < cutoff]:
                del self._sent[event_id]

    def get_watermark(self, kind: str) -> str | None:
        with self._lock:
            return self._watermarks.get(kind)

    def set_watermark(self, kind: str, value: str) -> None:
        with self._lock:
            self._watermarks[kind] = value

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
    ``<path>.key`` (made by the first process; keep it out of backups of the state file).
    ``ledger_days``: how long accepted event ids are remembered (default 30)."""

    def __init__(
        self,
        path: str | PathLike[str],
        *,
        timeout: float = 30.0,
        key: str | bytes | None = None,
        ledger_days: float = LEDGER_DAYS,
    ) -> None:
        self.ledger_days = ledger_days
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
                "CREATE TABLE IF NOT EXISTS sent_events ("
                " event_id TEXT PRIMARY KEY, sent_at REAL NOT NULL)"
            )
            db.execute("CREATE INDEX IF NOT EXISTS sent_events_at ON sent_events (sent_at)")
            # Stores made before the key moved out kept it here: it moves to the key file
            # (the hashes stay valid), or is dropped when the key comes from the environment.
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

    def sent_events(self, ids: Sequence[str]) -> set[str]:
        """The ids among ``ids`` recorded as sent within the horizon."""
        cutoff = time.time() - self.ledger_days * _DAY
        unique = list(dict.fromkeys(ids))
        found: set[str] = set()
        with self._file.use() as db:
            for start in range(0, len(unique), _IN_CHUNK):
                chunk = unique[start : start + _IN_CHUNK]
                marks = ",".join("?" * len(chunk))
                query = (
                    f"SELECT event_id FROM sent_events WHERE event_id IN ({marks}) AND sent_at >= ?"
                )
                found.update(row[0] for row in db.execute(query, [*chunk, cutoff]))
        return found

    def record_sent(self, ids: Iterable[str]) -> None:
        """Record event ids Braze accepted, and forget those past the horizon."""
        now = time.time()
        with self._file.write() as db:
            db.executemany(
                "INSERT OR REPLACE INTO sent_events (event_id, sent_at) VALUES (?, ?)",
                [(event_id, now) for event_id in ids],
            )
            db.execute(
                "DELETE FROM sent_events WHERE sent_at < ?", (now - self.ledger_days * _DAY,)
            )

    def get_watermark(self, kind: str) -> str | None:
        with self._file.use() as db:
            query = "SELECT value FROM meta WHERE name = ?"
            row = db.execute(query, (f"watermark:{kind}",)).fetchone()
        return None if row is None else str(row[0])

    def set_watermark(self, kind: str, value: str) -> None:
        with self._file.write() as db:
            db.execute(
                "INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)",
                (f"watermark:{kind}", value),
            )

    def close(self) -> None:
        """Close this thread's connection."""
        self._file.close()
