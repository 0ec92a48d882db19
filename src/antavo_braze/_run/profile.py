"""Profiling a mapping against sample records: which mapped paths are found, with which types.

``antavo-braze validate MAPPING --input FILE`` prints this, so that a misspelled path
(``scroe``, ``Email``) or an untyped field whose values Braze would store with the wrong type
(unix seconds as a number, ``"1200"`` as a string) is caught before the first sync. Pure: no
I/O; the caller reads the records.
"""

from __future__ import annotations

import difflib
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from collections.abc import Mapping as AbcMapping
from typing import Any

from attrs import frozen

from .._build.mapper import MISSING, get_path, member_fields
from .._build.mapping import Mapping
from .input import BadInput

__all__ = ["FieldProfile", "profile_fields"]

# Records deeper than this add no useful suggestion (and keep the path set bounded).
_MAX_DEPTH = 4
_MAX_PATHS = 10_000
# Unix seconds from 2001-09-09 to 2096-10-02: a number there is most likely a moment.
_UNIX_SECONDS = (1_000_000_000, 4_000_000_000)
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}.{0,20})?\Z", re.ASCII)
_NUMERIC = re.compile(r"[+-]?\d{1,18}(\.\d{1,18})?\Z", re.ASCII)


@frozen
class FieldProfile:
    """How one mapped ``loyalty_field`` fared over ``records`` sample records: ``found`` in
    how many, the value ``types`` seen (name: count), and ``advice`` when something looks
    wrong (never found, or an untyped field whose values want a declared type)."""

    loyalty_field: str
    remote_field: str
    declared: str | None
    records: int
    found: int
    types: tuple[tuple[str, int], ...]
    advice: str | None = None

    @property
    def never_found(self) -> bool:
        """Whether the path matched no sample record (a likely misspelling)."""
        return self.records > 0 and self.found == 0


def _paths(value: Any, prefix: str = "", depth: int = 0) -> Iterator[str]:
    """The dotted paths of a record (list items by index), to suggest from."""
    if depth >= _MAX_DEPTH:
        return
    if isinstance(value, AbcMapping):
        for key, item in value.items():
            path = f"{prefix}{key}"
            yield path
            yield from _paths(item, path + ".", depth + 1)
    elif isinstance(value, list) and value:
        path = f"{prefix}0"
        yield path
        yield from _paths(value[0], path + ".", depth + 1)


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _advice_for_untyped(values: Counter[str], samples: list[Any]) -> str | None:
    """A type to declare when the values of an untyped field would be inferred wrongly."""
    if samples and all(
        type(value) is int and _UNIX_SECONDS[0] <= value <= _UNIX_SECONDS[1] for value in samples
    ):
        return "declare type: date (the values look like unix seconds)"
    strings = [value for value in samples if type(value) is str]
    if strings and len(strings) == len(samples):
        if all(_ISO_DATE.match(value) for value in strings):
            return "declare type: date (the values are date strings)"
        if all(_NUMERIC.match(value) for value in strings):
            return "declare type: number (the values are numbers written as strings)"
        if all(value.strip().lower() in ("true", "false") for value in strings):
            return "declare type: boolean (the values are 'true'/'false' strings)"
    if len(values) > 1 and "null" not in values:
        return f"mixed types ({', '.join(sorted(values))}): declare a type"
    return None


def profile_fields(
    mapping: Mapping, records: Iterable[Any], *, limit: int = 1000
) -> list[FieldProfile]:
    """Profile each mapped member field over the first ``limit`` records (unreadable lines
    are not counted)."""
    sample = []
    for record in records:
        if isinstance(record, BadInput):
            continue
        sample.append(member_fields(record))
        if len(sample) >= limit:
            break
    known: set[str] = set()
    for record in sample:
        for path in _paths(record):
            if len(known) >= _MAX_PATHS:
                break
            known.add(path)
    profiles = []
    for field in mapping.fields:
        types: Counter[str] = Counter()
        samples: list[Any] = []
        found = 0
        for record in sample:
            value = get_path(record, field.loyalty_field)
            if value is MISSING:
                continue
            found += 1
            types[_type_name(value)] += 1
            if value is not None and len(samples) < 200:
                samples.append(value)
        advice = None
        if sample and not found:
            close = difflib.get_close_matches(field.loyalty_field, sorted(known), n=1, cutoff=0.6)
            lowered = [p for p in sorted(known) if p.lower() == field.loyalty_field.lower()]
            suggestions = lowered or close
            advice = "never found" + (f": did you mean {suggestions[0]!r}?" if suggestions else "")
        elif field.type is None:
            advice = _advice_for_untyped(types, samples)
        profiles.append(
            FieldProfile(
                field.loyalty_field,
                field.remote_field,
                None if field.type is None else str(field.type),
                len(sample),
                found,
                tuple(sorted(types.items())),
                advice,
            )
        )
    return profiles
