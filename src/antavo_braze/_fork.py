"""Fork safety: objects that hold locks, threads or sockets start afresh in a child process.

A lock held by another thread at ``fork()`` stays held forever in the child, and a socket
shared with the parent would hand one process's answers to the other. Such objects register
here and get ``_after_fork()`` called in the child, before any of its code runs.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol

__all__ = ["SQLITE_GATE", "ForkAware", "ForkGate", "reset_after_fork"]


class ForkAware(Protocol):
    def _after_fork(self) -> None: ...


_LIVE: weakref.WeakSet[ForkAware] = weakref.WeakSet()


def reset_after_fork(obj: ForkAware) -> None:
    """Call ``obj._after_fork()`` in every child forked from now on (while ``obj`` lives)."""
    _LIVE.add(obj)


def _in_child() -> None:
    for obj in list(_LIVE):
        obj._after_fork()


if hasattr(os, "register_at_fork"):  # pragma: no branch - POSIX
    os.register_at_fork(after_in_child=_in_child)


class ForkGate:
    """Code that must never be cut in half by ``fork()`` (a call into SQLite holds SQLite's
    own mutexes: a child forked meanwhile would wait on them forever). Threads enter it
    freely, several at once; ``fork()`` waits until none is inside and lets none in until
    the child exists. Re-entrant within a thread."""

    def __init__(self) -> None:
        self._while_forking: list[Callable[[], None]] = []
        self._setup()
        if hasattr(os, "register_at_fork"):  # pragma: no branch - POSIX
            os.register_at_fork(
                before=self._before_fork,
                after_in_parent=self._after_in_parent,
                after_in_child=self._setup,
            )

    def _setup(self) -> None:
        # Re-entrant: the garbage collector may run a finalizer that enters the gate (an
        # SQLite connection closing) while this thread holds the lock, inside notify_all.
        self._cond = threading.Condition(threading.RLock())
        self._inside = 0
        self._forking = False
        self._forker: int | None = None  # the thread in the fork handler (it never waits)
        self._depth = threading.local()

    @contextmanager
    def entered(self) -> Iterator[None]:
        """Run the block with no ``fork()`` happening meanwhile."""
        depth: int = getattr(self._depth, "n", 0)
        if self._forker == threading.get_ident():
            # The garbage collector closing a connection in the fork handler itself: the
            # fork waits for this call to end, and no other thread is let in meanwhile.
            yield
            return
        if depth == 0:
            with self._cond:
                while self._forking:
                    self._cond.wait()
                self._inside += 1
        self._depth.n = depth + 1
        try:
            yield
        finally:
            if depth == 0:
                with self._cond:
                    self._inside = max(0, self._inside - 1)  # 0 in a child forked inside
                    if not self._inside:
                        self._cond.notify_all()
            # Only now: a GC finalizer entering the gate while this thread leaves it is still
            # inside (it must not wait for a fork that waits for this thread).
            self._depth.n = depth

    def _before_fork(self) -> None:
        if getattr(self._depth, "n", 0):
            return  # forking from inside: nothing else can be let in or waited for safely
        self._cond.acquire()  # held through the fork: no thread enters meanwhile
        self._forking = True
        self._forker = threading.get_ident()
        while self._inside:
            self._cond.wait()
        for hook in self._while_forking:
            hook()

    def while_forking(self, hook: Callable[[], None]) -> None:
        """Call ``hook()`` before every ``fork()``, once no thread is inside the gate."""
        self._while_forking.append(hook)

    def _after_in_parent(self) -> None:
        if not self._forking:
            return
        self._forking = False
        self._forker = None
        self._cond.notify_all()
        self._cond.release()


SQLITE_GATE = ForkGate()  # every call into SQLite, in every SqliteFile
