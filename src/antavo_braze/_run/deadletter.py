"""Dead letters: every failed record, with its stage, reason and Braze objects, for replay.

A dead-letter file is JSON Lines of :class:`DeadLetterEntry` (schema ``version`` 1), written
and read through the SDK's one converter. ``replay`` carries ``kind`` and ``record`` forward
and counts ``replays``: an entry never nests another.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Mapping
from os import PathLike
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from attrs import frozen
from cattrs.errors import BaseValidationError

from .._build.converter import make_converter
from ..exceptions import ConfigurationError
from .files import check_private, open_private

__all__ = [
    "DEAD_LETTER_VERSION",
    "DeadLetterEntry",
    "DeadLetterObject",
    "DeadLetterSink",
    "JsonlDeadLetter",
    "MemoryDeadLetter",
    "Outcome",
    "open_sink",
    "read_dead_letters",
]

DEAD_LETTER_VERSION = 1
RecordKind = Literal["member", "event", "attributes"]
Outcome = Literal["failed", "unknown", "not_sent"]


@frozen
class DeadLetterObject:
    """One Braze wire object that did not get through: its ``array`` and the ``object``."""

    array: Literal["attributes", "events", "purchases"]
    object: Mapping[str, Any]


@frozen
class DeadLetterEntry:
    """One failed record (schema version 1; every field is documented in the reference).

    - ``kind``: ``"member"``, ``"event"`` or ``"attributes"`` (a one-off ``sync_attributes``).
    - ``index``: the record's 0-based position in the input of the run that failed it;
      ``line``: its 1-based line in the input file, when it came from one.
    - ``record_id``: the member id (``external_id``) when known, else ``null``.
    - ``stage``: ``"input"``, ``"validation"``, ``"braze"``, ``"transport"`` or
      ``"interrupted"``; ``reason``: why, in words; ``field`` / ``value``: the offending field
      and a short, redacted form of its value, for validation failures.
    - ``retryable``: whether sending it again may succeed (replay resends only these).
    - ``outcome``: ``"failed"`` (Braze did not apply it), ``"unknown"`` (a request went out and
      its answer was lost: Braze may have applied it, so replaying events or purchases may
      record them twice) or ``"not_sent"`` (it never left).
    - ``record``: the input record as JSON; ``objects``: the Braze objects that did not get
      through (what replay sends); ``replays``: how often it was replayed and failed again.
    - ``time``: when it failed (ISO 8601, UTC); ``version``: the schema version.
    - ``replayed_at``: when a replay resent it (ISO 8601, UTC; written into the file the
      replay read): a second replay skips it unless forced, so events are never doubled.
    """

    kind: RecordKind
    index: int | None
    record_id: str | None
    stage: str
    reason: str
    retryable: bool
    record: Any = None
    objects: tuple[DeadLetterObject, ...] = ()
    replays: int = 0
    outcome: Outcome = "failed"
    line: int | None = None
    field: str | None = None
    value: str | None = None
    time: str = ""
    version: int = DEAD_LETTER_VERSION
    replayed_at: str | None = None


_converter = make_converter()


def entry_to_json(entry: DeadLetterEntry) -> str:
    """One JSON line (without the newline); every field is written."""
    data = _converter.unstructure(entry)
    data["objects"] = [{"array": o.array, "object": o.object} for o in entry.objects]
    for name in ("index", "record_id", "line", "field", "value", "record", "replays"):
        data.setdefault(name, getattr(entry, name))
    for name in ("outcome", "time", "version"):
        data.setdefault(name, getattr(entry, name))
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"), default=str)


def entry_from_json(data: Any) -> DeadLetterEntry:
    """Structure a parsed line; raise ``ValueError`` when it is not a dead-letter entry."""
    if not isinstance(data, dict) or "kind" not in data or "stage" not in data:
        raise ValueError("not a dead-letter entry")
    version = data.get("version", DEAD_LETTER_VERSION)
    if version != DEAD_LETTER_VERSION:
        raise ValueError(f"dead-letter schema version {version!r}; this SDK reads version 1")
    try:
        return _converter.structure(data, DeadLetterEntry)
    except (BaseValidationError, TypeError, ValueError, KeyError) as exc:
        raise ValueError(f"not a dead-letter entry ({exc})") from None


@runtime_checkable
class DeadLetterSink(Protocol):
    """Receives one :class:`DeadLetterEntry` per failed record."""

    def write(self, entry: DeadLetterEntry) -> None:
        """Store ``entry`` durably."""


class JsonlDeadLetter:
    """Writes entries to a JSON Lines file created ``0600`` (one append per entry, so each
    entry is on disk when ``write`` returns and no file stays open between failures).

    The file is started afresh (unless ``append`` is true) when the first run using the sink
    starts, or at its first entry: never before, so a sink made by mistake on a file that
    is still to be read (a replay's input) has not emptied it yet.
    """

    def __init__(self, path: str | PathLike[str], *, append: bool = False) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        check_private(self.path)
        self._started = append
        self.count = 0

    def start(self) -> None:
        """Start the file afresh now (once; with ``append``, create it if missing)."""
        with self._lock:
            self._start()

    def _start(self) -> None:
        open_private(self.path, append=self._started).close()
        self._started = True

    def __repr__(self) -> str:
        return f"JsonlDeadLetter({str(self.path)!r})"

    def write(self, entry: DeadLetterEntry) -> None:
        line = entry_to_json(entry) + "\n"
        with self._lock:
            if not self._started:
                self._start()
            with open_private(self.path, append=True) as handle:
                handle.write(line)
            self.count += 1


class MemoryDeadLetter:
    """Keeps entries in a list (``entries``): for tests and notebooks."""

    def __init__(self) -> None:
        self.entries: list[DeadLetterEntry] = []
        self._lock = threading.Lock()

    def write(self, entry: DeadLetterEntry) -> None:
        with self._lock:
            self.entries.append(entry)

    def __len__(self) -> int:
        return len(self.entries)


def open_sink(
    target: str | PathLike[str] | DeadLetterSink | None, *, append: bool = False
) -> DeadLetterSink | None:
    """A sink for a path (JSON Lines) or an object with ``write(entry)``."""
    if target is None:
        return None
    if isinstance(target, (str, PathLike)):
        return JsonlDeadLetter(target, append=append)
    if callable(getattr(target, "write", None)):
        return target
    raise ConfigurationError(f"dead_letter must be a path or have write(entry), not {target!r}")


def read_dead_letters(path: str | PathLike[str]) -> Iterator[DeadLetterEntry]:
    """Entries of a dead-letter file, one at a time; a line that is not an entry raises
    :class:`~antavo_braze.ConfigurationError` naming the file and line."""
    file = Path(path)
    try:
        handle = file.open(encoding="utf-8", errors="strict")
    except OSError as exc:
        raise ConfigurationError(f"cannot read dead letters from {file}: {exc.strerror}") from None
    with handle:
        number = 0
        try:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    yield entry_from_json(json.loads(line))
                except (ValueError, RecursionError) as exc:
                    raise ConfigurationError(
                        f"{file}:{number}: {exc} — is this a dead-letter file?"
                    ) from None
        except UnicodeDecodeError:
            raise ConfigurationError(f"{file}:{number + 1}: not UTF-8 text") from None


def start_sink(sink: DeadLetterSink | None) -> None:
    """A run's dead-letter file starts afresh when the run does (a sink with ``start``)."""
    start = getattr(sink, "start", None)
    if callable(start):
        start()
