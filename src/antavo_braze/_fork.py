"""Fork safety: objects that hold locks, threads or sockets start afresh in a child process.

A lock held by another thread at ``fork()`` stays held forever in the child, and a socket
shared with the parent would hand one process's answers to the other. Such objects register
here and get ``_after_fork()`` called in the child, before any of its code runs.
"""

from __future__ import annotations

import os
import weakref
from typing import Protocol

__all__ = ["ForkAware", "reset_after_fork"]


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
