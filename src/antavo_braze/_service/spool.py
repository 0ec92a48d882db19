"""The background sender's durable spool: submissions on disk until Braze's outcome is known.

An SQLite file in WAL mode, created ``0600``. Every row belongs to the sender that wrote it
(``owner``): a sender sends only its own rows, and adopts the rows of owners that are no
longer running — a crashed or ``kill -9``-ed process, a dead gunicorn worker — so each
spooled change is sent by one live process (at least once).

Whether an owner runs is asked of the kernel, not of process ids (a process in another
container sharing the file has an id that means nothing here): each owner holds a lock on
one byte of ``<spool>.owners`` (``fcntl.lockf``) for as long as its process lives, so the
rows of a live owner are never taken, and those of a dead one are.

Concurrent submits share one disk sync (group commit): one thread writes every row waiting
at that moment in one transaction while the others wait for it. Rows whose outcome is known
are deleted (their pages are reused, so the file stays as large as the largest backlog), and
``receipt_keys`` — the idempotency keys of accepted webhooks (their SHA-256, 32 bytes each),
written in the same transaction as their changes, so that a redelivery is recognised even
after a restart — expire after their time to live (``RECEIPT_TTL`` unless the caller says)
and are pruned: with nothing pending, the file holds only the keys still remembered.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from os import PathLike
from pathlib import Path

from .._fork import reset_after_fork
from .._run.files import ensure_private_file
from .._run.sqlite import SqliteFile, Synchronous

try:
    import fcntl
except ModuleNotFoundError:  # pragma: no cover - Windows: owners are told apart by pid
    fcntl = None  # type: ignore[assignment]

__all__ = ["Spool", "SpoolRow"]

RECEIPT_TTL = 7 * 24 * 3600.0  # seconds a webhook's idempotency key is remembered
_PRUNE_EVERY = 600.0
_WAL_LIMIT = 4 * 1024 * 1024  # bytes the write-ahead log is cut back to after a checkpoint

SpoolRow = tuple[int, str, str, str, int]  # (id, kind, key, record JSON, order sequence)

_LOCK_FILES: dict[Path, int] = {}  # one descriptor per owners file and process tree
_LOCK_FILES_GUARD = threading.Lock()


def _new_guard() -> None:
    global _LOCK_FILES_GUARD
    _LOCK_FILES_GUARD = threading.Lock()  # a parent's thread may have held it at fork()


if hasattr(os, "register_at_fork"):  # pragma: no branch - POSIX
    os.register_at_fork(after_in_child=_new_guard)


def _lock_file(path: Path) -> int:
    """The owners lock file's descriptor, opened once: closing any descriptor of it would
    release every lock this process holds on it (POSIX), so it is never closed; a forked
    child keeps using it (its locks are its own)."""
    with _LOCK_FILES_GUARD:
        fd = _LOCK_FILES.get(path)
        if fd is None:
            fd = _LOCK_FILES[path] = os.open(ensure_private_file(path), os.O_RDWR)
        return fd


def _digest(receipt: str) -> bytes:
    """The stored form of an idempotency key: compared whole, in 32 bytes."""
    return hashlib.sha256(receipt.encode("utf-8", "surrogatepass")).digest()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


Row = tuple[str, str, str, int]  # (kind, key, record JSON, order sequence)


class _Pending:
    """Rows waiting for the next group commit, and what became of them."""

    __slots__ = ("done", "error", "ids", "receipt", "receipt_ttl", "rows")

    def __init__(self, rows: Sequence[Row], receipt: str | None, receipt_ttl: float) -> None:
        self.rows = rows
        self.receipt = receipt
        self.receipt_ttl = receipt_ttl
        self.ids: list[int] | None = None
        self.error: BaseException | None = None
        self.done = False


class Spool:
    """Rows of submitted changes, durable before :meth:`add` returns."""

    def __init__(self, path: str | PathLike[str], *, synchronous: Synchronous = "FULL") -> None:
        # FULL: a row is on disk (fsync) before submit returns.
        self._file = SqliteFile(path, timeout=30.0, synchronous=synchronous)
        self.path: Path = self._file.path
        self._owners_path = self.path.with_name(self.path.name + ".owners")
        self._pruned = 0.0
        with self._file.use() as db:
            db.execute(f"PRAGMA journal_size_limit={_WAL_LIMIT}")
            db.execute(
                "CREATE TABLE IF NOT EXISTS changes (id INTEGER PRIMARY KEY AUTOINCREMENT,"
                " owner TEXT NOT NULL, kind TEXT NOT NULL, key TEXT NOT NULL,"
                " record TEXT NOT NULL, created REAL NOT NULL)"
            )
            columns = {row[1] for row in db.execute("PRAGMA table_info(changes)").fetchall()}
            if "seq" not in columns:  # a spool written before cross-process order
                db.execute("ALTER TABLE changes ADD COLUMN seq INTEGER NOT NULL DEFAULT 0")
            db.execute("CREATE INDEX IF NOT EXISTS changes_owner ON changes (owner, id)")
            db.execute(
                "CREATE TABLE IF NOT EXISTS receipt_keys (key BLOB PRIMARY KEY,"
                " expires REAL NOT NULL) WITHOUT ROWID"
            )
            old = db.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'receipts'"
            ).fetchall()
            db.execute(
                "CREATE TABLE IF NOT EXISTS owners (slot INTEGER PRIMARY KEY AUTOINCREMENT,"
                " owner TEXT NOT NULL)"
            )
        if old:
            self._migrate_receipts()
        self._setup_process()
        reset_after_fork(self)

    def _migrate_receipts(self) -> None:
        """Move the keys of a spool written before keys were hashed (whole, as text)."""
        with self._file.write() as db:
            rows = db.execute("SELECT key, created FROM receipts").fetchall()
            db.executemany(
                "INSERT OR IGNORE INTO receipt_keys (key, expires) VALUES (?, ?)",
                [(_digest(key), created + RECEIPT_TTL) for key, created in rows],
            )
            db.execute("DROP TABLE receipts")

    def __repr__(self) -> str:
        return f"Spool({str(self.path)!r})"

    def _setup_process(self) -> None:
        self._owner: str | None = None  # claimed on first use: never while another forks
        self._group = threading.Condition(threading.Lock())
        self._pending: list[_Pending] = []
        self._committing = False

    def _after_fork(self) -> None:
        self._setup_process()  # the child's rows are its own

    @property
    def owner(self) -> str:
        """This process's owner name (``pid:token:slot``), claimed and locked on first use."""
        if self._owner is None:
            token = f"{os.getpid()}:{os.urandom(6).hex()}"
            with self._file.write() as db:
                cursor = db.execute("INSERT INTO owners (owner) VALUES (?)", (token,))
                slot = cursor.lastrowid
            assert slot is not None
            if fcntl is not None:
                # Held until this process ends: the kernel lets it go when the process dies.
                # Blocking: another process may be testing this byte for a moment.
                fcntl.lockf(_lock_file(self._owners_path), fcntl.LOCK_EX, 1, slot)
            self._owner = f"{token}:{slot}"
        return self._owner

    def _alive(self, owner: str) -> bool:
        """Whether ``owner`` (another sender's name) belongs to a running process."""
        pid_text, _, rest = owner.partition(":")
        _, _, slot_text = rest.partition(":")
        try:
            pid = int(pid_text)
        except ValueError:
            return False
        if pid == os.getpid():
            return False  # an earlier sender of this very process (another token): adopt it
        if fcntl is None or not slot_text.isdigit():
            return _pid_alive(pid)  # a row written before owners held locks
        handle = _lock_file(self._owners_path)
        slot = int(slot_text)
        try:
            fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, slot)
        except OSError:
            return True  # its process holds the lock: it runs (here or in another container)
        fcntl.lockf(handle, fcntl.LOCK_UN, 1, slot)
        return False

    def add(
        self,
        rows: Sequence[Row],
        receipt: str | None = None,
        receipt_ttl: float | None = None,
    ) -> list[int] | None:
        """Store ``(kind, key, record JSON, sequence)`` rows durably; return their ids, or
        ``None`` when ``receipt`` was accepted in the last ``receipt_ttl`` seconds (default
        ``RECEIPT_TTL``; a redelivery: nothing is stored). Threads adding at the same time
        share one transaction (one disk sync)."""
        return self.add_many([(rows, receipt, receipt_ttl)])[0]

    def add_many(
        self, groups: Sequence[tuple[Sequence[Row], str | None, float | None]]
    ) -> list[list[int] | None]:
        """:meth:`add` for several ``(rows, receipt, receipt_ttl)`` groups at once (several
        webhooks), in one transaction with whatever other threads add meanwhile; per group,
        its ids or ``None`` (a redelivery)."""
        owner = self.owner
        mine = [
            _Pending(rows, receipt, RECEIPT_TTL if ttl is None else ttl)
            for rows, receipt, ttl in groups
        ]
        if not mine:
            return []
        last = mine[-1]  # appended together: all of them are done when the last one is
        with self._group:
            self._pending.extend(mine)
            while self._committing and not last.done:
                self._group.wait()
            if not last.done:  # this thread writes the group, its own rows included
                self._committing = True
                group, self._pending = self._pending, []
        if last.done:
            return [self._result(pending) for pending in mine]
        try:
            with self._file.write() as db:
                for pending in group:
                    pending.ids = self._insert(db, owner, pending)
        except BaseException as exc:
            for pending in group:
                pending.error = exc
        finally:
            with self._group:
                for pending in group:
                    pending.done = True
                self._committing = False
                self._group.notify_all()
        return [self._result(pending) for pending in mine]

    @staticmethod
    def _result(pending: _Pending) -> list[int] | None:
        if pending.error is not None:
            raise pending.error
        return pending.ids

    @staticmethod
    def _insert(db: sqlite3.Connection, owner: str, pending: _Pending) -> list[int] | None:
        now = time.time()
        execute = db.execute
        if pending.receipt is not None:
            digest, expires = _digest(pending.receipt), now + pending.receipt_ttl
            cursor = execute(
                "INSERT OR IGNORE INTO receipt_keys (key, expires) VALUES (?, ?)",
                (digest, expires),
            )
            if cursor.rowcount == 0:  # known: a redelivery, unless it expired (not pruned yet)
                cursor = execute(
                    "UPDATE receipt_keys SET expires = ? WHERE key = ? AND expires <= ?",
                    (expires, digest, now),
                )
                if cursor.rowcount == 0:
                    return None  # a redelivery: none of its rows are written
        ids = []
        for kind, key, record, seq in pending.rows:
            cursor = execute(
                "INSERT INTO changes (owner, kind, key, record, created, seq)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (owner, kind, key, record, now, seq),
            )
            ids.append(int(cursor.lastrowid or 0))
        return ids

    def seen(self, receipt: str) -> bool:
        """Whether a webhook with this idempotency key was accepted already."""
        with self._file.use() as db:
            row = db.execute(
                "SELECT 1 FROM receipt_keys WHERE key = ? AND expires > ?",
                (_digest(receipt), time.time()),
            ).fetchone()
        return row is not None

    def remove(self, ids: Sequence[int]) -> None:
        """Forget rows whose outcome is known (sent, or in the dead letter)."""
        if not ids:
            return
        now = time.monotonic()
        prune = now - self._pruned > _PRUNE_EVERY
        # Not synced: a removal lost in a machine crash only means the change is sent again
        # (at least once), and the next submit's synced commit writes it to disk anyway.
        with self._file.write(synchronous="NORMAL") as db:
            db.executemany("DELETE FROM changes WHERE id = ?", [(i,) for i in ids])
            if prune:
                self._pruned = now
                db.execute("DELETE FROM receipt_keys WHERE expires <= ?", (time.time(),))

    def adopt_orphans(self) -> int:
        """Take over the rows of owners that no longer run; return how many."""
        owner = self.owner
        with self._file.use() as db:
            owners = {row[0] for row in db.execute("SELECT DISTINCT owner FROM changes")}
            owners.update(row[0] for row in db.execute("SELECT owner || ':' || slot FROM owners"))
        dead = [o for o in sorted(owners) if o != owner and not self._alive(o)]
        adopted = 0
        if dead:
            with self._file.write() as db:
                for gone in dead:
                    cursor = db.execute(
                        "UPDATE changes SET owner = ? WHERE owner = ?", (owner, gone)
                    )
                    adopted += cursor.rowcount
                    db.execute("DELETE FROM owners WHERE owner || ':' || slot = ?", (gone,))
        return adopted

    def load(self, after: int, limit: int) -> list[SpoolRow]:
        """This owner's rows with ids above ``after``, oldest first."""
        owner = self.owner
        with self._file.use() as db:
            cursor = db.execute(
                "SELECT id, kind, key, record, seq FROM changes WHERE owner = ? AND id > ?"
                " ORDER BY id LIMIT ?",
                (owner, after, limit),
            )
            return [(int(i), str(k), str(key), str(r), int(q)) for i, k, key, r, q in cursor]

    def count(self) -> int:
        """Rows not yet settled, of every owner."""
        with self._file.use() as db:
            return int(db.execute("SELECT COUNT(*) FROM changes").fetchone()[0])

    def close(self) -> None:
        """Close every connection to the file (one is opened again if it is used)."""
        self._file.close_all()
