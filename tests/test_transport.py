"""The non-blocking HTTP/1.1 transport: the response parser (pure) and the send loop on sockets."""

from __future__ import annotations

import itertools
import select
import socket
import ssl
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import antavo_braze as ab
from antavo_braze._client import to_item
from antavo_braze._transport import Connection, ProtocolError, ResponseParser, encode_request
from antavo_braze.testing import FakeBraze

BODIES = st.binary(max_size=300)


def chunked(body: bytes, sizes: list[int]) -> bytes:
    """``body`` in chunks of the given sizes (the rest in one), with a chunk extension."""
    out, rest = b"", body
    for size in sizes:
        if not rest:
            break
        piece, rest = rest[: size or 1], rest[size or 1 :]
        out += f"{len(piece):x};ext=1\r\n".encode() + piece + b"\r\n"
    if rest:
        out += f"{len(rest):X}\r\n".encode() + rest + b"\r\n"
    return out + b"0\r\n\r\n"


def parse(raw: bytes, cuts: list[int], eof: bool = False) -> ResponseParser:
    """Feed ``raw`` split at ``cuts``; stop as soon as the parser says done."""
    parser = ResponseParser()
    points = sorted({c % (len(raw) + 1) for c in cuts} | {0, len(raw)})
    for start, end in itertools.pairwise(points):
        if parser.feed(raw[start:end]):
            return parser
    assert eof, "the parser never finished"
    assert parser.feed_eof()
    return parser


@given(BODIES, st.lists(st.integers(0, 400), max_size=6), st.booleans())
def test_content_length_response_in_any_pieces(body: bytes, cuts: list[int], interim: bool) -> None:
    """A Content-Length response parses the same however the bytes arrive (1xx skipped)."""
    head = b"HTTP/1.1 100 Continue\r\n\r\n" if interim else b""
    raw = head + b"HTTP/1.1 201 Created\r\nX-RateLimit-Remaining: 7\r\ncontent-length: "
    raw += str(len(body)).encode() + b"\r\n\r\n" + body
    parser = parse(raw, cuts)
    assert (parser.status, bytes(parser.body), parser.keep_alive) == (201, body, True)
    assert parser.headers.get("X-RATELIMIT-REMAINING") == "7"


@given(BODIES, st.lists(st.integers(0, 50), max_size=5), st.lists(st.integers(0, 400), max_size=6))
def test_chunked_response_in_any_pieces(body: bytes, sizes: list[int], cuts: list[int]) -> None:
    """A chunked response (with extensions and a trailer) parses to the same body."""
    trailer = b"X-Trailer: yes\r\n" if len(body) % 2 else b""
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(body, sizes)
    raw = raw[:-2] + trailer + b"\r\n"
    parser = parse(raw, cuts)
    assert (parser.status, bytes(parser.body)) == (200, body)


@given(BODIES, st.lists(st.integers(0, 400), max_size=6))
def test_body_until_close(body: bytes, cuts: list[int]) -> None:
    """Without length or chunking the body ends with the connection, which is not kept."""
    raw = b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n" + body
    parser = parse(raw, cuts, eof=True)
    assert (bytes(parser.body), parser.keep_alive) == (body, False)


@pytest.mark.parametrize(
    ("raw", "keep_alive"),
    [
        (b"HTTP/1.1 204 No Content\r\n\r\n", True),
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", False),
        (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n", True),
    ],
)
def test_keep_alive_rules(raw: bytes, keep_alive: bool) -> None:
    """Connection headers and the HTTP version decide whether a connection is reused."""
    parser = ResponseParser()
    assert parser.feed(raw)
    assert parser.keep_alive is keep_alive


@pytest.mark.parametrize(
    "raw",
    [
        b"SMTP ready\r\n\r\n",
        b"HTTP/1.1 abc OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: many\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabcd",
        b"HTTP/1.1 200 OK\r\n" + b"X-Long: " + b"x" * 70_000,
    ],
)
def test_malformed_responses_are_protocol_errors(raw: bytes) -> None:
    """Bytes that are not an HTTP/1.1 response raise ProtocolError (an OSError: retryable)."""
    with pytest.raises(ProtocolError):
        ResponseParser().feed(raw)


def test_connection_closed_mid_response() -> None:
    """EOF before Content-Length bytes arrived is an error, not a short body."""
    parser = ResponseParser()
    assert not parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    with pytest.raises(ProtocolError, match="before the response was complete"):
        parser.feed_eof()


def test_encode_request() -> None:
    """The request carries Host, the given headers and the body's length."""
    raw = encode_request("POST", "/users/track", "h:1", {"A": "b"}, b"{}")
    assert raw == b"POST /users/track HTTP/1.1\r\nHost: h:1\r\nA: b\r\nContent-Length: 2\r\n\r\n{}"


# --- the send loop on real sockets ------------------------------------------------------------


def attrs(n: int) -> list[ab.AttributesObject]:
    """``n`` one-field attributes objects for distinct members."""
    return [ab.AttributesObject(f"m{i}", {"n": i}) for i in range(n)]


def test_connections_are_kept_and_reused(fake: FakeBraze) -> None:
    """Many requests go over at most max_in_flight connections, which stay open afterwards."""
    with fake.client(max_in_flight=4, max_objects=5) as client:
        assert client.track(attributes=attrs(200)).accepted == 200
        assert 1 <= len(client._idle) <= 4
        assert client.track(attributes=attrs(20)).accepted == 20
    assert fake.connections <= 4
    assert client._idle == []


def test_idle_connections_closed_by_the_server_cost_no_attempt() -> None:
    """A keep-alive connection the server closed while idle is noticed before reuse."""
    policy = ab.RetryPolicy(attempts=1)
    with FakeBraze() as fake, fake.client(max_in_flight=4, retry=policy) as client:
        assert client.track(attributes=attrs(10)).ok
        idle = list(client._idle)
        fake.close_idle_connections()
        for connection in idle:  # wait until the server's FIN has arrived
            select.select([connection.sock], [], [], 5.0)
        result = client.track(attributes=attrs(10))
    assert result.ok
    assert result.requests == 1
    assert fake.connections == 2


def test_a_dropped_request_on_a_fresh_connection_is_retried() -> None:
    """A connection dropped mid-request is a transport failure: retried, then delivered."""
    with FakeBraze() as fake, fake.client(max_in_flight=4) as client:
        fake.inject(drop=True)
        result = client.track(attributes=attrs(3))
    assert result.ok
    assert fake.status_counts[0] == 1  # the dropped one


def test_timeouts_are_retried() -> None:
    """A response slower than ``timeout`` is abandoned and the request retried."""
    with FakeBraze() as fake, fake.client(max_in_flight=4, timeout=0.2) as client:
        fake.inject(delay=1.0)
        result = client.track(attributes=attrs(3))
    assert result.ok
    assert result.requests == 2


def test_unreachable_endpoint_fails_every_batch_with_stage_transport() -> None:
    """Nothing listening: every object ends rejected at stage transport, none lost."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    policy = ab.RetryPolicy(attempts=2, wait_initial=0.001, wait_max=0.001, wait_jitter=0)
    with ab.BrazeClient(f"http://127.0.0.1:{port}", "k" * 32, max_in_flight=4, retry=policy) as c:
        result = c.track(attributes=attrs(200))
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
        open_connection = client._open_connection

        def small_send_buffer() -> Connection:
            connection = open_connection()
            connection.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            return connection

        client._open_connection = small_send_buffer  # type: ignore[method-assign]
        result = client.track(attributes=objects)
    assert result.accepted == 30
    assert fake.profiles["m29"]["tags"] == big


def test_stopping_early_abandons_requests_in_flight_cleanly(fake: FakeBraze) -> None:
    """A caller that stops reading outcomes leaves no connection open, and the client works on."""
    with fake.client(max_in_flight=4, max_objects=1) as client:
        batches = client.pack([[to_item(obj)] for obj in attrs(20)])
        outcomes = client.send_batches(batches)
        first = next(outcomes)
        outcomes.close()
        assert first.error is None
        assert client.track(attributes=attrs(5)).ok


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


# --- TLS ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (skips where openssl is missing)."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    command = [
        "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
        "-keyout", str(key), "-out", str(cert),
    ]  # fmt: skip
    try:
        subprocess.run(command, check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("openssl is not available")
    return cert, key


def test_tls_is_verified_against_the_ca_bundle(certificate: tuple[Path, Path]) -> None:
    """Over https the loop sends through verified TLS; an unknown certificate is refused."""
    cert, key = certificate
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    with FakeBraze(ssl_context=context) as fake:
        assert fake.url.startswith("https://127.0.0.1:")
        with fake.client(max_in_flight=4, ca_bundle=str(cert)) as client:
            assert client.track(attributes=attrs(150)).accepted == 150
        policy = ab.RetryPolicy(attempts=1)
        with fake.client(max_in_flight=4, retry=policy) as untrusting:
            result = untrusting.track(attributes=attrs(1))
    assert result.rejected[0].stage == "transport"
    assert "CERTIFICATE_VERIFY_FAILED" in result.rejected[0].reason
    assert len(fake.profiles) == 150


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
