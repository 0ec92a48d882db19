"""Ctrl-C and SIGTERM during a sync: stop reading, let in-flight requests finish, account.

While a sync runs in the main thread, and only where the process still has Python's default
handlers (a server's own handlers are never replaced), the first SIGINT or SIGTERM asks the
send loop to stop: no record is cut in half while being mapped, requests in flight get a
short grace, and the sync raises :class:`~antavo_braze.SyncInterrupted` with its report. A
second signal stops at once (what is still in flight then fails as interrupted).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterable, Iterator
from types import FrameType
from typing import Any

from .._http import Interrupt

__all__ = ["stop_on_signals"]


def _is_default(signum: int, handler: Any) -> bool:
    if signum == signal.SIGINT:
        return handler is signal.default_int_handler
    return handler in (signal.SIG_DFL, None)


@contextlib.contextmanager
def stop_on_signals(interrupt: Interrupt, enabled: bool = True) -> Iterator[None]:
    """Within the block, SIGINT/SIGTERM request ``interrupt`` instead of killing the process."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        if interrupt.signal is not None:  # asked twice: stop now
            raise KeyboardInterrupt
        interrupt.request(signum)

    previous: dict[signal.Signals, Any] = {}
    for name in (signal.SIGINT, signal.SIGTERM):
        current = signal.getsignal(name)
        if _is_default(name, current):
            previous[name] = current
            signal.signal(name, handler)
    try:
        yield
    finally:
        for name, old in previous.items():
            signal.signal(name, old)


def until_interrupted(records: Iterable[Any], interrupt: Interrupt) -> Iterator[Any]:
    """The records; a Ctrl-C raised while the input is read (a notebook cell, a generator
    reading a socket) ends them and stops the run like a signal: every record read so far
    was handled, so the report adds up."""
    try:
        yield from records
    except KeyboardInterrupt:
        if interrupt.signal is not None:  # a second one: stop now
            raise
        interrupt.request(signal.SIGINT)
