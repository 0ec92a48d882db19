"""Braze's errors[] -> per-item rejections (_build/answers): pure, bounded, redacted."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from antavo_braze._build.answers import MAX_REASON, read_errors

WHERE = {("attributes", 0): 3, ("events", 1): 7}


def _same(text: str) -> str:
    return text


def test_an_error_naming_an_object_rejects_that_item() -> None:
    """{"type", "input_array", "index"} rejects the item `where` gives, with the code in words."""
    rejected, warnings = read_errors(
        [{"type": "EMAIL_BAD_FORMAT", "input_array": "attributes", "index": 0}], WHERE, _same
    )
    assert rejected == {3: "EMAIL_BAD_FORMAT (the email address is not valid)"}
    assert warnings == ()


def test_errors_naming_no_item_are_warnings() -> None:
    """An unknown index, a bool index, a message or a non-dict fail nothing: they warn."""
    errors = [
        {"type": "x", "input_array": "events", "index": 5},
        {"type": "y", "input_array": "events", "index": True},
        {"message": "z"},
        "plain text",
    ]
    rejected, warnings = read_errors(errors, WHERE, _same)
    assert rejected == {}
    assert warnings == ("x", "y", "z", "plain text")


def test_reasons_are_redacted_and_cut() -> None:
    """The key never appears; a long reason is cut to MAX_REASON characters."""
    long = "secret " + "x" * 1000
    rejected, warnings = read_errors(
        [{"type": long, "input_array": "events", "index": 1}, long],
        WHERE,
        lambda text: text.replace("secret", "[REDACTED]"),
    )
    assert rejected[7].startswith("[REDACTED]")
    assert len(rejected[7]) == MAX_REASON
    assert warnings[0].startswith("[REDACTED]")
    assert len(warnings[0]) == MAX_REASON


entries = st.one_of(
    st.fixed_dictionaries(
        {
            "type": st.text(max_size=5),
            "input_array": st.sampled_from(["attributes", "events", "purchases"]),
            "index": st.integers(-1, 3) | st.booleans() | st.none(),
        }
    ),
    st.text(max_size=5),
    st.integers(),
)


@given(errors=st.lists(entries, max_size=8) | entries)
def test_every_error_ends_once(errors: Any) -> None:
    """Each error becomes a rejection of a known item or a warning; nothing is lost or
    invented (a later error about the same item replaces the earlier reason)."""
    rejected, warnings = read_errors(errors, WHERE, _same)
    assert set(rejected) <= set(WHERE.values())
    listed = errors if isinstance(errors, list) else [errors]
    named = [
        e
        for e in listed
        if isinstance(e, dict)
        and isinstance(e["index"], int)
        and not isinstance(e["index"], bool)
        and (e["input_array"], e["index"]) in WHERE
    ]
    assert len(warnings) == len(listed) - len(named)
    assert {WHERE[(e["input_array"], e["index"])] for e in named} == set(rejected)
