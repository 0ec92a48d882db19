"""Braze's value rules (_braze/rules) and the two paths that apply them: coercion (the mapper)
and the wire checks of ``track()`` must refuse exactly the same values."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import antavo_braze as ab
from antavo_braze._braze import rules
from antavo_braze._braze.limits import MAX_PROPERTIES, MAX_STRING_LENGTH
from antavo_braze._build.coerce import _check_property_key, coerce_properties
from antavo_braze._build.wire import WireError, wire_item

DAY = "2026-01-01"

# Keys from a tiny alphabet, so spaces, dots, "$" and empty keys come up often; and a few long.
keys = st.text(alphabet="ab .$", max_size=3) | st.sampled_from(["k" * 255, "k" * 256, "time"])
scalars = (
    st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=4)
    | st.sampled_from(["s" * 255, "s" * 256])
)
nested = st.recursive(
    scalars | st.none(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=4),
    max_leaves=12,
)
objects = st.dictionaries(keys, nested, max_size=5)
# Counts around Braze's 256 properties, with some nulls (left out, so not counted).
many_properties = st.integers(min_value=MAX_PROPERTIES - 3, max_value=MAX_PROPERTIES + 3).map(
    lambda n: {f"p{i}": (None if i % 50 == 7 else i) for i in range(n)}
)


def _coerces(value: Any, kind: str) -> bool:
    try:
        if kind == "properties":
            coerce_properties(value)
        else:
            ab.coerce(value, kind)
    except ab.CoercionError:
        return False
    return True


def _passes_wire(value: Any, kind: str) -> bool:
    if kind == "properties":
        array, obj = "events", {"external_id": "x", "name": "e", "time": DAY, "properties": value}
    else:
        array, obj = "attributes", {"external_id": "x", "o": value}
    try:
        wire_item(array, obj, 0)
    except WireError:
        return False
    return True


@settings(max_examples=500)
@given(value=objects)
@example(value={"a b": 1})  # REVIEW 1.2 e8: coercion refused it, track() sent it
@example(value={"a": {"a b": 1}})
@example(value={"a": {"a.b": 1}})
@example(value={"a": list(range(501))})
def test_objects_are_refused_alike_by_coercion_and_track(value: dict[str, Any]) -> None:
    """A nested custom attribute is accepted by coerce(v, "object") exactly when track()'s
    wire check accepts it."""
    assert _coerces(value, "object") == _passes_wire(value, "object"), value


@settings(max_examples=300)
@given(value=st.lists(objects, min_size=1, max_size=3))
def test_arrays_of_objects_are_refused_alike(value: list[dict[str, Any]]) -> None:
    """An array of objects is accepted by coercion exactly when track()'s wire check accepts it."""
    assert _coerces(value, "array_of_objects") == _passes_wire(value, "array_of_objects"), value


@settings(max_examples=500)
@given(value=objects | many_properties)
@example(value={f"p{i}": i for i in range(300)})  # REVIEW 1.2 e8: track() sent 300
@example(value={"a": {"a b": 1, "c.d": None}})
@example(value={"time": 1})
def test_event_properties_are_refused_alike(value: dict[str, Any]) -> None:
    """Event properties are accepted by the mapper's coercion exactly when track() accepts
    them: keys, reserved names, strings, 64-bit ints, nesting, and the 256-property count."""
    assert _coerces(value, "properties") == _passes_wire(value, "properties"), value


def _chain(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(levels - 1):
        value = {"k": value}
    return value


@pytest.mark.parametrize("kind", ["object", "properties"])
def test_the_depth_limit_is_the_same_on_both_paths(kind: str) -> None:
    """Nesting of MAX_DEPTH levels below the object (or the properties) passes both paths; one
    more fails both."""
    deepest = _chain(rules.MAX_DEPTH + 1)
    too_deep = {"k": deepest}
    assert _coerces(deepest, kind)
    assert _passes_wire(deepest, kind)
    assert not _coerces(too_deep, kind)
    assert not _passes_wire(too_deep, kind)


@given(key=keys | st.text(max_size=300) | st.integers() | st.none())
def test_the_quick_key_test_is_the_rule(key: Any) -> None:
    """The coercers' inline key test says yes exactly when the rule finds no problem."""
    assert rules.is_plain_key(key) == (rules.key_problem(key) is None)


@pytest.mark.parametrize(
    ("check", "good", "bad", "words"),
    [
        (rules.string_problem, "s" * MAX_STRING_LENGTH, "s" * 256, "256 characters"),
        (rules.int_problem, 2**63 - 1, 2**63, "64-bit"),
        (rules.float_problem, 1.5, float("nan"), "NaN"),
        (rules.property_count_problem, MAX_PROPERTIES, MAX_PROPERTIES + 1, "257 properties"),
        (rules.depth_problem, rules.MAX_DEPTH, rules.MAX_DEPTH + 1, "deeper"),
        (rules.key_problem, "a_b", "a b", "spaces"),
        (rules.time_problem, DAY, None, "ISO 8601"),
    ],
)
def test_each_rule_names_what_it_refuses(check: Any, good: Any, bad: Any, words: str) -> None:
    """Each rule answers None for a value at its limit and a reason past it."""
    assert check(good) is None
    problem = check(bad)
    assert problem is not None
    assert words in problem


@pytest.mark.parametrize(
    ("obj", "words"),
    [
        ({"points": 1}, "missing identifier"),
        ({"external_id": "a", "braze_id": "b"}, "more than one primary"),
        ({"external_id": "x" * 988}, "987 bytes"),
        ({"user_alias": {"alias_name": "a"}}, "user_alias"),
        ({"braze_id": ""}, "braze_id"),
    ],
)
def test_identifier_rules(obj: dict[str, Any], words: str) -> None:
    """One primary identifier, or email/phone; external_id within 987 bytes."""
    assert words in (rules.identifier_problem(obj) or "")
    assert rules.identifier_problem({"external_id": "a", "email": "a@b.c"}) is None


@given(key=keys | st.text(max_size=300) | st.integers() | st.none())
def test_the_quick_property_key_test_is_the_rule(key: Any) -> None:
    """Coercion's inline property-key test accepts exactly what the name rule accepts."""
    try:
        _check_property_key(key)
    except ab.CoercionError:
        accepted = False
    else:
        accepted = True
    assert accepted == (rules.name_problem(key, "property") is None)
