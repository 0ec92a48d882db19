"""The webhook receiver facing a network: authentication (Basic, JWT HS256/RS256, Escher),
failing closed without it, idempotency that neither collides nor drops genuine repeats,
/metrics and /healthz, and what an idle or slow client cannot take away."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import hashlib
import hmac
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import urllib3
from attrs import frozen
from hypothesis import example, given
from hypothesis import strategies as st

import antavo_braze as ab
from antavo_braze.serve import BasicAuth, EscherAuth, JWTAuth, auth_from_env, create_app
from antavo_braze.serve._app import receipt_for
from antavo_braze.testing import FakeBraze

from .conftest import DATA
from .test_serve import AUTH, Receiver, jwt, serve_process

pytest.importorskip("uvicorn")

SECRET = "a-long-shared-secret-of-antavo"
EVENT = {"customer": "m1", "action": "point_add", "data": {"points": 5}, "timestamp": 1_800_000_000}


@pytest.fixture
def receiver(fake: FakeBraze, tmp_path: Path) -> Iterator[Receiver]:
    """A receiver with a spool and Basic authentication (antavo:s3cret)."""
    with Receiver(fake, BasicAuth("antavo:s3cret"), tmp_path / "spool.db") as running:
        yield running


def bearer(token: str) -> dict[str, str]:
    """An Authorization header carrying ``token``."""
    return {"authorization": "Bearer " + token}


def b64(data: bytes) -> str:
    """base64url without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def raw_jwt(secret: str, claims_text: str) -> str:
    """An HS256 token whose claims are ``claims_text`` exactly (to write NaN or Infinity)."""
    head = b64(b'{"alg": "HS256", "typ": "JWT"}')
    body = b64(claims_text.encode())
    signature = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(signature)}"


# --- JWT --------------------------------------------------------------------------------


def test_jwt_without_a_finite_exp_is_refused() -> None:
    """A token that would never expire (no exp; exp a string, NaN or infinity) is refused."""
    auth = JWTAuth(SECRET)
    now = time.time()
    assert auth(bearer(jwt(SECRET, {"exp": now + 60})))
    assert not auth(bearer(jwt(SECRET, {})))
    assert not auth(bearer(jwt(SECRET, {"exp": str(int(now + 60))})))
    assert not auth(bearer(jwt(SECRET, {"exp": True})))
    for text in ('{"exp": NaN}', '{"exp": Infinity}', '{"exp": 1e400}'):
        assert not auth(bearer(raw_jwt(SECRET, text))), text
    assert not auth(bearer(raw_jwt(SECRET, f'{{"exp": {now + 60}, "nbf": NaN}}')))


def test_jwt_with_critical_extensions_is_refused() -> None:
    """A token whose header lists "crit" extensions (which we cannot honour) is refused."""
    head = b64(b'{"alg": "HS256", "crit": ["b64"], "b64": false}')
    body = b64(json.dumps({"exp": time.time() + 60}).encode())
    signature = hmac.new(SECRET.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    assert not JWTAuth(SECRET)(bearer(f"{head}.{body}.{b64(signature)}"))


def test_jwt_lifetime_is_bounded_by_max_age() -> None:
    """A token valid for longer than max_age (from iat, or from now) is refused."""
    auth = JWTAuth(SECRET, max_age=300)
    now = time.time()
    assert auth(bearer(jwt(SECRET, {"iat": now, "exp": now + 300})))
    assert not auth(bearer(jwt(SECRET, {"exp": now + 3600})))
    assert not auth(bearer(jwt(SECRET, {"iat": now - 200, "exp": now + 250})))
    assert not auth(bearer(jwt(SECRET, {"iat": now + 3600, "exp": now + 3700})))
    assert not auth(bearer(jwt(SECRET, {"iat": "now", "exp": now + 60})))
    assert JWTAuth(SECRET, max_age=7200)(bearer(jwt(SECRET, {"exp": now + 3600})))
    with pytest.raises(ab.ConfigurationError):
        JWTAuth(SECRET, max_age=float("nan"))


def test_jwt_audience_and_issuer_are_checked_when_configured() -> None:
    """aud (a string or a list) and iss must match what is configured."""
    auth = JWTAuth(SECRET, audience="braze-sync", issuer="antavo")
    exp = time.time() + 60
    assert auth(bearer(jwt(SECRET, {"exp": exp, "aud": "braze-sync", "iss": "antavo"})))
    assert auth(bearer(jwt(SECRET, {"exp": exp, "aud": ["x", "braze-sync"], "iss": "antavo"})))
    assert not auth(bearer(jwt(SECRET, {"exp": exp, "aud": "other", "iss": "antavo"})))
    assert not auth(bearer(jwt(SECRET, {"exp": exp, "iss": "antavo"})))
    assert not auth(bearer(jwt(SECRET, {"exp": exp, "aud": "braze-sync", "iss": "mallory"})))
    assert not auth(bearer(jwt(SECRET, {"exp": exp, "aud": "braze-sync"})))
    env = auth_from_env(
        {
            "ANTAVO_BRAZE_WEBHOOK_JWT_SECRET": SECRET,
            "ANTAVO_BRAZE_WEBHOOK_JWT_AUDIENCE": "braze-sync",
        }
    )
    assert env is not None
    assert not env(bearer(jwt(SECRET, {"exp": exp, "aud": "other"})))
    assert env(bearer(jwt(SECRET, {"exp": exp, "aud": "braze-sync"})))


def test_jwt_signature_has_one_spelling() -> None:
    """The signature with padding, junk characters or changed spare bits is refused."""
    auth = JWTAuth(SECRET)
    token = jwt(SECRET, {"exp": time.time() + 60})
    head, body, signature = token.split(".")
    assert auth(bearer(token))
    assert not auth(bearer(f"{head}.{body}.{signature}="))
    assert not auth(bearer(f"{head}.{body}.{signature[:10]}!{signature[10:]}"))
    # 32 bytes are 43 characters: the last one carries 2 spare bits that must be zero.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(signature[-1])
    twin = signature[:-1] + alphabet[last ^ 1]
    assert base64.urlsafe_b64decode(twin + "=") == base64.urlsafe_b64decode(signature + "=")
    assert not auth(bearer(f"{head}.{body}.{twin}"))


def rsa_pair() -> tuple[Any, bytes]:
    """A fresh RSA key and its public key as PEM."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return key, pem


def rs256(key: Any, claims: dict[str, Any]) -> str:
    """An RS256 token signed with ``key``."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    head = b64(json.dumps({"alg": "RS256", "typ": "JWT"}).encode())
    body = b64(json.dumps(claims).encode())
    signature = key.sign(f"{head}.{body}".encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{head}.{body}.{b64(signature)}"


def test_rs256_accepts_the_right_key_only(tmp_path: Path) -> None:
    """RS256 from a PEM path: Antavo's key passes; another key, HS256 with the PEM as the
    secret (algorithm confusion) and an expired token do not."""
    pytest.importorskip("cryptography")
    key, pem = rsa_pair()
    other, _ = rsa_pair()
    (tmp_path / "antavo.pem").write_bytes(pem)
    auth = auth_from_env({"ANTAVO_BRAZE_WEBHOOK_JWT_PUBLIC_KEY": str(tmp_path / "antavo.pem")})
    assert auth is not None
    exp = time.time() + 60
    assert auth(bearer(rs256(key, {"exp": exp})))
    assert not auth(bearer(rs256(other, {"exp": exp})))
    assert not auth(bearer(rs256(key, {"exp": time.time() - 3600})))
    assert not auth(bearer(rs256(key, {})))
    assert not auth(bearer(jwt(pem.decode(), {"exp": exp})))
    with pytest.raises(ab.ConfigurationError, match="PEM"):
        JWTAuth(public_key=b"not a key")
    with pytest.raises(ab.ConfigurationError, match="cannot read"):
        auth_from_env({"ANTAVO_BRAZE_WEBHOOK_JWT_PUBLIC_KEY": str(tmp_path / "missing.pem")})


# --- JWT attacks against a real server ---------------------------------------------------

JWT_AUDIENCE, JWT_ISSUER = "braze-sync", "antavo"


@frozen
class JWTServers:
    """One FakeBraze behind two real receivers: HS256 and RS256, both checking aud and iss."""

    fake: FakeBraze
    hs256: Receiver
    rs256: Receiver
    key: Any  # the RS256 receiver trusts this key's public half
    other: Any  # a key it does not trust
    pem: bytes


@pytest.fixture(scope="module")
def jwt_servers() -> Iterator[JWTServers]:
    """Started once for every token below: many requests, one pair of uvicorn servers."""
    pytest.importorskip("cryptography")
    key, pem = rsa_pair()
    other, _ = rsa_pair()
    checks = {"max_age": 300, "audience": JWT_AUDIENCE, "issuer": JWT_ISSUER}
    with (
        FakeBraze(api_key="test-key") as fake,
        Receiver(fake, JWTAuth(SECRET, **checks), None) as hs256,
        Receiver(fake, JWTAuth(public_key=pem, **checks), None) as rs256,
    ):
        yield JWTServers(fake, hs256, rs256, key, other, pem)


def good_claims(**changes: Any) -> dict[str, Any]:
    """Claims every receiver accepts, with ``changes`` (None removes a claim)."""
    now = time.time()
    claims = {"iat": now, "exp": now + 60, "aud": JWT_AUDIENCE, "iss": JWT_ISSUER, **changes}
    return {name: value for name, value in claims.items() if value is not None}


def respelled(token: str, how: str) -> str:
    """``token`` with its signature written another way that decodes to the same bytes (or
    nearly): base64 padding, a junk character, or the spare low bits of the last character."""
    head, body, signature = token.split(".")
    if how == "padded":
        return f"{head}.{body}.{signature}="
    if how == "junk":
        return f"{head}.{body}.{signature[:10]}!{signature[10:]}"
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    return f"{head}.{body}.{signature[:-1]}{alphabet[alphabet.index(signature[-1]) ^ 1]}"


def claims_text(exp: str) -> str:
    """Good claims as JSON text with ``exp`` written literally (NaN, Infinity, 1e400)."""
    now = time.time()
    return f'{{"iat": {now}, "exp": {exp}, "aud": "{JWT_AUDIENCE}", "iss": "{JWT_ISSUER}"}}'


# Each attack: which receiver it is sent to, and how the token is made.
JWT_ATTACKS: dict[str, tuple[str, Any]] = {
    "no exp": ("hs256", lambda s: jwt(SECRET, good_claims(exp=None))),
    "exp a string": ("hs256", lambda s: jwt(SECRET, good_claims(exp=str(int(time.time()) + 60)))),
    "exp NaN": ("hs256", lambda s: raw_jwt(SECRET, claims_text("NaN"))),
    "exp Infinity": ("hs256", lambda s: raw_jwt(SECRET, claims_text("Infinity"))),
    "exp 1e400": ("hs256", lambda s: raw_jwt(SECRET, claims_text("1e400"))),
    "expired": ("hs256", lambda s: jwt(SECRET, good_claims(iat=None, exp=time.time() - 3600))),
    "lifetime over max_age": (
        "hs256",
        lambda s: jwt(SECRET, good_claims(exp=time.time() + 3600)),
    ),
    "lifetime over max_age, no iat": (
        "hs256",
        lambda s: jwt(SECRET, good_claims(iat=None, exp=time.time() + 3600)),
    ),
    "wrong aud": ("hs256", lambda s: jwt(SECRET, good_claims(aud="another-service"))),
    "no aud": ("hs256", lambda s: jwt(SECRET, good_claims(aud=None))),
    "wrong iss": ("hs256", lambda s: jwt(SECRET, good_claims(iss="mallory"))),
    "wrong secret": ("hs256", lambda s: jwt("not-the-shared-secret-at-all", good_claims())),
    "alg none": ("hs256", lambda s: jwt(SECRET, good_claims(), alg="none").rsplit(".", 1)[0] + "."),
    "signature padded": ("hs256", lambda s: respelled(jwt(SECRET, good_claims()), "padded")),
    "signature with junk": ("hs256", lambda s: respelled(jwt(SECRET, good_claims()), "junk")),
    "signature spare bits": ("hs256", lambda s: respelled(jwt(SECRET, good_claims()), "bits")),
    "RS256 wrong key": ("rs256", lambda s: rs256(s.other, good_claims())),
    "RS256 wrong aud": ("rs256", lambda s: rs256(s.key, good_claims(aud="another-service"))),
    "RS256 no exp": ("rs256", lambda s: rs256(s.key, good_claims(exp=None))),
    "HS256 keyed with the public PEM": ("rs256", lambda s: jwt(s.pem.decode(), good_claims())),
    "RS256 signature padded": ("rs256", lambda s: respelled(rs256(s.key, good_claims()), "padded")),
}


@pytest.mark.parametrize("attack", list(JWT_ATTACKS))
def test_jwt_attacks_on_a_running_server_are_refused(jwt_servers: JWTServers, attack: str) -> None:
    """Each forged, unbounded or misaddressed token gets 401 and nothing reaches Braze."""
    receiver_name, make = JWT_ATTACKS[attack]
    receiver: Receiver = getattr(jwt_servers, receiver_name)
    customer = "attack-" + attack.replace(" ", "-")
    event = {**EVENT, "customer": customer}
    response = receiver.post("/antavo/events", event, **bearer(make(jwt_servers)))
    assert response.status == 401, response.data
    assert receiver.sender.flush(timeout=30)
    assert all(e.get("external_id") != customer for e in jwt_servers.fake.events)
    assert len(receiver.letters) == 0


@pytest.mark.parametrize("receiver_name", ["hs256", "rs256"])
def test_jwt_good_tokens_on_a_running_server_are_accepted(
    jwt_servers: JWTServers, receiver_name: str
) -> None:
    """A well-formed token within its lifetime, for our aud and iss, gets 202 and is sent."""
    receiver: Receiver = getattr(jwt_servers, receiver_name)
    claims = good_claims()
    token = jwt(SECRET, claims) if receiver_name == "hs256" else rs256(jwt_servers.key, claims)
    customer = f"good-{receiver_name}"
    response = receiver.post("/antavo/events", {**EVENT, "customer": customer}, **bearer(token))
    assert response.status == 202, response.data
    assert receiver.sender.flush(timeout=30)
    assert [e["external_id"] for e in jwt_servers.fake.events].count(customer) == 1


# --- Escher / AWS4 request signatures ------------------------------------------------------

ESCHER_SCOPE = "eu-west-1/execute-api/aws4_request"
ESCHER = EscherAuth("antavo-site", "an-escher-secret-of-antavo", ESCHER_SCOPE)


def escher_headers(
    port: int,
    body: bytes,
    *,
    scope: str = ESCHER_SCOPE,
    when: datetime.datetime | None = None,
    path: str = "/antavo/events",
    method: str = "POST",
) -> dict[str, str]:
    """The headers escherauth signs a request with (AWS4 / Amz, as Antavo's Trusted site)."""
    import escherauth

    options = {
        "algo_prefix": "AWS4",
        "vendor_key": "Amz",
        "auth_header_name": "Authorization",
        "date_header_name": "X-Amz-Date",
        "current_time": when or datetime.datetime.now(datetime.timezone.utc),
    }
    signer = escherauth.Escher("antavo-site", "an-escher-secret-of-antavo", scope, options)
    request = {
        "method": method,
        "url": path,
        "host": f"127.0.0.1:{port}",
        "headers": [["Content-Type", "application/json"]],
        "body": body.decode(),
    }
    signed = signer.sign_request(request)
    return dict(signed["headers"])


def test_escher_signed_webhooks(fake: FakeBraze) -> None:
    """A request signed with escherauth is accepted; a tampered body, a stale date, a wrong
    scope or no signature is refused 401 and nothing reaches Braze."""
    with Receiver(fake, ESCHER, None) as running:
        body = json.dumps(EVENT).encode()
        stale = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=10)
        tampered = json.dumps({**EVENT, "data": {"points": 5000}}).encode()
        refused = [
            running.post("/antavo/events", tampered, **escher_headers(running.port, body)),
            running.post("/antavo/events", body, **escher_headers(running.port, body, when=stale)),
            running.post(
                "/antavo/events", body, **escher_headers(running.port, body, scope="x/y/z")
            ),
            running.post("/antavo/events", body),
        ]
        ok = running.post("/antavo/events", body, **escher_headers(running.port, body))
        metrics = running.get(
            "/metrics", **escher_headers(running.port, b"", path="/metrics", method="GET")
        )
        assert running.sender.flush(timeout=30)
    assert [r.status for r in refused] == [401] * 4
    assert ok.status == 202, ok.data
    assert metrics.status == 200
    assert [e["properties"]["points"] for e in fake.events] == [5]


def test_escher_refuses_crafted_headers_quickly() -> None:
    """Authorization headers built to make a backtracking regex crawl are refused at once,
    and a key or scope other than ours is not even looked at."""
    crafted = "AWS4-HMAC-SHA256 " + "Credential=a, SignedHeaders=a, " * 2000
    started = time.process_time()
    assert not ESCHER.plausible({"authorization": crafted})
    assert not ESCHER.verify("POST", "/antavo/events", [("authorization", crafted)], b"{}")
    assert time.process_time() - started < 5  # generous: linear work takes microseconds
    other = "AWS4-HMAC-SHA256 Credential=mallory/20261206/" + ESCHER_SCOPE
    assert not ESCHER.plausible(
        {"authorization": other + ", SignedHeaders=host, Signature=" + "0" * 64}
    )
    with pytest.raises(ab.ConfigurationError, match="SCOPE"):
        auth_from_env(
            {"ANTAVO_BRAZE_WEBHOOK_ESCHER_KEY": "k", "ANTAVO_BRAZE_WEBHOOK_ESCHER_SECRET": "s"}
        )
    assert "an-escher-secret" not in repr(ESCHER)


# --- failing closed ----------------------------------------------------------------------


def call_app(app: Any, client: tuple[str, int], method: str, path: str, body: bytes) -> int:
    """One request straight to an ASGI app, from ``client``; the status it answers."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"content-type", b"application/json")],
        "client": client,
    }
    asyncio.run(app(scope, receive, send))
    return int(sent[0]["status"])


def test_create_app_without_auth_refuses_non_loopback_clients(
    fake: FakeBraze, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No credentials anywhere: a client off loopback gets 403 and nothing reaches Braze;
    loopback is served; allow_unauthenticated=True serves everyone."""
    for name in list(os.environ):
        if name.startswith("ANTAVO_BRAZE_WEBHOOK"):
            monkeypatch.delenv(name)
    client = fake.client()
    syncer = ab.Syncer(client, DATA / "mapping.json")
    body = json.dumps(EVENT).encode()
    with ab.BackgroundSender(syncer, flush_interval=0.05) as sender:
        closed = create_app(sender)
        outsider = ("203.0.113.9", 40000)
        assert call_app(closed, outsider, "POST", "/antavo/events", body) == 403
        assert call_app(closed, outsider, "GET", "/metrics", b"") == 403
        assert call_app(create_app(sender, auth=None), outsider, "POST", "/antavo/members",
                        b'{"id": "x"}') == 403  # fmt: skip
        assert sender.flush(timeout=10)
        assert fake.requests == []
        assert call_app(closed, ("127.0.0.1", 40000), "POST", "/antavo/events", body) == 202
        opened = create_app(sender, auth=None, allow_unauthenticated=True)
        changed = json.dumps({**EVENT, "customer": "m2"}).encode()
        assert call_app(opened, outsider, "POST", "/antavo/events", changed) == 202
        assert sender.flush(timeout=10)
    client.close()
    assert sorted(e["external_id"] for e in fake.events) == ["m1", "m2"]


# --- idempotency -------------------------------------------------------------------------


@given(st.text(min_size=1, max_size=300), st.text(min_size=1, max_size=300))
@example("k" * 200 + "a", "k" * 200 + "b")
@example(" padded", "padded")
def test_distinct_idempotency_keys_never_share_a_receipt(first: str, second: str) -> None:
    """Receipts differ whenever the keys differ, however long; the path scopes them."""
    one, _ = receipt_for("/antavo/events", {"idempotency-key": first}, [{}], b"{}", "event")
    two, _ = receipt_for("/antavo/events", {"idempotency-key": second}, [{}], b"{}", "event")
    other, _ = receipt_for("/antavo/members", {"idempotency-key": first}, [{}], b"{}", "member")
    assert (one == two) == (first == second)
    assert one != other


def test_long_keys_sharing_a_prefix_and_hash_lookalikes_do_not_collide(
    receiver: Receiver, fake: FakeBraze
) -> None:
    """Two keys sharing their first 200 characters are two webhooks; a key spelled like a
    body hash does not block a later keyless body with that hash."""
    prefix = "k" * 200
    first = receiver.post("/antavo/events", EVENT, **AUTH, **{"Idempotency-Key": prefix + "a"})
    other = {**EVENT, "data": {"points": 6}}
    second = receiver.post("/antavo/events", other, **AUTH, **{"Idempotency-Key": prefix + "b"})
    body = json.dumps({**EVENT, "data": {"points": 7}}).encode()
    lookalike = "sha256:" + hashlib.sha256(body).hexdigest()
    keyed = receiver.post(
        "/antavo/events", {**EVENT, "data": {"points": 8}}, **AUTH, **{"Idempotency-Key": lookalike}
    )
    keyless = receiver.post("/antavo/events", body, **AUTH)
    assert [a.status for a in (first, second, keyed, keyless)] == [202] * 4
    assert json.loads(second.data)["duplicate"] is False
    assert json.loads(keyless.data)["duplicate"] is False
    assert receiver.sender.flush(timeout=30)
    assert sorted(e["properties"]["points"] for e in fake.events) == [5, 6, 7, 8]


def test_a_to_b_to_a_and_repeated_events_are_not_dropped(fake: FakeBraze, tmp_path: Path) -> None:
    """Without keys: a redelivery within the dedupe window is a duplicate; the same body
    after the window is a new change (A -> B -> A ends at A); events with their own id are
    told apart by it, and a redelivered id is a duplicate."""
    with Receiver(fake, None, tmp_path / "spool.db", dedupe_window=1.0) as running:
        member_a, member_b = {"id": "w1", "score": 1}, {"id": "w1", "score": 2}
        answers = [running.post("/antavo/members", member_a)]
        answers.append(running.post("/antavo/members", member_a))  # redelivered at once
        answers.append(running.post("/antavo/members", member_b))
        assert running.sender.flush(timeout=30)
        time.sleep(1.2)  # the window ends
        answers.append(running.post("/antavo/members", member_a))
        one = {**EVENT, "id": "ev-1"}
        two = {**EVENT, "id": "ev-2"}
        answers += [running.post("/antavo/events", e) for e in (one, two, one)]
        assert running.sender.flush(timeout=30)
    duplicates = [json.loads(a.data)["duplicate"] for a in answers]
    assert duplicates == [False, True, False, False, False, False, True]
    assert fake.profiles["w1"]["loyalty_points"] == 1
    assert len(fake.events) == 2


def test_refused_records_are_dead_lettered_once(receiver: Receiver) -> None:
    """A webhook whose record is refused, delivered again, adds nothing to the dead letter."""
    for _ in range(3):
        answer = receiver.post("/antavo/members", [{"score": 1}], **AUTH)
        assert answer.status == 202
    assert len(receiver.letters.entries) == 1


# --- /metrics and /healthz ---------------------------------------------------------------


def test_metrics_and_health_answer_get_and_head_only(fake: FakeBraze, tmp_path: Path) -> None:
    """/metrics needs credentials (unless public_metrics); both refuse POST with 405."""
    with Receiver(fake, BasicAuth("antavo:s3cret"), None) as running:
        assert running.get("/metrics").status == 401
        assert running.get("/metrics", "POST", **AUTH).status == 405
        assert running.get("/healthz", "POST").status == 405
        assert running.get("/healthz", "DELETE").status == 405
        assert running.get("/metrics", **AUTH).status == 200
        head = running.get("/metrics", "HEAD", **AUTH)
        assert head.status == 200
        assert head.data == b""
        assert running.get("/healthz").status == 200
    with Receiver(fake, BasicAuth("antavo:s3cret"), None, public_metrics=True) as running:
        assert b"antavo_braze_queued" in running.get("/metrics").data
        assert running.get("/metrics", "POST").status == 405


# --- denial before authentication -----------------------------------------------------------


def percentile(values: list[float], share: float) -> float:
    """The ``share`` quantile of ``values`` (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


@pytest.mark.slow
def test_idle_and_slow_clients_do_not_starve_webhooks(fake: FakeBraze, tmp_path: Path) -> None:
    """300 connections that send nothing and a client trickling its body: valid webhooks
    keep getting 202, and every idle connection is closed by the server."""
    process, port = serve_process(
        fake, tmp_path, "--spool", str(tmp_path / "spool.db"),
        env={"ANTAVO_BRAZE_WEBHOOK_BASIC": "antavo:s3cret"},
    )  # fmt: skip
    idle: list[socket.socket] = []
    stop = threading.Event()
    slow_answer: list[bytes] = []

    def slow_body() -> None:
        with socket.create_connection(("127.0.0.1", port)) as sock:
            head = (
                "POST /antavo/events HTTP/1.1\r\nHost: x\r\n"
                f"Authorization: {AUTH['Authorization']}\r\n"
                "Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
            )
            sock.sendall(head.encode())
            sock.settimeout(0.5)
            while not stop.is_set():
                try:
                    sock.sendall(b" ")
                    data = sock.recv(4096)
                except TimeoutError:
                    continue
                except OSError:
                    return
                slow_answer.append(data)
                return

    try:
        for _ in range(300):
            idle.append(socket.create_connection(("127.0.0.1", port)))
        trickler = threading.Thread(target=slow_body, daemon=True)
        trickler.start()
        statuses = []
        with urllib3.PoolManager(retries=urllib3.Retry(connect=3, read=0, status=0)) as http:
            for n in range(40):
                event = {**EVENT, "data": {"points": n}}
                answer = http.request(
                    "POST", f"http://127.0.0.1:{port}/antavo/events", body=json.dumps(event),
                    headers={**AUTH, "Content-Type": "application/json"}, timeout=10,
                )  # fmt: skip
                statuses.append(answer.status)
                time.sleep(0.05)
        closed = 0
        for sock in idle:
            sock.settimeout(60)
            try:
                closed += sock.recv(1) == b""
            except OSError:
                closed += 1
        trickler.join(60)
    finally:
        stop.set()
        for sock in idle:
            sock.close()
        process.send_signal(signal.SIGTERM)
        _out, err = process.communicate(timeout=60)
    assert statuses == [202] * 40
    assert closed == 300
    assert slow_answer, "the slow client was never answered"
    assert slow_answer[0].startswith(b"HTTP/1.1 408"), slow_answer
    assert len(err) < 100_000  # no log flood


@contextlib.contextmanager
def guarded_server(fake: FakeBraze, guard: Any) -> Iterator[int]:
    """create_app (no auth, loopback) under uvicorn with ``guard``; yields its port."""
    import uvicorn

    from antavo_braze.serve._guard import guarded_protocol

    from .servers import free_port

    client = fake.client()
    sender = ab.BackgroundSender(ab.Syncer(client, DATA / "mapping.json"), flush_interval=0.05)
    port = free_port()
    config = uvicorn.Config(
        create_app(sender, auth=None), host="127.0.0.1", port=port, log_level="warning",
        http=guarded_protocol(guard), lifespan="off",
    )  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)
        sender.close(timeout=10)
        client.close()


def test_connection_guard_makes_room_and_times_out(fake: FakeBraze) -> None:
    """With room for 4 connections, 6 idle ones leave the newest 4 held (the oldest idle
    are closed to make room), a valid webhook still gets in, and the idle ones are closed
    once their deadline passes."""
    from antavo_braze.serve._guard import ConnectionGuard

    guard = ConnectionGuard(4, header_timeout=1.0)
    with guarded_server(fake, guard) as port:
        sockets = [socket.create_connection(("127.0.0.1", port)) for _ in range(6)]
        try:
            with urllib3.PoolManager(retries=False) as http:
                answer = http.request("POST", f"http://127.0.0.1:{port}/antavo/events",
                                      body=json.dumps(EVENT), timeout=10)  # fmt: skip
            assert answer.status == 202
            for sock in sockets:
                sock.settimeout(30)
                assert sock.recv(1) == b""
        finally:
            for sock in sockets:
                sock.close()
    assert guard.evicted >= 2
    assert guard.closed_idle >= 1
    with pytest.raises(ValueError, match="at least 1"):
        ConnectionGuard(0, 1.0)


def test_connection_guard_turns_away_a_newcomer_when_all_are_busy(fake: FakeBraze) -> None:
    """When every held connection is busy with a request (its body still coming), a new
    connection is closed at once rather than evicting one of them."""
    from antavo_braze.serve._guard import ConnectionGuard

    guard = ConnectionGuard(2, header_timeout=30.0)
    head = (
        b"POST /antavo/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n{"
    )
    with guarded_server(fake, guard) as port:
        busy = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(2)]
        try:
            for sock in busy:
                sock.sendall(head)
            deadline = time.monotonic() + 10
            while (guard.open, len(guard.waiting)) != (2, 0):  # both heads arrived
                assert time.monotonic() < deadline, (guard.open, len(guard.waiting))
                time.sleep(0.02)
            with socket.create_connection(("127.0.0.1", port), timeout=30) as newcomer:
                assert newcomer.recv(1) == b""
            assert guard.refused == 1
            assert guard.evicted == 0
        finally:
            for sock in busy:
                sock.close()


# --- files -------------------------------------------------------------------------------

NOBODY = 65534


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_files_of_another_user_are_refused(tmp_path: Path) -> None:
    """A spool, dead letter, state file or checkpoint planted by another user is refused."""
    for name in ("spool.db", "dead.jsonl", "state.db", "run.checkpoint", "state2.db-wal"):
        (tmp_path / name).touch(mode=0o600)
        os.chown(tmp_path / name, NOBODY, NOBODY)
    with pytest.raises(ab.ConfigurationError, match="another user"):
        ab.SqliteStateStore(tmp_path / "state.db")
    with pytest.raises(ab.ConfigurationError, match="another user"):
        ab.JsonlDeadLetter(tmp_path / "dead.jsonl", append=True)
    with pytest.raises(ab.ConfigurationError, match="another user"):
        ab.SqliteStateStore(tmp_path / "state2.db")
    from antavo_braze._run.files import replace_private
    from antavo_braze._service.spool import Spool

    with pytest.raises(ab.ConfigurationError, match="another user"):
        Spool(tmp_path / "spool.db")
    with pytest.raises(ab.ConfigurationError, match="another user"):
        replace_private(tmp_path / "run.checkpoint", "{}")


def test_files_readable_by_others_are_refused(tmp_path: Path, fake: FakeBraze) -> None:
    """An existing spool or dead letter open to other users is refused, with what to do;
    serve says so and exits 2."""
    (tmp_path / "dead.jsonl").touch(mode=0o644)
    os.chmod(tmp_path / "dead.jsonl", 0o644)
    (tmp_path / "spool.db").touch()
    os.chmod(tmp_path / "spool.db", 0o640)
    with pytest.raises(ab.ConfigurationError, match="chmod 600"):
        ab.JsonlDeadLetter(tmp_path / "dead.jsonl")
    client = fake.client()
    syncer = ab.Syncer(client, DATA / "mapping.json")
    with pytest.raises(ab.ConfigurationError, match="open to other users"):
        ab.BackgroundSender(syncer, spool=tmp_path / "spool.db")
    client.close()
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "antavo_braze.cli", "serve", "--mapping",
         str(DATA / "mapping.json"), "--spool", str(tmp_path / "spool.db")],
        env={**os.environ, "BRAZE_REST_ENDPOINT": fake.url, "BRAZE_API_KEY": fake.api_key},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "open to other users" in result.stderr
    assert "Traceback" not in result.stderr


# --- the state store's key -------------------------------------------------------------------


def test_a_stolen_state_file_holds_no_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The hash key is not in the state file: it is in an owner-only key file next to it
    (or the environment); a store made before keeps its hashes (its key moves out)."""
    import sqlite3

    monkeypatch.delenv("ANTAVO_BRAZE_STATE_KEY", raising=False)
    store = ab.SqliteStateStore(tmp_path / "state.db")
    key_file = tmp_path / "state.db.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert bytes.fromhex(key_file.read_text()) == store.secret
    store.close()
    assert store.secret.hex().encode() not in (tmp_path / "state.db").read_bytes()
    assert ab.SqliteStateStore(tmp_path / "state.db").secret == store.secret
    # An old store: the key in its meta table.
    old = tmp_path / "old.db"
    db = sqlite3.connect(old)
    db.execute("CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
    db.execute("INSERT INTO meta VALUES ('secret', ?)", ("ab" * 32,))
    db.commit()
    db.close()
    os.chmod(old, 0o600)
    migrated = ab.SqliteStateStore(old)
    assert migrated.secret == bytes.fromhex("ab" * 32)
    migrated.close()
    rows = sqlite3.connect(old).execute("SELECT * FROM meta WHERE name = 'secret'").fetchall()
    assert rows == []
    (tmp_path / "empty.db.key").touch(mode=0o600)
    with pytest.raises(ab.ConfigurationError, match="not a state key"):
        ab.SqliteStateStore(tmp_path / "empty.db")
    monkeypatch.setenv("ANTAVO_BRAZE_STATE_KEY", "k" * 32)
    assert ab.SqliteStateStore(tmp_path / "env.db").secret == b"k" * 32
    assert not (tmp_path / "env.db.key").exists()
    monkeypatch.setenv("ANTAVO_BRAZE_STATE_KEY", "short")
    with pytest.raises(ab.ConfigurationError, match="ANTAVO_BRAZE_STATE_KEY"):
        ab.SqliteStateStore(tmp_path / "env.db")


# --- Redis secrets -----------------------------------------------------------------------


def test_redis_url_comes_from_a_private_file_or_the_environment(
    redis_url: str, fake: FakeBraze, tmp_path: Path
) -> None:
    """A Redis password on the command line is refused (exit 2, with what to do); `--state
    redis` takes the URL from an owner-only --redis-url-file or ANTAVO_BRAZE_REDIS_URL."""
    import subprocess
    import sys

    source = tmp_path / "members.jsonl"
    source.write_text('{"id": "r1", "score": 4}\n')
    env = {**os.environ, "BRAZE_REST_ENDPOINT": fake.url, "BRAZE_API_KEY": fake.api_key}
    env.pop("ANTAVO_BRAZE_REDIS_URL", None)

    def sync(*options: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "antavo_braze.cli", "sync", "members", "--mapping",
             str(DATA / "mapping.json"), "--input", str(source), "--quiet", *options],
            env={**env, **extra}, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip

    secret_url = redis_url.replace("redis://", "redis://:hunter2@", 1)
    on_command_line = sync("--state", secret_url)
    assert on_command_line.returncode == 2
    assert "--redis-url-file" in on_command_line.stderr
    assert "hunter2" not in on_command_line.stderr
    url_file = tmp_path / "redis.url"
    url_file.write_text(redis_url + "\n")
    os.chmod(url_file, 0o644)
    shared = sync("--state", "redis", "--redis-url-file", str(url_file))
    assert shared.returncode == 2
    assert "open to other users" in shared.stderr
    os.chmod(url_file, 0o600)
    assert sync("--state", "redis", "--redis-url-file", str(url_file)).returncode == 0
    assert len(fake.requests) == 1
    again = sync("--state", "redis", ANTAVO_BRAZE_REDIS_URL=redis_url)
    assert again.returncode == 0, again.stderr
    assert len(fake.requests) == 1  # the shared state in Redis: unchanged, not sent again


def test_unauthenticated_requests_are_refused_before_their_body(receiver: Receiver) -> None:
    """A request without credentials is answered 401 at once, without waiting for the body
    it announced, and its connection is closed."""
    with socket.create_connection(("127.0.0.1", receiver.port), timeout=30) as sock:
        sock.sendall(
            b"POST /antavo/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100000\r\n\r\n{"
        )
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 401")
    assert b"connection: close" in answer.lower()


@pytest.mark.parametrize(
    ("option", "value"),
    [("--max-connections", "0"), ("--jwt-max-age", "nan"), ("--dedupe-window", "-1")],
)
def test_serve_refuses_bad_bounds(option: str, value: str) -> None:
    """A connection cap, token lifetime or dedupe window that bounds nothing: exit 2."""
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "antavo_braze.cli", "serve", "--mapping",
         str(DATA / "mapping.json"), option, value],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert f"{option} {value}: expected a number of at least" in result.stderr
    assert "Traceback" not in result.stderr


def test_redis_state_key_from_the_environment(redis_url: str) -> None:
    """With a key given (or in ANTAVO_BRAZE_STATE_KEY) the Redis store keeps no key in Redis."""
    import redis

    prefix = "antavo_braze:keytest"
    ab.RedisStateStore(redis_url, prefix=prefix).close()  # an older store: a key in Redis
    db = redis.Redis.from_url(redis_url)
    assert db.get(f"{prefix}:secret") is not None
    store = ab.RedisStateStore(redis_url, prefix=prefix, key="k" * 32)
    assert store.secret == b"k" * 32
    assert db.get(f"{prefix}:secret") is None
    store.close()
    db.close()


@given(
    st.one_of(st.none(), st.floats(allow_nan=True), st.text(max_size=5), st.booleans()),
    st.one_of(st.none(), st.floats(allow_nan=True)),
    st.floats(min_value=1, max_value=10_000),
)
def test_accepted_claims_never_outlive_max_age(exp: Any, iat: Any, max_age: float) -> None:
    """Whatever exp and iat say, accepted claims expire, and within max_age (plus leeway)."""
    from antavo_braze.serve._auth import _LEEWAY, _claims_ok

    now = 1_800_000_000.0
    claims: dict[str, Any] = {}
    if exp is not None:
        claims["exp"] = exp if not isinstance(exp, float) else now + exp
    if iat is not None:
        claims["iat"] = now + iat
    if _claims_ok(claims, now, max_age, None, None):
        assert isinstance(claims["exp"], float)
        assert now - _LEEWAY <= claims["exp"] <= now + max_age + _LEEWAY
