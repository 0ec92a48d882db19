"""The background sender's durable spool: submissions on disk until Braze's outcome is known.

An SQLite file in WAL mode, created ``0600``. Every row belongs to the process that wrote it
(``owner``: its pid and a random token): a sender sends only its own rows, and adopts the rows
of owners that are no longer running — a crashed or ``kill -9``-ed process, a dead gunicorn
worker — so each spooled change is sent by one live process (at least once).

``receipts`` remembers the idempotency keys of accepted webhooks, written in the same
transaction as their changes: a redelivered webhook is recognised even after a restart.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from os import PathLike
from pathlib import Path

from ._fork import reset_after_fork
from ._sqlite import SqliteFile, Synchronous

__all__ = ["Spool", "SpoolRow"]

RECEIPT_TTL = 7 * 24 * 3600.0  # seconds a webhook's idempotency key is remembered
_PRUNE_EVERY = 600.0

SpoolRow = tuple[int, str, str, str]  # (id, kind, key, record JSON)


def _alive(owner: str) -> bool:
    pid_text, _, _ = owner.partition(":")
    try:
        pid = int(pid_text)
    except ValueError:
        return False
    if pid == os.getpid():
        return False  # an earlier sender of this very process (another token): adopt it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


class Spool:
    """Rows of submitted changes, durable before :meth:`add` returns."""

    def __init__(self, path: str | PathLike[str], *, synchronous: Synchronous = "FULL") -> None:
        # FULL: a row is on disk (fsync) before submit returns.
        self._file = SqliteFile(path, timeout=30.0, synchronous=synchronous)
        self.path: Path = self._file.path
        self._new_owner()
        self._pruned = 0.0
        db = self._file.connection()
        db.execute(
            "CREATE TABLE IF NOT EXISTS changes (id INTEGER PRIMARY KEY AUTOINCREMENT,"
            " owner TEXT NOT NULL, kind TEXT NOT NULL, key TEXT NOT NULL,"
            " record TEXT NOT NULL, created REAL NOT NULL)"
        )
        db.execute("CREATE INDEX IF NOT EXISTS changes_owner ON changes (owner, id)")
        db.execute(
            "CREATE TABLE IF NOT EXISTS receipts (key TEXT PRIMARY KEY, created REAL NOT NULL)"
        )
        reset_after_fork(self)

    def __repr__(self) -> str:
        return f"Spool({str(self.path)!r})"

    def _new_owner(self) -> None:
        self.owner = f"{os.getpid()}:{os.urandom(6).hex()}"

    def _after_fork(self) -> None:
        self._new_owner()  # the child's rows are its own

    def add(
        self,
        rows: Sequence[tuple[str, str, str]],
        receipt: str | None = None,
        receipt_ttl: float | None = None,
    ) -> list[int] | None:
        """Store ``(kind, key, record JSON)`` rows in one transaction; return their ids, or
        ``None`` when ``receipt`` was accepted before — within ``receipt_ttl`` seconds when
        given — (a redelivery: nothing is stored)."""
        now = time.time()
        with self._file.write() as db:
            if receipt is not None:
                if receipt_ttl is not None:  # an older one is a new delivery, not a redelivery
                    db.execute(
                        "DELETE FROM receipts WHERE key = ? AND created < ?",
                        (receipt, now - receipt_ttl),
                    )
                cursor = db.execute(
                    "INSERT OR IGNORE INTO receipts (key, created) VALUES (?, ?)", (receipt, now)
                )
                if cursor.rowcount == 0:
                    return None  # nothing was written: the transaction ends empty
            ids = []
            for kind, key, record in rows:
                cursor = db.execute(
                    "INSERT INTO changes (owner, kind, key, record, created)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (self.owner, kind, key, record, now),
                )
                assert cursor.lastrowid is not None
                ids.append(cursor.lastrowid)
        return ids

    def seen(self, receipt: str) -> bool:
        """Whether a webhook with this idempotency key was accepted already."""
        row = (
            self._file.connection()
            .execute("SELECT 1 FROM receipts WHERE key = ?", (receipt,))
            .fetchone()
        )
        return row is not None

    def remove(self, ids: Sequence[int]) -> None:
        """Forget rows whose outcome is known (sent, or in the dead letter)."""
        if not ids:
            return
        with self._file.write() as db:
            db.executemany("DELETE FROM changes WHERE id = ?", [(i,) for i in ids])
        now = time.monotonic()
        if now - self._pruned > _PRUNE_EVERY:
            self._pruned = now
            db.execute("DELETE FROM receipts WHERE created < ?", (time.time() - RECEIPT_TTL,))

    def adopt_orphans(self) -> int:
        """Take over the rows of owners that no longer run; return how many."""
        db = self._file.connection()
        owners = [row[0] for row in db.execute("SELECT DISTINCT owner FROM changes")]
        adopted = 0
        for owner in owners:
            if owner != self.owner and not _alive(owner):
                cursor = db.execute(
                    "UPDATE changes SET owner = ? WHERE owner = ?", (self.owner, owner)
                )
                adopted += cursor.rowcount
        return adopted

    def load(self, after: int, limit: int) -> list[SpoolRow]:
        """This owner's rows with ids above ``after``, oldest first."""
        cursor = self._file.connection().execute(
            "SELECT id, kind, key, record FROM changes WHERE owner = ? AND id > ?"
            " ORDER BY id LIMIT ?",
            (self.owner, after, limit),
        )
        return [(int(i), str(k), str(key), str(r)) for i, k, key, r in cursor]

    def count(self) -> int:
        """Rows not yet settled, of every owner."""
        return int(self._file.connection().execute("SELECT COUNT(*) FROM changes").fetchone()[0])

    def close(self) -> None:
        """Close this thread's connection."""
        self._file.close()
