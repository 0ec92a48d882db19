"""Splitting one input over N workers, stably by member id.

Every worker reads the whole input and keeps its share: a member (and every event of that
member) always belongs to the same shard, so per-member order holds and N workers together
send each record exactly once. Pure: no I/O.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator
from typing import Any

from .._build.records import event_id, record_id
from .._run.checkpoint import Settled
from .._run.input import reopen_input
from ..exceptions import ConfigurationError

__all__ = ["Sharded", "parse_shard", "shard_of"]


def shard_of(record_id: Any, count: int) -> int:
    """The shard (``0 .. count - 1``) that owns member ``record_id``: the same in every
    process and on every machine (CRC-32 of the id's text, not Python's salted ``hash``)."""
    if count < 1:
        raise ConfigurationError("the shard count must be at least 1")
    return zlib.crc32(str(record_id).encode("utf-8", "surrogatepass")) % count


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` (0-based ``I``) as ``(I, N)``, or a clear error."""
    index, sep, count = text.partition("/")
    try:
        i, n = int(index), int(count)
    except ValueError:
        i = n = -1
    if not sep or n < 1 or not 0 <= i < n:
        raise ConfigurationError(
            f"--shard {text!r}: expected I/N with 0 <= I < N (e.g. 0/4 ... 3/4)"
        )
    return i, n


class Sharded:
    """The records of shard ``index`` of ``count`` (members by ``id``, events by their
    ``customer``); every other record is replaced by a
    :class:`Settled` marker (skipped with a reason), so positions and line numbers stay
    those of the whole input. A record without an id (an unreadable line) belongs to the
    shard of its position."""

    def __init__(
        self, records: Iterable[Any], index: int, count: int, *, kind: str = "members"
    ) -> None:
        self._records = records
        self.index, self.count = index, count
        # An event envelope may carry an id of its own: its customer decides.
        self._key = event_id if kind == "events" else record_id
        self.line_of = getattr(records, "line_of", None)
        self._reason = f"another worker's record (--shard {index}/{count})"

    def reopen(self) -> Sharded:
        """The same shard of the input read again (see :meth:`RecordSource.reopen`)."""
        kind = "events" if self._key is event_id else "members"
        return Sharded(reopen_input(self._records), self.index, self.count, kind=kind)

    def close(self) -> None:
        """Close the input without reading on (see :meth:`RecordSource.close`)."""
        close = getattr(self._records, "close", None)
        if callable(close):
            close()

    def __iter__(self) -> Iterator[Any]:
        index, count = self.index, self.count
        for position, record in enumerate(self._records):
            if type(record) is Settled:
                yield record
                continue
            key = self._key(record)
            owner = position % count if key is None else shard_of(key, count)
            yield record if owner == index else Settled(position, self._reason)
