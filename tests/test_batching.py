"""Packing serialized objects into request bodies: limits hold for any input."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import antavo_braze as ab
from antavo_braze._braze.limits import ARRAYS
from antavo_braze._build.batching import ATTRIBUTES, Item, Packer, pack

# Limits below Braze's own, so that small tests reach them.
SMALL = 1024


def item(
    array: str = "attributes",
    size: int = 40,
    eid: str = "m",
    record: int = 0,
    unencoded: bool = False,
) -> Item:
    """An item whose JSON is exactly ``size`` bytes (at least 32); ``unencoded``: carried as
    its wire dict, for the batch to encode."""
    data = json.dumps({"external_id": eid, "p": ""}, separators=(",", ":")).encode()
    pad = max(0, size - len(data))
    wire = {"external_id": eid, "p": "x" * pad}
    if unencoded:
        return Item(array, b"", eid, record, wire=wire)
    return Item(array, json.dumps(wire, separators=(",", ":")).encode(), eid, record)


def limits(**kwargs: object) -> ab.BatchLimits:
    """BatchLimits with the given fields."""
    return ab.BatchLimits(**kwargs)  # type: ignore[arg-type]


def test_batch_limits_is_a_value_object() -> None:
    """Defaults are Braze's; bad values are refused; it compares by value."""
    assert ab.BatchLimits() == ab.BatchLimits("combined", 75, 4_000_000)
    assert ab.BatchLimits(max_objects=50).max_objects == 50  # some contracts: 50 combined
    for bad in (
        {"mode": "bulk"},
        {"max_objects": 76},
        {"max_objects": 0},
        {"max_bytes": 5_000_000},
    ):
        with pytest.raises((ValueError, TypeError)):
            ab.BatchLimits(**bad)  # type: ignore[arg-type]


def test_body_layout_and_locations() -> None:
    """The body holds each array's objects in order; locate() maps Braze's indexes back."""
    items = [item("events", eid="a"), item("attributes", eid="b"), item("events", eid="c")]
    (batch,) = pack([[i] for i in items])
    decoded = json.loads(batch.body)
    assert list(decoded) == ["attributes", "events"]
    assert decoded["events"][1]["external_id"] == "c"
    assert batch.locate() == {("events", 0): 0, ("attributes", 0): 1, ("events", 1): 2}
    assert batch.keys == {"a", "b", "c"}


def test_combined_mode_75_objects_total() -> None:
    """Combined mode allows 75 objects across all arrays."""
    groups = [[item(a)] for _ in range(100) for a in ARRAYS]
    assert [len(b.items) for b in pack(groups)] == [75, 75, 75, 75]


def test_legacy_mode_75_per_array() -> None:
    """Legacy mode allows 75 per array, up to 225 per request."""
    groups = [[item(a)] for _ in range(100) for a in ARRAYS]
    batches = list(pack(groups, limits(mode="legacy")))
    assert len(batches[0].items) == 225
    assert sum(len(b.items) for b in batches) == 300


def test_groups_stay_together_when_they_fit() -> None:
    """A record's objects are not split across requests if they fit in one."""
    groups = [[item("attributes", record=i), item("events", record=i)] for i in range(50)]
    for batch in pack(groups):
        records = [it.record for it in batch.items]
        for record in set(records):
            assert records.count(record) == 2


def test_oversize_group_is_split_and_oversize_item_marked() -> None:
    """A group bigger than a request is split; an object bigger than the limit stands alone."""
    assert [len(b.items) for b in pack([[item() for _ in range(80)]])] == [75, 5]
    huge = item(size=SMALL + 10, record=9)
    batches = list(pack([[item(record=1)], [huge], [item(record=2)]], limits(max_bytes=SMALL)))
    assert [b.oversize for b in batches] == [False, True, False]
    assert [b.items[0].record for b in batches] == [1, 9, 2]


def test_bytes_limit_is_exact() -> None:
    """Bodies never exceed max_bytes, and are filled up to it (sizes are known exactly)."""
    groups = [[item(size=100, eid=f"m{i}")] for i in range(50)]
    batches = list(pack(groups, limits(max_bytes=SMALL)))
    for batch in batches:
        assert len(batch.body) <= SMALL
    for batch in batches[:-1]:
        assert len(batch.body) + 101 > SMALL  # one more object would not have fitted
    assert sum(len(b.items) for b in batches) == 50


def test_unencoded_attributes_are_encoded_with_their_batch() -> None:
    """Wire dicts make one body per batch; together over the byte limit, they are packed
    exactly as encoded objects (an object over it alone is marked oversize)."""
    rules = limits(max_objects=10, max_bytes=SMALL)
    fitting = [[item(size=90, eid=f"e{n}", record=n, unencoded=True)] for n in range(25)]
    batches = list(pack(fitting, rules))
    assert [len(b.items) for b in batches] == [10, 10, 5]
    assert json.loads(batches[0].body) == {"attributes": [g[0].wire for g in fitting[:10]]}
    heavy = [[item(size=300, eid=f"e{n}", record=n, unencoded=True)] for n in range(10)]
    heavy.append([item(size=SMALL + 1, eid="big", record=99, unencoded=True)])
    batches = list(pack(heavy, rules))
    assert all(len(b.body) <= SMALL for b in batches if not b.oversize)
    assert [len(b.items) for b in batches] == [3, 3, 3, 1, 1]
    assert [b.oversize for b in batches] == [False] * 4 + [True]
    assert [it.record for b in batches for it in b.items] == [*range(10), 99]
    assert all(it.wire is None for b in batches for it in b.items)  # encoded for exact sizes


group_strategy = st.lists(
    st.lists(
        st.tuples(st.sampled_from(ARRAYS), st.integers(32, 400), st.booleans()),
        min_size=1,
        max_size=5,
    ),
    max_size=60,
)


def build(groups: list[list[tuple[str, int, bool]]]) -> list[list[Item]]:
    """Items for drawn groups: (array, size, unencoded) each."""
    return [
        [item(a, s, eid=f"e{g}", record=g * 10 + i, unencoded=u) for i, (a, s, u) in enumerate(grp)]
        for g, grp in enumerate(groups)
    ]


@given(
    groups=group_strategy,
    mode=st.sampled_from(["combined", "legacy"]),
    max_objects=st.integers(1, 75),
    max_bytes=st.integers(SMALL, 5000),
)
def test_packing_invariants(
    groups: list[list[tuple[str, int, bool]]], mode: str, max_objects: int, max_bytes: int
) -> None:
    """Every item comes out exactly once, in order, as its own JSON, and no batch breaks a
    limit (encoded and unencoded items alike)."""
    built = build(groups)
    rules = limits(mode=mode, max_objects=max_objects, max_bytes=max_bytes)
    batches = list(pack(built, rules))
    assert [it.record for b in batches for it in b.items] == [it.record for g in built for it in g]
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
        assert {a: len(v) for a, v in decoded.items()} == {a: n for a, n in counts.items() if n}
        for array, objects in decoded.items():
            assert objects == [it.json() for it in batch.items if it.array == array]
        assert batch.keys == {it.key for it in batch.items}


@given(
    groups=group_strategy,
    mode=st.sampled_from(["combined", "legacy"]),
    max_objects=st.integers(1, 75),
    max_bytes=st.integers(SMALL, 5000),
)
# The general path fills a batch, the next member's object closes it on the hot path: that
# object was held during the yield and open after it, never both (CI's Hypothesis found it).
@example(
    groups=[[(ATTRIBUTES, 32, False)], [(ATTRIBUTES, 32, False)] * 4, [(ATTRIBUTES, 32, False)]],
    mode="combined",
    max_objects=2,
    max_bytes=1024,
)
def test_pending_is_exactly_what_was_read_and_not_yielded(
    groups: list[list[tuple[str, int, bool]]], mode: str, max_objects: int, max_bytes: int
) -> None:
    """At every yield, Packer.pending holds exactly the items read but in no batch yet."""
    built = build(groups)
    read: list[Item] = []

    def reading() -> Iterator[list[Item]]:
        for group in built:
            read.extend(group)
            yield group

    packer = Packer(reading(), limits(mode=mode, max_objects=max_objects, max_bytes=max_bytes))
    sent: list[Item] = []
    for batch in packer:
        sent.extend(batch.items)
        pending = packer.pending
        # By record number: an unencoded item comes out as its encoded copy.
        assert sorted(it.record for it in sent + pending) == sorted(it.record for it in read)
    assert packer.pending == []
