"""The SQLite files the SDK keeps (change-detection state, the background sender's spool).

Each is created readable by its owner only and opened in WAL mode, so several processes on
one machine share it. Every thread opens its own connection (lazily, on its first use), and a
forked child opens new ones: a connection never crosses ``fork()``.

``fork()`` must never happen while a thread is inside SQLite, nor while a connection is
open: SQLite's own mutexes (the process-wide ones taken to open or close a file, a file's
shared-memory lock) would stay held in the child forever, and its per-process record of a
file's locks would be the parent's (the child's first query hangs, or fails with "disk I/O
error"). So every call into SQLite — opening, querying, finishing a statement, closing —
runs inside :data:`SQLITE_GATE`; ``fork()`` waits until no thread is inside, closes every
connection of the process, and forks: parent and child open new ones lazily. Results are
fetched whole inside the gate (a statement is finished before the block ends), and
connections are closed inside it too, never by the garbage collector at a random moment.
"""

from __future__ import annotations

import sqlite3
import threading
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from os import PathLike
from pathlib import Path
from typing import Any, Literal

from .._fork import SQLITE_GATE, reset_after_fork
from .files import check_private, ensure_private_file

__all__ = ["SqliteFile", "Synchronous"]

Synchronous = Literal["FULL", "NORMAL"]

_FILES: weakref.WeakSet[SqliteFile] = weakref.WeakSet()


def _close_all(connections: list[sqlite3.Connection]) -> None:
    with SQLITE_GATE.entered():
        while connections:
            connections.pop().close()


def _close_before_fork() -> None:
    for file in list(_FILES):
        file.close_all()


SQLITE_GATE.while_forking(_close_before_fork)


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
        for suffix in ("-wal", "-shm", "-journal"):  # SQLite opens these as they are
            check_private(f"{self.path}{suffix}")
        self._timeout = timeout
        self._synchronous = synchronous
        self._setup_process()
        reset_after_fork(self)
        _FILES.add(self)

    def _setup_process(self) -> None:
        self._local = threading.local()
        self._guard = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._finalizer = weakref.finalize(self, _close_all, self._connections)

    def _after_fork(self) -> None:
        self._finalizer.detach()  # none is open (closed before the fork): start afresh
        self._setup_process()

    @contextmanager
    def use(self) -> Iterator[sqlite3.Connection]:
        """This thread's connection, for reads inside the block (no ``fork()`` meanwhile):
        fetch results whole inside it."""
        with SQLITE_GATE.entered():
            yield self._connection()

    def query(self, sql: str, parameters: Sequence[Any] = ()) -> list[Any]:
        """All the rows of one query."""
        with self.use() as db:
            return db.execute(sql, parameters).fetchall()

    def _connection(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            # check_same_thread=False: only close_all closes another thread's connection.
            db = sqlite3.connect(
                self.path, timeout=self._timeout, isolation_level=None, check_same_thread=False
            )
            db.execute("PRAGMA journal_mode=WAL").fetchall()
            db.execute(f"PRAGMA synchronous={self._synchronous}")
            self._local.db = db
            self._local.synchronous = self._synchronous
            with self._guard:
                self._connections.append(db)
        return db

    @contextmanager
    def write(self, synchronous: Synchronous | None = None) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed when the block ends, rolled back when it raises.
        Taken at once (``BEGIN IMMEDIATE``), so another process's writer makes this one wait
        its timeout instead of failing halfway. ``synchronous``: this transaction's own
        setting (``"NORMAL"`` for a write that may be lost in a machine crash: it costs no
        disk sync, and the next synced commit syncs it too)."""
        wanted = synchronous or self._synchronous
        with SQLITE_GATE.entered():
            db = self._connection()
            if getattr(self._local, "synchronous", self._synchronous) != wanted:
                db.execute(f"PRAGMA synchronous={wanted}")
                self._local.synchronous = wanted
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
            self._local.db = None
            with self._guard:
                self._connections.remove(db)
            _close_all([db])

    def close_all(self) -> None:
        """Close every thread's connection (each thread opens a new one if it goes on)."""
        with self._guard:
            connections = list(self._connections)
            self._connections.clear()
        self._local = threading.local()
        _close_all(connections)
