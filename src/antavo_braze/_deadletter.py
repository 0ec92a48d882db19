"""Dead letters: every failed record, with its stage, reason and Braze objects, for replay."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Mapping
from os import PathLike
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from .exceptions import ConfigurationError

__all__ = [
    "DeadLetterSink",
    "JsonlDeadLetter",
    "MemoryDeadLetter",
    "open_sink",
    "read_dead_letters",
]


@runtime_checkable
class DeadLetterSink(Protocol):
    """Receives one JSON-ready dict per failed record."""

    def write(self, entry: Mapping[str, Any]) -> None:
        """Store ``entry`` durably."""


class JsonlDeadLetter:
    """Appends entries to a JSON Lines file (one object per line, flushed per entry)."""

    def __init__(self, path: str | PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self.count = 0

    def __repr__(self) -> str:
        return f"JsonlDeadLetter({str(self.path)!r})"

    def write(self, entry: Mapping[str, Any]) -> None:
        line = json.dumps(entry, ensure_ascii=False, default=str) + "\n"
        with self._lock, self.path.open("a", encoding="utf-8") as file:
            file.write(line)
            self.count += 1


class MemoryDeadLetter:
    """Keeps entries in a list (``entries``): for tests and notebooks."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []

    def write(self, entry: Mapping[str, Any]) -> None:
        self.entries.append(json.loads(json.dumps(entry, default=str)))

    def __len__(self) -> int:
        return len(self.entries)


def open_sink(target: str | PathLike[str] | DeadLetterSink | None) -> DeadLetterSink | None:
    """A sink for a path (JSON Lines) or an object with ``write(entry)``."""
    if target is None:
        return None
    if isinstance(target, (str, PathLike)):
        return JsonlDeadLetter(target)
    if callable(getattr(target, "write", None)):
        return target
    raise ConfigurationError(f"dead_letter must be a path or have write(entry), not {target!r}")


def read_dead_letters(path: str | PathLike[str]) -> Iterator[dict[str, Any]]:
    """Entries of a JSON Lines dead-letter file, one at a time."""
    file = Path(path)
    try:
        handle = file.open(encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(f"cannot read dead letters from {file}: {exc.strerror}") from None
    with handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                raise ConfigurationError(f"{file}:{number}: not a JSON line") from None
            if not isinstance(entry, dict):
                raise ConfigurationError(f"{file}:{number}: not a dead-letter entry")
            yield entry
