"""The one send path on real sockets: keep-alive, TLS, proxies, fork(), lifecycle, wire dicts."""

from __future__ import annotations

import logging
import multiprocessing
import os
import select
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import antavo_braze as ab
from antavo_braze._client import send_batches
from antavo_braze._users import next_link
from antavo_braze.testing import FakeBraze

from .conftest import in_threads
from .servers import RawServer, free_port, proxy_process

pytestmark = pytest.mark.timeout(120)
FAST = ab.RetryPolicy(attempts=3, wait_initial=0.001, wait_max=0.01, wait_jitter=0)


def attrs(n: int, prefix: str = "m") -> list[ab.AttributesObject]:
    """``n`` one-field attributes objects for distinct members."""
    return [ab.AttributesObject(f"{prefix}{i}", {"n": i}) for i in range(n)]


# --- keep-alive and the pool ------------------------------------------------------------------


def test_connections_are_kept_and_reused(fake: FakeBraze) -> None:
    """Many requests go over at most max_in_flight connections, which stay open afterwards."""
    with fake.client(max_in_flight=4, limits=ab.BatchLimits(max_objects=5)) as client:
        assert client.track(attributes=attrs(200)).accepted == 200
        assert 1 <= len(client._pool._idle) <= 4
        assert client.track(attributes=attrs(20)).accepted == 20
    assert fake.connections <= 4
    assert client._pool._idle == []


def test_idle_connections_closed_by_the_server_cost_no_attempt() -> None:
    """A keep-alive connection the server closed while idle is noticed before reuse."""
    with FakeBraze() as fake, fake.client(max_in_flight=4, retry=ab.RetryPolicy(attempts=1)) as c:
        assert c.track(attributes=attrs(10)).ok
        idle = list(c._pool._idle)
        fake.close_idle_connections()
        for connection in idle:  # wait until the server's FIN has arrived
            select.select([connection.sock], [], [], 5.0)
        result = c.track(attributes=attrs(10))
    assert result.ok
    assert result.requests == 1
    assert fake.connections == 2


def test_single_requests_share_the_pool(fake: FakeBraze) -> None:
    """Read endpoints, probes and tracks all go through one pool of kept connections."""
    with fake.client(max_in_flight=1) as client:
        client.list_event_names()
        client.check_permissions()
        assert client.track(attributes=attrs(3)).ok
        client.list_events()
    assert fake.connections == 1


def test_timeouts_are_retried() -> None:
    """An answer slower than ``timeout`` is abandoned and the request retried."""
    with FakeBraze() as fake, fake.client(max_in_flight=4, timeout=0.2) as client:
        fake.inject(delay=1.0)
        result = client.track(attributes=attrs(3))
    assert result.ok
    assert result.requests == 2


def test_unreachable_endpoint_fails_every_batch_with_stage_transport() -> None:
    """Nothing listening: track() raises TransportError after the retries; its ``.result``
    has every object rejected at stage transport, none lost, and the cause chained."""
    port = free_port()
    policy = ab.RetryPolicy(attempts=2, wait_initial=0.001, wait_max=0.001, wait_jitter=0)
    with (
        ab.BrazeClient(f"http://127.0.0.1:{port}", "k" * 32, max_in_flight=4, retry=policy) as c,
        pytest.raises(ab.TransportError) as info,
    ):
        c.track(attributes=attrs(200))
    assert isinstance(info.value.__cause__, OSError)
    assert (info.value.method, info.value.attempts) == ("POST", 2)
    assert info.value.url == f"http://127.0.0.1:{port}/users/track"
    result = info.value.result
    assert len(result.rejected) == 200
    assert {r.stage for r in result.rejected} == {"transport"}
    assert result.requests == 2 * 3  # three batches, two attempts each


def test_a_server_that_closes_after_answering() -> None:
    """``Connection: close`` retires the connection; the retry opens a new one."""
    with FakeBraze() as fake, fake.client(max_in_flight=4) as client:
        fake.inject(status=503, headers={"Connection": "close"})
        result = client.track(attributes=attrs(3))
    assert result.ok
    assert result.requests == 2
    assert fake.connections == 2


def test_bodies_larger_than_the_socket_buffer_go_out_in_pieces(fake: FakeBraze) -> None:
    """Megabyte bodies are written as the socket drains, and arrive whole."""
    big = [f"{i:04d}" + "x" * 246 for i in range(380)]  # ~96 KB per object
    objects = [ab.AttributesObject(f"m{i}", {"tags": big}) for i in range(30)]
    with fake.client(max_in_flight=4) as client:
        open_connection = client._pool.open

        def small_send_buffer(timeout: float) -> Any:
            connection = open_connection(timeout)
            connection.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            return connection

        client._pool.open = small_send_buffer  # type: ignore[method-assign]
        result = client.track(attributes=objects)
    assert result.accepted == 30
    assert fake.profiles["m29"]["tags"] == big


class BlockingPacer:
    """A pacer with only the two required methods (no try_acquire)."""

    def __init__(self) -> None:
        self.acquired = 0
        self.observed: list[int | None] = []
        self.lock = threading.Lock()

    def acquire(self) -> None:
        with self.lock:
            self.acquired += 1

    def observe(self, status: int | None, headers: Any) -> None:
        with self.lock:
            self.observed.append(status)


def test_a_pacer_without_try_acquire_still_paces_every_request(fake: FakeBraze) -> None:
    """Custom pacers implementing only acquire/observe are called once per request."""
    pacer = BlockingPacer()
    with fake.client(max_in_flight=4, pacer=pacer) as client:
        result = client.track(attributes=attrs(300))
    assert result.ok
    assert pacer.acquired == result.requests == 4
    assert pacer.observed == [201] * 4


class CountingPacer(ab.InProcessPacer):
    """An InProcessPacer that counts how often the loop asks it."""

    def __init__(self) -> None:
        super().__init__()
        self.asked = 0

    def try_acquire(self) -> float:
        self.asked += 1
        return super().try_acquire()


def test_waiting_for_the_rate_window_does_not_spin() -> None:
    """While the pacer holds requests, the loop sleeps until it may ask again (no busy loop)."""
    pacer = CountingPacer()
    with (
        FakeBraze(rate_limit=10, rate_window=1.0) as fake,
        fake.client(max_in_flight=8, pacer=pacer) as client,
    ):
        result = client.track(attributes=attrs(25 * 75))
    assert result.accepted == 25 * 75
    assert fake.status_counts[429] == 0
    assert result.requests == 25
    assert pacer.waited > 0  # requests were held for the window
    assert pacer.asked < 3 * result.requests, pacer.asked


def test_rate_limit_headers_on_a_2xx_never_hold_longer_than_allowed() -> None:
    """Remaining 0 with a reset an hour away holds no longer than max_rate_limit_wait."""
    policy = ab.RetryPolicy(max_rate_limit_wait=0.2)
    with FakeBraze() as fake, fake.client(retry=policy) as client:
        fake.inject(status=201, headers={"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "3600"})
        assert client.track(attributes=attrs(1)).ok
        assert client.track(attributes=attrs(1)).ok
        assert isinstance(client.pacer, ab.InProcessPacer)
        assert 0.1 < client.pacer.waited <= 0.5


# --- TLS --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    """A CA (trustme) and its certificate file; the server certificate is issued per test."""
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    folder = tmp_path_factory.mktemp("tls")
    bundle = folder / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    return ca, bundle


def server_context(ca: Any, *names: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert(*names).configure_cert(context)
    return context


def test_tls_is_verified_against_the_ca_bundle(tls: tuple[Any, Path]) -> None:
    """Over https, requests go through verified TLS (the given CA bundle)."""
    ca, bundle = tls
    with FakeBraze(ssl_context=server_context(ca, "127.0.0.1")) as fake:
        assert fake.url.startswith("https://127.0.0.1:")
        with fake.client(max_in_flight=4, ca_bundle=bundle) as client:
            assert client.track(attributes=attrs(150)).accepted == 150
    assert len(fake.profiles) == 150


@pytest.mark.parametrize("in_flight", [1, 4])
def test_tls_failures_raise_at_once_and_are_not_retried(
    tls: tuple[Any, Path], caplog: pytest.LogCaptureFixture, in_flight: int
) -> None:
    """An unknown CA or a wrong hostname raises TransportError on the first attempt, like 401."""
    ca, bundle = tls
    with FakeBraze(ssl_context=server_context(ca, "127.0.0.1")) as fake:
        with (
            caplog.at_level(logging.WARNING),
            fake.client(max_in_flight=in_flight) as untrusting,  # the system's trust store
            pytest.raises(ab.TransportError, match="TLS certificate verification failed") as info,
        ):
            untrusting.track(attributes=attrs(300))
        assert "local issuer certificate" in str(info.value)
        assert "retry" not in caplog.text
    with (
        FakeBraze(ssl_context=server_context(ca, "rest.other.example")) as fake,
        fake.client(max_in_flight=in_flight, ca_bundle=bundle) as wrong_host,
        pytest.raises(ab.TransportError, match="TLS"),
    ):
        wrong_host.check_permissions()
    assert fake.requests == []


def test_a_sync_stops_at_a_tls_failure(tls: tuple[Any, Path], mapping: ab.Mapping) -> None:
    """The Syncer raises a TLS failure at once instead of dead-lettering every batch."""
    ca, _ = tls
    with FakeBraze(ssl_context=server_context(ca, "127.0.0.1")) as fake, fake.client() as client:
        members = ({"id": f"m{i}", "score": i} for i in range(10_000))
        with pytest.raises(ab.TransportError, match="TLS"):
            ab.Syncer(client, mapping).sync_members(members)


# --- proxies ----------------------------------------------------------------------------------

BRAZE_HOST = "rest.iad-99.example"  # only the proxy can resolve it, as behind an egress proxy


@pytest.fixture
def tls_fake(tls: tuple[Any, Path]) -> Iterator[FakeBraze]:
    """FakeBraze over https with a certificate for BRAZE_HOST."""
    ca, _ = tls
    with FakeBraze(ssl_context=server_context(ca, BRAZE_HOST)) as fake:
        yield fake


def test_https_proxy_from_the_environment(
    tls_fake: FakeBraze, tls: tuple[Any, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HTTPS_PROXY is honoured: a CONNECT tunnel to a host only the proxy can resolve."""
    port = tls_fake.url.rsplit(":", 1)[1]
    with proxy_process(tmp_path, hosts={BRAZE_HOST: f"127.0.0.1:{port}"}) as proxy:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        endpoint = f"https://{BRAZE_HOST}:{port}"
        with ab.BrazeClient(endpoint, tls_fake.api_key, ca_bundle=tls[1], retry=FAST) as client:
            assert client.proxy == proxy.url
            syncer = ab.Syncer(client, {"fields": [{"loyalty_field": "n", "remote_field": "n"}]})
            report = syncer.sync_members({"id": f"m{i}", "n": i} for i in range(500))
        events = proxy.events()
    assert report.ok
    assert report.succeeded == 500
    assert len(tls_fake.profiles) == 500
    assert {e["kind"] for e in events} == {"tunnel"}
    assert {e["target"] for e in events} == {f"{BRAZE_HOST}:{port}"}
    # NO_PROXY exempts the host: the client then resolves it itself (and cannot).
    monkeypatch.setenv("NO_PROXY", BRAZE_HOST)
    assert ab.BrazeClient(f"https://{BRAZE_HOST}:{port}", "k").proxy is None
    monkeypatch.setenv("NO_PROXY", "")
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:1")
    assert ab.BrazeClient(f"https://{BRAZE_HOST}", "k", trust_env=False).proxy is None


def test_explicit_proxy_with_authentication(
    tls_fake: FakeBraze, tls: tuple[Any, Path], tmp_path: Path
) -> None:
    """proxy= with credentials authenticates the tunnel; wrong ones fail, never leak."""
    port = tls_fake.url.rsplit(":", 1)[1]
    endpoint = f"https://{BRAZE_HOST}:{port}"
    hosts = {BRAZE_HOST: f"127.0.0.1:{port}"}
    with proxy_process(tmp_path, auth="user:s3cret pass", hosts=hosts) as proxy:
        good = f"http://user:s3cret%20pass@127.0.0.1:{proxy.port}"
        with ab.BrazeClient(endpoint, "test-key", proxy=good, ca_bundle=tls[1]) as client:
            assert client.track(attributes=attrs(3)).ok
            assert "s3cret" not in repr(client)
            assert client.proxy == proxy.url
        bad = f"http://user:wrong@127.0.0.1:{proxy.port}"
        with (
            ab.BrazeClient(endpoint, "test-key", proxy=bad, ca_bundle=tls[1], retry=FAST) as c,
            pytest.raises(ab.TransportError, match="407") as info,
        ):
            c.track(attributes=attrs(1))
        result = info.value.result
        assert result.rejected[0].stage == "transport"
        assert "407" in result.rejected[0].reason
        assert "wrong" not in result.rejected[0].reason
        kinds = [e["kind"] for e in proxy.events()]
    assert kinds.count("tunnel") == 1
    assert kinds.count("refused") == 1  # a 407 is not retried: no retry can mend it


def test_a_proxy_that_forbids_the_tunnel_stops_the_call_at_once(
    tls_fake: FakeBraze, tls: tuple[Any, Path], tmp_path: Path
) -> None:
    """A proxy answering 403 to CONNECT: one CONNECT, no retry, an error naming the refusal."""
    port = tls_fake.url.rsplit(":", 1)[1]
    endpoint = f"https://{BRAZE_HOST}:{port}"
    patient = ab.RetryPolicy(attempts=5, wait_initial=0.001, wait_max=0.01, wait_jitter=0)
    hosts = {BRAZE_HOST: f"127.0.0.1:{port}"}
    with proxy_process(tmp_path, hosts=hosts, refuse_connect=403) as proxy:
        with (
            ab.BrazeClient(
                endpoint, "test-key", proxy=proxy.url, ca_bundle=tls[1], retry=patient
            ) as client,
            pytest.raises(ab.TransportError, match="proxy refused the tunnel") as info,
        ):
            client.track(attributes=attrs(1))
        assert "403" in str(info.value)
        assert info.value.attempts == 1
        assert [e["kind"] for e in proxy.events()] == ["forbidden"]
        # A whole sync stops at the first refusal instead of dead-lettering every batch.
        with ab.BrazeClient(
            endpoint, "test-key", proxy=proxy.url, ca_bundle=tls[1], retry=patient, max_in_flight=1
        ) as client:
            syncer = ab.Syncer(client, {"fields": [{"loyalty_field": "n", "remote_field": "n"}]})
            members = ({"id": f"m{i}", "n": i} for i in range(500))
            with pytest.raises(ab.TransportError, match="403"):
                syncer.sync_members(members)
        events = proxy.events()
    assert [e["kind"] for e in events] == ["forbidden", "forbidden"]
    assert {e["target"] for e in events} == {f"{BRAZE_HOST}:{port}"}
    assert tls_fake.requests == []


def test_plain_http_through_a_forwarding_proxy(fake: FakeBraze, tmp_path: Path) -> None:
    """An http endpoint through proxy= goes as absolute-form requests (the path prefix kept)."""
    with proxy_process(tmp_path) as proxy, fake.client(proxy=proxy.url) as client:
        assert client.track(attributes=attrs(5)).ok
        assert client.list_event_names() == []
        events = proxy.events()
    assert {e["kind"] for e in events} == {"forward"}
    assert events[0]["target"] == f"{fake.url}/users/track"
    assert len(fake.profiles) == 5


# --- fork() and lifecycle -----------------------------------------------------------------------


def _track_in_child(client: ab.BrazeClient, prefix: str) -> ab.TrackResult:
    return client.track(attributes=attrs(150, prefix))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_child_opens_its_own_connections(fake: FakeBraze) -> None:
    """After fork() the child never reuses the parent's sockets: each reads its own answers."""
    fake.block("child-1")
    fake.block("parent-2")
    with fake.client(max_in_flight=4) as client:
        assert client.track(attributes=attrs(300, "warm")).ok  # idle connections in the pool
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: exits with 0 only if its own answers came back
            try:
                result = _track_in_child(client, "child-")
                good = [r.index for r in result.rejected] == [1] and result.accepted == 149
                os.write(write, b"ok" if good else repr(result.rejected).encode()[:200])
            finally:
                os._exit(0)
        result = _track_in_child(client, "parent-")
        os.waitpid(pid, 0)
        child_said = os.read(read, 300)
    assert child_said == b"ok"
    assert [r.index for r in result.rejected] == [2]
    assert fake.profiles.keys() >= {"child-0", "parent-0"}


_POOL_CLIENT: ab.BrazeClient | None = None


def _pool_worker(prefix: str) -> tuple[int, list[int]]:
    assert _POOL_CLIENT is not None
    result = _POOL_CLIENT.track(attributes=attrs(100, prefix))
    return result.accepted, [r.index for r in result.rejected]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_multiprocessing_pool_after_the_parent_synced(fake: FakeBraze) -> None:
    """Workers forked from a parent that used the client each sync correctly."""
    global _POOL_CLIENT
    fake.block("w1-7")
    with fake.client(max_in_flight=4) as client:
        assert client.track(attributes=attrs(100, "parent")).ok
        _POOL_CLIENT = client
        try:
            with multiprocessing.get_context("fork").Pool(3) as pool:
                results = pool.map(_pool_worker, ["w0-", "w1-", "w2-"])
        finally:
            _POOL_CLIENT = None
        assert client.track(attributes=attrs(10, "after")).ok  # the parent carries on
    assert results == [(100, []), (99, [7]), (100, [])]
    assert len(fake.profiles) == 100 + 300 - 1 + 10


def test_close_closes_everything_and_a_closed_client_refuses(fake: FakeBraze) -> None:
    """close() drops the pooled connections and connecting threads; using it then is an error."""
    client = fake.client(max_in_flight=4)
    assert client.track(attributes=attrs(300)).ok
    assert client._pool._idle
    assert client._pool._executor is not None
    client.close()
    assert client.closed
    assert client._pool._idle == []
    assert client._pool._executor is None
    for use in (
        lambda: client.track(attributes=attrs(1)),
        client.list_event_names,
        client.check_permissions,
    ):
        with pytest.raises(ab.ConfigurationError, match="closed"):
            use()


def test_syncer_is_a_context_manager(fake: FakeBraze, tmp_path: Path, mapping: ab.Mapping) -> None:
    """A Syncer (and the client) can be used in a with block."""
    with fake.client() as client, ab.Syncer(client, mapping, dead_letter=tmp_path / "d.jsonl") as s:
        assert s.sync_members([{"id": "a", "score": 1}]).ok


def test_stopping_early_abandons_requests_in_flight_cleanly(fake: FakeBraze) -> None:
    """A caller that stops reading outcomes leaves no connection open, and the client works on."""
    from antavo_braze._build.batching import pack
    from antavo_braze._build.wire import model_item

    with fake.client(max_in_flight=4) as client:
        groups = [[model_item(obj, n)] for n, obj in enumerate(attrs(20))]
        outcomes = send_batches(client, pack(groups, ab.BatchLimits(max_objects=1)))
        first = next(outcomes)
        outcomes.close()
        assert first.error is None
        assert client.track(attributes=attrs(5)).ok


def test_stopping_early_gives_back_the_pacer_slots_in_flight(fake: FakeBraze) -> None:
    """A request abandoned in flight gives its burst-budget slot back (a budget counted from
    the answers would otherwise lose a slot for good, and a client whose every slot leaked
    would wait forever)."""
    from antavo_braze._build.batching import pack
    from antavo_braze._build.wire import model_item

    pacer = ab.InProcessPacer(requests=2, per=0.1)
    fake.inject(times=1, delay=1.0)  # whichever request comes first is slow; the other is not
    with fake.client(max_in_flight=2, pacer=pacer) as client:
        groups = [[model_item(obj, n)] for n, obj in enumerate(attrs(2))]
        outcomes = send_batches(client, pack(groups, ab.BatchLimits(max_objects=1)))
        first = next(outcomes)
        assert "in_flight=1" in repr(pacer)  # the slow one
        outcomes.close()
        assert first.error is None
        assert "in_flight=0" in repr(pacer)
        assert client.track(attributes=attrs(4)).ok


@pytest.mark.timeout(60)
def test_a_try_refused_before_it_left_gives_back_its_pacer_slot(fake: FakeBraze) -> None:
    """A request h11 refuses to write (a space in the path) raises at once and gives its
    burst-budget slot back: the next requests go (with one slot, a leaked one would hold
    every later request for good)."""
    pacer = ab.InProcessPacer(requests=1, per=0.2)
    with fake.client(pacer=pacer) as client:
        for _ in range(2):  # on a new connection, then on the kept-alive one
            with pytest.raises(Exception, match="target"):
                client.request("GET", "/users/track bad")
            assert "in_flight=0" in repr(pacer)
            assert client.track(attributes=attrs(3)).ok


# --- plain wire dicts through track() -------------------------------------------------------------


def test_track_accepts_every_braze_feature_as_plain_dicts(fake: FakeBraze) -> None:
    """_merge_objects, $add/$remove/$update, add/remove, inc, subscription groups, aliases."""
    with fake.client() as client:
        first = client.track(
            attributes=[
                {"external_id": "m", "tier": {"name": "Gold", "since": {"$time": "2026-01-01"}}},
                {"external_id": "m", "pets": [{"id": 1, "name": "Rex"}, {"id": 2, "name": "Tom"}]},
                {"external_id": "m", "tags": ["a", "b"], "points": 10},
            ]
        )
        assert first.ok, first.rejected
        second = client.track(
            attributes=[
                {"external_id": "m", "_merge_objects": True, "tier": {"points": 5}},
                {
                    "external_id": "m",
                    "_merge_objects": True,
                    "pets": {
                        "$add": [{"id": 3, "name": "Kit"}],
                        "$remove": [{"$identifier_key": "id", "$identifier_value": 2}],
                        "$update": [
                            {
                                "$identifier_key": "id",
                                "$identifier_value": 1,
                                "$new_object": {"name": "Rex II"},
                            }
                        ],
                    },
                },
                {"external_id": "m", "tags": {"add": ["c"], "remove": ["a"]}},
                {"external_id": "m", "points": {"inc": 5}},
                {
                    "external_id": "m",
                    "subscription_groups": [
                        {"subscription_group_id": "g-1", "subscription_state": "subscribed"}
                    ],
                },
                {
                    "user_alias": {"alias_name": "a-1", "alias_label": "antavo"},
                    "_update_existing_only": False,
                    "points": 1,
                },
            ],
            events=[{"external_id": "m", "name": "loyalty_enrolled", "time": "2026-01-02"}],
        )
        assert second.ok, second.rejected
    profile = fake.profiles["m"]
    assert profile["tier"] == {"name": "Gold", "since": {"$time": "2026-01-01"}, "points": 5}
    assert profile["pets"] == [{"id": 1, "name": "Rex II"}, {"id": 3, "name": "Kit"}]
    assert (profile["tags"], profile["points"]) == (["b", "c"], 15)
    assert fake.profiles["alias:antavo:a-1"] == {"points": 1}


DAY = "2026-01-01"
EVENT = {"external_id": "a", "name": "e", "time": DAY}
PURCHASE = {"external_id": "a", "product_id": "p", "currency": "EUR", "price": 1, "time": DAY}


@pytest.mark.parametrize(
    ("array", "obj", "reason"),
    [
        ("attributes", {"points": 1}, "missing identifier"),
        ("attributes", {"external_id": "a", "braze_id": "b"}, "more than one primary"),
        ("attributes", {"external_id": "x" * 988}, "987 bytes"),
        ("attributes", {"external_id": "a", "$points": 1}, "cannot start with '$'"),
        ("attributes", {"external_id": "a", "t": {"$add": [1]}}, "must be an object"),
        ("attributes", {"external_id": "a", "t": {"$set": 1}}, "'$' keys are Braze operators"),
        ("attributes", {"external_id": "a", "t": {"a.b": 1}}, "cannot contain '.'"),
        ("attributes", {"external_id": "a", "o": {"a b": 1}}, "cannot contain spaces"),
        ("attributes", {"external_id": "a", "t": {"k": None}}, "null inside a nested"),
        ("attributes", {"external_id": "a", "s": "x" * 256}, "256 characters"),
        ("attributes", {"external_id": "a", "n": float("nan")}, "NaN"),
        ("attributes", {"external_id": "a", "o": {f"k{i}": "v" * 250 for i in range(500)}}, "KB"),
        ("attributes", {"external_id": "a", "d": {"$time": "yesterday"}}, "$time"),
        ("attributes", {"external_id": "a", "_merge_objects": "yes"}, "true or false"),
        ("events", {"external_id": "a", "name": "e"}, "time"),
        ("events", {"external_id": "a", "name": "$e", "time": DAY}, "cannot start"),
        ("events", {**EVENT, "properties": {"time": 1}}, "reserved"),
        ("events", {**EVENT, "properties": {f"p{i}": i for i in range(300)}}, "300 properties"),
        ("purchases", {**PURCHASE, "currency": "EURO"}, "ISO 4217"),
        ("purchases", {**PURCHASE, "quantity": 101}, "1 to 100"),
        ("attributes", "not a dict", "must be a dict"),
    ],
)  # fmt: skip
def test_plain_dicts_are_checked_like_the_models(
    fake: FakeBraze, array: str, obj: Any, reason: str
) -> None:
    """A wire dict breaking a Braze rule is rejected (stage validation) before anything is sent;
    its neighbours go."""
    good = {"external_id": "ok", "points": 1}
    arrays: dict[str, list[Any]] = {"attributes": [good], array: [obj]}
    if array == "attributes":
        arrays["attributes"] = [obj, good]
    with fake.client() as client:
        result = client.track(**arrays)
    (rejected,) = result.rejected
    assert (rejected.input_array, rejected.stage) == (array, "validation")
    assert reason in rejected.reason, rejected.reason
    assert result.accepted == 1
    assert "ok" in fake.profiles


def test_app_id_goes_on_events_and_purchases_without_one(fake: FakeBraze) -> None:
    """BrazeClient(app_id=) is added to every event and purchase that has none."""
    with fake.client(app_id="app-1") as client:
        client.track(
            events=[
                ab.EventObject("m", "e", "2026-01-01T00:00:00Z"),
                {"external_id": "m", "name": "e", "time": "2026-01-01", "app_id": "other"},
            ],
            purchases=[ab.PurchaseObject("m", "p", "EUR", 1.0, "2026-01-01T00:00:00Z")],
        )
    assert [e.get("app_id") for e in fake.events] == ["app-1", "other"]
    assert fake.purchases[0]["app_id"] == "app-1"


# --- read endpoints: bounded ----------------------------------------------------------------------


def test_link_header_parsing_is_linear() -> None:
    """The Link parser finds rel=next in any spelling; a hostile megabyte header costs nothing."""
    assert next_link('<https://x/e?cursor=b>; rel="next"') == "https://x/e?cursor=b"
    assert next_link('<a>; rel="prev", <b>;rel=next') == "b"
    assert next_link('<a>; rel="prev next"') == "a"
    assert next_link("<a>; rel=prev") is None
    assert next_link("<" * 1_000_000) is None
    assert next_link("<a>;" + " " * 1_000_000 + "rel=next") == "a"


def test_event_list_pagination_has_a_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that always claims another page cannot keep the client paging forever."""
    import antavo_braze._users as users_module

    monkeypatch.setattr(users_module, "MAX_EVENT_LIST_PAGES", 5)
    page = b'{"message":"success","events":[' + b",".join(b'"e"' for _ in range(250)) + b"]}"
    reply = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(page) + page
    with (
        RawServer(lambda n: [reply]) as server,
        ab.BrazeClient(server.url, "k") as client,
        pytest.raises(ab.BrazeAPIError, match="more than 5"),
    ):
        client.list_event_names()
    assert server.requests == 5


def test_requests_are_counted_per_call_across_threads(fake: FakeBraze) -> None:
    """Sixteen threads on one client: each result counts its own requests, and they add up."""
    with fake.client(max_in_flight=8) as client:
        results: list[ab.TrackResult] = []
        lock = threading.Lock()

        def work(n: int) -> None:
            result = client.track(attributes=attrs(75 * (n % 3 + 1), f"t{n}-"))
            with lock:
                results.append(result)

        in_threads(work, 16)
    assert sorted(r.requests for r in results) == sorted(n % 3 + 1 for n in range(16))
    assert sum(r.requests for r in results) == len(fake.requests)


@pytest.mark.parametrize(
    ("proxy", "message"),
    [
        ("http://proxy:notaport", "malformed proxy URL from proxy="),
        ("https://proxy:3128", "https:// proxies"),
        ("socks5://proxy:1080", "must be http://host:port"),
        ("http://", "must be http://host:port"),
        ("http://evil.com%2f@x\\y:3128", "not a host name"),
    ],
)
def test_bad_proxy_urls_are_refused(proxy: str, message: str) -> None:
    """A proxy URL the SDK cannot use is a ConfigurationError that says why."""
    with pytest.raises(ab.ConfigurationError, match=message):
        ab.BrazeClient("https://rest.iad-01.braze.com", "k", proxy=proxy)


def test_proxy_without_scheme_is_http() -> None:
    """A bare host:port proxy (as often set in HTTPS_PROXY) means http://host:port."""
    with ab.BrazeClient("https://rest.iad-01.braze.com", "k", proxy="proxy.corp:3128") as c:
        assert c.proxy == "http://proxy.corp:3128"
