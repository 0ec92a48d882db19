"""RedisPacer and RedisStateStore against a real Redis server the suite starts itself."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import antavo_braze as ab
from antavo_braze._run.checkpoint import Settled
from antavo_braze._scale.shard import Sharded
from antavo_braze.testing import FakeBraze

from .conftest import in_threads
from .test_cli import braze_env, run, sync_args


def run_workers(code: str, count: int, *args: str) -> list[str]:
    """Run ``code`` in ``count`` Python processes at once; their stdout, one string each."""
    script = textwrap.dedent(code)
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(n), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(count)
    ]
    outputs = []
    for process in processes:
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0, err
        outputs.append(out)
    return outputs


def test_slots_are_handed_out_atomically_across_processes(redis_url: str, redis_db: Any) -> None:
    """Eight processes racing for a budget of 100 slots take exactly 100 between them."""
    outputs = run_workers(
        """
        import sys
        import antavo_braze as ab
        pacer = ab.RedisPacer(sys.argv[2], key="race", requests=100, per=60.0)
        print(sum(pacer.try_acquire() == 0 for _ in range(40)))
        """,
        8,
        redis_url,
    )
    taken = [int(out) for out in outputs]
    assert sum(taken) == 100
    assert sum(1 for n in taken if n) > 1  # several processes got some: a real race


def test_refused_slot_says_how_long_to_wait(redis_db: Any) -> None:
    """A spent burst window answers with the time until its oldest answer's slot comes back
    (``per`` after that answer); with every slot in flight, a short poll."""
    pacer = ab.RedisPacer(redis_db, key="window", requests=2, per=2.0)
    assert pacer.try_acquire() == 0
    assert pacer.try_acquire() == 0
    assert 0 < pacer.try_acquire() < 0.1  # both in flight: only an answer frees one
    pacer.observe(201, {})
    pacer.observe(201, {})
    wait = pacer.try_acquire()
    assert 1.0 < wait <= 2.0


def test_a_burst_budget_holds_where_braze_counts(redis_url: str) -> None:
    """requests=3 per 0.5 s through Redis against a fake allowing exactly that, with late
    arrivals: no 429 (as tests/test_client.py shows for the in-process pacer). Counted from
    the sends, a group would go every 0.5 s and all nine arrive together."""
    budget, window = 3, 0.5
    with FakeBraze(rate_limit=budget, rate_window=window) as fake:
        fake.inject(times=budget, delay=2 * window + 0.05)
        fake.inject(times=budget, delay=window + 0.05)
        pacer = ab.RedisPacer(redis_url, key="late", requests=budget, per=window)
        pacer.reset()
        limits = ab.BatchLimits(max_objects=1)  # one request per object
        with fake.client(max_in_flight=3 * budget, pacer=pacer, limits=limits) as client:
            result = client.track(
                attributes=[ab.AttributesObject(f"m{i}", {"n": i}) for i in range(3 * budget)]
            )
        assert fake.status_counts[429] == 0, fake.status_counts
        assert result.accepted == 3 * budget
        assert result.requests == 3 * budget


def test_a_dead_workers_slots_expire(redis_url: str, redis_db: Any) -> None:
    """Requests a killed worker had in flight stop counting against the budget after slot_ttl."""
    pacer = ab.RedisPacer(redis_db, key="dead", requests=None, slot_ttl=1.0)
    assert pacer.try_acquire() == 0
    reset = str(int(time.time()) + 30)
    pacer.observe(200, {"X-RateLimit-Remaining": "3", "X-RateLimit-Reset": reset})
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                """
                import os, signal, sys
                import antavo_braze as ab
                pacer = ab.RedisPacer(sys.argv[1], key="dead", requests=None, slot_ttl=1.0)
                assert [pacer.try_acquire() for _ in range(3)] == [0, 0, 0]
                os.kill(os.getpid(), signal.SIGKILL)
                """
            ),
            redis_url,
        ]
    )
    assert child.wait(timeout=30) == -signal.SIGKILL
    assert pacer.try_acquire() > 0  # three in flight spend what Braze said was left
    time.sleep(1.1)
    assert pacer.try_acquire() == 0  # the dead worker's slots expired


def test_a_429_seen_by_one_worker_pauses_the_others(redis_url: str, redis_db: Any) -> None:
    """Another process's 429 with Retry-After holds this process's next request."""
    run_workers(
        """
        import sys
        import antavo_braze as ab
        pacer = ab.RedisPacer(sys.argv[2], key="hold")
        assert pacer.try_acquire() == 0
        pacer.observe(429, {"Retry-After": "5"})
        """,
        1,
        redis_url,
    )
    pacer = ab.RedisPacer(redis_db, key="hold")
    assert 4.0 < pacer.try_acquire() <= 5.0


def test_a_longer_429_than_max_wait_holds_nobody(redis_db: Any) -> None:
    """A Retry-After beyond max_wait is left to the retry policy (it fails the batch)."""
    pacer = ab.RedisPacer(redis_db, key="long", max_wait=10.0)
    assert pacer.try_acquire() == 0
    pacer.observe(429, {"Retry-After": "600"})
    assert pacer.try_acquire() == 0


def test_a_spent_window_holds_until_its_reset(redis_db: Any) -> None:
    """X-RateLimit-Remaining 0 holds every worker until X-RateLimit-Reset."""
    pacer = ab.RedisPacer(redis_db, key="spent", requests=None)
    other = ab.RedisPacer(redis_db, key="spent", requests=None)
    assert pacer.try_acquire() == 0
    pacer.observe(200, {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "4"})
    assert 3.0 < other.try_acquire() <= 4.0


def test_hourly_budget(redis_db: Any) -> None:
    """An hourly budget is shared too: the third request of a 2-per-hour budget waits."""
    pacer = ab.RedisPacer(redis_db, key="hourly", requests=None, hourly=2)
    other = ab.RedisPacer(redis_db, key="hourly", requests=None, hourly=2)
    assert pacer.try_acquire() == 0
    assert other.try_acquire() == 0
    assert 0 < pacer.try_acquire() <= 3600


def test_redis_unreachable_paces_this_process_alone(caplog: pytest.LogCaptureFixture) -> None:
    """With Redis down the pacer warns once and falls back to pacing in this process."""
    port = 1  # nothing listens there
    pacer = ab.RedisPacer(f"redis://127.0.0.1:{port}/0", requests=2, per=60.0)
    with caplog.at_level(logging.WARNING, logger="antavo_braze.redis"):
        assert pacer.try_acquire() == 0
        pacer.observe(200, {})
        assert pacer.try_acquire() == 0
        assert pacer.try_acquire() > 0  # the fallback keeps the configured budget
    warnings = [r for r in caplog.records if "Redis unreachable" in r.getMessage()]
    assert len(warnings) == 1


def test_bad_settings_are_refused(redis_db: Any) -> None:
    """Nonsense budgets and URLs are configuration errors."""
    with pytest.raises(ab.ConfigurationError):
        ab.RedisPacer(redis_db, requests=0)
    with pytest.raises(ab.ConfigurationError):
        ab.RedisPacer(redis_db, hourly=0)
    with pytest.raises(ab.ConfigurationError):
        ab.RedisPacer(redis_db, per=0)
    with pytest.raises(ab.ConfigurationError, match="Redis URL"):
        ab.RedisPacer("http://not-redis")


def test_clients_sharing_a_redis_pacer_stay_within_the_limit(redis_url: str) -> None:
    """Three clients, one RedisPacer budget: all delivered, few 429s from a 10/s FakeBraze."""
    with FakeBraze(rate_limit=10, rate_window=1.0, record=False) as fake:

        def worker(n: int) -> None:
            pacer = ab.RedisPacer(redis_url, key="shared", requests=10, per=1.0)
            with fake.client(pacer=pacer, max_in_flight=4) as client:
                members = [{"id": f"w{n}-{i}", "score": i} for i in range(6 * 75)]
                report = ab.Syncer(
                    client, {"fields": [{"loyalty_field": "score", "remote_field": "points"}]}
                ).sync_members(members)
                assert report.ok, report  # fmt: skip

        ab.RedisPacer(redis_url, key="shared").reset()
        in_threads(worker, 3)
        limited = fake.status_counts.get(429, 0)
        accepted = fake.status_counts.get(201, 0)
    assert accepted == 18
    assert limited <= 2


def test_state_shared_by_two_workers(redis_url: str, redis_db: Any, fake: FakeBraze) -> None:
    """A re-sync of unchanged members by another worker sends 0 attributes."""
    mapping = {"fields": [{"loyalty_field": "score", "remote_field": "points"},
                          {"loyalty_field": "email", "remote_field": "email"}]}  # fmt: skip
    members = [{"id": f"m{i}", "score": i, "email": f"m{i}@example.com"} for i in range(200)]
    with fake.client() as first_client:
        first = ab.Syncer(first_client, mapping, state=ab.RedisStateStore(redis_url))
        assert first.sync_members(members).succeeded == 200
    sent = len(fake.requests)
    with fake.client() as second_client:
        second = ab.Syncer(second_client, mapping, state=ab.RedisStateStore(redis_url))
        report = second.sync_members(members)
    assert report.skipped == 200
    assert report.attribute_values == 0
    assert len(fake.requests) == sent  # nothing was sent at all
    stored = redis_db.hgetall("antavo_braze:state:m:m1")
    assert set(stored) == {b"points", b"email"}
    assert b"m1@example.com" not in b"".join(stored.values())  # hashes, not values


def test_state_changed_field_only(redis_url: str, fake: FakeBraze) -> None:
    """With send='changed' another worker sends only what changed since the first sync."""
    mapping = {"fields": [{"loyalty_field": "score", "remote_field": "points"},
                          {"loyalty_field": "tier", "remote_field": "tier"}]}  # fmt: skip
    with fake.client() as client:
        ab.Syncer(client, mapping, state=ab.RedisStateStore(redis_url, prefix="p")).sync_members(
            [{"id": "a", "score": 1, "tier": "Gold"}]
        )
        store = ab.RedisStateStore(redis_url, prefix="p")
        report = ab.Syncer(client, mapping, state=store, send="changed").sync_members(
            [{"id": "a", "score": 2, "tier": "Gold"}]
        )
    assert report.attribute_values == 1
    assert fake.requests[-1]["body"] == {"attributes": [{"external_id": "a", "points": 2}]}
    assert store.get("a") is not None
    assert store.get("nobody") is None


def test_redis_extra_is_optional() -> None:
    """Without the redis package, a URL gives a clear error naming the extra to install."""
    code = textwrap.dedent(
        """
        import sys
        sys.modules["redis"] = None  # as if it were not installed
        import antavo_braze as ab
        try:
            ab.RedisPacer("redis://127.0.0.1:6379/0")
        except ab.ConfigurationError as exc:
            print(exc)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=os.environ
    )
    assert "pip install redis" in out.stdout


def test_cli_shards_split_a_backfill_over_processes(
    redis_url: str, fake: FakeBraze, tmp_path: Path
) -> None:
    """Four CLI workers with --shard I/4, one Redis budget and state: each member sent once,
    and a second pass by the same workers sends nothing."""
    members = [{"id": f"member-{i}", "score": i} for i in range(1000)]
    source = tmp_path / "members.jsonl"
    source.write_text("".join(json.dumps(m) + "\n" for m in members) + "{broken\n")
    env = {**braze_env(fake), "CI": ""}

    def backfill() -> list[tuple[int, str]]:
        command = [sys.executable, "-m", "antavo_braze.cli", *sync_args("members", str(source))]
        options = ["--quiet", "--pacer", redis_url, "--state", redis_url, "--rate", "50/1"]
        processes = [
            subprocess.Popen(
                [*command, *options, "--shard", f"{i}/4"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env={**os.environ, **env},
            )
            for i in range(4)
        ]
        outputs = [p.communicate(timeout=120)[0] for p in processes]
        return [(p.returncode, out) for p, out in zip(processes, outputs, strict=True)]

    first = backfill()
    assert sorted(code for code, _ in first) == [0, 0, 0, 1]  # one worker owns the bad line
    assert sum("1 failed" in out for _, out in first) == 1
    received = [o["external_id"] for r in fake.requests for o in r["body"]["attributes"]]
    assert sorted(received) == sorted(m["id"] for m in members)  # each exactly once
    assert all("another worker's record (--shard" in out for _, out in first)
    sent = len(fake.requests)
    backfill()
    assert len(fake.requests) == sent  # unchanged members: the shared state sends nothing


def test_cli_rejects_a_bad_shard(tmp_path: Path) -> None:
    """--shard must be I/N with 0 <= I < N: a usage error, exit 2."""
    source = tmp_path / "m.jsonl"
    source.write_text('{"id": "a", "score": 1}\n')
    result = run(*sync_args("members", str(source)), "--dry-run", "--shard", "4/4")
    assert result.returncode == 2
    assert "0 <= I < N" in result.stderr


@given(st.lists(st.text(max_size=12), max_size=60), st.integers(1, 9))
def test_every_record_belongs_to_exactly_one_shard(ids: list[str], count: int) -> None:
    """Each record is kept by exactly one of the N shards (events by customer, even with an
    id of their own); the others skip it."""
    members = [{"id": i} for i in ids]
    events = [{"id": f"event-{n}", "customer": i, "action": "x"} for n, i in enumerate(ids)]
    for kind, records, key in (("members", members, "id"), ("events", events, "customer")):
        kept = [0] * len(records)
        for index in range(count):
            for position, record in enumerate(Sharded(records, index, count, kind=kind)):
                if not isinstance(record, Settled):
                    kept[position] += 1
                    assert ab.shard_of(records[position][key], count) == index
        assert kept == [1] * len(records)
