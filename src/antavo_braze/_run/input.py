"""Reading records from files: JSON Lines, JSON arrays, CSV (also gzipped, also stdin).

Records stream one at a time (memory does not grow with the file). A line that cannot be read
— bad JSON, an undecodable byte, a broken CSV row — becomes a :class:`BadInput` record: the
sync fails it alone with stage ``"input"`` and its line number, and goes on.
"""

from __future__ import annotations

import bisect
import codecs
import csv
import functools
import gzip
import io
import json
import sys
from collections.abc import Callable, Iterable, Iterator
from os import PathLike
from pathlib import Path
from typing import IO, Any

from attrs import frozen

from .. import _json
from ..exceptions import ConfigurationError

__all__ = ["BadInput", "RecordSource", "is_wide", "read_records"]

MAX_LINE_BYTES = 16 * 1024 * 1024  # one record; a longer line is a bad record, not a hang
_SNIFF_BYTES = 64 * 1024
_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "csv"}


@frozen
class BadInput:
    """A line of an input file that is not a record: where (``line``, 1-based) and why."""

    line: int
    reason: str
    text: str = ""  # the start of the line, for the dead letter

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


class RecordSource:
    """The records of one input, in order; also says each record's line (``line_of``)."""

    # Set by read_records: every record is a new object parsed by the SDK, and no code of the
    # caller runs between two of them.
    _fresh = False

    def __init__(
        self,
        name: str,
        rows: Iterator[tuple[int, Any]],
        reopen: Callable[[], RecordSource] | None = None,
        handle: IO[bytes] | None = None,
    ) -> None:
        self.name = name
        self._rows = rows
        self._reopen = reopen
        self._handle = handle
        self._position = 0
        self._marks: list[int] = []  # positions where line - position changed ...
        self._deltas: list[int] = []  # ... and the new difference

    def __repr__(self) -> str:
        return f"RecordSource({self.name!r})"

    def __iter__(self) -> Iterator[Any]:
        for line, record in self._rows:
            delta = line - self._position
            if not self._deltas or self._deltas[-1] != delta:
                self._marks.append(self._position)
                self._deltas.append(delta)
            self._position += 1
            yield record

    def reopen(self) -> RecordSource:
        """The same input read again from its start (each worker of a sync reads its own)."""
        if self._reopen is None:
            raise ConfigurationError(f"{self.name} can be read only once (use a file)")
        return self._reopen()

    def close(self) -> None:
        """Close the file without reading on (reading it to the end closes it too)."""
        if self._handle is not None and self._handle is not sys.stdin.buffer:
            self._handle.close()

    def line_of(self, position: int) -> int | None:
        """The 1-based line where the record at 0-based ``position`` starts."""
        found = bisect.bisect_right(self._marks, position) - 1
        return None if found < 0 else position + self._deltas[found]


def reopen_input(records: Iterable[Any]) -> Iterable[Any]:
    """``records`` to be read again from the start (by another worker of a sync): a source
    that reads a file opens it anew (``reopen()``); a list, a tuple or a data frame is read
    again as it is; a one-shot iterator cannot be."""
    reopen = getattr(records, "reopen", None)
    if callable(reopen):
        return reopen()  # type: ignore[no-any-return]
    if iter(records) is records:
        raise ConfigurationError(
            "workers > 1 read the input once per worker: give a list, a tuple, a data frame "
            "or read_records(path), not an iterator or generator"
        )
    return records


def _open_binary(path: str | PathLike[str], format: str | None) -> tuple[IO[bytes], str]:
    text = str(path)
    if text == "-":
        return sys.stdin.buffer, format or "jsonl"
    file = Path(path)
    if not file.is_file():
        raise ConfigurationError(f"input file not found: {file}")
    suffixes = [s.lower() for s in file.suffixes]
    gzipped = bool(suffixes) and suffixes[-1] == ".gz"
    kind = format or _FORMATS.get(
        suffixes[-2] if gzipped and len(suffixes) > 1 else (suffixes or [""])[-1]
    )
    if kind is None:
        raise ConfigurationError(
            f"unsupported input {file.name!r}: use .jsonl, .json, .csv or .tsv (optionally .gz), "
            "or name the format (--format, format=...)"
        )
    # The caller owns the handle (records are read lazily, and it is closed when done).
    handle: IO[bytes] = gzip.open(file, "rb") if gzipped else file.open("rb")  # type: ignore[assignment]  # noqa: SIM115
    return handle, kind


def read_records(
    path: str | PathLike[str],
    *,
    format: str | None = None,
    encoding: str = "utf-8",
    delimiter: str | None = None,
) -> RecordSource:
    """Stream the records of ``path`` (``"-"``: standard input).

    The format comes from the suffix (``.jsonl``/``.ndjson``, ``.json`` — an array, or one
    object per line —, ``.csv``/``.tsv``, each optionally ``.gz``) unless ``format`` says
    (``"jsonl"``, ``"json"``, ``"csv"``). CSV: a UTF-8 byte-order mark is dropped, the
    ``delimiter`` is sniffed (``,`` ``;`` tab ``|``) unless given, empty cells are left out,
    cells holding JSON (starting ``[`` or ``{``) are parsed — arrays, objects, line items — and
    a column ``data.x`` becomes ``data["x"]`` (Antavo's event envelope).
    """
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise ConfigurationError(f"unknown encoding {encoding!r}") from None
    if format not in (None, "jsonl", "json", "csv"):
        raise ConfigurationError(f"unknown input format {format!r} (jsonl, json or csv)")
    handle, kind = _open_binary(path, format)
    name = "<stdin>" if str(path) == "-" else str(path)
    if name != "<stdin>":  # a peek at standard input would wait for it
        handle = _refuse_utf16_as_utf8(handle, encoding, name)
    if kind == "csv":
        tsv = ".tsv" in [suffix.lower() for suffix in Path(str(path)).suffixes]
        rows = _csv_rows(handle, encoding, delimiter, tsv=tsv)
    else:
        rows = _json_rows(handle, encoding, array_allowed=kind == "json")
    again = None
    if str(path) != "-":
        again = functools.partial(
            read_records, path, format=format, encoding=encoding, delimiter=delimiter
        )
    source = RecordSource(name, rows, again, handle)
    source._fresh = True
    return source


def _refuse_utf16_as_utf8(handle: IO[bytes], encoding: str, name: str) -> IO[bytes]:
    """A UTF-16 or UTF-32 file read as UTF-8 fails on every line with a baffling reason (NUL
    bytes, "new-line character seen in unquoted field", "not valid JSON"), and one read as
    ``utf-16``/``utf-32`` without the byte-order mark those need fails with a traceback: say
    so once, with the fix."""
    codec = codecs.lookup(encoding).name
    utf8 = _is_utf8(encoding)
    if not utf8 and codec not in ("utf-16", "utf-32"):
        return handle
    buffered: Any = handle if hasattr(handle, "peek") else io.BufferedReader(handle)
    head = buffered.peek(_SNIFF_BYTES)[:_SNIFF_BYTES]
    problem = None
    if utf8 and head.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        problem = f"looks like UTF-32 (a UTF-32 byte-order mark), not {encoding}: pass "
        problem += "--encoding utf-32 (encoding='utf-32')"
    elif utf8 and _looks_like_utf16(head):
        problem = f"looks like UTF-16 (a UTF-16 byte-order mark or NUL bytes), not {encoding}: "
        problem += "pass --encoding utf-16 (encoding='utf-16')"
    elif not utf8 and head:
        marks = (
            (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
            if codec == "utf-16"
            else (codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)
        )
        if not head.startswith(marks):
            problem = f"has no byte-order mark, which {encoding} needs to tell the byte order: "
            problem += f"pass --encoding {codec}-le or {codec}-be (encoding='{codec}-le')"
    if problem is not None:
        buffered.close()
        raise ConfigurationError(f"{name} {problem}")
    return buffered  # type: ignore[no-any-return]


def _looks_like_utf16(head: bytes) -> bool:
    """Whether a file's first bytes are UTF-16: its byte-order mark, or the NUL byte beside
    each ASCII character that UTF-8 text does not hold."""
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return True
    return len(head) >= 2 and head.count(0) * 4 >= len(head)


# --- JSON -------------------------------------------------------------------------------------

# orjson reads a JSON Lines record three times as fast as json, but not always alike: an integer
# past 64 bits becomes a float (json keeps it exact), and what orjson refuses json may take
# (NaN, lone surrogates) or explain. So orjson reads a line only when it holds no run of 19
# digits (a 19-digit negative may already be past 64 bits) and parses; json reads the rest,
# with the results and errors it always had.
_DIGITS_ONLY = bytes(48 if 48 <= byte <= 57 else 32 for byte in range(256))
_LONG_NUMBER = b"0" * 19
_DEEP = 900  # brackets in a line from which json may run out of recursion (orjson: 1024)


def _quick_record(raw: bytes) -> Any:
    """The record on a UTF-8 line as orjson reads it, or ``None``: the standard path decides."""
    try:
        value = _json.loads(raw)
    except ValueError:  # orjson.JSONDecodeError; json's own message comes from the slow path
        return None
    if not isinstance(value, dict) or _LONG_NUMBER in raw.translate(_DIGITS_ONLY):
        return None
    if len(raw) >= _DEEP and raw.count(b"[") + raw.count(b"{") >= _DEEP:
        return None  # orjson nests deeper than json (which refuses it): json says what it says
    return value


def _parse(text: str, line: int) -> Any:
    try:
        value = json.loads(text)
    except RecursionError:
        return BadInput(line, "nested too deeply to be a record", text[:200])
    except json.JSONDecodeError as exc:
        return BadInput(line, f"not valid JSON ({exc.msg} at column {exc.colno})", text[:200])
    if not isinstance(value, dict):
        return BadInput(line, f"expected a JSON object, got {type(value).__name__}", text[:200])
    return value


def _lines(handle: Any) -> Iterator[tuple[int, bytes, bool]]:
    """``(line number, bytes, too_long)``; an over-long line is cut and its rest skipped."""
    number = 0
    with handle:
        while True:
            raw = handle.readline(MAX_LINE_BYTES + 1)
            if not raw:
                return
            number += 1
            too_long = len(raw) > MAX_LINE_BYTES
            if too_long:
                while raw and not raw.endswith(b"\n"):
                    raw = handle.readline(MAX_LINE_BYTES)
            yield number, raw, too_long


def _is_utf8(encoding: str) -> bool:
    """Whether ``encoding`` is UTF-8 under any of its names (with or without the BOM)."""
    return codecs.lookup(encoding).name in ("utf-8", "utf-8-sig")


def is_wide(encoding: str) -> bool:
    """Whether ``encoding`` writes a line end as more than the byte ``\\n`` (UTF-16, UTF-32):
    such a file cannot be split into lines (or have them counted) as bytes."""
    try:
        return codecs.lookup(encoding).name.startswith(("utf-16", "utf-32"))
    except LookupError:
        return False


def _mark_undecodable(error: UnicodeError) -> tuple[str, int]:
    # A lone surrogate in place of what did not decode: it cannot be encoded back to UTF-8
    # (below), so its line fails alone, and nothing is silently replaced.
    assert isinstance(error, UnicodeDecodeError)
    return "\udcff", error.end


codecs.register_error("antavo_braze.undecodable", _mark_undecodable)


class _AsUtf8:
    """A binary file in a wide encoding (UTF-16, UTF-32) read a line at a time as UTF-8 bytes,
    so JSON Lines split where its text does. What does not decode stays undecodable: its line
    fails alone."""

    def __init__(self, handle: IO[bytes], encoding: str) -> None:
        self._encoding = encoding
        self._text = io.TextIOWrapper(
            handle, encoding=encoding, errors="antavo_braze.undecodable", newline="\n"
        )

    def readline(self, size: int) -> bytes:
        try:
            line = self._text.readline(size)
        except UnicodeError as exc:  # utf-16 / utf-32 without a byte-order mark (stdin)
            raise ConfigurationError(
                f"the input cannot be read as {self._encoding} ({exc}): pass the encoding "
                "with its byte order (--encoding utf-16-le, utf-16-be, ...)"
            ) from None
        return line.encode("utf-8", "surrogateescape")

    def __enter__(self) -> _AsUtf8:
        return self

    def __exit__(self, *exc: object) -> None:
        self._text.close()


def _json_rows(
    handle: IO[bytes], encoding: str, *, array_allowed: bool
) -> Iterator[tuple[int, Any]]:
    buffered: Any = handle if hasattr(handle, "peek") else io.BufferedReader(handle)
    head = buffered.peek(_SNIFF_BYTES)[:_SNIFF_BYTES]
    start = head.decode(encoding, errors="ignore").lstrip(" \t\r\n\ufeff")
    if array_allowed and start.startswith("["):
        yield from _array_rows(buffered, encoding)
        return
    named = encoding  # as the caller gave it, for the error message
    wide = is_wide(encoding)
    if wide:
        buffered, encoding = _AsUtf8(buffered, encoding), "utf-8"
    quick = _json.BACKEND == "orjson" and _is_utf8(encoding)
    for number, raw, too_long in _lines(buffered):
        if too_long:
            yield number, BadInput(number, f"line longer than {MAX_LINE_BYTES} bytes")
            continue
        if number == 1 and raw.startswith(codecs.BOM_UTF8):
            raw = raw[len(codecs.BOM_UTF8) :]
        if quick:
            record = _quick_record(raw)
            if record is not None:
                yield number, record
                continue
        try:
            text = raw.decode(encoding)
        except UnicodeDecodeError as exc:
            # A wide file's line was re-read as UTF-8: count characters, not those bytes.
            where = (
                f"character {len(raw[: exc.start].decode(encoding)) + 1}"
                if wide
                else f"byte {exc.start + 1}"
            )
            reason = (
                f"not valid {named} ({where}); "
                "pass the file's encoding with --encoding (encoding=...)"
            )
            yield number, BadInput(number, reason)
            continue
        if text.strip():
            yield number, _parse(text, number)


def _array_rows(handle: IO[bytes], encoding: str) -> Iterator[tuple[int, Any]]:
    """The elements of one top-level JSON array, decoded one at a time."""
    decoder = json.JSONDecoder()
    reader = codecs.getincrementaldecoder(encoding)(errors="strict")
    buffer = ""
    line = 1
    started = False
    with handle:
        done = False
        while not done:
            chunk = handle.read(_SNIFF_BYTES)
            try:
                buffer += reader.decode(chunk, final=not chunk)
            except UnicodeDecodeError:
                reason = f"not valid {encoding}; pass its encoding (--encoding, encoding=...)"
                yield line, BadInput(line, reason)
                return
            done = not chunk
            while True:
                stripped = buffer.lstrip(" \t\r\n\ufeff")
                line += buffer.count("\n", 0, len(buffer) - len(stripped))
                buffer = stripped
                if not started:
                    if not buffer:
                        break
                    if buffer[0] != "[":
                        yield line, BadInput(line, "expected a JSON array of records")
                        return
                    buffer, started = buffer[1:], True
                    continue
                if buffer.startswith(","):
                    buffer = buffer[1:]
                    continue
                if buffer.startswith("]"):
                    return
                if not buffer:
                    break
                try:
                    value, end = decoder.raw_decode(buffer)
                except RecursionError:
                    yield line, BadInput(line, "nested too deeply to be a record")
                    return
                except json.JSONDecodeError as exc:
                    if done or len(buffer) > MAX_LINE_BYTES:
                        yield line, BadInput(line, f"not valid JSON ({exc.msg})")
                        return
                    break  # the element continues in the next chunk
                record = (
                    value
                    if isinstance(value, dict)
                    else BadInput(line, f"expected a JSON object, got {type(value).__name__}")
                )
                yield line, record
                line += buffer.count("\n", 0, end)
                buffer = buffer[end:]
        if started:
            yield line, BadInput(line, "the JSON array is not closed (file cut off?)")


# --- CSV --------------------------------------------------------------------------------------


def _csv_rows(
    handle: IO[bytes], encoding: str, delimiter: str | None, *, tsv: bool
) -> Iterator[tuple[int, Any]]:
    named = encoding  # as the caller gave it, for the error message
    if _is_utf8(encoding):
        encoding = "utf-8-sig"  # Excel writes a byte-order mark
    # Undecodable bytes are kept as surrogates, so one bad row fails alone.
    text = io.TextIOWrapper(handle, encoding=encoding, errors="surrogateescape", newline="")
    with text:
        sample = text.read(_SNIFF_BYTES)
        if delimiter is None:
            delimiter = "\t" if tsv else _sniff(sample)
        rest = io.StringIO(sample)
        stream = _chain(rest, text)
        reader = csv.reader(stream, delimiter=delimiter)
        header: list[str] | None = None
        while True:
            start = reader.line_num + 1
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                yield start, BadInput(start, f"not a CSV row ({exc})")
                continue
            if header is None:
                header = [name.strip() for name in row]
                continue
            if not any(cell.strip() for cell in row):
                continue
            yield start, _csv_record(header, row, start, named)


def _chain(first: io.StringIO, then: IO[str]) -> Iterator[str]:
    """The sample's lines, then the file's, none longer than MAX_LINE_BYTES characters (a
    longer line comes in pieces, each over csv's field limit: memory stays bounded)."""
    for line in first:
        if not line.endswith(("\n", "\r")):  # the sample cut a line: finish it from the file
            line += then.readline(MAX_LINE_BYTES)
        yield line
    while line := then.readline(MAX_LINE_BYTES):
        yield line


def _undecodable(column: str, encoding: str) -> str:
    """Why a cell could not be read, with the fix: the file's real encoding."""
    hint = (
        "a Latin-1 / Windows-1252 export? pass --encoding cp1252 (encoding='cp1252')"
        if _is_utf8(encoding)
        else "pass the file's encoding with --encoding (encoding=...)"
    )
    return f"column {column!r}: bytes that are not valid {encoding} ({hint})"


def _sniff(sample: str) -> str:
    try:
        return csv.Sniffer().sniff(sample.split("\n", 20)[0] + "\n", delimiters=",;\t|").delimiter
    except csv.Error:
        return ","


def _csv_record(header: list[str], row: list[str], line: int, encoding: str = "utf-8") -> Any:
    if len(row) > len(header):
        return BadInput(line, f"the row has {len(row)} cells, the header {len(header)}")
    record: dict[str, Any] = {}
    for name, cell in zip(header, row, strict=False):  # short rows: the rest is empty
        if any("\udc80" <= c <= "\udcff" for c in cell):
            return BadInput(line, _undecodable(name, encoding))
        if cell == "" or not name:
            continue
        value: Any = cell
        stripped = cell.strip()
        if stripped[:1] in ("[", "{"):
            try:
                value = json.loads(stripped)
            except (ValueError, RecursionError):
                return BadInput(line, f"column {name!r} starts like JSON but is not JSON")
        if name.startswith("data."):
            data = record.setdefault("data", {})
            if isinstance(data, dict):
                data[name[5:]] = value
        else:
            record[name] = value
    return record


def records_length(records: Any) -> int | None:
    try:
        return len(records)
    except TypeError:
        return None


def _dataframe_rows(frame: Any) -> Iterator[dict[str, Any]]:
    """Rows of a pandas DataFrame as dicts: missing cells (NaN, NaT, None) are absent."""
    import pandas

    columns = [str(c) for c in frame.columns]
    for row in frame.itertuples(index=False, name=None):
        cells = zip(columns, row, strict=True)
        yield {name: value for name, value in cells if not _is_missing(pandas, value)}


def _is_missing(pandas: Any, value: Any) -> bool:
    if isinstance(value, (list, tuple, dict, set)):
        return False
    try:
        return bool(pandas.isna(value))
    except (TypeError, ValueError):  # array-likes: present
        return False


def _is_dataframe(records: Iterable[Any]) -> bool:
    return type(records).__module__.startswith("pandas") and hasattr(records, "itertuples")


def rows_of(records: Iterable[Any]) -> Iterable[Any]:
    return _dataframe_rows(records) if _is_dataframe(records) else records


def is_fresh(records: Iterable[Any]) -> bool:
    """Whether no code of the caller runs between two records: a list, a tuple, or rows the
    SDK reads itself (a file, a data frame). A record's objects then stay as they are until
    its batch is encoded (in one call); from any other iterable, which may reuse them for the
    next record, each object is encoded as it is built."""
    return (
        type(records) is list
        or type(records) is tuple
        or getattr(records, "is_fresh", False) is True
        or _is_dataframe(records)
    )
