"""Coercion of every Braze type: the rules of DESIGN.md, and properties that hold for any input."""

from __future__ import annotations

import json
import math
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import antavo_braze as ab
from antavo_braze._build import coerce as coerce_module
from antavo_braze._build.coerce import coerce_properties, infer_type, standard_coercer

UTC = timezone.utc


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (10, 10),
        (-3, -3),
        (12.5, 12.5),
        (Decimal("7"), 7),
        (Decimal("7.25"), 7.25),
        (Decimal("1E+2"), 100),
        ("10", 10),
        (" 12.5 ", 12.5),
        ("-4", -4),
        ("1e3", 1000.0),
        (None, None),
    ],
)
def test_number_accepts(value: Any, expected: Any) -> None:
    """Numbers, Decimals and numeric strings become JSON numbers of the right kind."""
    result = ab.coerce(value, "number")
    assert result == expected
    assert type(result) is type(expected)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (True, "booleans"),
        (float("nan"), "NaN"),
        (float("inf"), "NaN and infinity"),
        (Decimal("NaN"), "NaN"),
        ("ten", "not a numeric string"),
        ("1_000", "not a numeric string"),
        ("", "not a numeric string"),
        ([1], "expected int"),
        (2**64, "64-bit"),
        ("1e999", "too large"),
    ],
)
def test_number_rejects(value: Any, reason: str) -> None:
    """Non-numbers are rejected with a reason naming the problem."""
    with pytest.raises(ab.CoercionError, match=reason) as info:
        ab.coerce(value, ab.BrazeType.NUMBER)
    assert info.value.type == "number"
    assert info.value.value is value or info.value.value == value or value != value


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Gold", "Gold"),
        ("", ""),
        (12, "12"),
        (1.5, "1.5"),
        (Decimal("2.50"), "2.50"),
        (True, "true"),
        (False, "false"),
        (None, None),
    ],
)
def test_string_accepts(value: Any, expected: Any) -> None:
    """Strings pass; numbers and booleans get their text form."""
    assert ab.coerce(value, "string") == expected


def test_string_longer_than_255_is_rejected_or_truncated() -> None:
    """Over 255 characters is an error, unless truncation is asked for."""
    text = "x" * 256
    with pytest.raises(ab.CoercionError, match="256 characters"):
        ab.coerce(text, "string")
    assert ab.coerce(text, "string", truncate_strings=True) == "x" * 255
    assert ab.coerce("y" * 255, "string") == "y" * 255


@pytest.mark.parametrize("value", [[1], {"a": 1}, date(2020, 1, 1), float("nan"), object()])
def test_string_rejects_non_scalars(value: Any) -> None:
    """Containers, dates and NaN are not strings."""
    with pytest.raises(ab.CoercionError):
        ab.coerce(value, "string")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, True),
        (False, False),
        (1, True),
        (0, False),
        ("true", True),
        ("FALSE", False),
        ("t", True),
        ("F", False),
        ("Yes", True),
        ("no", False),
        ("1", True),
        (" 0 ", False),
        (None, None),
    ],
)
def test_boolean_accepts(value: Any, expected: Any) -> None:
    """bool, 0/1 and the listed spellings in any case become booleans."""
    assert ab.coerce(value, "boolean") is expected


@pytest.mark.parametrize("value", [2, -1, "maybe", "y", 1.0, [], "on"])
def test_boolean_rejects(value: Any) -> None:
    """Anything else is not a boolean."""
    with pytest.raises(ab.CoercionError, match="boolean"):
        ab.coerce(value, "boolean")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), "2026-01-02T03:04:05Z"),
        (
            datetime(2026, 1, 2, 5, 4, 5, tzinfo=timezone(timedelta(hours=2))),
            "2026-01-02T03:04:05Z",
        ),
        (datetime(2026, 1, 2, 3, 4, 5), "2026-01-02T03:04:05Z"),
        (datetime(2026, 1, 2, 3, 4, 5, 120000, tzinfo=UTC), "2026-01-02T03:04:05.120000Z"),
        (date(2026, 1, 2), "2026-01-02T00:00:00Z"),
        (1735689600, "2025-01-01T00:00:00Z"),
        (1735689600.5, "2025-01-01T00:00:00.500000Z"),
        (Decimal("1735689600"), "2025-01-01T00:00:00Z"),
        ("1735689600", "2025-01-01T00:00:00Z"),
        ("2026-01-02", "2026-01-02T00:00:00Z"),
        ("2026-01-02 03:04:05", "2026-01-02T03:04:05Z"),
        ("2026-01-02T03:04:05Z", "2026-01-02T03:04:05Z"),
        ("2026-01-02T03:04:05+00:00", "2026-01-02T03:04:05Z"),
        ("2026-01-02T03:04:05-05:00", "2026-01-02T08:04:05Z"),
        ("2026-01-02T03:04:05.123+0100", "2026-01-02T02:04:05.123000Z"),
        ("2026-01-02T03:04", "2026-01-02T03:04:00Z"),
        ("0001-01-01", "0001-01-01T00:00:00Z"),
        ("3000-12-31T23:59:59Z", "3000-12-31T23:59:59Z"),
        (None, None),
    ],
)
def test_date_accepts(value: Any, expected: Any) -> None:
    """Every accepted date input becomes ISO 8601 in UTC with an explicit Z."""
    assert ab.coerce(value, "date") == expected


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("3001-01-01", "year 3001"),
        (datetime(9999, 1, 1), "year 9999"),
        ("02/01/2026", "expected ISO 8601"),
        ("2026-02-30", "not a real date"),
        ("2026-01-02T25:00:00Z", "not a real date"),
        ("2026-01-02T03:04:05+25:00", "invalid UTC offset"),
        (True, "booleans"),
        (float("inf"), "unix time"),
        (1e20, "unix time"),
        ([2026], "expected datetime"),
    ],
)
def test_date_rejects(value: Any, reason: str) -> None:
    """Malformed dates and years outside 1-3000 are rejected."""
    with pytest.raises(ab.CoercionError, match=reason):
        ab.coerce(value, "date")


def test_array_dedupes_keeping_first_occurrence() -> None:
    """Arrays keep the first of duplicate values, and True is not 1."""
    assert ab.coerce(["a", "b", "a", 1, True, 1.0, "1"], "array") == ["a", "b", 1, True, "1"]
    assert ab.coerce(("x",), "array") == ["x"]
    assert ab.coerce({"b", "a"}, "array") == ["a", "b"]
    assert ab.coerce([], "array") == []


def test_array_limits() -> None:
    """Over 500 unique items is rejected (configurable); nested values and long strings too."""
    assert len(ab.coerce(list(range(500)), "array")) == 500
    with pytest.raises(ab.CoercionError, match="501 unique items"):
        ab.coerce(list(range(501)), "array")
    assert len(ab.coerce(list(range(600)), "array", max_array_items=600)) == 600
    assert ab.coerce([1] * 1000, "array") == [1]
    with pytest.raises(ab.CoercionError, match="array_of_objects") as info:
        ab.coerce([1, [2]], "array")
    assert info.value.field == "[1]"
    with pytest.raises(ab.CoercionError, match="array_of_objects"):
        ab.coerce([{"a": 1}], "array")
    with pytest.raises(ab.CoercionError, match="255"):
        ab.coerce(["x" * 256], "array")
    with pytest.raises(ab.CoercionError, match="null"):
        ab.coerce([None], "array")
    with pytest.raises(ab.CoercionError, match="expected a list"):
        ab.coerce("a,b", "array")


def test_object_is_coerced_recursively_with_dates_as_time() -> None:
    """Objects keep structure; dates anywhere inside become {"$time": ...}."""
    value = {
        "tier": "Gold",
        "since": datetime(2025, 6, 1, 8, 30, tzinfo=UTC),
        "next": {"points": Decimal("5000"), "at": date(2026, 1, 1)},
        "history": [{"at": date(2024, 1, 1)}, 3],
        "ok": True,
        "existing": {"$time": "2026-01-02 03:04:05"},
    }
    assert ab.coerce(value, "object") == {
        "tier": "Gold",
        "since": {"$time": "2025-06-01T08:30:00Z"},
        "next": {"points": 5000, "at": {"$time": "2026-01-01T00:00:00Z"}},
        "history": [{"at": {"$time": "2024-01-01T00:00:00Z"}}, 3],
        "ok": True,
        "existing": {"$time": "2026-01-02T03:04:05Z"},
    }


@pytest.mark.parametrize(
    ("value", "reason", "field"),
    [
        ({"$bad": 1}, "cannot start with '\\$'", None),
        ({"a.b": 1}, "cannot contain '.'", None),
        ({"a b": 1}, "spaces", None),
        ({1: 1}, "strings", None),
        ({"a": {"b": None}}, "null", "a.b"),
        ({"a": [{"b": float("nan")}]}, "NaN", "a[0].b"),
        ({"a": object()}, "cannot store", "a"),
        ({"a": {"$time": "nope"}}, "ISO 8601", "a.$time"),
        ({"$time": "2026-01-01"}, "use type 'date'", None),
        ({"a": "x" * 256}, "255", "a"),
        ([1], "expected a mapping", None),
    ],
)
def test_object_rejects(value: Any, reason: str, field: str | None) -> None:
    """Bad keys, nulls and unsupported values inside objects name their path."""
    with pytest.raises(ab.CoercionError, match=reason) as info:
        ab.coerce(value, "object")
    assert info.value.field == field


def test_object_size_limit() -> None:
    """Objects over 100 KB serialized are rejected."""
    big = {f"k{i}": "x" * 200 for i in range(600)}
    with pytest.raises(ab.CoercionError, match="100 KB"):
        ab.coerce(big, "object")
    with pytest.raises(ab.CoercionError, match="100 KB"):
        ab.coerce([{"k": "x" * 250} for _ in range(500)], "array_of_objects")


def test_object_depth_limit() -> None:
    """Absurd nesting is a CoercionError, not a RecursionError."""
    value: dict[str, Any] = {}
    inner = value
    for _ in range(100):
        inner["a"] = {}
        inner = inner["a"]
    with pytest.raises(ab.CoercionError, match="nested deeper"):
        ab.coerce(value, "object")


def test_array_of_objects() -> None:
    """Each item is coerced as an object; non-mappings are rejected with their index."""
    assert ab.coerce([{"id": 1, "at": date(2020, 1, 1)}], "array_of_objects") == [
        {"id": 1, "at": {"$time": "2020-01-01T00:00:00Z"}}
    ]
    with pytest.raises(ab.CoercionError, match="mapping") as info:
        ab.coerce([{"a": 1}, 2], "array_of_objects")
    assert info.value.field == "[1]"
    with pytest.raises(ab.CoercionError, match="list of mappings"):
        ab.coerce({"a": 1}, "array_of_objects")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, ab.BrazeType.BOOLEAN),
        (3, ab.BrazeType.NUMBER),
        (2.5, ab.BrazeType.NUMBER),
        (Decimal(1), ab.BrazeType.NUMBER),
        ("x", ab.BrazeType.STRING),
        (datetime(2020, 1, 1), ab.BrazeType.DATE),
        (date(2020, 1, 1), ab.BrazeType.DATE),
        ({"a": 1}, ab.BrazeType.OBJECT),
        ([{"a": 1}], ab.BrazeType.ARRAY_OF_OBJECTS),
        ([1, 2], ab.BrazeType.ARRAY),
        ((1,), ab.BrazeType.ARRAY),
        ({1}, ab.BrazeType.ARRAY),
        ([], ab.BrazeType.ARRAY),
        (None, None),
    ],
)
def test_infer_type(value: Any, expected: ab.BrazeType | None) -> None:
    """Inference follows DESIGN.md's table."""
    assert infer_type(value) is expected


def test_inferred_coercion() -> None:
    """With no declared type the value is coerced as its inferred type."""
    assert ab.coerce("10") == "10"
    assert ab.coerce(date(2020, 1, 2)) == "2020-01-02T00:00:00Z"
    assert ab.coerce([{"a": 1}]) == [{"a": 1}]
    assert ab.coerce(None) is None
    with pytest.raises(ab.CoercionError, match="declare a type"):
        ab.coerce(object())


def test_unknown_type_is_a_coercion_error() -> None:
    """An unknown type name is reported, not a KeyError."""
    with pytest.raises(ab.CoercionError, match="unknown type 'nubmer'"):
        ab.coerce(1, "nubmer")


def test_type_accepts_enum_or_string() -> None:
    """BrazeType members and their strings are interchangeable."""
    assert ab.BrazeType("array_of_objects") is ab.BrazeType.ARRAY_OF_OBJECTS
    assert str(ab.BrazeType.DATE) == "date"
    assert ab.coerce("1", ab.BrazeType.NUMBER) == ab.coerce("1", "number") == 1


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("gender", "male", "M"),
        ("gender", "Female", "F"),
        ("gender", "other", "O"),
        ("gender", "not applicable", "N"),
        ("gender", "prefer not to say", "P"),
        ("gender", "m", "M"),
        ("dob", "1988-04-12", "1988-04-12"),
        ("dob", datetime(1988, 4, 12, 23, 0), "1988-04-12"),
        ("country", "de", "DE"),
        ("language", "en-GB", "en"),
        ("language", "DE", "de"),
        ("email", "a@example.com", "a@example.com"),
        ("gender", None, None),
    ],
)
def test_standard_attributes(name: str, value: Any, expected: Any) -> None:
    """Standard profile attributes get Braze's own formats."""
    coercer = standard_coercer(name)
    assert coercer is not None
    assert coercer(value) == expected


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("gender", "robot"),
        ("gender", 1),
        ("country", "Germany"),
        ("country", "XX"),
        ("language", "klingon"),
        ("dob", "not a date"),
        ("language", 3),
    ],
)
def test_standard_attributes_reject(name: str, value: Any) -> None:
    """A value that cannot take a standard attribute's format fails like any coercion."""
    coercer = standard_coercer(name)
    assert coercer is not None
    with pytest.raises(ab.CoercionError):
        coercer(value)


def test_custom_names_have_no_standard_coercer() -> None:
    """Only Braze's standard attributes get special formats."""
    assert standard_coercer("loyalty_points") is None


def test_coerce_properties() -> None:
    """Event data becomes properties: types inferred, nulls left out, reserved keys refused."""
    assert coerce_properties(
        {"points": 5, "at": date(2020, 1, 1), "skip": None, "tags": ["a"], "o": {"k": 1}}
    ) == {"points": 5, "at": "2020-01-01T00:00:00Z", "tags": ["a"], "o": {"k": 1}}
    with pytest.raises(ab.CoercionError, match="reserved"):
        coerce_properties({"time": 1})
    with pytest.raises(ab.CoercionError, match="dates inside arrays"):
        coerce_properties({"a": [date(2020, 1, 1)]})
    with pytest.raises(ab.CoercionError, match="256"):
        coerce_properties({f"k{i}": i for i in range(300)})
    with pytest.raises(ab.CoercionError, match="cannot start"):
        coerce_properties({"$x": 1})


def test_error_message_names_value_type_and_reason() -> None:
    """CoercionError's message carries the value, the type and why."""
    with pytest.raises(ab.CoercionError) as info:
        ab.coerce("lots", "number")
    message = str(info.value)
    assert "'lots'" in message
    assert "number" in message
    assert "not a numeric string" in message


# --- properties ------------------------------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.decimals(allow_nan=True, allow_infinity=True),
    st.text(max_size=300),
    st.datetimes(timezones=st.none() | st.timezones()),
    st.dates(),
)
values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(st.text(max_size=10), children, max_size=5)
        | st.tuples(children)
        | st.frozensets(st.integers(), max_size=3)
    ),
    max_leaves=20,
)
types = st.sampled_from([None, *ab.BrazeType])


def _within_limits(result: Any, braze_type: ab.BrazeType | None) -> None:
    if result is None:
        return
    text = json.dumps(result, allow_nan=False)
    assert len(text.encode()) <= 100 * 1024 + 2
    if isinstance(result, str):
        assert len(result) <= 255
    if isinstance(result, float):
        assert math.isfinite(result)
    if braze_type is ab.BrazeType.ARRAY:
        assert len(result) <= 500
        assert len({(type(v) is bool, v) for v in result}) == len(result)


@settings(max_examples=400)
@given(value=values, braze_type=types)
def test_coercion_is_json_ready_or_a_coercion_error(value: Any, braze_type: Any) -> None:
    """Any input gives JSON within Braze's limits, or a CoercionError — never another error."""
    try:
        result = ab.coerce(value, braze_type)
    except ab.CoercionError:
        return
    _within_limits(result, braze_type)


@settings(max_examples=400)
@given(value=values, braze_type=types)
def test_coercion_is_idempotent(value: Any, braze_type: Any) -> None:
    """coerce(coerce(x, t), t) == coerce(x, t)."""
    try:
        once = ab.coerce(value, braze_type)
    except ab.CoercionError:
        return
    declared = braze_type if braze_type is not None else infer_type(value)
    assert ab.coerce(once, declared) == once


@given(
    moment=st.datetimes(
        min_value=datetime(1, 1, 2),
        max_value=datetime(3000, 12, 30),
        timezones=st.none() | st.timezones(),
    )
)
def test_dates_round_trip_to_the_same_instant(moment: datetime) -> None:
    """A coerced date parses back to the same UTC instant."""
    try:
        text = ab.coerce(moment, "date")
    except ab.CoercionError:
        return  # the offset pushed it out of 1-3000
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    expected = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment
    # Compare in UTC: an aware time inside a DST gap never equals another zone's time (PEP 495).
    assert parsed == expected.astimezone(UTC)


# --- hostile sizes ----------------------------------------------------------------------------

MEGABYTE = 1_000_000
ADVERSARIAL = [
    ("number", "1" * MEGABYTE + "x"),
    ("number", "1." + "1" * MEGABYTE + "e"),
    ("number", " " * MEGABYTE + "1" + " " * MEGABYTE + "x"),
    ("date", "2026-01-01T00:00:00" + "0" * MEGABYTE),
    ("date", "2026-01-01" + " " * MEGABYTE + "x"),
    ("date", "1" * MEGABYTE),
    ("boolean", "t" * MEGABYTE),
    ("array", ["x" * MEGABYTE]),
    ("object", {"k" * MEGABYTE: 1}),
]


@pytest.mark.parametrize(("braze_type", "value"), ADVERSARIAL, ids=lambda v: str(v)[:12])
def test_megabyte_values_are_refused_with_a_short_message(braze_type: str, value: Any) -> None:
    """1 MB hostile values fail cleanly (the message stays short); benchmarks/coercion.py
    measures that the cost is linear."""
    with pytest.raises(ab.CoercionError) as info:
        ab.coerce(value, braze_type)
    assert len(str(info.value)) < 500


def test_megabyte_string_is_refused_or_truncated() -> None:
    """A 1 MB string is over Braze's limit: refused, or cut with truncate_strings."""
    with pytest.raises(ab.CoercionError, match="longer than"):
        ab.coerce("x" * MEGABYTE, "string")
    assert ab.coerce("x" * MEGABYTE, "string", truncate_strings=True) == "x" * 255


def test_the_date_cache_keeps_short_normalised_keys() -> None:
    """Padded dates share one cache entry per date; over-long ones are never cached."""
    from antavo_braze._build.coerce import _cached_date_string

    _cached_date_string.cache_clear()
    for pad in range(1, 200):
        assert ab.coerce(" " * pad + "2026-01-01T10:00:00+02:00", "date") == "2026-01-01T08:00:00Z"
    for pad in range(50):
        with pytest.raises(ab.CoercionError):
            ab.coerce("2026-01-01T10:00:00+02:00" + "0" * (100 + pad), "date")
    assert _cached_date_string.cache_info().currsize == 1


def outcome(value: Any, braze_type: str) -> Any:
    """The coerced value, or the CoercionError raised."""
    try:
        return ab.coerce(value, braze_type)
    except ab.CoercionError as exc:
        return exc


@given(st.text(alphabet="0123456789.eE+-: TZ", max_size=200), st.integers(1, 5000))
@example("1", 17)  # 17 digits: exact as an int, not as a float
def test_repeated_number_and_date_shapes_are_coerced_or_refused(piece: str, times: int) -> None:
    """Any repetition of number/date characters gives a right value or a CoercionError."""
    text = (piece * times)[:100_000]
    number = outcome(text, "number")
    if isinstance(number, ab.CoercionError):
        assert number.type == "number"
    elif isinstance(number, int):  # integer text stays exact (past 2**53 a float would not)
        assert number == int(text.strip())
    else:
        assert number == float(text.strip())
    date = outcome(text, "date")
    if isinstance(date, ab.CoercionError):
        assert date.type == "date"
    else:
        assert date.endswith("Z")


@pytest.mark.parametrize(
    "options",
    [
        {"truncate_strings": 1},
        {"truncate_strings": None},
        {"max_array_items": 500.0},
        {"max_array_items": True},
        {"max_array_items": 0},
    ],
)
def test_coercion_options_of_the_wrong_type_are_a_clear_error(options: dict[str, Any]) -> None:
    """truncate_strings must be a bool and max_array_items a whole number >= 1: anything else
    is refused, never read loosely: a ConfigurationError naming the option from a Syncer (in
    both builds) and from coerce() (the compiled build's typed entry refuses a wrong type
    first, with a TypeError, and its int parameter reads True as 1)."""
    compiled = coerce_module.BUILD == "compiled"
    if not (compiled and options.get("max_array_items") is True):  # compiled: True is 1 there
        with pytest.raises(
            (ab.ConfigurationError, TypeError), match=next(iter(options)) + "|expected"
        ):
            ab.coerce("x", "string", **options)
    mapping = {"fields": [{"loyalty_field": "t", "remote_field": "t", "type": "string"}]}
    with pytest.raises(ab.ConfigurationError, match=next(iter(options))):
        ab.Syncer(None, mapping, **options)
