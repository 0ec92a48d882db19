"""Shared fixtures: a FakeBraze per test, its client, and the sample Antavo data."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import antavo_braze as ab
from antavo_braze.testing import FakeBraze, RedisServerMissingError, redis_server

DATA = Path(__file__).parent / "data"


def load(name: str) -> Any:
    """Load a JSON fixture from tests/data."""
    return json.loads((DATA / name).read_text())


def in_threads(work: Callable[[int], object], count: int) -> None:
    """Run ``work(0)`` ... ``work(count - 1)`` in threads at once; return when all are done."""
    threads = [threading.Thread(target=work, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


class FakeClock:
    """Monotonic and wall time that move only when slept: retry and pacing tests never wait."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start
        self.waits: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds


@pytest.fixture
def fake() -> Iterator[FakeBraze]:
    """A running FakeBraze with the key 'test-key' holding every permission."""
    with FakeBraze(api_key="test-key") as server:
        yield server


@pytest.fixture
def client(fake: FakeBraze) -> Iterator[ab.BrazeClient]:
    """A client wired to the fake, with fast retries."""
    with fake.client() as braze:
        yield braze


@pytest.fixture
def mapping() -> ab.Mapping:
    """The DESIGN.md example mapping."""
    return ab.Mapping.from_file(DATA / "mapping.json")


@pytest.fixture
def full_mapping() -> ab.Mapping:
    """A mapping covering every Braze type and standard attributes."""
    return ab.Mapping.from_file(DATA / "full_mapping.json")


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """The URL of a real Redis server that the test suite started (one per session)."""
    try:
        with redis_server() as url:
            yield url
    except RedisServerMissingError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"{exc}: CI must run the Redis tests")
        pytest.skip(str(exc))


@pytest.fixture
def redis_db(redis_url: str) -> Iterator[Any]:
    """A redis-py client on an empty database."""
    redis = pytest.importorskip("redis")
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()
