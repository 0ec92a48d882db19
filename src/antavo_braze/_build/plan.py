"""HOT: the generated field plan, the code every mapped field of every record runs through.

:func:`compile_fields` turns a mapping's fields into ``(remote_field, getter, coercer)`` steps,
and :func:`compile_plan` generates one straight-line ``fill`` function for them, the way attrs
and cattrs generate their methods. Each generated function gets its own file name,
``<antavo_braze field plan LABEL-N>``, and its source is registered in :mod:`linecache`
(``attr/_make.py:_make_method``, ``cattrs/gen/_lc.py``): tracebacks and debuggers show the
generated line that failed (the :mod:`traceback` module, logging, pytest, pdb; before 3.13 the
interpreter's own last-resort printer reads real files only), and ``fill.steps`` says which step
each block is. Pure: no I/O.
"""

from __future__ import annotations

import itertools
import linecache
import weakref
from collections import abc
from collections.abc import Callable
from typing import Any, Final, NamedTuple, Protocol, cast

from .._braze.limits import MAX_INTEGER, MAX_STRING_LENGTH, MIN_INTEGER
from .._braze.types import BrazeType
from ..exceptions import CoercionError
from ..models import FieldMapping
from .coerce import Coercer, coercer_for, standard_coercer

__all__ = [
    "MISSING",
    "FieldStep",
    "Fill",
    "Getter",
    "Plan",
    "compile_fields",
    "compile_getter",
    "compile_plan",
]

MISSING: Final = object()

Getter = Callable[[Any], Any]


def compile_getter(path: str) -> Getter:
    """A reader of the dotted ``path`` (digits index lists); it returns :data:`MISSING` if
    the record lacks it."""
    parts = path.split(".")
    if len(parts) == 1:
        key = parts[0]

        def get_key(record: Any) -> Any:
            return record.get(key, MISSING)

        return get_key

    def get_nested(record: Any) -> Any:
        # Flat records (CSV columns) may hold the dotted path as one key.
        flat = record.get(path, MISSING) if isinstance(record, abc.Mapping) else MISSING
        if flat is not MISSING:
            return flat
        current = record
        for part in parts:
            if isinstance(current, abc.Mapping):
                current = current.get(part, MISSING)
            elif isinstance(current, (list, tuple)) and part.isdigit():
                index = int(part)
                current = current[index] if index < len(current) else MISSING
            else:
                return MISSING
            if current is MISSING:
                return MISSING
        return current

    return get_nested


class FieldStep(NamedTuple):
    """One mapped field of a plan."""

    remote_field: str
    key: str | None  # the record key when the path is a plain key (read inline, no call)
    get: Getter
    coerce: Coercer
    location: str  # where an error points: the loyalty field, under its prefix
    inline_check: str | None  # a Python test under which the value is already valid as is
    clear: bool = False  # when_missing "clear": an absent path sends null...
    first_key: str = ""  # ...only when the record holds the path's first key (the guard)


class Fill(Protocol):
    """``fill(record, out, counts)``: adds every present field to ``out`` and returns it;
    counts absent ones per step (``counts[n]``) and the clears it wrote (``counts[len(steps)
    + k]`` for the k-th clearing step, and all of them in the last counter, one test per
    record for "did anything clear?"). ``steps`` are the steps it was generated from."""

    steps: tuple[FieldStep, ...]

    def __call__(self, record: Any, out: dict[str, Any], absent: list[int], /) -> dict[str, Any]:
        """Fill ``out`` from ``record``."""


# Values of these exact classes need no coercer call: the plan tests them inline.
INLINE_CHECKS = {
    BrazeType.NUMBER: "type(v) is int and MIN_INTEGER <= v <= MAX_INTEGER",
    BrazeType.STRING: "type(v) is str and len(v) <= MAX_STRING_LENGTH",
    BrazeType.BOOLEAN: "v is True or v is False",
}

_plan_numbers = itertools.count(1)  # next() on a count is atomic: no two plans share a name


def _source_lines(steps: tuple[FieldStep, ...]) -> list[str]:
    lines = ["def fill(record, out, absent):", "    get = record.get"]
    clearing = len(steps)
    every_clear = clearing + sum(step.clear for step in steps)
    for number, step in enumerate(steps):
        read = f"get({step.key!r}, MISSING)" if step.key is not None else f"get{number}(record)"
        value = f"coerce{number}(v)"
        if step.inline_check is not None:
            value = f"v if {step.inline_check} else {value}"
        lines += [
            f"    # step {number}: {step.location} -> {step.remote_field}",
            f"    v = {read}",
            "    if v is not MISSING:",
            "        try:",
            f"            out[{step.remote_field!r}] = {value}",
            "        except CoercionError as exc:",
            f"            raise exc.at(location{number}) from None",
            "    else:",
            f"        absent[{number}] += 1",
        ]
        if step.clear:
            lines += [
                f"        if get({step.first_key!r}, MISSING) is not MISSING:",
                f"            out[{step.remote_field!r}] = None",
                f"            absent[{clearing}] += 1",
                f"            absent[{every_clear}] += 1",
            ]
            clearing += 1
    lines.append("    return out")
    return lines


def compile_plan(steps: tuple[FieldStep, ...], label: str = "fields") -> Fill:
    """Generate ``fill(record, out, absent)``: one straight-line block per field, no loop, no
    dispatch.

    Like attrs' and cattrs' generated methods, this removes the per-field interpretation
    overhead that dominates a 10-field mapping. Each block has its own ``try`` (free until
    something raises) so that an error names its field. ``absent[n]`` counts the records in
    which field ``n`` was not found (only that rare branch pays for counting); a clearing
    step writes ``null`` only when the record holds its path's first key (a partial change,
    a file without that column or a misspelled path clears nothing) and counts that clear in
    ``absent[len(steps) + k]``.

    The source is registered in :mod:`linecache` under a file name of its own (``label`` says
    which part of the mapping it fills) for as long as the function lives.
    """
    namespace: dict[str, Any] = {
        "MISSING": MISSING,
        "CoercionError": CoercionError,
        "MIN_INTEGER": MIN_INTEGER,
        "MAX_INTEGER": MAX_INTEGER,
        "MAX_STRING_LENGTH": MAX_STRING_LENGTH,
    }
    for number, step in enumerate(steps):
        namespace[f"coerce{number}"] = step.coerce
        namespace[f"get{number}"] = step.get
        namespace[f"location{number}"] = step.location
    source = "\n".join(_source_lines(steps)) + "\n"
    filename = f"<antavo_braze field plan {label}-{next(_plan_numbers)}>"
    exec(compile(source, filename, "exec"), namespace)
    fill = namespace["fill"]
    fill.steps = steps
    # mtime None: linecache.checkcache keeps the entry (there is no file to compare with).
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    # The function and its namespace are a cycle; the entry goes when the collector frees
    # them, so building many mappers does not grow the cache (a live traceback keeps them).
    weakref.finalize(fill, linecache.cache.pop, filename, None).atexit = False
    return cast(Fill, fill)


class Plan:
    """A compiled list of fields: ``fill(record, out, absent)`` adds every present field to
    ``out``; :meth:`values` is the same without the counts."""

    __slots__ = ("clearing", "fill", "steps")

    def __init__(self, steps: tuple[FieldStep, ...], label: str = "fields") -> None:
        self.steps = steps
        # The steps that may clear, in the order of their counters after the absent ones.
        self.clearing = tuple(n for n, step in enumerate(steps) if step.clear)
        self.fill = compile_plan(steps, label)

    @property
    def counters(self) -> int:
        """How long the ``counts`` list given to ``fill`` is."""
        return len(self.steps) + len(self.clearing) + (1 if self.clearing else 0)

    def values(self, record: Any, out: dict[str, Any] | None = None) -> dict[str, Any]:
        """The coerced values of every field present in ``record`` (added to ``out``)."""
        return self.fill(record, {} if out is None else out, [0] * self.counters)

    def each(self, record: Any) -> tuple[dict[str, Any], list[CoercionError]]:
        """The slow path, for a record the plan refused: every field on its own, so that
        every bad field is found (not only the first) and the good ones are kept."""
        out: dict[str, Any] = {}
        problems: list[CoercionError] = []
        for step in self.steps:
            value = step.get(record)
            if value is MISSING:
                if step.clear and record.get(step.first_key, MISSING) is not MISSING:
                    out[step.remote_field] = None
                continue
            try:
                out[step.remote_field] = step.coerce(value)
            except CoercionError as exc:
                problems.append(exc.at(step.location))
        return out, problems


def _splitting(separator: str, coerce: Coercer) -> Coercer:
    """``split``: a text cell (``"a, b"``) read as an array before ``coerce``."""

    def split_then_coerce(value: Any) -> Any:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(separator) if part.strip()]
        return coerce(value)

    return split_then_coerce


def compile_fields(
    fields: tuple[FieldMapping, ...],
    max_array_items: int,
    truncate_strings: bool,
    *,
    prefix: str | None = None,
    when_missing: str = "skip",
    label: str = "fields",
) -> Plan:
    """The plan of ``fields``: each field's coercer chosen once (standard attributes by name,
    custom ones by type), with an inline check where the value's class can prove it valid."""
    steps = []
    for item in fields:
        coercer = standard_coercer(item.remote_field, truncate_strings=truncate_strings)
        inline_check = None
        if coercer is None:
            coercer = coercer_for(
                item.type, max_array_items=max_array_items, truncate_strings=truncate_strings
            )
            inline_check = None if item.type is None else INLINE_CHECKS.get(item.type)
        if item.split is not None:
            coercer, inline_check = _splitting(item.split, coercer), None
        steps.append(
            FieldStep(
                item.remote_field,
                None if "." in item.loyalty_field else item.loyalty_field,
                compile_getter(item.loyalty_field),
                coercer,
                item.loyalty_field if prefix is None else f"{prefix}.{item.loyalty_field}",
                inline_check,
                (item.when_missing or when_missing) == "clear",
                item.loyalty_field.split(".", 1)[0],
            )
        )
    return Plan(tuple(steps), label)
