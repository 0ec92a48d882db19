"""The fast paths (coercion shortcuts, the compiled field plan) agree with the general path."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import MappingProxyType
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

import antavo_braze as ab
from antavo_braze._build.coerce import (
    _coerce_date_string,
    coerce_date,
    coerce_number,
    coercer_for,
    format_datetime,
    to_datetime,
)

KEYS = st.one_of(
    st.sampled_from(["name", "points", "b c", "$time", "$x", "x.y", "", "k" * 256]),
    st.text(max_size=6),
    st.integers(-2, 2),
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**65), 2**65),
    st.floats(),
    st.text(max_size=8),
    st.just("s" * 256),
    st.decimals(allow_nan=False, allow_infinity=False, places=1),
)
JSON_LIKE = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(KEYS, children, max_size=4),
    max_leaves=16,
)
OBJECTS = st.dictionaries(KEYS, JSON_LIKE, max_size=5)


def outcome(coercer: Callable[[Any], Any], value: Any) -> tuple[Any, ...]:
    """What a coercer makes of a value: its exact JSON, or where and why it refused."""
    try:
        return ("ok", json.dumps(coercer(value)))
    except ab.CoercionError as exc:
        return ("error", exc.field, exc.reason)


@given(OBJECTS)
def test_object_fast_path_agrees(value: dict[Any, Any]) -> None:
    """A dict (fast path) and the same data as a read-only mapping (general path) agree."""
    coercer = coercer_for("object")
    assert outcome(coercer, value) == outcome(coercer, MappingProxyType(value))


@given(st.lists(OBJECTS, max_size=4))
def test_array_of_objects_fast_path_agrees(value: list[Any]) -> None:
    """A list of dicts (fast path) and the same items as a tuple (general path) agree."""
    coercer = coercer_for("array_of_objects")
    assert outcome(coercer, value) == outcome(coercer, tuple(value))


@given(st.lists(st.one_of(st.text(max_size=3), st.just("s" * 256), SCALARS), max_size=6))
def test_array_fast_path_agrees(value: list[Any]) -> None:
    """A list (fast path) and the same items as a tuple (general path) agree."""
    coercer = coercer_for("array")
    assert outcome(coercer, value) == outcome(coercer, tuple(value))


@given(st.integers(-62_135_596_800 - 10**6, 32_503_680_000 + 10**6))
def test_unix_seconds_fast_path_agrees(seconds: int) -> None:
    """Unix seconds through the day/time tables equal the datetime arithmetic."""

    def general(value: int) -> str:
        moment = to_datetime(value)
        assert moment is not None
        return format_datetime(moment)

    assert outcome(coerce_date, seconds) == outcome(general, seconds)


@settings(max_examples=500)
@given(
    st.from_regex(
        r"\A[012]\d{3}-[01]\d-[0-3]\d([T ][0-2]\d:[0-6]\d:[0-6]\d)?(Z|\+00:00|\+01:00)?\Z"
    )
)
@example("1000-01-01Z")  # a zone needs a time, in both paths
@example("2024-02-29")
@example("2026-02-29")
@example("2026-04-31T00:00:00")
@example("2026-01-02T24:00:00")
@example("0999-12-31")
@example("2999-12-31T23:59:59+00:00")
def test_date_string_fast_path_agrees(text: str) -> None:
    """Common date shapes through the regex shortcut equal the full parser."""
    assert outcome(coerce_date, text) == outcome(_coerce_date_string, text)


@given(st.from_regex(r"\A\d{1,22}\Z"))
def test_digit_string_fast_path_agrees(text: str) -> None:
    """Digit strings (fast path) and the same with a leading space (general path) agree."""
    assert outcome(coerce_number, text) == outcome(coerce_number, " " + text)


@given(st.sampled_from(list(ab.BrazeType)), JSON_LIKE)
def test_compiled_plan_agrees_with_coerce(braze_type: ab.BrazeType, value: Any) -> None:
    """The generated field plan (inline checks included) gives what coerce() gives, located."""
    mapping = ab.Mapping.from_dict(
        {"fields": [{"loyalty_field": "v", "remote_field": "out", "type": braze_type.value}]}
    )
    mapper = ab.Mapper(mapping)

    def planned(v: Any) -> Any:
        return mapper.member_values({"v": v})["out"]

    def general(v: Any) -> Any:
        try:
            return ab.coerce(v, braze_type)
        except ab.CoercionError as exc:
            raise exc.at("v") from None

    assert outcome(planned, value) == outcome(general, value)


def test_version_says_which_hot_path_and_json_run() -> None:
    """``antavo-braze --version`` names the hot path this installation imports (compiled in
    the wheel built with mypyc, else Python) and the JSON library."""
    from antavo_braze import _json
    from antavo_braze._build import coerce

    done = subprocess.run(
        [sys.executable, "-m", "antavo_braze.cli", "--version"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    hot = "python" if Path(coerce.__file__ or "").suffix == ".py" else "compiled"
    assert f"(hot path: {hot}, JSON: {_json.BACKEND})" in done.stdout, done.stdout
