"""The background sender: coalescing, per-member order, outcomes, bounds, spool, fork, asyncio."""

from __future__ import annotations

import asyncio
import itertools
import json
import multiprocessing
import os
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

import antavo_braze as ab
from antavo_braze.testing import FakeBraze

from .conftest import in_threads
from .servers import free_port

MAPPING = {"fields": [{"loyalty_field": "score", "remote_field": "points", "type": "number"}],
           "events": [{"action": "*"}]}  # fmt: skip


@pytest.fixture
def sender(fake: FakeBraze) -> Iterator[ab.BackgroundSender]:
    """A sender on a MemoryDeadLetter Syncer wired to the fake."""
    with (
        fake.client() as client,
        ab.BackgroundSender(
            ab.Syncer(client, MAPPING, dead_letter=ab.MemoryDeadLetter()), flush_interval=0.05
        ) as background,
    ):
        yield background


def test_changes_from_many_threads_are_coalesced(fake: FakeBraze) -> None:
    """5,000 changes from 16 threads take about 5,000 / 75 requests on a few kept-alive
    connections, every one succeeded."""
    fake.latency = 0.03
    submissions: list[ab.Submission] = []
    with fake.client() as client, ab.BackgroundSender(ab.Syncer(client, MAPPING)) as sender:

        def work(thread: int) -> None:
            for i in range(313):
                submissions.append(sender.submit_member({"id": f"m{thread}-{i}", "score": i}))

        in_threads(work, 16)
        assert sender.flush(timeout=60)
        stats = sender.stats()
    assert len(submissions) == 5008
    assert {s.result(0).status for s in submissions} == {"succeeded"}
    assert len(fake.profiles) == 5008
    assert len(fake.requests) <= 1.2 * -(-5008 // 75)
    assert stats.succeeded == 5008
    assert stats.requests == len(fake.requests)
    assert stats.queued == stats.in_flight == 0
    assert fake.connections <= 4  # the worker's keep-alive connections, not one per caller


def test_busy_members_end_with_their_last_values_and_never_overlap(fake: FakeBraze) -> None:
    """16 threads x 125 changes to 4 members: each ends with its last submitted value; no
    request ever overlapped another for the same member."""
    fake.latency = 0.005
    order = threading.Lock()
    counter = itertools.count()
    last: dict[str, int] = {}
    mapping = {"fields": [{"loyalty_field": "score", "remote_field": "points", "type": "number"}]}
    with (
        fake.client(max_in_flight=8) as client,
        ab.BackgroundSender(ab.Syncer(client, mapping), flush_interval=0.01, flush_at=3) as sender,
    ):

        def work(thread: int) -> None:
            for i in range(125):
                member = f"busy-{(thread + i) % 4}"
                with order:  # submission order is the counter's order
                    value = next(counter)
                    sender.submit_member({"id": member, "score": value})
                    last[member] = value
                if i % 10 == 0:
                    sender.submit_attributes(member, {"touched": True})

        in_threads(work, 16)
        assert sender.flush(timeout=60)
    assert {m: fake.profiles[m]["points"] for m in last} == last
    assert fake.overlapping_requests == 0
    assert len(fake.requests) > 4  # several windows really went out


def test_events_of_a_member_keep_their_order(sender: ab.BackgroundSender, fake: FakeBraze) -> None:
    """A member's events reach Braze in the order they were submitted."""
    for n in range(300):
        sender.submit_event({"customer": "m1", "action": "point_add", "data": {"n": n},
                             "timestamp": 1_800_000_000 + n})  # fmt: skip
        if n % 50 == 0:
            sender.submit_member({"id": "m1", "score": n})
    assert sender.flush(timeout=30)
    assert [e["properties"]["n"] for e in fake.events] == list(range(300))
    assert fake.profiles["m1"]["points"] == 250


def test_each_submission_gets_its_own_outcome(fake: FakeBraze) -> None:
    """Succeeded, skipped, failed at Braze, and refused at submit: each says so, failures
    are in the dead letter."""
    fake.block("blocked")
    letters = ab.MemoryDeadLetter()
    with (
        fake.client() as client,
        ab.BackgroundSender(ab.Syncer(client, MAPPING, dead_letter=letters)) as sender,
    ):
        ok = sender.submit_member({"id": "a", "score": 1})
        empty = sender.submit_member({"id": "b", "name": "no mapped field"})
        blocked = sender.submit_member({"id": "blocked", "score": 2})
        no_id = sender.submit_member({"score": 3})
        bad = sender.submit_attributes("c", {"when": float("nan")})
        event = sender.submit_event({"customer": "a", "action": "opt_in"})
        assert no_id.done()
        assert bad.done()
        assert sender.flush(timeout=30)
    assert ok.result(0).status == "succeeded"
    assert ok.result(0).record_id == "a"
    assert empty.result(0).status == "skipped"
    assert empty.result(0).reason == "no mapped field present"
    assert blocked.result(0).status == "failed"
    assert blocked.result(0).stage == "braze"
    assert no_id.result(0).stage == "validation"
    assert "id" in (no_id.result(0).reason or "")
    assert bad.result(0).stage == "validation"
    assert not bad.result(0).ok
    assert event.result(0).ok
    assert sorted(str(e.record_id) for e in letters.entries) == ["None", "blocked", "c"]


def test_a_full_queue_raises_or_blocks_never_drops(fake: FakeBraze) -> None:
    """on_full='raise' raises QueueFull; 'block' waits, and its timeout raises QueueFull."""
    fake.latency = 0.5
    with fake.client() as client:
        syncer = ab.Syncer(client, MAPPING)
        with ab.BackgroundSender(syncer, max_queue=3, on_full="raise", flush_at=1) as sender:
            accepted = [sender.submit_member({"id": f"r{n}", "score": n}) for n in range(3)]
            with pytest.raises(ab.QueueFull):
                sender.submit_member({"id": "r-too-many", "score": 0})
            assert sender.flush(timeout=30)
            assert all(s.result(0).ok for s in accepted)
        with ab.BackgroundSender(syncer, max_queue=2, flush_at=1) as sender:
            sender.submit_member({"id": "x1", "score": 1})
            sender.submit_member({"id": "x2", "score": 2})
            with pytest.raises(ab.QueueFull, match="within"):
                sender.submit_member({"id": "x3", "score": 3}, timeout=0.05)
            late = sender.submit_member({"id": "x4", "score": 4}, timeout=30)  # waits for room
            assert late.result(30).ok
    assert "x3" not in fake.profiles


def test_closed_sender_refuses_and_bad_settings_are_refused(fake: FakeBraze) -> None:
    """A closed sender raises ConfigurationError; nonsense settings too."""
    with fake.client() as client:
        syncer = ab.Syncer(client, MAPPING)
        sender = ab.BackgroundSender(syncer)
        sender.submit_member({"id": "a", "score": 1})
        sender.close()
        assert fake.profiles["a"]["points"] == 1  # close flushed it
        with pytest.raises(ab.ConfigurationError, match="closed"):
            sender.submit_member({"id": "b", "score": 1})
        for bad in ({"flush_at": 0}, {"flush_at": 76}, {"max_queue": 0}, {"on_full": "drop"}):
            with pytest.raises(ab.ConfigurationError):
                ab.BackgroundSender(syncer, **bad)  # type: ignore[arg-type]
        with pytest.raises(ab.ConfigurationError, match="client"):
            ab.BackgroundSender(ab.Syncer(None, MAPPING))


def test_close_without_spool_dead_letters_what_it_could_not_send(fake: FakeBraze) -> None:
    """A close whose flush times out fails the unsent changes as not sent, into the dead
    letter, and says how many were in flight."""
    fake.latency = 1.0
    letters = ab.MemoryDeadLetter()
    with fake.client() as client:
        sender = ab.BackgroundSender(
            ab.Syncer(client, MAPPING, dead_letter=letters), flush_at=1, flush_interval=0
        )
        first = sender.submit_member({"id": "a", "score": 1})
        time.sleep(0.2)  # the first window is in flight
        rest = [sender.submit_member({"id": f"b{n}", "score": n}) for n in range(3)]
        sender.close(timeout=0.1)
        assert first.result(10).ok
        stats = sender.stats()
        assert (stats.queued, stats.in_flight, stats.failed) == (0, 0, 3)
    assert [s.result(0).stage for s in rest] == ["interrupted"] * 3
    assert sorted(e.record_id for e in letters.entries) == ["b0", "b1", "b2"]
    assert all(e.retryable and e.outcome == "not_sent" for e in letters.entries)


def test_credentials_refused_fail_the_window_into_the_dead_letter(fake: FakeBraze) -> None:
    """A 401 fails the window's records (retryable: fix the key, replay), never the sender."""
    letters = ab.MemoryDeadLetter()
    with (
        ab.BrazeClient(fake.url, "wrong-key") as client,
        ab.BackgroundSender(ab.Syncer(client, MAPPING, dead_letter=letters)) as sender,
    ):
        submission = sender.submit_member({"id": "a", "score": 1})
        assert sender.flush(timeout=30)
        outcome = submission.result(0)
    assert outcome.stage == "braze"
    assert "HTTP 401" in (outcome.reason or "")
    assert letters.entries[0].retryable
    assert "wrong-key" not in json.dumps([str(e) for e in letters.entries])


def test_state_store_with_sender(fake: FakeBraze, tmp_path: Path) -> None:
    """With a state store, an unchanged member submitted again is skipped."""
    with fake.client() as client:
        store = ab.SqliteStateStore(tmp_path / "state.db")
        syncer = ab.Syncer(client, MAPPING, state=store)
        with ab.BackgroundSender(syncer, flush_interval=0.01) as sender:

            def work(thread: int) -> None:
                for i in range(50):
                    sender.submit_member({"id": f"m{thread}-{i}", "score": i})

            in_threads(work, 16)
            assert sender.flush(timeout=30)
            again = sender.submit_member({"id": "m3-7", "score": 7})
            assert sender.flush(timeout=30)
    assert again.result(0).reason == "unchanged since Braze last accepted it"


class FlakyStore(ab.MemoryStateStore):
    """A state store whose first read fails: a bug anywhere in a window."""

    def __init__(self) -> None:
        super().__init__()
        self.failures = 1

    def get_many(self, ids: Sequence[str]) -> dict[str, dict[str, str]]:
        if self.failures:
            self.failures -= 1
            raise RuntimeError("store exploded")
        return super().get_many(ids)


def test_an_unexpected_error_fails_its_window_not_the_sender(fake: FakeBraze) -> None:
    """A window that hits a bug fails its records (dead letter) and the next one is sent."""
    letters = ab.MemoryDeadLetter()
    with (
        fake.client() as client,
        ab.BackgroundSender(
            ab.Syncer(client, MAPPING, dead_letter=letters, state=FlakyStore())
        ) as sender,
    ):
        first = sender.submit_member({"id": "a", "score": 1})
        assert sender.flush(timeout=30)
        second = sender.submit_member({"id": "b", "score": 2})
        assert sender.flush(timeout=30)
        stats = sender.stats()
    assert first.result(0).stage == "transport"
    assert "store exploded" in (first.result(0).reason or "")
    assert second.result(0).ok
    assert [e.record_id for e in letters.entries] == ["a"]
    assert (stats.failed, stats.succeeded, stats.queued, stats.in_flight) == (1, 1, 0, 0)


def test_asubmit_never_blocks_the_event_loop(fake: FakeBraze, tmp_path: Path) -> None:
    """Thousands of asubmit calls (spooled) while another coroutine keeps being scheduled."""
    ticks = 0

    async def ticker(stop: asyncio.Event) -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0)

    async def main(sender: ab.BackgroundSender) -> list[ab.RecordOutcome]:
        stop = asyncio.Event()
        task = asyncio.create_task(ticker(stop))
        submissions = []
        for n in range(2000):
            submissions.append(await sender.asubmit_member({"id": f"a{n}", "score": n}))
        submissions.append(await sender.asubmit_event({"customer": "a1", "action": "opt_in"}))
        submissions.append(await sender.asubmit_attributes("a2", {"vip": True}))
        ticked_while_submitting = ticks
        outcomes = [await s.aresult() for s in submissions]
        stop.set()
        await task
        assert ticked_while_submitting >= 2000  # it ran between (nearly) every submission
        return outcomes

    with (
        fake.client() as client,
        ab.BackgroundSender(ab.Syncer(client, MAPPING), spool=tmp_path / "spool.db") as sender,
    ):
        outcomes = asyncio.run(main(sender))
    assert {o.status for o in outcomes} == {"succeeded"}
    assert fake.profiles["a2"]["vip"] is True


def test_spool_is_private_and_emptied(fake: FakeBraze, tmp_path: Path) -> None:
    """The spool file is created 0600 and holds nothing once every outcome is known."""
    path = tmp_path / "spool.db"
    with (
        fake.client() as client,
        ab.BackgroundSender(ab.Syncer(client, MAPPING), spool=path) as sender,
    ):
        for n in range(100):
            sender.submit_member({"id": f"s{n}", "score": n})
        assert sender.flush(timeout=30)
        assert sender.spool is not None
        assert sender.spool.count() == 0
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert len(fake.profiles) == 100


def test_spooled_changes_that_fail_end_in_the_dead_letter(fake: FakeBraze, tmp_path: Path) -> None:
    """A spooled change Braze refuses goes to the dead letter and leaves the spool."""
    fake.block("refused")
    letters = ab.MemoryDeadLetter()
    with (
        fake.client() as client,
        ab.BackgroundSender(
            ab.Syncer(client, MAPPING, dead_letter=letters), spool=tmp_path / "spool.db"
        ) as sender,
    ):
        refused = sender.submit_member({"id": "refused", "score": 1})
        accepted = sender.submit_member({"id": "fine", "score": 2})
        assert sender.flush(timeout=30)
        assert sender.spool is not None
        assert sender.spool.count() == 0
    assert refused.result(0).stage == "braze"
    assert accepted.result(0).ok
    assert [e.record_id for e in letters.entries] == ["refused"]


SPOOLED_PRODUCER = """
import sys
import antavo_braze as ab
url, spool, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
client = ab.BrazeClient(url, "test-key")
syncer = ab.Syncer(client, {"fields": [{"loyalty_field": "score", "remote_field": "points"}]})
sender = ab.BackgroundSender(syncer, spool=spool, flush_at=5, flush_interval=0.01)
for n in range(count):
    sender.submit_member({"id": f"k{n}", "score": n})
    print(n, flush=True)  # accepted: on disk
sender.flush()
"""


def test_kill_9_mid_stream_then_a_new_sender_delivers_everything(
    fake: FakeBraze, tmp_path: Path
) -> None:
    """kill -9 while submitting against a slow Braze; a new sender on the spool sends every
    submission the killed process had accepted."""
    fake.latency = 0.2
    spool = tmp_path / "spool.db"
    producer = subprocess.Popen(
        [sys.executable, "-c", SPOOLED_PRODUCER, fake.url, str(spool), "400"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert producer.stdout is not None
    accepted = []
    for line in producer.stdout:
        accepted.append(int(line))
        if len(accepted) == 150:
            break
    producer.send_signal(signal.SIGKILL)
    rest, _ = producer.communicate(timeout=30)
    accepted += [int(n) for n in rest.split()]
    assert producer.returncode == -signal.SIGKILL
    sent_before = len(fake.profiles)
    assert sent_before < len(accepted)  # the kill really left work behind
    fake.latency = 0.0
    with (
        fake.client() as client,
        ab.BackgroundSender(ab.Syncer(client, MAPPING), spool=spool) as sender,
    ):
        assert sender.flush(timeout=60)
        assert sender.stats().succeeded >= len(accepted) - sent_before
    missing = [n for n in accepted if f"k{n}" not in fake.profiles]
    assert missing == []


def test_exit_hook_flushes_pending_work(fake: FakeBraze) -> None:
    """A script that submits and exits without flushing still delivers (the exit hook)."""
    code = textwrap.dedent(
        """
        import sys
        import antavo_braze as ab
        client = ab.BrazeClient(sys.argv[1], "test-key")
        syncer = ab.Syncer(client, {"fields": [{"loyalty_field": "s", "remote_field": "s"}]})
        sender = ab.BackgroundSender(syncer, flush_interval=60)
        for n in range(10):
            sender.submit_member({"id": f"e{n}", "s": n})
        """
    )
    subprocess.run([sys.executable, "-c", code, fake.url], check=True, timeout=60)
    assert sorted(fake.profiles) == [f"e{n}" for n in range(10)]


def _pool_submit(n: int) -> str:
    outcome = _POOL_SENDER.submit_member({"id": f"child-{n}", "score": n}).result(timeout=30)
    return outcome.status


_POOL_SENDER: ab.BackgroundSender


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_forked_pool_workers_deliver_after_the_parent_used_the_sender(fake: FakeBraze) -> None:
    """A multiprocessing pool forked after the parent used the sender: each child sends its
    own submissions (its own worker thread and connections), the parent's are not resent."""
    global _POOL_SENDER
    with fake.client() as client, ab.BackgroundSender(ab.Syncer(client, MAPPING)) as sender:
        _POOL_SENDER = sender
        assert sender.submit_member({"id": "parent", "score": 1}).result(timeout=30).ok
        with multiprocessing.get_context("fork").Pool(3) as pool:
            statuses = pool.map(_pool_submit, range(12))
        assert sender.submit_member({"id": "parent-after", "score": 2}).result(30).ok
    assert statuses == ["succeeded"] * 12
    assert {f"child-{n}" for n in range(12)} <= set(fake.profiles)
    received = [o["external_id"] for r in fake.requests for o in r["body"]["attributes"]]
    assert received.count("parent") == 1


GUNICORN_APP = """
import os
import antavo_braze as ab

client = ab.BrazeClient(os.environ["BRAZE_REST_ENDPOINT"], "test-key")
syncer = ab.Syncer(client, {"fields": [{"loyalty_field": "score", "remote_field": "points"}]})
sender = ab.BackgroundSender(syncer, flush_interval=0.01)
assert sender.submit_member({"id": "preloaded", "score": 0}).result(timeout=30).ok


def app(environ, start_response):
    member = environ["PATH_INFO"].strip("/")
    outcome = sender.submit_member({"id": member, "score": os.getpid()}).result(timeout=30)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [outcome.status.encode()]
"""


def test_gunicorn_preload_workers_deliver(fake: FakeBraze, tmp_path: Path) -> None:
    """A gunicorn --preload app whose master used the sender: both workers deliver."""
    pytest.importorskip("gunicorn")
    (tmp_path / "service.py").write_text(GUNICORN_APP)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--preload", "--workers", "2", "--bind",
         f"127.0.0.1:{port}", "--chdir", str(tmp_path), "service:app"],
        env={**os.environ, "BRAZE_REST_ENDPOINT": fake.url},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        statuses = [http_get(port, f"/via-worker-{n}") for n in range(20)]
    finally:
        server.terminate()
        _, errors = server.communicate(timeout=30)
    assert statuses == ["succeeded"] * 20, errors
    assert {f"via-worker-{n}" for n in range(20)} <= set(fake.profiles)
    assert [o["external_id"] for r in fake.requests for o in r["body"]["attributes"]].count(
        "preloaded"
    ) == 1


def http_get(port: int, path: str, deadline: float = 30.0) -> str:
    """GET a path from a server that may still be starting; the body as text."""
    import urllib3

    end = time.monotonic() + deadline
    with urllib3.PoolManager(retries=False) as http:
        while True:
            try:
                return str(http.request("GET", f"http://127.0.0.1:{port}{path}").data.decode())
            except urllib3.exceptions.HTTPError:
                if time.monotonic() > end:
                    raise
                time.sleep(0.1)
