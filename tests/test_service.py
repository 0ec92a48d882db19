"""Service mode where services really run: outages, forks, several processes on one spool,
sync_mode for job workers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import antavo_braze as ab
from antavo_braze._run.report import RecordFailure, RecordOutcome
from antavo_braze._service.window import may_retry, retry_delay
from antavo_braze.testing import FakeBraze

MAPPING = {"fields": [{"loyalty_field": "score", "remote_field": "points", "type": "number"}],
           "events": [{"action": "*"}]}  # fmt: skip
FAST_RETRY = ab.RetryPolicy(attempts=2, wait_initial=0.01, wait_max=0.05, wait_jitter=0)


def fast_client(fake: FakeBraze) -> ab.BrazeClient:
    """A client on the fake that gives up on a request quickly (the sender retries)."""
    return fake.client(retry=FAST_RETRY)


# --- retrying through outages -------------------------------------------------------------


@given(st.integers(min_value=0, max_value=10_000))
def test_retry_delay_grows_and_is_capped(attempts: int) -> None:
    """The backoff never shrinks with more attempts and never exceeds 30 s."""
    assert 0.5 <= retry_delay(attempts) <= 30.0
    assert retry_delay(attempts + 1) >= retry_delay(attempts)


@given(
    st.sampled_from(["member", "event", "attributes"]),
    st.sampled_from(["validation", "braze", "transport", "interrupted"]),
    st.booleans(),
    st.sampled_from(["failed", "unknown", "not_sent"]),
)
def test_only_failures_that_may_pass_are_retried(
    kind: str, stage: str, retryable: bool, outcome: str
) -> None:
    """Retried: retryable Braze/transport failures, never an event whose answer was lost."""
    failure = RecordFailure(0, "m", stage, "why", retryable, outcome=outcome)  # type: ignore[arg-type]
    decided = may_retry(kind, RecordOutcome("failed", "m", "why", failure))
    expected = (
        retryable
        and stage in ("braze", "transport")
        and not (kind == "event" and outcome == "unknown")
    )
    assert decided == expected
    assert not may_retry(kind, RecordOutcome("succeeded", "m"))


@pytest.mark.parametrize("status", [503, 429])
def test_an_outage_is_waited_out_not_dead_lettered(fake: FakeBraze, status: int) -> None:
    """Braze answering 503 (or 429) to everything for a while: every change is sent once it
    recovers, none goes to the dead letter."""
    letters = ab.MemoryDeadLetter()
    fake.fail_randomly(1.0, status=status)
    with (
        fast_client(fake) as client,
        ab.BackgroundSender(
            ab.Syncer(client, MAPPING, dead_letter=letters), flush_interval=0.01
        ) as sender,
    ):
        submissions = [sender.submit_member({"id": f"m{n}", "score": n}) for n in range(300)]
        deadline = time.monotonic() + 30
        while sum(fake.status_counts.values()) < 6 and time.monotonic() < deadline:
            time.sleep(0.05)
        fake.fail_randomly(0)
        assert sender.flush(timeout=60)
    assert fake.status_counts[status] >= 2  # the outage was seen, and waited out
    assert {s.result(0).status for s in submissions} == {"succeeded"}
    assert len(fake.profiles) == 300
    assert letters.entries == []


def test_a_change_older_than_max_retry_time_fails_into_the_dead_letter(fake: FakeBraze) -> None:
    """With max_retry_time=0 an outage fails changes at once, retryable, in the dead letter."""
    letters = ab.MemoryDeadLetter()
    fake.fail_randomly(1.0, status=503)
    with (
        fast_client(fake) as client,
        ab.BackgroundSender(
            ab.Syncer(client, MAPPING, dead_letter=letters), flush_interval=0.01, max_retry_time=0
        ) as sender,
    ):
        outcome = sender.submit_member({"id": "m1", "score": 1}).result(timeout=30)
    assert outcome.status == "failed"
    assert [(e.record_id, e.retryable) for e in letters.entries] == [("m1", True)]


def test_bad_retry_settings_are_refused(fake: FakeBraze, tmp_path: Path) -> None:
    """A negative max_retry_time, or sync_mode with a spool, is a ConfigurationError."""
    with fake.client() as client:
        syncer = ab.Syncer(client, MAPPING)
        with pytest.raises(ab.ConfigurationError, match="max_retry_time"):
            ab.BackgroundSender(syncer, max_retry_time=-1)
        with pytest.raises(ab.ConfigurationError, match="no spool"):
            ab.BackgroundSender(syncer, sync_mode=True, spool=tmp_path / "s.db")


# --- sync_mode ------------------------------------------------------------------------------


def test_sync_mode_sends_before_submit_returns(fake: FakeBraze) -> None:
    """sync_mode: the outcome is known when submit returns, with no worker thread started."""
    letters = ab.MemoryDeadLetter()
    with (
        fake.client() as client,
        ab.BackgroundSender(
            ab.Syncer(client, MAPPING, dead_letter=letters), sync_mode=True
        ) as sender,
    ):
        member = sender.submit_member({"id": "m1", "score": 3})
        assert member.done()
        assert member.result(0).status == "succeeded"
        assert fake.profiles["m1"]["points"] == 3
        event = sender.submit_event({"customer": "m1", "action": "opt_in", "id": "e1"})
        assert event.result(0).ok
        refused = sender.submit_member({"score": 1})
        assert refused.result(0).status == "failed"
        assert sender.submit_many("member", [{"id": "m2", "score": 1}], receipt="r") is not None
        assert sender.submit_many("member", [{"id": "m2", "score": 2}], receipt="r") is None
        stats = sender.stats()
        assert sender._worker.thread is None
    assert (stats.received, stats.succeeded, stats.failed, stats.queued) == (4, 3, 1, 0)
    assert fake.profiles["m2"]["points"] == 1
    assert [e.record_id for e in letters.entries] == [None]


def test_sync_mode_waits_out_an_outage_in_the_callers_thread(fake: FakeBraze) -> None:
    """sync_mode retries like the worker: a short outage delays the submit, never fails it."""
    fake.fail_randomly(1.0, status=503)
    threading.Timer(1.0, fake.fail_randomly, (0,)).start()
    with (
        fast_client(fake) as client,
        ab.BackgroundSender(ab.Syncer(client, MAPPING), sync_mode=True) as sender,
    ):
        assert sender.submit_member({"id": "m1", "score": 1}).result(0).status == "succeeded"
    assert fake.status_counts[503] >= 2


# --- fork -----------------------------------------------------------------------------------


def test_a_finalizer_entering_the_fork_gate_inside_its_lock_does_not_deadlock() -> None:
    """The garbage collector can close an SQLite connection (a finalizer that enters the fork
    gate) while this thread holds the gate's own lock, inside its notify_all: that must not
    wait on itself (it hung a whole test run once)."""
    from antavo_braze._fork import ForkGate

    gate = ForkGate()
    done = threading.Event()

    def finalizer_inside_the_lock() -> None:
        with gate._cond, gate.entered():  # the lock held, as during notify_all; then the finalizer
            pass
        with gate.entered():  # and the gate still counts and lets threads in afterwards
            done.set()

    thread = threading.Thread(target=finalizer_inside_the_lock, daemon=True)
    thread.start()
    thread.join(10)
    assert done.is_set()
    assert gate._inside == 0


def test_a_finalizer_entering_the_fork_gate_as_its_thread_leaves_does_not_wait() -> None:
    """A GC finalizer that enters the fork gate while its thread is leaving it (taking the
    gate's lock), with a fork waiting for that thread to leave, passes straight through (it
    hung a CI run: the finalizer waited for the fork, the fork for the thread)."""
    from antavo_braze._fork import ForkGate

    gate = ForkGate()
    armed = threading.Event()
    done = threading.Event()

    class FinalizerOnAcquire(threading.Condition):
        def __enter__(self) -> bool:
            entered = super().__enter__()
            if armed.is_set():  # the collector runs a finalizer as the lock is taken
                armed.clear()
                gate._forking = True  # a fork is waiting for this thread to leave
                with gate.entered():
                    pass
                gate._forking = False
            return entered

    gate._cond = FinalizerOnAcquire(threading.RLock())

    def leave_with_a_finalizer() -> None:
        with gate.entered():
            armed.set()
        done.set()

    thread = threading.Thread(target=leave_with_a_finalizer, daemon=True)
    thread.start()
    thread.join(10)
    assert done.is_set()
    assert gate._inside == 0


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_forks_while_a_spooled_sender_starts_and_submits_never_hang(
    fake: FakeBraze, tmp_path: Path
) -> None:
    """40 forks, each right after a spooled sender starts while other threads submit: every
    child sends its own change and exits; none hangs on a lock the parent held."""
    stop = threading.Event()
    with fake.client() as client:
        syncer = ab.Syncer(client, MAPPING)
        busy = ab.BackgroundSender(syncer, spool=tmp_path / "busy.db", flush_interval=0.001)

        def submit_forever(thread: int) -> None:
            for n in range(1_000_000):
                if stop.is_set():
                    return
                busy.submit_member({"id": f"busy-{thread}-{n % 50}", "score": n})

        threads = [threading.Thread(target=submit_forever, args=(t,)) for t in range(3)]
        for thread in threads:
            thread.start()
        children: dict[int, int] = {}
        try:
            for n in range(40):
                starting = ab.BackgroundSender(syncer, spool=tmp_path / f"s{n % 4}.db")
                pid = os.fork()
                if pid == 0:  # the child: send one change of its own, then leave at once
                    code = 3
                    try:
                        submission = starting.submit_member({"id": f"child-{n}", "score": n})
                        outcome = submission.result(20)
                        code = 0 if outcome.ok else 4
                        (tmp_path / f"child-{n}.txt").write_text(repr(outcome))
                    except BaseException as exc:
                        (tmp_path / f"child-{n}.txt").write_text(repr(exc))
                    finally:
                        os._exit(code)
                children[pid] = n
                starting.close(timeout=10)
        finally:
            stop.set()
            for thread in threads:
                thread.join()
        hung, failed = [], []
        deadline = time.monotonic() + 60
        for pid, n in children.items():
            while True:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    if os.waitstatus_to_exitcode(status) != 0:
                        failed.append(n)
                    break
                if time.monotonic() > deadline:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    hung.append(n)
                    break
                time.sleep(0.02)
        busy.close(timeout=30)
    assert hung == []
    assert failed == [], [(tmp_path / f"child-{n}.txt").read_text() for n in failed]
    assert {f"child-{n}" for n in range(40)} <= set(fake.profiles)


# --- several processes on one spool -----------------------------------------------------------

HOLDER = """
import sys, time
import antavo_braze as ab
client = ab.BrazeClient(sys.argv[1], "test-key")
sender = ab.BackgroundSender(ab.Syncer(client, {"fields": [{"loyalty_field": "score",
    "remote_field": "points"}]}), spool=sys.argv[2], flush_interval=3600, flush_at=75)
for n in range(20):
    sender.submit_member({"id": f"held-{n}", "score": n})
print("ready", flush=True)
time.sleep(3600)
"""


@contextlib.contextmanager
def submitter_writes(sender: ab.BackgroundSender) -> Iterator[list[int]]:
    """Within the block, ``[n]``: the spool's write transactions opened by submitting threads
    (not the sender's own), the real writes counted as they pass."""
    commits = [0]
    assert sender.spool is not None
    real_write = sender.spool._file.write

    def counting_write(**options):  # type: ignore[no-untyped-def]
        if threading.current_thread().name != "antavo-braze-sender":
            commits[0] += 1
        return real_write(**options)

    sender.spool._file.write = counting_write  # type: ignore[method-assign]
    try:
        yield commits
    finally:
        sender.spool._file.write = real_write  # type: ignore[method-assign]


def test_a_second_process_never_sends_a_live_owners_rows(fake: FakeBraze, tmp_path: Path) -> None:
    """Process A holds 20 spooled changes; B on the same spool — even when A's pid means
    nothing to B, as from another container — sends none of them; once A is killed, a sender
    on the spool sends all of them."""
    spool = tmp_path / "spool.db"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(HOLDER), fake.url, str(spool)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "ready"
        with sqlite3.connect(spool) as db:  # A's pid as seen from another pid namespace
            db.execute("UPDATE changes SET owner = '999999999' || substr(owner, instr(owner, ':'))")
        with (
            fake.client() as client,
            ab.BackgroundSender(ab.Syncer(client, MAPPING), spool=spool) as second,
        ):
            assert second.submit_member({"id": "own", "score": 1}).result(timeout=30).ok
            assert second.flush(timeout=30)
        assert set(fake.profiles) == {"own"}
    finally:
        holder.kill()
        holder.communicate(timeout=30)
    with (
        fake.client() as client,
        ab.BackgroundSender(ab.Syncer(client, MAPPING), spool=spool) as third,
    ):
        assert third.flush(timeout=30)
    assert set(fake.profiles) == {"own"} | {f"held-{n}" for n in range(20)}


def test_concurrent_spooled_submits_share_disk_syncs(fake: FakeBraze, tmp_path: Path) -> None:
    """16 threads submitting to a spool at once: every change is accepted and sent, in fewer
    spool transactions than submits (group commit)."""
    with (
        fake.client() as client,
        ab.BackgroundSender(
            ab.Syncer(client, MAPPING), spool=tmp_path / "spool.db", flush_interval=0.01
        ) as sender,
    ):
        assert sender.spool is not None
        barrier = threading.Barrier(16)
        submissions: list[ab.Submission] = []

        def work(thread: int) -> None:
            barrier.wait()
            for n in range(50):
                submissions.append(sender.submit_member({"id": f"m{thread}-{n}", "score": n}))

        with submitter_writes(sender) as commits:
            threads = [threading.Thread(target=work, args=(t,)) for t in range(16)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        assert sender.flush(timeout=60)
        adds = sender.stats().received
    assert adds == 800
    assert {s.result(0).status for s in submissions} == {"succeeded"}
    assert len(fake.profiles) == 800
    assert 0 < commits[0] < 800  # 800 if every submit had synced the disk on its own
    assert sender.spool.count() == 0


def test_submit_groups_writes_several_webhooks_in_one_transaction(
    fake: FakeBraze, tmp_path: Path
) -> None:
    """Four webhooks in one submit_groups: one spool transaction; per group what submit_many
    would answer (submissions, None for a redelivery, refused records in place)."""
    with (
        fake.client() as client,
        ab.BackgroundSender(ab.Syncer(client, MAPPING), spool=tmp_path / "spool.db") as sender,
    ):
        assert sender.spool is not None
        assert sender.submit_many("member", [{"id": "old", "score": 1}], receipt="seen")
        event = {"customer": "e1", "action": "opt_in", "id": "ev1"}
        with submitter_writes(sender) as commits:
            results = sender.submit_groups(
                [
                    (
                        "member",
                        [{"id": "a", "score": 1}, {"score": 2}, {"id": "b", "score": 3}],
                        "k1",
                        None,
                    ),
                    ("member", [{"id": "again", "score": 1}], "seen", None),
                    ("event", [event], None, None),
                    ("member", [{"id": "twice", "score": 1}], "k1", None),
                ],
                timeout=5,
            )
        assert sender.flush(timeout=30)
    assert commits[0] == 1
    first, redelivered, events, same_key = results
    assert isinstance(first, list)
    assert [s.result(0).status for s in first] == ["succeeded", "failed", "succeeded"]
    assert "id: missing" in (first[1].result(0).reason or "")
    assert redelivered is None
    assert same_key is None  # the second "k1" of the same batch
    assert isinstance(events, list)
    assert events[0].result(0).ok
    assert {"a", "b", "e1", "old"} <= set(fake.profiles)
    assert not {"again", "twice"} & set(fake.profiles)
    assert sender.spool.count() == 0


def test_submit_groups_answers_each_group_about_room(fake: FakeBraze, tmp_path: Path) -> None:
    """A group with no room gets QueueFull while the others are queued; a closed sender
    answers every group with ConfigurationError; without a spool, as submit_many would."""
    fake.latency = 1.0  # nothing settles (frees room) while the groups are submitted
    with fake.client() as client:
        spooled = ab.BackgroundSender(
            ab.Syncer(client, MAPPING), spool=tmp_path / "spool.db", max_queue=2, on_full="raise"
        )
        results = spooled.submit_groups(
            [
                ("member", [{"id": "m1", "score": 1}], None, None),
                ("member", [{"id": "m2", "score": 1}, {"id": "m3", "score": 1}], None, None),
                ("member", [{"id": "m4", "score": 1}], None, None),
            ]
        )
        spooled.close(timeout=30)
        closed = spooled.submit_groups([("member", [{"id": "m5", "score": 1}], None, None)])
        plain = ab.BackgroundSender(ab.Syncer(client, MAPPING))
        in_memory = plain.submit_groups(
            [
                ("member", [{"id": "p1", "score": 1}], "r", None),
                ("member", [{"id": "p2", "score": 1}], "r", None),
            ]
        )
        plain.close(timeout=30)
    assert [type(r) for r in results] == [list, ab.QueueFull, list]
    assert isinstance(closed[0], ab.ConfigurationError)
    assert isinstance(in_memory[0], list)
    assert in_memory[1] is None
    assert {"m1", "m4", "p1"} <= set(fake.profiles)
    assert not {"m2", "m3", "m5", "p2"} & set(fake.profiles)


# --- the spool stays bounded --------------------------------------------------------------


def test_receipts_expire_after_their_time_to_live(fake: FakeBraze, tmp_path: Path) -> None:
    """A redelivery within receipt_ttl is refused; after it, the same key is accepted again."""
    with (
        fake.client() as client,
        ab.BackgroundSender(ab.Syncer(client, MAPPING), spool=tmp_path / "spool.db") as sender,
    ):
        first = sender.submit_many("member", [{"id": "m1"}], receipt="k", receipt_ttl=0.3)
        again = sender.submit_many("member", [{"id": "m1"}], receipt="k", receipt_ttl=0.3)
        time.sleep(0.5)
        later = sender.submit_many("member", [{"id": "m1"}], receipt="k", receipt_ttl=0.3)
        assert sender.flush(timeout=30)
    assert first is not None
    assert again is None
    assert later is not None


def test_receipts_of_an_older_spool_are_kept(tmp_path: Path) -> None:
    """A spool written when keys were stored whole still knows them after the upgrade."""
    path = tmp_path / "spool.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE receipts (key TEXT PRIMARY KEY, created REAL NOT NULL)")
        db.execute("INSERT INTO receipts VALUES ('/antavo/members k1', ?)", (time.time(),))
    os.chmod(path, 0o600)
    spool = ab_spool(path)
    assert spool.seen("/antavo/members k1")
    assert not spool.seen("/antavo/members k2")
    spool.close()


def ab_spool(path: Path) -> object:
    """A Spool on ``path`` (the private class, for the upgrade test)."""
    from antavo_braze._service.spool import Spool

    return Spool(path)


def test_spool_file_stays_bounded(
    fake: FakeBraze, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three rounds of 1,500 webhooks with nothing left pending: no row and no expired key is
    left, and the file does not grow after the first round."""
    monkeypatch.setattr("antavo_braze._service.spool._PRUNE_EVERY", 0.0)
    path = tmp_path / "spool.db"
    sizes = []
    with (
        fake.client() as client,
        ab.BackgroundSender(ab.Syncer(client, MAPPING), spool=path, flush_interval=0.01) as sender,
    ):
        for round_number in range(3):
            for n in range(1500):
                member = {"id": f"m{n}", "score": n}
                sender.submit_many("member", [member], receipt=f"{round_number}-{n}",
                                   receipt_ttl=0.2)  # fmt: skip
            assert sender.flush(timeout=60)
            time.sleep(0.3)  # the keys expire; the next removal prunes them
            sender.submit_member({"id": "prune", "score": round_number}).result(30)
            sizes.append(sum(p.stat().st_size for p in tmp_path.glob("spool.db*")))
    with sqlite3.connect(path) as db:
        keys = db.execute("SELECT COUNT(*) FROM receipt_keys").fetchone()[0]
        rows = db.execute("SELECT COUNT(*) FROM changes").fetchone()[0]
    assert (keys, rows) == (0, 0)  # every key expired and pruned, every row settled
    assert sizes[2] <= sizes[0] * 1.2 + 100_000, sizes


# --- windows ----------------------------------------------------------------------------------


def test_mixed_kinds_go_out_in_full_requests(fake: FakeBraze) -> None:
    """750 member records and 750 events of other members, arriving interleaved in bursts
    of 75 changes: 20 full requests (10 of each kind), not each 75-change window split into
    two half-full requests."""
    with (
        fake.client() as client,
        ab.BackgroundSender(ab.Syncer(client, MAPPING), flush_interval=3600) as sender,
    ):
        for n in range(1500):
            number = n // 2
            if n % 2 == 0:
                sender.submit_member({"id": f"m{number}", "score": number})
            else:
                sender.submit_event({"customer": f"e{number}", "action": "a", "id": f"{n}"})
            if n % 75 == 74:
                time.sleep(0.1)  # the worker sees each burst on its own
        assert sender.flush(timeout=60)
        stats = sender.stats()
    assert stats.succeeded == 1500
    sizes = sorted(
        len(r["body"].get("attributes", [])) + len(r["body"].get("events", []))
        for r in fake.requests
    )
    assert sizes == [75] * 20


def test_a_member_whose_kinds_alternate_keeps_its_order(fake: FakeBraze) -> None:
    """A member's events and record updates alternating, with other traffic filling
    requests: Braze receives that member's changes in the order submitted."""
    with (
        fake.client() as client,
        ab.BackgroundSender(ab.Syncer(client, MAPPING), flush_interval=0.05) as sender,
    ):
        for n in range(300):
            sender.submit_member({"id": f"filler{n}", "score": n})
            if n % 10 == 0:
                sender.submit_event({"customer": "hot", "action": f"a{n}", "id": f"h{n}"})
                sender.submit_member({"id": "hot", "score": n})
        assert sender.flush(timeout=60)
    seen = []
    for request in fake.requests:
        body = request["body"]
        seen += [("event", e["name"]) for e in body.get("events", []) if e["external_id"] == "hot"]
        seen += [
            ("member", a["points"]) for a in body.get("attributes", []) if a["external_id"] == "hot"
        ]
    events = [name for kind, name in seen if kind == "event"]
    assert events == [f"a{n}" for n in range(0, 300, 10)]
    assert fake.profiles["hot"]["points"] == 290


def test_a_caller_waiting_for_its_outcome_is_not_held_to_the_flush_interval(
    fake: FakeBraze,
) -> None:
    """With an hour's flush_interval, callers that wait for their outcome (result, aresult)
    still get it: while someone waits, windows go out after a short linger."""
    with (
        fake.client() as client,
        ab.BackgroundSender(ab.Syncer(client, MAPPING), flush_interval=3600) as sender,
    ):
        outcomes = [sender.submit_member({"id": f"m{n}", "score": n}).result(30) for n in range(5)]

        async def handler() -> ab.RecordOutcome:
            submission = await sender.asubmit_member({"id": "async", "score": 1})
            return await asyncio.wait_for(submission.aresult(), 30)

        awaited = asyncio.run(handler())
        unawaited = sender.submit_member({"id": "later", "score": 1})
        time.sleep(0.2)
        assert not unawaited.done()  # nobody waits for it: it waits for its window
    assert [o.status for o in outcomes] == ["succeeded"] * 5
    assert awaited.status == "succeeded"
    assert unawaited.result(0).status == "succeeded"  # sent when the sender closed


@pytest.mark.slow
@pytest.mark.parametrize("status", [503, 429])
def test_a_20_second_outage_dead_letters_nothing(fake: FakeBraze, status: int) -> None:
    """20,000 changes from 8 threads while Braze answers every request with 503 (or 429) for
    20 s, with the client's default retry policy: 0 dead-lettered, all 20,000 delivered."""
    letters = ab.MemoryDeadLetter()
    fake.fail_randomly(1.0, status=status)
    recover = threading.Timer(20.0, fake.fail_randomly, (0,))
    recover.start()
    submissions: list[ab.Submission] = []
    lock = threading.Lock()
    with (
        fake.client() as client,
        ab.BackgroundSender(ab.Syncer(client, MAPPING, dead_letter=letters)) as sender,
    ):

        def work(thread: int) -> None:
            mine = [sender.submit_member({"id": f"m{thread}-{n}", "score": n}) for n in range(2500)]
            with lock:
                submissions.extend(mine)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sender.flush(timeout=240)
    recover.join()
    assert fake.status_counts[status] > 0
    assert letters.entries == []
    assert {s.result(0).status for s in submissions} == {"succeeded"}
    assert len(fake.profiles) == 20_000
