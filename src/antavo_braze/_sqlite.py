"""The SQLite files the SDK keeps (change-detection state, the background sender's spool).

Each is created readable by its owner only and opened in WAL mode, so several processes on
one machine share it. Every thread opens its own connection (lazily, on its first use), and a
forked child opens new ones: a connection never crosses ``fork()``. Every call into SQLite
runs inside :data:`SQLITE_GATE`, so ``fork()`` never happens while a thread holds one of
SQLite's mutexes (the child would wait on it forever).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from os import PathLike
from pathlib import Path
from typing import Literal

from ._files import ensure_private_file
from ._fork import SQLITE_GATE, reset_after_fork

__all__ = ["SqliteFile", "Synchronous"]

Synchronous = Literal["FULL", "NORMAL"]


class SqliteFile:
    """One SQLite file (created ``0600``): a connection per thread and per process.

    ``synchronous``: ``"FULL"`` syncs every commit to disk (it survives a crash of the
    machine); ``"NORMAL"`` survives a crash of the process only. ``timeout``: seconds a writer
    waits for another process's transaction before failing.
    """

    def __init__(
        self, path: str | PathLike[str], *, timeout: float, synchronous: Synchronous
    ) -> None:
        self.path: Path = ensure_private_file(path)
        self._timeout = timeout
        self._synchronous = synchronous
        self._local = threading.local()
        reset_after_fork(self)

    def _after_fork(self) -> None:
        self._local = threading.local()  # the parent's connections stay the parent's

    @contextmanager
    def use(self) -> Iterator[sqlite3.Connection]:
        """This thread's connection, for reads inside the block (no ``fork()`` meanwhile)."""
        with SQLITE_GATE.entered():
            yield self._connection()

    def _connection(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=self._timeout, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={self._synchronous}")
            self._local.db = db
        return db

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed when the block ends, rolled back when it raises.
        Taken at once (``BEGIN IMMEDIATE``), so another process's writer makes this one wait
        its timeout instead of failing halfway."""
        with SQLITE_GATE.entered():
            db = self._connection()
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def close(self) -> None:
        """Close this thread's connection."""
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is not None:
            with SQLITE_GATE.entered():
                db.close()
            self._local.db = None
