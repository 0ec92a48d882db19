"""Braze's errors[] -> per-item rejections (_build/answers): pure, bounded, redacted."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

import antavo_braze as ab
from antavo_braze._build.answers import MAX_REASON, read_errors, settle_track
from antavo_braze._build.batching import BatchOutcome, pack
from antavo_braze._build.wire import track_items

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


def _track_input(count: int) -> tuple[Any, Any, Any]:
    objects = [{"external_id": f"m{n}", "points": n} for n in range(count)]
    objects.insert(1, {"points": 1})  # no identifier: refused before sending
    return track_items([("attributes", objects)])


def test_track_items_refuses_by_rule_and_keeps_positions() -> None:
    """Each object keeps its (array, index); one breaking a rule is refused, the rest are items."""
    where, refused, groups = _track_input(3)
    assert where == [("attributes", n) for n in range(4)]
    assert [(array, index) for array, index, _ in refused] == [("attributes", 1)]
    assert "missing identifier" in refused[0][2]
    assert [group[0].record for group in groups] == [0, 2, 3]


def test_a_fatal_stop_rejects_every_unsettled_item_as_interrupted() -> None:
    """Outcomes settle their items; a fatal error raised mid-way rejects the rest, once each."""
    where, _, groups = _track_input(4)
    batches = list(pack(groups, ab.BatchLimits(max_objects=2)))
    fatal = ab.AuthenticationError(401, "", "key revoked")

    def outcomes() -> Iterator[BatchOutcome]:
        yield BatchOutcome(batches[0], rejected={1: "EMAIL_BAD_FORMAT"})
        raise fatal

    accepted, rejected, warnings, error = settle_track(outcomes(), where, groups)
    assert error is fatal
    assert accepted == 1
    assert warnings == []
    stages = sorted((r.index, r.stage) for r in rejected)
    assert stages == [(2, "braze"), (3, "interrupted"), (4, "interrupted")]
