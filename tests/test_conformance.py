"""HTTP conformance: real sockets on loopback answering in every way real HTTP allows (and some
it does not). For each case, at max_in_flight 1 and 4 alike: the objects Braze rejected are
reported rejected, nothing is reported succeeded unless Braze's JSON said so, and the number
of attempts is what the retry policy allows.
"""

from __future__ import annotations

import gzip
import json
import resource
import zlib

import pytest

import antavo_braze as ab

from .servers import CLOSE, RawServer

pytestmark = pytest.mark.timeout(60)

ATTEMPTS = 3
POLICY = ab.RetryPolicy(attempts=ATTEMPTS, wait_initial=0.001, wait_max=0.01, wait_jitter=0)
# Braze's answer rejecting the second of two objects.
ANSWER = json.dumps(
    {
        "message": "success",
        "attributes_processed": 1,
        "errors": [
            {"type": "BLACKLISTED_EXTERNAL_USER_ID", "input_array": "attributes", "index": 1}
        ],
    }
).encode()
OBJECTS = [{"external_id": "a", "points": 1}, {"external_id": "b", "points": 2}]
# The rejection as reported: Braze's code, and what it means.
BLOCKED = (
    "BLACKLISTED_EXTERNAL_USER_ID (Braze blocks this external_id: a blocklisted or dummy user)"
)


def head(*lines: str, status: str = "201 Created", end: bytes = b"\r\n") -> bytes:
    """A status line and header lines, with the empty line that ends them."""
    return end.join([f"HTTP/1.1 {status}".encode(), *(line.encode() for line in lines), b""]) + end


def answer(body: bytes = ANSWER, *extra: str) -> bytes:
    """A complete Content-Length answer."""
    return head(f"Content-Length: {len(body)}", "Content-Type: application/json", *extra) + body


def chunked(body: bytes, size: int = 7) -> bytes:
    """``body`` as chunks with extensions, ended by a trailer."""
    out = b""
    for start in range(0, len(body), size):
        piece = body[start : start + size]
        out += f"{len(piece):x};ext=1\r\n".encode() + piece + b"\r\n"
    return out + b"0\r\nX-Trailer: yes\r\n\r\n"


def trickle(data: bytes, pause: float) -> list[bytes | float | None]:
    out: list[bytes | float | None] = []
    for byte in data:
        out += [bytes([byte]), pause]
    return out


def endless(prefix: bytes, piece: bytes, count: int = 10_000) -> list[bytes | float | None]:
    return [prefix, *([piece] * count)]


GZIP = gzip.compress(ANSWER)
BOMB = gzip.compress(b"\0" * (64 * 1024 * 1024))  # 64 MiB of zeros in ~64 KB: never held whole
ANSWERED = {  # the server's answer is Braze's, however it is framed
    "content-length": lambda n: [answer()],
    "gzip-not-asked-for": lambda n: [answer(GZIP, "Content-Encoding: gzip")],
    "deflate-zlib": lambda n: [answer(zlib.compress(ANSWER), "Content-Encoding: deflate")],
    "deflate-raw": lambda n: [
        answer(zlib.compress(ANSWER, wbits=-15), "Content-Encoding: deflate")
    ],
    "obs-fold-header": lambda n: [
        head(f"Content-Length: {len(ANSWER)}", "X-Folded: one", " two") + ANSWER
    ],
    "lf-only-lines": lambda n: [head(f"Content-Length: {len(ANSWER)}", end=b"\n") + ANSWER],
    "100-continue-first": lambda n: [head(status="100 Continue"), answer()],
    "103-early-hints-first": lambda n: [head("Link: </a>", status="103 Early Hints"), answer()],
    "chunked-extensions-trailers": lambda n: [head("Transfer-Encoding: chunked") + chunked(ANSWER)],
    "http-1.0-until-close": lambda n: [
        b"HTTP/1.0 201 Created\r\nContent-Type: application/json\r\n\r\n" + ANSWER,
        CLOSE,
    ],
    "connection-close-every-answer": lambda n: [answer(ANSWER, "Connection: close"), CLOSE],
    "two-megabyte-body": lambda n: [
        answer(ANSWER[:-1] + b',"padding":"' + b"x" * 2_000_000 + b'"}')
    ],
    "split-in-tiny-writes": lambda n: [*(bytes([b]) for b in answer())],
}
REFUSED = {  # no usable answer: every attempt fails, nothing succeeds
    "cut-off-status-line": lambda n: [b"HTTP/1.1 20", CLOSE],
    "cut-off-headers": lambda n: [b"HTTP/1.1 201 Created\r\nContent-Len", CLOSE],
    "cut-off-body": lambda n: [head(f"Content-Length: {len(ANSWER)}") + ANSWER[:20], CLOSE],
    "cut-off-chunked-body": lambda n: [head("Transfer-Encoding: chunked") + b"10\r\nabc", CLOSE],
    "non-json-2xx": lambda n: [answer(b"<html>OK</html>")],
    "json-but-not-an-object-2xx": lambda n: [answer(b"[1, 2]")],
    "empty-2xx": lambda n: [answer(b"")],
    "negative-chunk-size": lambda n: [
        head("Transfer-Encoding: chunked") + b"-6\r\nabcdef\r\n0\r\n\r\n"
    ],
    "oversized-chunk-size": lambda n: [
        head("Transfer-Encoding: chunked") + b"FFFFFFFFFFFFFFFFFFFFFFFFFFFFFF\r\nab"
    ],
    "non-hex-chunk-size": lambda n: [head("Transfer-Encoding: chunked") + b"zz\r\n{}\r\n0\r\n\r\n"],
    "flood-of-1xx": lambda n: endless(b"", head(status="100 Continue"), 200),
    "endless-headers": lambda n: endless(head(status="201 Created")[:-2], b"X-More: yes\r\n"),
    "endless-chunk-size-line": lambda n: endless(head("Transfer-Encoding: chunked"), b"1" * 4096),
    "endless-trailers": lambda n: endless(
        head("Transfer-Encoding: chunked") + b"0\r\n", b"X-Trailer: yes\r\n"
    ),
    "ten-gigabyte-content-length": lambda n: endless(
        head("Content-Length: 10000000000"), b"x" * 65536
    ),
    "endless-chunked-body": lambda n: endless(
        head("Transfer-Encoding: chunked"), b"10000\r\n" + b"x" * 65536 + b"\r\n"
    ),
    "gzip-bomb": lambda n: [answer(BOMB, "Content-Encoding: gzip")],
    "unsupported-content-encoding": lambda n: [answer(b"\x8b\x00", "Content-Encoding: br")],
    "garbage-instead-of-http": lambda n: [b"SSH-2.0-OpenSSH_9.2\r\n\r\n", CLOSE],
    "truncated-gzip": lambda n: [answer(GZIP[: len(GZIP) // 2], "Content-Encoding: gzip")],
}

IN_FLIGHT = pytest.mark.parametrize("in_flight", [1, 4])


def track(server: RawServer, in_flight: int, timeout: float = 5.0) -> ab.TrackResult:
    """Two attributes objects through a client of the given width (the call's result, also
    when a request failed as a whole and track() raised it)."""
    with ab.BrazeClient(
        server.url, "test-key", max_in_flight=in_flight, retry=POLICY, timeout=timeout
    ) as client:
        try:
            return client.track(attributes=OBJECTS)
        except (ab.TransportError, ab.BrazeAPIError) as exc:
            result: ab.TrackResult = exc.result
            return result


@IN_FLIGHT
@pytest.mark.parametrize("case", sorted(ANSWERED))
def test_braze_answers_in_any_framing(case: str, in_flight: int) -> None:
    """However the answer is framed, the rejected object is rejected and the other accepted."""
    with RawServer(ANSWERED[case]) as server:
        result = track(server, in_flight)
    assert result.accepted == 1
    assert [(r.index, r.stage, r.reason) for r in result.rejected] == [(1, "braze", BLOCKED)]
    assert result.requests == server.requests == 1


@IN_FLIGHT
@pytest.mark.parametrize("case", sorted(REFUSED))
def test_no_usable_answer_succeeds_nothing(case: str, in_flight: int) -> None:
    """Without Braze's JSON answer, no object succeeds, and every allowed attempt was made."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with RawServer(REFUSED[case]) as server:
        result = track(server, in_flight)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert result.accepted == 0
    assert [(r.index, r.stage) for r in result.rejected] == [(0, "transport"), (1, "transport")]
    assert result.requests == server.requests == ATTEMPTS
    assert grown_mib < 100, f"memory grew {grown_mib:.0f} MiB"  # a response-size cap


@IN_FLIGHT
def test_a_trickled_answer_is_bounded_by_the_timeout(in_flight: int) -> None:
    """``timeout`` bounds the whole request: one byte every 50 ms never completes in 0.5 s."""
    with RawServer(lambda n: trickle(answer(), 0.05)) as server:
        result = track(server, in_flight, timeout=0.5)
    assert result.accepted == 0
    assert {r.stage for r in result.rejected} == {"transport"}
    assert "within 0.5s" in result.rejected[0].reason
    assert server.requests == ATTEMPTS


@IN_FLIGHT
def test_retryable_statuses_then_an_answer(in_flight: int) -> None:
    """A 503 and a 429 are retried (the 429 waits what it says), then the answer counts."""
    script = {
        0: [answer(b'{"message":"busy"}').replace(b"201 Created", b"503 Service Unavailable")],
        1: [
            answer(b'{"message":"slow down"}', "Retry-After: 0.05").replace(
                b"201 Created", b"429 Too Many Requests"
            )
        ],
    }
    with RawServer(lambda n: script.get(n, [answer()])) as server:
        result = track(server, in_flight)
    assert result.accepted == 1
    assert [r.index for r in result.rejected] == [1]
    assert server.requests == 3


@IN_FLIGHT
def test_the_client_asks_for_identity_and_sends_its_key_once(in_flight: int) -> None:
    """The request says Accept-Encoding: identity; one well-formed request per attempt."""
    seen: list[bytes] = []

    def script(n: int) -> list[bytes | float | None]:
        return [answer()]

    with RawServer(script) as server:
        track(server, in_flight)
        seen = server.bodies
    assert json.loads(seen[0]) == {"attributes": OBJECTS}
