"""Servers that misbehave at the edges, on real sockets: every answer is paired with its
request, only Braze's answer counts, failures no retry mends stop at once, a fatal error keeps
the accounting, time stays bounded (DESIGN.md "Transport" and "Errors")."""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import antavo_braze as ab
from antavo_braze._demo import DEMO_MAPPING, sample_members
from antavo_braze._http.endpoint import parse_endpoint
from antavo_braze._http.pool import ConnectionPool, UnmendableError, unmendable
from antavo_braze._scale.redis import redis_client
from antavo_braze.testing import FakeBraze

from .servers import CLOSE, RawServer, free_port

pytestmark = pytest.mark.timeout(120)
FAST = ab.RetryPolicy(attempts=3, wait_initial=0.001, wait_max=0.01, wait_jitter=0)
ONE = ab.BatchLimits(max_objects=1)
MAPPING = ab.Mapping.from_dict(
    {"fields": [{"loyalty_field": "score", "remote_field": "score", "type": "number"}]}
)


def answer(body: Any, status: int = 201, extra: str = "") -> bytes:
    """A complete HTTP/1.1 answer with a JSON (or raw bytes) body."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    head = f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n{extra}"
    return f"{head}Content-Length: {len(data)}\r\n\r\n".encode() + data


OK = answer({"message": "success"})
REJECT_FIRST = answer(
    {"message": "success", "errors": [{"type": "bad", "input_array": "attributes", "index": 0}]}
)


def attrs(n: int) -> list[ab.AttributesObject]:
    """``n`` one-field attributes objects for distinct members."""
    return [ab.AttributesObject(f"m{i}", {"n": i}) for i in range(n)]


# --- 1. an answer is paired only with its request ----------------------------------------------


def test_a_second_answer_in_the_same_write_never_answers_the_next_request() -> None:
    """Two answers in one write: the spare one is not read as the next request's answer."""

    def script(n: int) -> list[bytes | float | None]:
        return [OK + REJECT_FIRST] if n == 0 else [OK]

    with (
        RawServer(script) as server,
        ab.BrazeClient(server.url, "k", max_in_flight=1, limits=ONE, retry=FAST) as client,
    ):
        result = client.track(attributes=attrs(3))
    assert result.ok, result.rejected  # before: m1 "rejected" with m0's spare answer
    assert result.accepted == 3
    assert server.requests == 3
    assert server.connections == 2  # the connection with the spare answer was not reused


def test_an_answer_before_any_request_is_never_taken_for_its_answer() -> None:
    """A server that answers on connect: the connection is not usable (nothing is written
    to it); an idle one that receives an unasked answer is not reused either."""
    with RawServer(lambda n: [OK], greeting=REJECT_FIRST) as server:
        pool = ConnectionPool(parse_endpoint(server.url), max_idle=1)
        connection = pool.open(5.0)
        select.select([connection.sock], [], [], 5.0)  # the greeting has arrived
        assert not connection.usable()
        connection.close()
        pool.close()

    def script(n: int) -> list[bytes | float | None]:
        return [OK, 0.05, REJECT_FIRST] if n == 0 else [OK]

    with (
        RawServer(script) as server,
        ab.BrazeClient(server.url, "k", max_in_flight=1, retry=FAST) as client,
    ):
        assert client.track(attributes=attrs(1)).ok
        (idle,) = client._pool._idle
        select.select([idle.sock], [], [], 5.0)  # the unasked answer has arrived
        result = client.track(attributes=attrs(1))
    assert result.ok, result.rejected
    assert server.connections == 2


@pytest.mark.parametrize("split", [False, True], ids=["same-write", "own-write"])
def test_a_stray_crlf_after_an_answer_is_ignored(split: bool) -> None:
    """CRLF after a body (same write or its own): no request is sent twice, none fails."""

    def script(n: int) -> list[bytes | float | None]:
        return [OK, b"\r\n"] if split else [OK + b"\r\n"]

    with (
        RawServer(script) as server,
        ab.BrazeClient(server.url, "k", max_in_flight=1, limits=ONE, retry=FAST) as client,
    ):
        result = client.track(attributes=attrs(20))
    assert result.ok
    assert server.requests == 20  # before: broken next answers, retried copies
    assert server.connections == 1


def test_a_server_closing_every_connection_after_answering_fails_nothing() -> None:
    """Closed right after each answer (no ``Connection: close``): nothing fails."""
    with (
        RawServer(lambda n: [OK, CLOSE]) as server,
        ab.BrazeClient(
            server.url, "k", max_in_flight=8, limits=ONE, retry=ab.RetryPolicy(attempts=2)
        ) as client,
    ):
        result = client.track(attributes=attrs(200))
    assert result.ok
    assert result.accepted == 200


def test_a_kept_connection_that_takes_no_byte_costs_no_attempt() -> None:
    """A reused connection whose first send fails with nothing taken: retried on a new
    connection without spending an attempt (one allowed, and the object succeeds)."""

    def script(n: int) -> list[bytes | float | None]:
        return [OK, 3.0] if n == 0 else [OK]  # the first connection is not read for 3 s

    with (
        RawServer(script) as server,
        ab.BrazeClient(server.url, "k", retry=ab.RetryPolicy(attempts=1)) as client,
    ):
        assert client.track(attributes=attrs(1)).ok
        (idle,) = client._pool._idle
        idle.sock.shutdown(socket.SHUT_WR)  # its next send fails at once (EPIPE), unread
        result = client.track(attributes=attrs(1))
    assert result.ok
    assert result.requests == 2  # the free try and the one that counted
    assert server.requests == 2
    assert server.connections == 2


# --- 2. only Braze's answer counts ------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"status": "ok"},
        {"message": "Internal error"},
        {"message": "success", "errors": "boom"},
        b"<html>gateway</html>",
    ],
)
def test_a_2xx_that_is_not_brazes_answer_is_never_a_success(body: Any) -> None:
    """``{}``, a gateway's JSON, another message, ``errors`` not a list: failed, retried."""
    with (
        RawServer(lambda n: [answer(body)]) as server,
        ab.BrazeClient(server.url, "k", retry=FAST) as client,
        pytest.raises(ab.TransportError, match="not Braze's answer") as info,
    ):
        client.track(attributes=attrs(2))
    assert info.value.result.accepted == 0
    assert [r.stage for r in info.value.result.rejected] == ["transport", "transport"]
    assert server.requests == FAST.attempts


def test_brazes_queued_answer_counts() -> None:
    """``{"message": "queued"}`` (Braze's maintenance answer) is accepted."""
    with (
        RawServer(lambda n: [answer({"message": "queued"}, 202)]) as server,
        ab.BrazeClient(server.url, "k") as client,
    ):
        assert client.track(attributes=attrs(2)).accepted == 2


# --- 3. a fatal error in the middle of a run keeps the accounting -----------------------------


def test_a_key_revoked_mid_run_raises_with_the_partial_report(tmp_path: Path) -> None:
    """A 401 after 5 good requests: AuthenticationError with .report; nothing lost."""

    def script(n: int) -> list[bytes | float | None]:
        return [OK] if n < 5 else [answer({"message": "Invalid API key"}, 401)]

    dead = tmp_path / "dead.jsonl"
    members = [{"id": f"m{i}", "score": i} for i in range(2_000)]
    with (
        RawServer(script) as server,
        ab.BrazeClient(server.url, "k", max_in_flight=1, retry=FAST) as client,
        ab.Syncer(client, MAPPING, dead_letter=dead) as syncer,
        pytest.raises(ab.AuthenticationError) as info,
    ):
        syncer.sync_members(members)
    report = info.value.report
    assert report.succeeded == 5 * 75
    assert report.total == report.succeeded + report.failed + report.skipped
    assert report.failed >= 75
    entries = [json.loads(line) for line in dead.read_text().splitlines()]
    assert len(entries) == report.failed
    assert all(e["retryable"] for e in entries)  # fix the key, replay
    assert {e["stage"] for e in entries} <= {"braze", "interrupted"}
    assert report.total <= len(members)  # what was not read is not in it (resume covers it)


@pytest.fixture(scope="module")
def ca() -> Any:
    """A trustme CA."""
    trustme = pytest.importorskip("trustme")
    return trustme.CA()


def tls_context(ca: Any, name: str) -> ssl.SSLContext:
    """A server TLS context with a certificate for ``name`` from ``ca``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert(name).configure_cert(context)
    return context


def test_a_tls_refusal_after_good_connections_keeps_the_accounting(ca: Any, tmp_path: Path) -> None:
    """Connections 0-29 verify, then a wrong certificate: TransportError with .report, and
    every record read but not accepted is in the dead letter."""
    good, bad = tls_context(ca, "127.0.0.1"), tls_context(ca, "elsewhere.example")
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    close = answer({"message": "success"}, extra="Connection: close\r\n")
    dead = tmp_path / "dead.jsonl"
    members = ({"id": f"m{i}", "score": i} for i in range(20_000))
    with (
        RawServer(lambda n: [close], tls=lambda n: good if n < 30 else bad) as server,
        ab.BrazeClient(
            server.url.replace("http:", "https:"), "k", max_in_flight=4, ca_bundle=bundle
        ) as client,
        ab.Syncer(client, MAPPING, dead_letter=dead) as syncer,
        pytest.raises(ab.TransportError, match="TLS") as info,
    ):
        syncer.sync_members(members)
    report = info.value.report
    assert report.succeeded == 30 * 75
    assert report.total == report.succeeded + report.failed
    assert len(dead.read_text().splitlines()) == report.failed > 0
    assert all(f.retryable for f in report.failures)


# --- 6. failures no retry can mend stop at once ----------------------------------------------


def test_a_tls_1_0_only_server_is_refused_at_once(ca: Any, tmp_path: Path) -> None:
    """No TLS version in common: one handshake, TransportError, no retries."""
    context = tls_context(ca, "127.0.0.1")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = ssl.TLSVersion.TLSv1
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    with (
        RawServer(lambda n: [OK], tls=lambda n: context) as server,
        ab.BrazeClient(
            server.url.replace("http:", "https:"), "k", ca_bundle=bundle, max_in_flight=4
        ) as client,
        pytest.raises(ab.TransportError, match="not retried") as info,
    ):
        client.track(attributes=attrs(300))
    assert info.value.attempts == 1
    assert server.connections <= 4  # one per slot at most, never a retry
    assert len(info.value.result.rejected) == 300
    # The user reads the reason, not the internal class name.
    assert "TLS handshake refused" in str(info.value)
    assert "UnmendableError" not in str(info.value)
    assert "UnmendableError" not in info.value.result.rejected[0].reason


def test_names_that_do_not_resolve_are_unmendable_and_resolver_hiccups_are_not() -> None:
    """EAI_NONAME is not retried; EAI_AGAIN (no answer from the resolver) is."""
    refused = unmendable(socket.gaierror(socket.EAI_NONAME, "Name or service not known"), "h")
    assert isinstance(refused, UnmendableError)
    assert "does not resolve" in str(refused)
    assert unmendable(socket.gaierror(socket.EAI_AGAIN, "Temporary failure"), "h") is None
    assert unmendable(ConnectionRefusedError(111, "refused"), "h") is None
    tunnel = OSError("Tunnel connection failed: 407 Proxy Authentication Required")
    assert "proxy refused" in str(unmendable(tunnel, "h"))
    assert unmendable(OSError("Tunnel connection failed: 502 Bad Gateway"), "h") is None


# --- 7. close() never waits behind a slow proxy ------------------------------------------------


class TricklingProxy:
    """Accepts connections and answers CONNECT one byte a second (a proxy under load)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.connections = 0
        self.stop = threading.Event()
        self.clients: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            self.clients.append(conn)
            threading.Thread(target=self._trickle, args=(conn,), daemon=True).start()

    def _trickle(self, conn: socket.socket) -> None:
        for byte in b"HTTP/1.1 200 Connection established\r\n\r\n":
            if self.stop.wait(1.0):
                return
            try:
                conn.sendall(bytes([byte]))
            except OSError:
                return

    def __enter__(self) -> TricklingProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop.set()
        self.thread.join(5)
        for conn in self.clients:
            conn.close()
        self.sock.close()


def test_close_does_not_wait_behind_connects_queued_at_a_slow_proxy() -> None:
    """close() returns while CONNECTs trickle; queued connects never start."""
    with TricklingProxy() as proxy:
        client = ab.BrazeClient(
            "https://rest.iad-99.example", "k", proxy=proxy.url, timeout=60, max_in_flight=32
        )
        errors: list[BaseException] = []

        def track() -> None:
            try:
                client.track(attributes=attrs(32 * 75))
            except BaseException as exc:
                errors.append(exc)

        sender = threading.Thread(target=track, daemon=True)
        sender.start()
        for _ in range(100):
            if proxy.connections >= 16:
                break
            time.sleep(0.05)
        assert proxy.connections >= 16  # 16 connect threads busy, 16 more queued
        closer = threading.Thread(target=client.close)
        closer.start()
        closer.join(10)
        assert not closer.is_alive()  # before: blocked until every queued CONNECT was done
    sender.join(30)
    assert not sender.is_alive()
    assert proxy.connections == 16  # the queued connects never started
    assert errors
    assert isinstance(errors[0], ab.AntavoBrazeError)


# --- 8. a retried 408 is retryable in the dead letter ------------------------------------------


def test_a_retried_408_is_replayable(tmp_path: Path) -> None:
    """408 on every try: dead-lettered as retryable, and replay resends it."""
    dead = tmp_path / "dead.jsonl"
    with FakeBraze() as fake, fake.client(retry=FAST) as client:
        fake.inject(times=FAST.attempts, status=408)
        report = ab.Syncer(client, MAPPING, dead_letter=dead).sync_members(
            [{"id": "a", "score": 1}]
        )
        assert [f.retryable for f in report.failures] == [True]
        assert json.loads(dead.read_text())["retryable"] is True
        again = ab.Syncer(client, MAPPING, dead_letter=tmp_path / "again.jsonl").replay(dead)
    assert (again.succeeded, again.skipped) == (1, 0)
    assert fake.profiles["a"] == {"score": 1}


# --- 9. track() raises the typed error after its retries ---------------------------------------


def test_track_raises_the_typed_error_with_the_whole_calls_result() -> None:
    """One batch gets 503 every time: ServerError with .result (the others accepted)."""

    def script(n: int) -> list[bytes | float | None]:
        failing = b'"m1"' in server.bodies[n]
        return [answer({"message": "unavailable"}, 503)] if failing else [OK]

    with (
        RawServer(script) as server,
        ab.BrazeClient(server.url, "k", max_in_flight=1, limits=ONE, retry=FAST) as client,
        pytest.raises(ab.ServerError) as info,
    ):
        client.track(attributes=attrs(2))
    error = info.value
    assert error.status_code == 503
    assert (error.method, error.attempts) == ("POST", FAST.attempts)
    assert error.url == f"{server.url}/users/track"
    assert error.result.accepted == 1
    assert [(r.index, r.stage) for r in error.result.rejected] == [(1, "braze")]


# --- 10. time is bounded while bytes keep arriving ---------------------------------------------


def test_a_trickle_of_tiny_compressed_chunks_is_cut_off_at_the_deadline() -> None:
    """Endless empty gzip chunks: the request ends at its timeout, not when they stop."""
    head = (
        b"HTTP/1.1 201 X\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    gzip = zlib.compressobj(wbits=31)
    start = gzip.compress(b"") + gzip.flush(zlib.Z_SYNC_FLUSH)  # byte-aligned from here
    empty = b"\x00\x00\x00\xff\xff"  # an empty stored deflate block: decodes to nothing
    chunk = f"{len(empty):x}\r\n".encode() + empty + b"\r\n"

    def script(n: int) -> Iterator[bytes | float | None]:
        yield head + f"{len(start):x}\r\n".encode() + start + b"\r\n"
        until = time.monotonic() + 40
        while time.monotonic() < until:
            yield chunk * 2000

    outcome: list[BaseException] = []

    def call() -> None:
        try:
            client.request("POST", "/users/track", body=b'{"attributes":[]}')
        except BaseException as exc:
            outcome.append(exc)

    with (
        RawServer(script) as server,  # type: ignore[arg-type]
        ab.BrazeClient(server.url, "k", timeout=1.0, retry=ab.RetryPolicy(attempts=1)) as client,
    ):
        caller = threading.Thread(target=call, daemon=True)
        caller.start()
        caller.join(25)  # the server goes on for 40 s
        assert not caller.is_alive()
    assert isinstance(outcome[0], ab.TransportError)
    assert "in time" in str(outcome[0])


# --- 11. the endpoint and the key ------------------------------------------------------------


@pytest.mark.parametrize(
    "endpoint",
    ["https://rest.iad-03.braze.com/users/track", "http://127.0.0.1:8080/braze/users/track/"],
)
def test_an_endpoint_with_brazes_path_is_refused_with_a_hint(endpoint: str) -> None:
    """``.../users/track`` is not kept as a prefix: refused, naming the base URL to give."""
    with pytest.raises(ab.ConfigurationError, match="base URL") as info:
        ab.BrazeClient(endpoint, "k")
    assert endpoint.rsplit("/users/track", 1)[0] in str(info.value)


def test_redaction_replaces_whole_keys_in_any_case_and_base64() -> None:
    """A short key is not cut out of other words; upper-case and base64 echoes are."""
    key = "kn0w"
    echo = (
        f"not known; key {key}; upper {key.upper()}; "
        f"basic {base64.b64encode(key.encode()).decode()}"
    )
    with (
        RawServer(lambda n: [answer({"message": echo}, 400)]) as server,
        ab.BrazeClient(server.url, key) as client,
        pytest.raises(ab.BadRequestError) as info,
    ):
        client.track(attributes=attrs(1))
    text = str(info.value)
    assert "not known" in text  # before: "not [REDACTED]nown"
    assert key not in text
    assert key.upper() not in text
    assert base64.b64encode(key.encode()).decode() not in text
    assert text.count("[REDACTED]") == 3


def test_the_cli_prints_the_partial_report_when_a_fatal_error_stops_a_run(
    tmp_path: Path,
) -> None:
    """Key revoked after 3 requests: the CLI prints the report, says how to continue, exits
    3; --resume then sends the rest, and no member is lost between Braze and the dead letter."""
    mapping = tmp_path / "mapping.json"
    mapping.write_text(json.dumps(DEMO_MAPPING))
    rows = list(sample_members(1500))
    members = tmp_path / "members.jsonl"
    members.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    dead = tmp_path / "dead.jsonl"
    args = ["sync", "members", "--mapping", str(mapping), "--input", str(members)]
    args += ["--dead-letter", str(dead), "--max-in-flight", "1", "--quiet"]

    def script(n: int) -> list[bytes | float | None]:
        return [OK] if n < 3 else [answer({"message": "Invalid API key"}, 401)]

    env = {k: v for k, v in os.environ.items() if not k.startswith("BRAZE_")}
    command = [sys.executable, "-m", "antavo_braze.cli", *args]
    with RawServer(script) as server:
        env.update(BRAZE_REST_ENDPOINT=server.url, BRAZE_API_KEY="revoked")
        first = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert first.returncode == 3, first.stderr
    assert "records: 225 succeeded" in first.stdout
    assert "--resume" in first.stderr
    assert "Traceback" not in first.stderr
    with FakeBraze(api_key="test-key") as fake:
        env.update(BRAZE_REST_ENDPOINT=fake.url, BRAZE_API_KEY="test-key")
        second = subprocess.run(
            [*command, "--resume"], capture_output=True, text=True, env=env, timeout=120
        )
        assert second.returncode == 0, second.stderr
        refused = {json.loads(line)["record_id"] for line in dead.read_text().splitlines()}
        sent_first = {r["id"] for r in rows[:225]}
        assert set(fake.profiles) | refused | sent_first == {r["id"] for r in rows}
        assert len(refused) == 75  # the batch the 401 answered: replay sends it


# --- 12. dependency floors that work ----------------------------------------------------------


def test_an_8_mb_nested_answer_is_refused_in_a_thread_too() -> None:
    """8 MB of nesting is not Braze's answer (orjson before 3.9.15 crashed on it)."""
    deep = b"[" * 4_000_000 + b"]" * 4_000_000
    with (
        RawServer(lambda n: [answer(deep)]) as server,
        ab.BrazeClient(server.url, "k", retry=ab.RetryPolicy(attempts=1)) as client,
    ):
        outcome: list[BaseException] = []

        def call() -> None:
            try:
                client.track(attributes=attrs(1))
            except BaseException as exc:
                outcome.append(exc)

        worker = threading.Thread(target=call)  # a thread's smaller stack
        worker.start()
        worker.join(60)
    assert isinstance(outcome[0], ab.TransportError)
    assert "not Braze's answer" in str(outcome[0])


@pytest.fixture
def tls_redis(ca: Any, tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A redis-server speaking only TLS, with a certificate for another host name."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    cert = ca.issue_cert("elsewhere.example")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    port = free_port()
    process = subprocess.Popen(
        ["redis-server", "--port", "0", "--tls-port", str(port), "--save", "",
         "--tls-cert-file", str(tmp_path / "cert.pem"),
         "--tls-key-file", str(tmp_path / "key.pem"),
         "--tls-ca-cert-file", str(bundle), "--tls-auth-clients", "no"],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for _ in range(100):
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        yield port, bundle
    finally:
        process.terminate()
        process.wait(10)


def test_rediss_checks_the_host_name(tls_redis: tuple[int, Path]) -> None:
    """rediss:// to a server whose certificate names another host is refused (redis-py 5
    did not check the name unless told to)."""
    redis = pytest.importorskip("redis")
    port, bundle = tls_redis
    client = redis_client(f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={bundle}")
    with pytest.raises(redis.exceptions.ConnectionError, match=r"(?i)hostname|certificate"):
        client.ping()
    client.close()
    unchecked = redis_client(
        f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={bundle}&ssl_check_hostname=false"
    )
    assert unchecked.ping()  # the chain is trusted: only the name was wrong
    unchecked.close()
