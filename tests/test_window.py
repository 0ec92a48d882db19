"""The background sender's window planner (``_service/window.py``): pure decisions, tested
with no thread and no server."""

from __future__ import annotations

from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from antavo_braze._run.report import RecordFailure, RecordOutcome
from antavo_braze._service.window import (
    LINGER,
    SCAN_FACTOR,
    Change,
    ChangeQueue,
    Kind,
    Send,
    Wait,
    decide_retries,
    next_step,
    pause_before,
    plan_window,
    whole_requests,
)

KIND_NAMES: tuple[Kind, ...] = ("member", "event", "attributes")


def queue_of(*specs: tuple[Kind, str], queued_at: float = 0.0) -> ChangeQueue:
    """A queue of changes ``(kind, member key)``, each record saying its place."""
    queue = ChangeQueue()
    for number, (kind, key) in enumerate(specs):
        record = {"n": number, f"a{number}": number} if kind == "attributes" else {"n": number}
        queue.push(Change(kind, key, record, submission=number, queued_at=queued_at))
    return queue


changes_st = st.lists(
    st.tuples(st.sampled_from(KIND_NAMES), st.sampled_from(["m1", "m2", "m3", "m4"])),
    max_size=60,
)


# --- which changes a window takes ------------------------------------------------------------


def test_a_members_change_of_another_kind_waits_for_the_next_window() -> None:
    """m1's event waits behind its member record; m2 still goes in the same window."""
    queue = queue_of(("member", "m1"), ("event", "m1"), ("member", "m2"))
    window = plan_window(queue, flush_at=75, cap=75)
    assert [c.key for c in window.sends] == ["m1", "m2"]
    assert window.merges == ()
    assert [(c.kind, c.key) for c in window.held] == [("event", "m1")]
    taken = queue.take(window)
    assert [c.key for c in taken] == ["m1", "m2"]
    assert [(c.kind, c.key) for c in queue] == [("event", "m1")]
    assert queue.kinds == Counter({"event": 1, "member": 0})


def test_same_kind_changes_of_one_member_merge_latest_value_winning() -> None:
    """Two member records merge into one (the later wins); attribute updates are united."""
    queue = queue_of(("member", "m1"), ("attributes", "m2"), ("member", "m1"), ("attributes", "m2"))
    taken = queue.take(plan_window(queue, flush_at=75, cap=75))
    by_key = {(c.kind, c.key): c for c in taken}
    assert len(taken) == 2
    assert by_key[("member", "m1")].record == {"n": 2}
    assert by_key[("member", "m1")].submissions == [0, 2]
    assert by_key[("attributes", "m2")].record == {"n": 3, "a1": 1, "a3": 3}
    assert not queue


def test_events_never_merge() -> None:
    """Each event is its own send, in order."""
    queue = queue_of(("event", "m1"), ("event", "m1"), ("event", "m1"))
    window = plan_window(queue, flush_at=75, cap=75)
    assert window.merges == ()
    assert [c.record["n"] for c in window.sends] == [0, 1, 2]


def test_a_size_trigger_takes_whole_requests_only() -> None:
    """With flush_at 2: two whole member requests go, the odd member and lone event wait."""
    queue = queue_of(*[("member", f"m{n}") for n in range(5)], ("event", "e1"))
    window = plan_window(queue, flush_at=2, cap=10, whole_requests_only=True)
    assert [c.key for c in window.sends] == ["m0", "m1", "m2", "m3"]
    assert window.scanned == 4  # m4 and e1 stay queued, unlooked-at
    assert not window.held


def test_a_size_trigger_that_takes_nothing_takes_what_it_can() -> None:
    """Every whole request waits behind another kind: the window takes what it can."""
    queue = queue_of(("member", "m1"), ("event", "m1"), ("event", "m1"))
    window = plan_window(queue, flush_at=2, cap=10, whole_requests_only=True)
    assert [(c.kind, c.key) for c in window.sends] == [("member", "m1")]


def test_whole_requests_rounds_down_per_kind_within_the_cap() -> None:
    """Whole requests of 75 per kind, at most the cap; a kind under a request is left out."""
    assert whole_requests({"member": 160, "event": 74}, cap=150, flush_at=75) == {"member": 150}
    assert whole_requests({"member": 151, "event": 80}, cap=300, flush_at=75) == {
        "member": 150,
        "event": 75,
    }


def test_the_scan_stops_after_scan_factor_times_the_window() -> None:
    """A queue of one blocked member does not make a window look at all of it."""
    queue = queue_of(("member", "m1"), *[("event", "m1")] * 50)
    window = plan_window(queue, flush_at=1, cap=2)
    assert window.scanned == 2 * SCAN_FACTOR
    assert len(window.sends) == 1


@given(
    changes_st,
    st.integers(min_value=1, max_value=8),
    st.integers(min_value=1, max_value=4),
    st.booleans(),
)
def test_every_queued_change_is_taken_once_or_stays_queued_in_order(
    specs: list[tuple[Kind, str]], flush_at: int, in_flight: int, whole: bool
) -> None:
    """Nothing lost or doubled: taken (merged) or still queued, the queue's order kept."""
    queue = queue_of(*specs)
    before = list(queue)
    window = plan_window(
        queue, flush_at=flush_at, cap=flush_at * in_flight, whole_requests_only=whole
    )
    placed = [*window.sends, *(later for _, later in window.merges), *window.held]
    assert window.scanned == len(placed)
    assert sorted(map(id, placed)) == sorted(map(id, before[: window.scanned]))
    held_ids = {id(c) for c in window.held}
    taken = queue.take(window)
    rest = list(queue)
    assert (
        rest
        == [c for c in before[: window.scanned] if id(c) in held_ids] + before[window.scanned :]
    )
    assert queue.kinds == Counter(c.kind for c in rest) | Counter()
    assert sum(len(c.submissions) for c in taken) + len(rest) == len(before)
    if before:
        assert taken  # a window always makes progress


@given(
    changes_st,
    st.integers(min_value=1, max_value=8),
    st.integers(min_value=1, max_value=4),
    st.booleans(),
)
def test_a_window_keeps_each_members_order_and_merges_only_its_own_kind(
    specs: list[tuple[Kind, str]], flush_at: int, in_flight: int, whole: bool
) -> None:
    """Per member: one kind per window, the sent changes before any that wait; merges only
    of one member's member records or attribute updates."""
    queue = queue_of(*specs)
    before = list(queue)
    window = plan_window(
        queue, flush_at=flush_at, cap=flush_at * in_flight, whole_requests_only=whole
    )
    sent = {id(c) for c in window.sends} | {id(later) for _, later in window.merges}
    for key in {c.key for c in before}:
        mine = [c for c in before if c.key == key]
        flags = [id(c) in sent for c in mine]
        assert flags == sorted(flags, reverse=True)  # a prefix of the member's changes
        assert len({c.kind for c in mine if id(c) in sent}) <= 1
    for send, later in window.merges:
        assert (send.kind, send.key) == (later.kind, later.key)
        assert send.kind != "event"
        assert before.index(send) < before.index(later)
        assert id(send) in {id(c) for c in window.sends}
    firsts = [(c.kind, c.key) for c in window.sends if c.kind != "event"]
    assert len(firsts) == len(set(firsts))


@given(
    changes_st,
    st.integers(min_value=1, max_value=8),
    st.integers(min_value=1, max_value=4),
)
def test_a_window_respects_the_cap_and_the_whole_requests_rule(
    specs: list[tuple[Kind, str]], flush_at: int, in_flight: int
) -> None:
    """At most ``cap`` sends; on a size trigger, no kind beyond its whole requests (unless
    nothing whole could go, when the window is the plain one)."""
    queue = queue_of(*specs)
    cap = flush_at * in_flight
    window = plan_window(queue, flush_at=flush_at, cap=cap, whole_requests_only=True)
    assert len(window.sends) <= cap
    assert window.scanned <= cap * SCAN_FACTOR
    limits = whole_requests(queue.kinds, cap, flush_at)
    per_kind = Counter(c.kind for c in window.sends)
    within = all(count <= limits.get(kind, 0) for kind, count in per_kind.items())
    assert within or window == plan_window(queue, flush_at=flush_at, cap=cap)


# --- when a window goes ------------------------------------------------------------------------


def test_a_window_waits_for_its_interval() -> None:
    """Under flush_at and younger than flush_interval: wait for the rest of the interval."""
    queue = queue_of(("member", "m1"), queued_at=0.0)
    assert next_step(queue, now=0.125, flush_interval=0.5, flush_at=75) == Wait(0.375)
    assert next_step(queue, now=0.5, flush_interval=0.5, flush_at=75) == Send(False)


def test_a_full_request_goes_at_once_as_whole_requests() -> None:
    """A kind that fills a request sends now, whole requests only."""
    queue = queue_of(("member", "m1"), ("member", "m2"), queued_at=10.0)
    assert next_step(queue, now=10.0, flush_interval=0.5, flush_at=2) == Send(True)


def test_a_flush_close_or_waiting_caller_shortens_the_wait() -> None:
    """flush and close send now; a caller waiting for an outcome makes it a short linger."""
    queue = queue_of(("member", "m1"), queued_at=0.0)
    assert next_step(queue, now=0.0, flush_interval=0.5, flush_at=75, flushing=True) == Send(False)
    assert next_step(queue, now=0.0, flush_interval=0.5, flush_at=75, closing=True) == Send(False)
    step = next_step(queue, now=0.0, flush_interval=0.5, flush_at=75, lingering=True)
    assert step == Wait(LINGER)


def test_a_pause_after_a_failure_holds_windows_back_unless_closing() -> None:
    """While paused, even a full request waits; a close does not."""
    queue = queue_of(("member", "m1"), ("member", "m2"), queued_at=0.0)
    paused = next_step(queue, now=10.0, flush_interval=0.5, flush_at=1, paused_until=12.0)
    assert paused == Wait(2.0)
    closing = next_step(
        queue, now=10.0, flush_interval=0.5, flush_at=1, paused_until=12.0, closing=True
    )
    assert closing == Send(False)


@given(
    st.floats(min_value=0, max_value=100),
    st.floats(min_value=0, max_value=10),
    st.floats(min_value=0, max_value=100),
    st.booleans(),
)
def test_next_step_never_waits_past_the_window_time_or_the_pause(
    now: float, interval: float, paused_until: float, lingering: bool
) -> None:
    """A wait ends by the later of the window's due time and the pause, and is positive."""
    queue = queue_of(("event", "m1"), queued_at=0.0)
    step = next_step(
        queue,
        now=now,
        flush_interval=interval,
        flush_at=75,
        paused_until=paused_until,
        lingering=lingering,
    )
    if isinstance(step, Wait):
        assert step.seconds > 0
        assert now + step.seconds <= max(interval, paused_until) + 1e-9


# --- what a failed change does next -------------------------------------------------------------


def failed(
    stage: str = "transport", *, retryable: bool = True, outcome: str = "failed"
) -> RecordOutcome:
    """A failed outcome of ``stage``."""
    failure = RecordFailure(0, "m1", stage, "boom", retryable, outcome=outcome)  # type: ignore[arg-type]
    return RecordOutcome("failed", "m1", failure=failure)


def test_decide_retries_tries_again_what_may_pass_while_young() -> None:
    """A 5xx of a young change goes again; a validation failure and an old change stand."""
    young, old = (
        Change("member", "m1", {}, queued_at=100.0),
        Change("member", "m2", {}, queued_at=0.0),
    )
    bad = Change("member", "m3", {}, queued_at=100.0)
    retries = decide_retries(
        "member",
        [young, old, bad],
        [failed(), failed(), failed("validation", retryable=False)],
        now=101.0,
        max_retry_time=60.0,
        retry=True,
        closed=False,
    )
    assert (retries.final, retries.again, retries.kept) == ((1, 2), (0,), ())


def test_decide_retries_when_closed_keeps_only_spooled_changes() -> None:
    """Closed: a spooled change is kept for the next sender, a memory-only one fails."""
    spooled, memory = (
        Change("member", "m1", {}, queued_at=0.0),
        Change("member", "m2", {}, queued_at=0.0),
    )
    spooled.spool_ids.append(7)
    retries = decide_retries(
        "member", [spooled, memory], [failed(), failed()], now=1.0, max_retry_time=60.0,
        retry=True, closed=True,
    )  # fmt: skip
    assert (retries.final, retries.again, retries.kept) == ((1,), (), (0,))


def test_decide_retries_never_resends_an_event_whose_answer_was_lost() -> None:
    """An event Braze may have recorded is final (a resend would record it twice)."""
    event = Change("event", "m1", {}, queued_at=0.0)
    retries = decide_retries(
        "event", [event], [failed(outcome="unknown")], now=1.0, max_retry_time=60.0,
        retry=True, closed=False,
    )  # fmt: skip
    assert retries.final == (0,)


@given(st.lists(st.integers(min_value=0, max_value=50), min_size=1, max_size=10))
def test_pause_before_follows_the_most_tried_change(attempts: list[int]) -> None:
    """The backoff is the most tried change's; changes never tried only wait a moment."""
    changes = []
    for count in attempts:
        change = Change("member", "m", {})
        change.attempts = count
        changes.append(change)
    pause = pause_before(changes)
    assert 0 < pause <= 30.0
    if max(attempts) == 0:
        assert pause < 0.5
