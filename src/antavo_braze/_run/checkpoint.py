"""Resume checkpoints: which input positions an interrupted run settled.

A run that is interrupted writes ``<dead letter>.checkpoint``: the input it read (path, size,
modification time) and the 0-based input positions whose outcome is final — succeeded, failed
into the dead letter, or skipped. ``--resume`` reads the same input again and sends only the
positions not in it, so what Braze accepted is never sent twice. What the interrupt cut off
(stage ``"interrupted"``, not sent; or sent, no answer, attributes only) is not settled: it is
taken out of the dead letter and sent again. Events and purchases whose answer never came stay
in the dead letter with ``outcome: "unknown"`` and count as settled (they may be in Braze).
"""

from __future__ import annotations

import bisect
import json
import math
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from attrs import frozen

from ..exceptions import ConfigurationError
from .files import replace_private
from .input import reopen_input
from .report import RecordFailure, SyncReport

__all__ = [
    "Checkpoint",
    "Resumed",
    "Settled",
    "checkpoint_path",
    "merge_ranges",
    "reopened",
]

Ranges = tuple[tuple[int, int], ...]  # sorted, disjoint, half-open [start, end)
VERSION = 1


def checkpoint_path(dead_letter: str | os.PathLike[str]) -> Path:
    """Where the checkpoint of a run with this dead letter lives."""
    return Path(f"{os.fspath(dead_letter)}.checkpoint")


def merge_ranges(positions: Iterable[tuple[int, int]]) -> Ranges:
    """Sorted, disjoint half-open ranges covering exactly the given ones (empty ones dropped)."""
    merged: list[tuple[int, int]] = []
    for start, end in sorted(r for r in positions if r[0] < r[1]):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return tuple(merged)


def _without(handled: int, holes: Iterable[int]) -> Iterator[tuple[int, int]]:
    """``[0, handled)`` minus the positions in ``holes``, as ranges."""
    start = 0
    for hole in sorted(set(holes)):
        if hole >= handled:
            break
        yield (start, hole)
        start = hole + 1
    yield (start, handled)


def reopened(kind: str, failure: RecordFailure) -> bool:
    """Whether a resume sends this failure's record again: cut off by the interrupt, and
    never sent, or sent with no answer where sending again is harmless (member attributes)."""
    if failure.stage != "interrupted":
        return False
    return failure.outcome == "not_sent" or kind == "members"


@frozen
class Settled:
    """An input position settled by the interrupted run: skipped on resume with this reason."""

    position: int
    reason: str = "settled by the interrupted run (resume)"


@frozen
class Checkpoint:
    """What an interrupted run settled: ``settled`` input positions of ``input``."""

    kind: str
    input: str
    size: int
    mtime_ns: int
    settled: Ranges = ()

    @classmethod
    def for_input(cls, kind: str, path: str) -> Checkpoint:
        """An empty checkpoint for ``path`` as it is now."""
        if path == "-":
            raise ConfigurationError("--resume needs an input file, not stdin")
        info = os.stat(path)
        return cls(kind, str(Path(path).resolve()), info.st_size, info.st_mtime_ns)

    def after(self, report: SyncReport) -> Checkpoint:
        """This checkpoint plus what an interrupted run's ``report`` settled (its ``total``
        counts the first positions it handled; the interrupted ones among them stay open)."""
        holes = [f.index for f in report.failures if reopened(self.kind, f)]
        done = _without(report.total, holes)
        ranges = merge_ranges([*self.settled, *done])
        return Checkpoint(self.kind, self.input, self.size, self.mtime_ns, ranges)

    def is_settled(self, position: int) -> bool:
        """Whether ``position`` was settled (a binary search for the range starting at or
        before it)."""
        found = bisect.bisect_right(self.settled, (position, math.inf)) - 1
        return found >= 0 and position < self.settled[found][1]

    @property
    def count(self) -> int:
        """How many positions are settled."""
        return sum(end - start for start, end in self.settled)

    def matches(self, other: Checkpoint) -> str | None:
        """Why a resume of ``other`` (the input as it is now) cannot use this checkpoint."""
        if self.kind != other.kind:
            return f"the interrupted run synced {self.kind}, not {other.kind}"
        if self.input != other.input:
            return f"the interrupted run read {self.input}, not {other.input}"
        if (self.size, self.mtime_ns) != (other.size, other.mtime_ns):
            return f"{self.input} changed since the interrupted run"
        return None

    def save(self, path: Path) -> None:
        """Write atomically, readable by the owner only."""
        data = {
            "version": VERSION,
            "kind": self.kind,
            "input": self.input,
            "size": self.size,
            "mtime_ns": self.mtime_ns,
            "settled": [list(r) for r in self.settled],
        }
        replace_private(path, json.dumps(data) + "\n")

    @classmethod
    def load(cls, path: Path) -> Checkpoint:
        """Read a checkpoint; a clear error when it is missing or not one."""
        try:
            data = json.loads(path.read_bytes()[: 64 * 1024 * 1024])
            if data.get("version") != VERSION:
                raise ValueError(f"version {data.get('version')!r}")
            ranges = merge_ranges((int(a), int(b)) for a, b in data["settled"])
            return cls(
                str(data["kind"]),
                str(data["input"]),
                int(data["size"]),
                int(data["mtime_ns"]),
                ranges,
            )
        except FileNotFoundError:
            raise ConfigurationError(
                f"nothing to resume: {path} not found (it is written when a run is interrupted)"
            ) from None
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConfigurationError(f"{path}: not a resume checkpoint ({exc})") from None


class Resumed:
    """The input again, with every settled position replaced by a :class:`Settled` marker
    (the Syncer skips it): positions, line numbers and totals stay those of the whole file."""

    def __init__(self, records: Iterable[Any], checkpoint: Checkpoint) -> None:
        self._records = records
        self._checkpoint = checkpoint
        self.line_of = getattr(records, "line_of", None)

    def reopen(self) -> Resumed:
        """The same, over the input read again (see :meth:`RecordSource.reopen`)."""
        return Resumed(reopen_input(self._records), self._checkpoint)

    def close(self) -> None:
        """Close the input without reading on (see :meth:`RecordSource.close`)."""
        close = getattr(self._records, "close", None)
        if callable(close):
            close()

    def __iter__(self) -> Iterator[Any]:
        settled = self._checkpoint.is_settled
        for position, record in enumerate(self._records):
            yield Settled(position) if settled(position) else record
