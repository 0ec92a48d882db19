"""Resume checkpoints: settled ranges, what an interrupt reopens, and the file round trip."""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from antavo_braze._run.checkpoint import (
    Checkpoint,
    Resumed,
    Settled,
    checkpoint_path,
    merge_ranges,
    reopened,
)
from antavo_braze._run.report import RecordFailure, SyncReport
from antavo_braze.exceptions import ConfigurationError

ranges = st.lists(st.tuples(st.integers(0, 200), st.integers(0, 200)), max_size=30)


@given(ranges)
def test_merge_ranges_covers_exactly_the_union(given_ranges: list[tuple[int, int]]) -> None:
    """Merged ranges are sorted, disjoint, non-touching, and cover exactly the same positions."""
    merged = merge_ranges(given_ranges)
    covered = {p for start, end in given_ranges for p in range(start, end)}
    assert {p for start, end in merged for p in range(start, end)} == covered
    assert all(start < end for start, end in merged)
    assert all(a[1] < b[0] for a, b in itertools.pairwise(merged))


def failure(index: int, stage: str = "interrupted", outcome: str = "not_sent") -> RecordFailure:
    """A failure at ``index``."""
    return RecordFailure(index, f"m{index}", stage, "why", outcome=outcome)  # type: ignore[arg-type]


def report(total: int, failures: list[RecordFailure]) -> SyncReport:
    """A report of ``total`` records, these failed and the rest succeeded."""
    return SyncReport(
        total=total,
        succeeded=total - len(failures),
        failed=len(failures),
        skipped=0,
        requests=1,
        failures=tuple(failures),
    )


@given(
    total=st.integers(0, 300),
    holes=st.sets(st.integers(0, 299), max_size=40),
    kind=st.sampled_from(["members", "events"]),
    earlier=ranges,
)
def test_after_settles_what_the_run_handled_except_reopened(
    total: int, holes: set[int], kind: str, earlier: list[tuple[int, int]]
) -> None:
    """after(): every handled position is settled except those the interrupt cut off."""
    holes = {h for h in holes if h < total}
    failures = [failure(h, outcome="not_sent" if h % 2 else "unknown") for h in sorted(holes)]
    before = Checkpoint(kind, "/in", 1, 2, merge_ranges(earlier))
    after = before.after(report(total, failures))
    reopen = {f.index for f in failures if reopened(kind, f)}
    earlier_set = {p for s, e in earlier for p in range(s, e)}
    for position in range(max(total, 201) + 1):
        expected = (position < total and position not in reopen) or position in earlier_set
        assert after.is_settled(position) == expected
    assert after.count == len({p for p in range(501) if after.is_settled(p)})


def test_reopened_rules() -> None:
    """Only interrupted records reopen: never-sent ones always, unanswered members too."""
    assert reopened("events", failure(0, outcome="not_sent"))
    assert not reopened("events", failure(0, outcome="unknown"))
    assert reopened("members", failure(0, outcome="unknown"))
    assert not reopened("members", failure(0, stage="braze", outcome="failed"))


def test_save_and_load_round_trip_owner_only(tmp_path: Path) -> None:
    """A saved checkpoint loads equal, and its file is readable by its owner only."""
    data = tmp_path / "in.jsonl"
    data.write_text("{}\n")
    saved = Checkpoint.for_input("members", str(data)).after(report(5, [failure(2)]))
    path = checkpoint_path(tmp_path / "dead.jsonl")
    assert path.name == "dead.jsonl.checkpoint"
    saved.save(path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    loaded = Checkpoint.load(path)
    assert loaded == saved
    assert loaded.settled == ((0, 2), (3, 5))
    assert loaded.matches(Checkpoint.for_input("members", str(data))) is None


def test_matches_names_what_changed(tmp_path: Path) -> None:
    """A checkpoint refuses another kind, another file, or the same file changed."""
    data = tmp_path / "in.jsonl"
    data.write_text("{}\n")
    saved = Checkpoint.for_input("members", str(data))
    assert "synced members, not events" in str(saved.matches(Checkpoint("events", *_rest(saved))))
    other = tmp_path / "other.jsonl"
    other.write_text("{}\n")
    assert "not " + str(other) in str(saved.matches(Checkpoint.for_input("members", str(other))))
    data.write_text("{}\n{}\n")
    assert "changed since" in str(saved.matches(Checkpoint.for_input("members", str(data))))


def _rest(checkpoint: Checkpoint) -> tuple[str, int, int]:
    """The input fields of a checkpoint."""
    return checkpoint.input, checkpoint.size, checkpoint.mtime_ns


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "nothing to resume"),
        ("not json", "not a resume checkpoint"),
        (json.dumps({"version": 99}), r"not a resume checkpoint \(version 99\)"),
        (json.dumps({"version": 1, "kind": "members"}), "not a resume checkpoint"),
        ("[1, 2]", "not a resume checkpoint"),
    ],
)
def test_load_errors_are_clear(tmp_path: Path, content: str | None, message: str) -> None:
    """A missing or malformed checkpoint is a ConfigurationError that says which."""
    path = tmp_path / "dead.jsonl.checkpoint"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigurationError, match=message):
        Checkpoint.load(path)


def test_stdin_cannot_be_resumed() -> None:
    """Resuming needs a file to read again."""
    with pytest.raises(ConfigurationError, match="not stdin"):
        Checkpoint.for_input("members", "-")


def test_resumed_replaces_settled_positions() -> None:
    """Resumed yields the records, with settled positions replaced by Settled markers."""
    checkpoint = Checkpoint("members", "/in", 1, 2, ((1, 3),))
    out = list(Resumed(["a", "b", "c", "d"], checkpoint))
    assert out == ["a", Settled(1), Settled(2), "d"]
