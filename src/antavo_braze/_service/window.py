"""The background sender's decisions, as pure functions: when the next window goes
(:func:`next_step`), which queued changes it takes (:func:`plan_window`), and what a failed
change does next (:func:`decide_retries`, :func:`retry_delay`). No threads, no I/O, no clock
reads (the caller passes ``now``): the worker (``worker.py``) applies what these decide.

The window rules: in queue order, a window takes a member's changes only while they are of one
kind (a member's later change of another kind, and everything after it for that member, waits
for the next window); two member records or two attribute updates of one member merge, the
latest value winning; events keep their order. On a size trigger only whole requests of each
kind go (each kind is one request body), so mixed kinds never go out as half-full requests.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

from attrs import frozen

from .._run.report import RecordOutcome

__all__ = [
    "KINDS",
    "Change",
    "ChangeQueue",
    "Kind",
    "Retries",
    "Send",
    "Wait",
    "Window",
    "by_kind",
    "decide_retries",
    "may_retry",
    "next_step",
    "pause_before",
    "plan_window",
    "retry_delay",
    "units",
    "whole_requests",
]

Kind = Literal["member", "event", "attributes"]
KINDS: tuple[Kind, ...] = ("member", "attributes", "event")  # the order of a window's sends
SCAN_FACTOR = 4  # a window looks at most this many times its size of queued changes
RETRY_DELAY_MAX = 30.0  # seconds between tries, at most: a recovered Braze is used soon
BUSY_WAIT = 0.05  # seconds before a member another process is sending is tried again
LINGER = 0.005  # seconds a window waits for company while a caller waits for an outcome


class Change:
    """A queued change: what to send for which member (``key``), and who waits for it
    (``submissions``: opaque to the planner)."""

    __slots__ = (
        "attempts", "context", "key", "kind", "queued_at", "record", "seq", "spool_ids",
        "submissions",
    )  # fmt: skip

    def __init__(
        self,
        kind: Kind,
        key: str,
        record: Any,
        submission: Any = None,
        seq: int = 0,
        queued_at: float | None = None,
    ) -> None:
        self.kind = kind
        self.seq = seq  # its place among every process's changes (RedisOrder), 0: none
        self.key = key
        self.record = record
        self.submissions: list[Any] = [submission] if submission is not None else []
        self.spool_ids: list[int] = []
        self.queued_at = time.monotonic() if queued_at is None else queued_at
        self.context: Any = None  # the submitter's trace context, when tracing
        self.attempts = 0  # windows that failed it and could be tried again

    def __repr__(self) -> str:
        return f"Change({self.kind}, {self.key!r}, seq={self.seq})"

    def absorb(self, later: Change) -> None:
        """Merge a later change of the same member and kind: the latest value wins."""
        if self.kind == "attributes":
            self.record = {**self.record, **later.record}
        else:
            self.record = later.record
        self.submissions.extend(later.submissions)
        self.spool_ids.extend(later.spool_ids)
        if self.context is None:
            self.context = later.context
        self.seq = max(self.seq, later.seq)


def units(change: Change) -> int:
    """How many submitted changes a (possibly merged) queued change stands for."""
    return max(len(change.submissions), len(change.spool_ids))


@frozen
class Window:
    """What the next window takes from the head of the queue: of the first ``scanned``
    queued changes, each is one of ``sends`` (in queue order), merged into an earlier send of
    its member and kind (``merges``: ``(send, later change)`` pairs, in queue order), or
    ``held`` (left at the head of the queue, in order)."""

    scanned: int
    sends: tuple[Change, ...]
    merges: tuple[tuple[Change, Change], ...]
    held: tuple[Change, ...]


class ChangeQueue:
    """The queued changes in order, with a count per kind (kept as they come and go, so a
    size trigger never counts the whole queue)."""

    __slots__ = ("_changes", "kinds")

    def __init__(self) -> None:
        self._changes: deque[Change] = deque()
        self.kinds: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._changes)

    def __iter__(self) -> Iterator[Change]:
        return iter(self._changes)

    def head(self) -> Change:
        """The oldest queued change."""
        return self._changes[0]

    def largest_kind(self) -> int:
        """How many changes the most queued kind has."""
        return max(self.kinds.values(), default=0)

    def push(self, change: Change) -> None:
        self._changes.append(change)
        self.kinds[change.kind] += 1

    def push_front(self, changes: Sequence[Change]) -> None:
        """Put ``changes`` back at the head, in their order (they are the oldest)."""
        self._changes.extendleft(reversed(changes))
        self.kinds.update(c.kind for c in changes)

    def clear(self) -> list[Change]:
        """Empty the queue; return what it held."""
        left = list(self._changes)
        self._changes.clear()
        self.kinds.clear()
        return left

    def take(self, window: Window) -> list[Change]:
        """Apply ``window``: its changes leave the queue (held ones go back to the head) and
        each member's same-kind changes merge into its first."""
        for _ in range(window.scanned):
            self.kinds[self._changes.popleft().kind] -= 1
        self.push_front(window.held)
        for send, later in window.merges:
            send.absorb(later)
        return list(window.sends)


def whole_requests(kinds: Mapping[str, int], cap: int, flush_at: int) -> dict[str, int]:
    """On a size trigger: how many changes of each kind make whole requests of ``flush_at``
    (at most ``cap`` in all of one kind); kinds with less than a request queued are left out."""
    limits = {}
    for kind, count in kinds.items():
        whole = min(count, cap) - min(count, cap) % flush_at
        if whole:
            limits[kind] = whole
    return limits


def plan_window(
    queue: ChangeQueue, *, flush_at: int, cap: int, whole_requests_only: bool = False
) -> Window:
    """The next window of ``queue`` (see the module documentation): at most ``cap`` sends,
    looking at most ``SCAN_FACTOR`` times that many changes. With ``whole_requests_only`` (a
    size trigger), only whole requests of each kind; if that takes nothing (every whole request
    waits on another kind's change), the window takes what it can."""
    limit = min(len(queue), cap)
    limits: dict[str, int] | None = None
    if whole_requests_only:
        limits = whole_requests(queue.kinds, cap, flush_at)
        limit = min(cap, sum(limits.values()))
    taken: Counter[str] = Counter()
    sends: list[Change] = []
    merges: list[tuple[Change, Change]] = []
    first_of: dict[tuple[str, str], Change] = {}  # (kind, member) -> its send in this window
    kinds: dict[str, str] = {}
    held: list[Change] = []
    blocked: set[str] = set()
    scanned = 0
    for change in queue:
        if len(sends) >= limit or scanned >= limit * SCAN_FACTOR:
            break
        scanned += 1
        key = change.key
        kind = change.kind
        if (
            key in blocked
            or kinds.get(key, kind) != kind
            or (limits is not None and taken[kind] >= limits.get(kind, 0))
        ):
            blocked.add(key)  # its earlier change goes first (or waits too)
            held.append(change)
            continue
        kinds[key] = kind
        if kind != "event":
            earlier = first_of.get((kind, key))
            if earlier is not None:
                merges.append((earlier, change))
                continue
            first_of[(kind, key)] = change
        sends.append(change)
        taken[kind] += 1
    if not sends and limits is not None:
        return plan_window(queue, flush_at=flush_at, cap=cap)
    return Window(scanned, tuple(sends), tuple(merges), tuple(held))


@frozen
class Wait:
    """Nothing is due: look again after ``seconds`` (or when woken)."""

    seconds: float


@frozen
class Send:
    """A window is due now (``whole_requests_only``: by size alone, see :func:`plan_window`)."""

    whole_requests_only: bool


def next_step(
    queue: ChangeQueue,
    *,
    now: float,
    flush_interval: float,
    flush_at: int,
    paused_until: float = 0.0,
    lingering: bool = False,
    flushing: bool = False,
    closing: bool = False,
) -> Wait | Send:
    """Whether a window of the (non-empty) ``queue`` goes now: when a kind fills a request
    (``flush_at``), when the oldest change waited ``flush_interval`` (only a short linger
    while a caller waits for an outcome), on a flush or a close; never while paused after a
    failure (``paused_until``), unless closing."""
    if now < paused_until and not closing:
        return Wait(paused_until - now)  # backing off after a failure
    interval = min(flush_interval, LINGER) if lingering else flush_interval
    due = queue.head().queued_at + interval
    by_size = queue.largest_kind() >= flush_at  # a kind's request is full
    urgent = now >= due or flushing or closing
    if by_size or urgent:
        return Send(whole_requests_only=by_size and not urgent)
    return Wait(due - now)


def by_kind(changes: Sequence[Change]) -> Iterator[tuple[Kind, list[Change]]]:
    """The changes of each kind, in order (one Syncer call per kind)."""
    for kind in KINDS:
        same = [c for c in changes if c.kind == kind]
        if same:
            yield kind, same


def may_retry(kind: str, outcome: RecordOutcome) -> bool:
    """Whether a failed change is worth sending again later: Braze or the network failed it
    and said it may succeed (a 429, a 5xx, a dropped connection) — unless it is an event that
    may already have been recorded (its answer was lost), which a resend would record twice."""
    failure = outcome.failure
    if outcome.status != "failed" or failure is None or not failure.retryable:
        return False
    if failure.stage not in ("braze", "transport"):
        return False
    return not (kind == "event" and failure.outcome == "unknown")


def retry_delay(attempts: int) -> float:
    """Seconds to wait before the next try of a change that failed ``attempts`` times:
    doubling from half a second, at most ``RETRY_DELAY_MAX``."""
    doublings = min(max(attempts - 1, 0), 10)  # 0.5 s * 2**10 is well past the cap
    return min(RETRY_DELAY_MAX, 0.5 * 2.0**doublings)


def pause_before(changes: Sequence[Change]) -> float:
    """How long to hold windows back before trying ``changes`` again: the backoff of the most
    tried one, or a moment when they only waited for another process's request."""
    attempts = max(c.attempts for c in changes)
    return retry_delay(attempts) if attempts else BUSY_WAIT


@frozen
class Retries:
    """What becomes of a sent window's changes, by position: ``final`` (the outcome stands),
    ``again`` (failed for now: a later window tries again) and ``kept`` (failed for now while
    the sender closes: left in the spool for the next sender on it)."""

    final: tuple[int, ...]
    again: tuple[int, ...]
    kept: tuple[int, ...]


def decide_retries(
    kind: str,
    changes: Sequence[Change],
    outcomes: Sequence[RecordOutcome],
    *,
    now: float,
    max_retry_time: float,
    retry: bool,
    closed: bool,
) -> Retries:
    """Which outcomes stand: a change failed in a way that may pass (:func:`may_retry`) and
    younger than ``max_retry_time`` is tried again (``retry=False``: never, e.g. refused
    credentials); once closed, only a spooled change is kept for later."""
    final: list[int] = []
    again: list[int] = []
    kept: list[int] = []
    for position, (change, outcome) in enumerate(zip(changes, outcomes, strict=True)):
        young = now - change.queued_at < max_retry_time
        if not (retry and young and may_retry(kind, outcome)):
            final.append(position)
        elif not closed:
            again.append(position)
        elif change.spool_ids:
            kept.append(position)
        else:
            final.append(position)
    return Retries(tuple(final), tuple(again), tuple(kept))
