"""``validate MAPPING --input FILE``: would a sync of this file succeed? Pure: no I/O.

Every mapped field of a sample of the file is read and coerced exactly as a sync would (the
mapper's own compiled steps), so what this says is what the run will do: per field, how many
values are valid, invalid or unreadable, with examples and hints for the usual export mistakes
(a decimal comma, a list written in one cell, unix seconds that are dates, ``1``/``0`` that are
booleans, a value that is an object). Type advice for untyped fields goes by the majority of
the values, so one odd value in 200 does not switch it off.
"""

from __future__ import annotations

import difflib
import re
from collections import Counter
from collections.abc import Callable, Iterable
from collections.abc import Mapping as AbcMapping
from typing import Any

from attrs import frozen

from .._build.mapper import MISSING, Mapper, member_fields
from .._build.mapping import Mapping
from ..exceptions import CoercionError, short_repr
from .input import BadInput
from .profile import _paths

__all__ = ["FieldCheck", "FileCheck", "check_file"]

_EXAMPLES = 3
_MAX_PATHS = 10_000
_UNIX_SECONDS = (1_000_000_000, 4_000_000_000)  # 2001-09-09 .. 2096-10-02
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}.{0,20})?\Z", re.ASCII)
_NUMERIC = re.compile(r"[+-]?\d{1,18}(\.\d{1,18})?\Z", re.ASCII)
_DECIMAL_COMMA = re.compile(r"[+-]?\d{1,18},\d{1,18}\Z", re.ASCII)
_BOOLEAN_WORDS = frozenset({"true", "false", "yes", "no"})

# What the values of an untyped field mostly are -> (advice, whether a sync would store the
# wrong type for good: Braze fixes an attribute's type from its first value).
_ADVICE: dict[str, tuple[str, bool]] = {
    "unix seconds": ("declare type: date (they look like unix seconds)", True),
    "date text": ("declare type: date (they are dates written as text)", True),
    "number text": ("declare type: number (they are numbers written as text)", True),
    "decimal comma": (
        "declare type: number and export with a decimal point (they use a decimal comma)",
        True,
    ),
    "boolean text": ("declare type: boolean (they are true/false words)", True),
    "1/0": ("declare type: boolean if these are yes/no flags (they are 1 and 0)", False),
    "object": ("map a path inside them or declare type: object (they are objects)", True),
}


def _kind(value: Any) -> str | None:
    """What an untyped value most likely means (``None``: nothing to advise)."""
    if type(value) is bool or value is None:
        return None
    if isinstance(value, AbcMapping):
        return "object"
    if isinstance(value, (int, float)):
        if value in (0, 1):
            return "1/0"
        return "unix seconds" if _UNIX_SECONDS[0] <= value <= _UNIX_SECONDS[1] else None
    if not isinstance(value, str):
        return None
    text = value.strip()
    if text in ("0", "1"):
        return "1/0"
    if text.isdigit() and _UNIX_SECONDS[0] <= int(text) <= _UNIX_SECONDS[1]:
        return "unix seconds"
    if _ISO_DATE.match(text):
        return "date text"
    if _NUMERIC.match(text):
        return "number text"
    if _DECIMAL_COMMA.match(text):
        return "decimal comma"
    if text.lower() in _BOOLEAN_WORDS:
        return "boolean text"
    return None


def _hint(value: Any) -> str | None:
    """Why a value that failed its coercion failed, in the terms of the export it came from."""
    if isinstance(value, AbcMapping) and value:
        return f"the value is an object: map a path inside it, e.g. '.{next(iter(value))}'"
    if isinstance(value, str):
        text = value.strip()
        if _DECIMAL_COMMA.match(text):
            return "decimal comma: export with a decimal point (12.5)"
        if any(sep in text for sep in ",;|"):
            return 'a list written in one cell: add "split": "," (its separator) to the field'
    return None


@frozen
class FieldCheck:
    """How one mapped field fared over the sample: in how many records it was ``found``,
    how many values are ``valid`` / ``invalid`` (its coercion refused them) / ``unreadable``
    (their row could not be read), ``examples`` of what failed, ``hints`` and ``advice``."""

    loyalty_field: str
    remote_field: str
    declared: str | None
    found: int
    valid: int
    invalid: int
    unreadable: int
    examples: tuple[str, ...] = ()
    hints: tuple[str, ...] = ()
    advice: str | None = None
    wrong_type: bool = False  # the advice says a sync would store the wrong type

    @property
    def never_found(self) -> bool:
        """Whether the path matched no sample record (a likely misspelling)."""
        return self.found == 0 and self.unreadable == 0

    @property
    def failing(self) -> bool:
        """Whether a sync would fail values of this field, store them with the wrong type,
        or never find it."""
        return bool(self.invalid or self.unreadable or self.wrong_type or self.never_found)


@frozen
class FileCheck:
    """What a sync of the sampled file would do: ``records`` read (``complete``: the whole
    file), ``unreadable`` rows (with ``unreadable_examples``), the id check and each field."""

    records: int
    complete: bool
    unreadable: int
    unreadable_examples: tuple[str, ...]
    ids: FieldCheck
    fields: tuple[FieldCheck, ...]

    @property
    def ok(self) -> bool:
        """Whether nothing would fail."""
        if not self.records:
            return False
        return (
            not self.unreadable and not self.ids.failing and not any(f.failing for f in self.fields)
        )


class _Tally:
    """The counts of one field while the sample is read."""

    def __init__(self) -> None:
        self.found = self.valid = self.invalid = self.unreadable = 0
        self.examples: list[str] = []
        self.hints: Counter[str] = Counter()
        self.kinds: Counter[str] = Counter()
        self.values = 0

    def fail(self, where: str, value: Any, exc: CoercionError) -> None:
        self.invalid += 1
        hint = _hint(value)
        if hint is not None:
            self.hints[hint] += 1
        if len(self.examples) < _EXAMPLES:
            self.examples.append(f"{where}: {short_repr(value, 60)} ({exc.reason})")

    def result(
        self, loyalty_field: str, remote_field: str, declared: str | None, advice: str | None
    ) -> FieldCheck:
        wrong = False
        if declared is None and advice is None and self.values:
            kind, count = self.kinds.most_common(1)[0] if self.kinds else (None, 0)
            if kind is not None and count * 2 > self.values:
                text, wrong = _ADVICE[kind]
                advice = f"{count} of {self.values} values: {text}"
        hints = tuple(f"{hint} ({count} values)" for hint, count in self.hints.most_common())
        return FieldCheck(
            loyalty_field,
            remote_field,
            declared,
            self.found,
            self.valid,
            self.invalid,
            self.unreadable,
            tuple(self.examples),
            hints,
            advice,
            wrong,
        )


def check_file(
    mapping: Mapping,
    records: Iterable[Any],
    *,
    limit: int = 1000,
    line_of: Callable[[int], int | None] | None = None,
) -> FileCheck:
    """Map and coerce every mapped member field of the first ``limit`` records as a sync
    would; ``line_of`` gives a record's line in its file, for the examples."""
    mapper = Mapper(mapping)
    steps = mapper.plan.steps
    tallies = [_Tally() for _ in steps]
    ids = _Tally()
    read = unreadable = 0
    bad_rows: list[str] = []
    known: set[str] = set()
    complete = True
    for position, record in enumerate(records):
        if read >= limit:
            complete = False
            break
        read += 1
        line = line_of(position) if line_of is not None else None
        where = f"line {line}" if line is not None else f"record {position + 1}"
        if isinstance(record, BadInput):
            column = _column_of(record.reason)
            named = [n for n, s in enumerate(steps) if column in (s.location, s.first_key)]
            for number in named:
                tallies[number].unreadable += 1
                if len(tallies[number].examples) < _EXAMPLES:
                    tallies[number].examples.append(f"line {record.line}: {record.reason}")
            if not named:
                unreadable += 1
                if len(bad_rows) < _EXAMPLES:
                    bad_rows.append(str(record))
            continue
        fields = member_fields(record)
        if len(known) < _MAX_PATHS and isinstance(fields, AbcMapping):
            known.update(_paths(fields))
        try:
            mapper.member_id(record)
            ids.found += 1
            ids.valid += 1
        except CoercionError as exc:
            ids.fail(
                where, record.get(mapping.id_field) if isinstance(record, dict) else record, exc
            )
        for step, tally in zip(steps, tallies, strict=True):
            value = step.get(fields)
            if value is MISSING:
                continue
            tally.found += 1
            if value is not None:
                tally.values += 1
                kind = _kind(value)
                if kind is not None:
                    tally.kinds[kind] += 1
            try:
                step.coerce(value)
            except CoercionError as exc:
                tally.fail(where, value, exc)
            else:
                tally.valid += 1
    checks = []
    for item, step, tally in zip(mapping.fields, steps, tallies, strict=True):
        advice = None
        if read and not tally.found and not tally.unreadable:
            advice = "never found" + _suggestion(item.loyalty_field, known)
        checks.append(
            tally.result(
                item.loyalty_field,
                step.remote_field,
                None if item.type is None else str(item.type),
                advice,
            )
        )
    return FileCheck(
        read,
        complete,
        unreadable,
        tuple(bad_rows),
        ids.result(mapping.id_field, "external_id", "id", None),
        tuple(checks),
    )


def _column_of(reason: str) -> str | None:
    """The column a row's reading error names (``column 'name': ...``), if any."""
    match = re.match(r"column '([^']*)'", reason)
    return None if match is None else match.group(1)


def _suggestion(path: str, known: set[str]) -> str:
    ordered = sorted(known)
    lowered = [p for p in ordered if p.lower() == path.lower()]
    close = lowered or difflib.get_close_matches(path, ordered, n=1, cutoff=0.6)
    return f": did you mean {close[0]!r}?" if close else " (check the path)"
