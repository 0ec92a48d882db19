"""Packing objects into request bodies: limits hold for any input."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from antavo_braze._batching import ARRAYS, Item, build_body, pack


def item(array: str = "attributes", size: int = 10, eid: str = "m", tag: object = None) -> Item:
    """An item whose JSON is about ``size`` bytes."""
    return Item(array, {"external_id": eid, "p": "x" * max(0, size - 30)}, eid, tag)


def test_body_layout_and_positions() -> None:
    """The body holds each array's objects in order; positions index into them."""
    items = [item("events", eid="a"), item("attributes", eid="b"), item("events", eid="c")]
    body, positions = build_body(items)
    decoded = json.loads(body)
    assert list(decoded) == ["attributes", "events"]
    assert positions == (("events", 0), ("attributes", 0), ("events", 1))
    assert decoded["events"][1]["external_id"] == "c"


def test_combined_mode_75_objects_total() -> None:
    """Combined mode allows 75 objects across all arrays."""
    groups = [[item(a)] for _ in range(100) for a in ARRAYS]
    batches = list(pack(groups, mode="combined"))
    assert [len(b.items) for b in batches] == [75, 75, 75, 75]


def test_legacy_mode_75_per_array() -> None:
    """Legacy mode allows 75 per array, up to 225 per request."""
    groups = [[item(a)] for _ in range(100) for a in ARRAYS]
    batches = list(pack(groups, mode="legacy"))
    assert len(batches[0].items) == 225
    assert sum(len(b.items) for b in batches) == 300


def test_groups_stay_together_when_they_fit() -> None:
    """A record's objects are not split across requests if they fit in one."""
    groups = [[item("attributes", tag=i), item("events", tag=i)] for i in range(50)]
    for batch in pack(groups, max_objects=75):
        tags = [it.tag for it in batch.items]
        for tag in set(tags):
            assert tags.count(tag) == 2


def test_oversize_group_is_split_and_oversize_item_marked() -> None:
    """A group bigger than a request is split; an object bigger than 4 MB stands alone."""
    big_group = [item(tag=0) for _ in range(80)]
    batches = list(pack([big_group]))
    assert [len(b.items) for b in batches] == [75, 5]
    huge = item(size=200)
    batches = list(pack([[item(tag=1)], [huge], [item(tag=2)]], max_bytes=150))
    assert [b.oversize for b in batches] == [False, True, False]
    assert [b.items[0].tag for b in batches] == [1, None, 2]


def test_bytes_limit() -> None:
    """Bodies never exceed max_bytes."""
    groups = [[item(size=1000)] for _ in range(50)]
    for batch in pack(groups, max_bytes=5000):
        assert len(batch.body) <= 5000


def test_unknown_mode() -> None:
    """Only 'combined' and 'legacy' exist."""
    with pytest.raises(ValueError, match="batch mode"):
        list(pack([], mode="bulk"))  # type: ignore[arg-type]


group_strategy = st.lists(
    st.lists(st.tuples(st.sampled_from(ARRAYS), st.integers(10, 400)), min_size=1, max_size=5),
    max_size=60,
)


@given(
    groups=group_strategy,
    mode=st.sampled_from(["combined", "legacy"]),
    max_objects=st.integers(1, 75),
    max_bytes=st.integers(300, 5000),
)
def test_packing_invariants(
    groups: list[list[tuple[str, int]]], mode: str, max_objects: int, max_bytes: int
) -> None:
    """Every item comes out exactly once, in order, and no batch breaks a limit."""
    built = [
        [item(a, s, eid=f"e{g}", tag=(g, i)) for i, (a, s) in enumerate(grp)]
        for g, grp in enumerate(groups)
    ]
    batches = list(
        pack(
            built,
            mode=mode,
            max_objects=max_objects,  # type: ignore[arg-type]
            max_bytes=max_bytes,
        )
    )
    out = [it.tag for b in batches for it in b.items]
    assert out == [it.tag for grp in built for it in grp]
    for batch in batches:
        if batch.oversize:
            assert len(batch.items) == 1
            assert len(batch.body) > max_bytes
            continue
        assert len(batch.body) <= max_bytes
        counts = {a: sum(1 for it in batch.items if it.array == a) for a in ARRAYS}
        if mode == "combined":
            assert len(batch.items) <= max_objects
        else:
            assert max(counts.values()) <= max_objects
        decoded = json.loads(batch.body)
        assert sum(len(v) for v in decoded.values()) == len(batch.items)
        assert batch.external_ids == {it.external_id for it in batch.items}
