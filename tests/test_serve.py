"""The webhook receiver: `antavo-braze serve` as a real process, and create_app under a real
uvicorn server, posted to over real HTTP."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import urllib3

import antavo_braze as ab
from antavo_braze.serve import BasicAuth, JWTAuth, _app, auth_from_env, create_app
from antavo_braze.testing import FakeBraze

from .conftest import DATA, in_threads
from .servers import free_port, wait_until_serving

uvicorn = pytest.importorskip("uvicorn")


def jwt(secret: str, claims: dict[str, Any], alg: str = "HS256") -> str:
    """An HS256 JSON Web Token (or one claiming another algorithm)."""

    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = part(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    body = part(json.dumps(claims).encode())
    signature = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{part(signature)}"


def basic(credentials: str) -> str:
    """An HTTP Basic Authorization header value."""
    return "Basic " + base64.b64encode(credentials.encode()).decode()


def test_basic_auth() -> None:
    """Basic accepts exactly the configured user:password."""
    auth = BasicAuth("antavo:s3cret")
    assert auth({"authorization": basic("antavo:s3cret")})
    assert not auth({"authorization": basic("antavo:wrong")})
    assert not auth({"authorization": "Basic !!!not-base64"})
    assert not auth({})
    assert "s3cret" not in repr(auth)
    with pytest.raises(ab.ConfigurationError):
        BasicAuth("no-colon")


def test_a_short_basic_password_is_accepted_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A Basic password under 16 characters works but is warned about (without the password);
    a long one is not."""
    with caplog.at_level(logging.WARNING, logger="antavo_braze.serve"):
        short = BasicAuth("antavo:s3cret")
        BasicAuth("antavo:" + "x7Qp2mVz9LkR4tWb")
    assert short({"authorization": basic("antavo:s3cret")})
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "the password is 6 characters" in warning
    assert "16 or more" in warning
    assert "s3cret" not in warning


def test_jwt_auth() -> None:
    """JWT accepts HS256 tokens signed with the secret, within exp/nbf; nothing else."""
    secret = "a-long-shared-secret-of-antavo"
    auth = JWTAuth(secret)
    now = time.time()
    assert auth({"authorization": "Bearer " + jwt(secret, {"sub": "antavo", "exp": now + 60})})
    assert not auth({"authorization": "Bearer " + jwt(secret, {"exp": now - 3600})})
    assert not auth({"authorization": "Bearer " + jwt(secret, {"nbf": now + 3600})})
    assert not auth({"authorization": "Bearer " + jwt("another-secret-entirely", {"exp": now})})
    assert not auth({"authorization": "Bearer " + jwt(secret, {"exp": now}, alg="none")})
    assert not auth({"authorization": "Bearer a.b"})
    assert not auth({"authorization": "Bearer " + "x" * 100_000 + ".y.z"})
    with pytest.raises(ab.ConfigurationError):
        JWTAuth("short")


def test_auth_from_env_accepts_either_method() -> None:
    """With both variables set, a request authenticated either way passes."""
    secret = "a-long-shared-secret-of-antavo"
    auth = auth_from_env(
        {"ANTAVO_BRAZE_WEBHOOK_BASIC": "u:p", "ANTAVO_BRAZE_WEBHOOK_JWT_SECRET": secret}
    )
    assert auth is not None
    assert auth({"authorization": basic("u:p")})
    assert auth({"authorization": "Bearer " + jwt(secret, {"exp": time.time() + 60})})
    assert not auth({"authorization": basic("u:x")})
    assert auth_from_env({}) is None


class Receiver:
    """create_app under a real uvicorn server in a thread, with its sender and FakeBraze."""

    def __init__(self, fake: FakeBraze, auth: Any, spool: Path | None, **options: Any) -> None:
        self.letters = ab.MemoryDeadLetter()
        self.client = fake.client()
        syncer = ab.Syncer(self.client, DATA / "mapping.json", dead_letter=self.letters)
        self.sender = ab.BackgroundSender(syncer, flush_interval=0.05, spool=spool)
        self.port = free_port()
        config = uvicorn.Config(
            create_app(self.sender, auth=auth, **options), host="127.0.0.1", port=self.port,
            log_level="warning", lifespan="on",
        )  # fmt: skip
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.http = urllib3.PoolManager(retries=False)

    def __enter__(self) -> Receiver:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sender.close(timeout=10)
        self.client.close()
        self.http.clear()

    def post(self, path: str, body: Any, **headers: str) -> urllib3.BaseHTTPResponse:
        """POST ``body`` (JSON unless bytes) to ``path``."""
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        return self.http.request(
            "POST", f"http://127.0.0.1:{self.port}{path}", body=data,
            headers={"Content-Type": "application/json", **headers},
        )  # fmt: skip

    def get(self, path: str, method: str = "GET", **headers: str) -> urllib3.BaseHTTPResponse:
        """GET (or ``method``) ``path``."""
        return self.http.request(method, f"http://127.0.0.1:{self.port}{path}", headers=headers)


@pytest.fixture
def receiver(fake: FakeBraze, tmp_path: Path) -> Iterator[Receiver]:
    """A receiver with a spool and Basic authentication (antavo:s3cret)."""
    with Receiver(fake, BasicAuth("antavo:s3cret"), tmp_path / "spool.db") as running:
        yield running


AUTH = {"Authorization": basic("antavo:s3cret")}


def test_webhooks_are_accepted_once_and_delivered(receiver: Receiver, fake: FakeBraze) -> None:
    """Events and members are answered 202 and reach Braze; a redelivery is not sent twice."""
    event = {"customer": "m1", "action": "point_add", "data": {"points": 5},
             "timestamp": 1_800_000_000}  # fmt: skip
    first = receiver.post("/antavo/events", event, **AUTH)
    again = receiver.post("/antavo/events", event, **AUTH)
    keyed = receiver.post("/antavo/events", {**event, "data": {"points": 7}},
                          **AUTH, **{"Idempotency-Key": "delivery-1"})  # fmt: skip
    keyed_again = receiver.post("/antavo/events", {**event, "data": {"points": 8}},
                                **AUTH, **{"Idempotency-Key": "delivery-1"})  # fmt: skip
    members = receiver.post("/antavo/members", [{"id": "m1", "score": "12"}, {"score": 1}], **AUTH)
    wrapped = receiver.post("/antavo/events", {"events": [event, {**event, "customer": "m2"}]},
                            **AUTH, **{"Idempotency-Key": "batch-1"})  # fmt: skip
    assert [r.status for r in (first, again, keyed, keyed_again, members, wrapped)] == [202] * 6
    assert json.loads(again.data) == {"accepted": 0, "duplicate": True}
    assert json.loads(keyed_again.data)["duplicate"] is True
    assert json.loads(members.data)["accepted"] == 1
    assert "id: missing" in json.loads(members.data)["refused"][0]
    assert receiver.sender.flush(timeout=30)
    points = sorted(e["properties"]["points"] for e in fake.events)
    assert points == [5, 5, 5, 7]  # first, the wrapped pair, the keyed one; no redelivery
    assert fake.profiles["m1"]["loyalty_points"] == 12
    metrics = receiver.get("/metrics", **AUTH).data.decode()
    assert 'antavo_braze_webhooks_total{result="duplicate"} 2' in metrics
    assert "antavo_braze_requests_total " in metrics
    assert 'antavo_braze_sent_total{outcome="succeeded"} 5' in metrics
    assert json.loads(receiver.get("/healthz").data)["status"] == "ok"


def test_bad_requests_get_clear_answers(receiver: Receiver) -> None:
    """401 without credentials, 400 for non-JSON, 413 for oversized, 405, 404."""
    assert receiver.post("/antavo/events", {"customer": "a", "action": "x"}).status == 401
    assert receiver.post("/antavo/events", b"{not json", **AUTH).status == 400
    assert receiver.post("/antavo/events", [], **AUTH).status == 400
    assert receiver.post("/antavo/events", ["not an object"], **AUTH).status == 400
    huge = b'{"customer": "a", "action": "x", "data": {"s": "' + b"x" * 1_100_000 + b'"}}'
    assert receiver.post("/antavo/events", huge, **AUTH).status == 413
    assert receiver.get("/antavo/events").status == 405
    assert receiver.get("/nowhere").status == 404
    unauthorized = receiver.post("/antavo/members", {"id": "a"}, Authorization=basic("a:b"))
    assert unauthorized.status == 401
    assert unauthorized.headers["WWW-Authenticate"].startswith("Basic")


@pytest.mark.parametrize("spooled", [False, True])
def test_a_full_queue_answers_503_so_antavo_retries(
    fake: FakeBraze, tmp_path: Path, spooled: bool
) -> None:
    """No room in the queue: 503 with Retry-After (Antavo redelivers), never a silent drop."""
    fake.latency = 2.0
    with Receiver(fake, None, tmp_path / "spool.db" if spooled else None) as running:
        running.sender.max_queue = 1
        running.sender.flush_at = 1
        answers = [running.post("/antavo/members", {"id": f"q{n}", "score": n}) for n in range(3)]
        assert [a.status for a in answers][:1] == [202]
        assert 503 in [a.status for a in answers]
        assert answers[-1].headers["Retry-After"] == "10"


def test_webhooks_waiting_for_the_spool_are_bounded(
    fake: FakeBraze, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the spool cannot be written, at most _COMMIT_QUEUE webhooks wait for it (beyond:
    503, not sent); those waiting are answered 202 once it can, and are sent."""
    monkeypatch.setattr(_app, "_COMMIT_QUEUE", 3)
    spool = tmp_path / "spool.db"
    with Receiver(fake, None, spool) as running:
        assert running.post("/antavo/members", {"id": "first", "score": 0}).status == 202
        blocker = sqlite3.connect(spool, isolation_level=None, check_same_thread=False)
        blocker.execute("BEGIN IMMEDIATE")  # the spool's write lock: the committer waits
        statuses: dict[str, int] = {}

        def post(number: int) -> None:
            member = f"w{number}"
            with urllib3.PoolManager(retries=False, timeout=60) as http:
                answer = http.request(
                    "POST", f"http://127.0.0.1:{running.port}/antavo/members",
                    body=json.dumps({"id": member, "score": number}).encode(),
                )  # fmt: skip
                statuses[member] = answer.status

        holder = threading.Thread(target=post, args=(0,))
        holder.start()  # taken by the committer, which then waits for the lock
        time.sleep(0.5)
        posters = [threading.Thread(target=post, args=(n,)) for n in range(1, 9)]
        for poster in posters:
            poster.start()  # 3 wait for the committer, the other 5 are refused at once
        deadline = time.monotonic() + 20
        while len(statuses) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        refused_while_locked = sorted(statuses.values())
        blocker.execute("ROLLBACK")
        for thread in (holder, *posters):
            thread.join(60)
        blocker.close()
        assert running.sender.flush(timeout=30)
    accepted = {m for m, status in statuses.items() if status == 202}
    assert refused_while_locked == [503] * len(refused_while_locked)  # none waited for room
    assert len(statuses) == 9
    assert len(accepted) >= 4  # the batch being written and the 3 waiting
    assert list(statuses.values()).count(503) == 9 - len(accepted) >= 4
    assert {m for m in statuses if m.startswith("w")} & set(fake.profiles) == accepted


def serve_process(fake: FakeBraze, tmp_path: Path, *extra: str, env: dict[str, str] | None = None
                  ) -> tuple[subprocess.Popen[str], int]:  # fmt: skip
    """Start `antavo-braze serve` against the fake; wait until /healthz answers."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "antavo_braze.cli", "serve", "--mapping",
         str(DATA / "mapping.json"), "--port", str(port), *extra],
        env={**os.environ, "BRAZE_REST_ENDPOINT": fake.url, "BRAZE_API_KEY": fake.api_key,
             **(env or {})},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    wait_until_serving(process, port)
    return process, port


def test_serve_takes_20000_webhooks_from_32_clients_exactly_once(
    fake: FakeBraze, tmp_path: Path
) -> None:
    """20,000 webhook posts (and 2,000 redeliveries) from 32 concurrent clients: every one
    answered 202, every event at FakeBraze exactly once."""
    fake.record = True
    process, port = serve_process(
        fake, tmp_path, "--spool", str(tmp_path / "spool.db"),
        env={"ANTAVO_BRAZE_WEBHOOK_BASIC": "antavo:s3cret"},
    )  # fmt: skip
    statuses: list[int] = []
    try:

        def client(number: int) -> None:
            with urllib3.PoolManager(maxsize=1, retries=False) as http:
                mine = []
                for n in range(number, 20_000, 32):
                    event = {"customer": f"m{n % 1000}", "action": "point_add",
                             "data": {"points": n}, "timestamp": 1_800_000_000}  # fmt: skip
                    body = json.dumps(event)
                    for _ in range(2 if n % 10 == 0 else 1):  # a redelivery of every 10th
                        answer = http.request(
                            "POST", f"http://127.0.0.1:{port}/antavo/events", body=body,
                            headers={**AUTH, "Content-Type": "application/json"},
                        )  # fmt: skip
                        mine.append(answer.status)
                statuses.extend(mine)

        in_threads(client, 32)
        deadline = time.monotonic() + 120
        while len(fake.events) < 20_000 and time.monotonic() < deadline:
            time.sleep(0.2)
        with urllib3.PoolManager() as http:
            metrics = http.request(
                "GET", f"http://127.0.0.1:{port}/metrics", headers=AUTH
            ).data.decode()
    finally:
        process.send_signal(signal.SIGTERM)
        _out, err = process.communicate(timeout=60)
    assert statuses == [202] * 22_000
    assert sorted(e["properties"]["points"] for e in fake.events) == list(range(20_000))
    assert 'antavo_braze_webhooks_total{result="duplicate"} 2000' in metrics
    assert process.returncode == 0, err
    assert "stopped (SIGTERM): 20000 changes received, 20000 succeeded" in err


def test_serve_refuses_an_open_host_without_authentication(tmp_path: Path) -> None:
    """Without credentials in the environment, serve listens on loopback only."""
    result = subprocess.run(
        [sys.executable, "-m", "antavo_braze.cli", "serve", "--mapping",
         str(DATA / "mapping.json"), "--host", "0.0.0.0"],
        env={k: v for k, v in os.environ.items() if not k.startswith("ANTAVO_BRAZE_WEBHOOK")},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "without authentication" in result.stderr


def test_serve_on_loopback_without_auth_warns(fake: FakeBraze, tmp_path: Path) -> None:
    """Unauthenticated on loopback: it runs, says so, skips an unchanged member (--state), and
    stops cleanly on SIGTERM; contract limits are taken (--batch-size, --rate)."""
    process, port = serve_process(
        fake, tmp_path, "--state", str(tmp_path / "state.db"), "--batch-size", "50",
        "--rate", "100/1",
    )  # fmt: skip
    body = json.dumps({"id": "w1", "score": 3}).encode()
    url = f"http://127.0.0.1:{port}"
    answers = []
    with urllib3.PoolManager(retries=False) as http:

        def wait_for(line: str) -> None:
            deadline = time.monotonic() + 30
            while line not in (metrics := http.request("GET", f"{url}/metrics").data.decode()):
                assert time.monotonic() < deadline, metrics
                time.sleep(0.1)

        for n, outcome in enumerate(("succeeded", "skipped")):
            answers.append(http.request("POST", f"{url}/antavo/members", body=body,
                                        headers={"Idempotency-Key": f"delivery-{n}"}))  # fmt: skip
            wait_for(f'antavo_braze_sent_total{{outcome="{outcome}"}} 1')
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert [a.status for a in answers] == [202, 202]
    assert "not authenticated" in err
    # No --dead-letter: the summary does not point at one.
    assert "1 skipped, 0 unsent\n" in err
    assert "dead letter" not in err
    assert fake.profiles["w1"]["loyalty_points"] == 3
    assert len(fake.requests) == 1  # the unchanged second change was not sent
