"""FakeAntavo itself: its spec verifier's refusals, its filters, ordering and errors."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

import pytest
import requests
import urllib3

import antavo_braze as ab
from antavo_braze._antavo.client import ESCHER_OPTIONS
from antavo_braze.testing import FakeAntavo, verify_signature

NOW = datetime(2026, 12, 6, 10, 0, tzinfo=timezone.utc)
CHECK: dict[str, Any] = {"api_key": "k", "api_secret": "s", "stack": "st2", "now": NOW.timestamp()}


def signed(target: str = "/customers/c-1?api_key=k") -> list[tuple[str, str]]:
    """The headers escherauth signs ``GET target`` with at NOW."""
    from escherauth import EscherRequestsAuth

    auth = EscherRequestsAuth("k", "s", "st2/api/antavo_request",
                              {**ESCHER_OPTIONS, "current_time": NOW})  # fmt: skip
    prepared = requests.Request("GET", "https://api.st2.antavo.com" + target).prepare()
    auth(prepared)
    return list(prepared.headers.items())


def without(headers: list[tuple[str, str]], name: str) -> list[tuple[str, str]]:
    return [(k, v) for k, v in headers if k.lower() != name]


def replaced(headers: list[tuple[str, str]], name: str, value: str) -> list[tuple[str, str]]:
    return [*without(headers, name.lower()), (name, value)]


def test_the_spec_verifier_accepts_a_good_signature() -> None:
    """A request escherauth signed with Antavo's parameters verifies."""
    assert verify_signature("GET", "/customers/c-1?api_key=k", signed(), b"", **CHECK) is None


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda h: without(h, "authorization"), "header is missing"),
        (lambda h: replaced(h, "Authorization", "Basic abc"), "not an ANTAVO-HMAC-SHA256"),
        (
            lambda h: replaced(
                h,
                "Authorization",
                dict(h)["Authorization"].replace("SignedHeaders=date;host", "SignedHeaders=host"),
            ),
            "must be signed",
        ),
        (lambda h: without(h, "date"), "a signed header is missing"),
        (lambda h: replaced(h, "Date", "yesterday"), "not a date"),
        (lambda h: replaced(h, "Date", "Mon, 07 Dec 2026 10:00:00 GMT"), "credential date"),
        (lambda h: replaced(h, "Date", "Sun, 06 Dec 2026 10:06:00 GMT"), "clock skew"),
        (lambda h: replaced(h, "Host", "api.st3.antavo.com"), "signatures do not match"),
    ],
)
def test_the_spec_verifier_refuses(change: Any, reason: str) -> None:
    """Each way a signature can be wrong is refused, saying why."""
    found = verify_signature("GET", "/customers/c-1?api_key=k", change(signed()), b"", **CHECK)
    assert found is not None
    assert reason in found


def test_the_spec_verifier_wants_the_key_in_the_query() -> None:
    """A signed request without api_key in its query is refused."""
    headers = signed("/customers/c-1")
    found = verify_signature("GET", "/customers/c-1", headers, b"", **CHECK)
    assert found is not None
    assert "api_key query parameter" in found


def test_the_spec_verifier_refuses_another_key_and_scope() -> None:
    """An unknown key, and a scope of another stack."""
    headers = signed()
    other = {**CHECK, "api_key": "other"}
    assert verify_signature("GET", "/customers/c-1?api_key=k", headers, b"", **other) == (
        "unknown API key"
    )
    stack = {**CHECK, "stack": "st9"}
    found = verify_signature("GET", "/customers/c-1?api_key=k", headers, b"", **stack)
    assert found is not None
    assert "credential scope" in found


def raw(fake: FakeAntavo, method: str, path: str) -> tuple[int, Any]:
    with urllib3.PoolManager(retries=False) as http:
        answer = http.request(method, fake.url + path, body=b"{}" if method == "POST" else None)
    return answer.status, json.loads(answer.data)


def test_unsigned_requests_are_refused() -> None:
    """A plain request (only the api_key) is 401 with Antavo's Read API body."""
    with FakeAntavo() as fake:
        status, body = raw(fake, "GET", "/customers/c-1?api_key=test-key")
    assert status == 401
    assert body["error"]["code"] == 2132


def test_routes_filters_and_errors() -> None:
    """405 for POST, 400 for bad paging and criteria, 404 elsewhere; event filters gt/lte
    and the desc order (date, then id, newest first)."""
    with FakeAntavo() as fake, fake.client() as client:
        for number in range(4):
            fake.add_event({"customer": {"id": "c-1"}, "action": "a",
                            "timestamp": datetime(2026, 1, 1, 0, 0, number)})  # fmt: skip
        assert client._get("/customers/-/events", {"timestamp.gt": "2026-01-01T00:00:00+0000",
                                                    "timestamp.lte": "2026-01-01T00:00:02"}
                           )["total"] == 2  # fmt: skip
        newest = client._get("/customers/-/events", {"order": "desc"})["data"]
        assert [e["timestamp"][-7:] for e in newest] == ["03.000Z", "02.000Z", "01.000Z",
                                                         "00.000Z"]  # fmt: skip
        for params, path, status in [
            ({"limit": "x"}, "/customers", 400),
            ({}, "/customers", 400),
            ({"updated_at.gt": "soon"}, "/customers", 400),
            ({"timestamp.gt": "soon"}, "/customers/-/events", 400),
            ({}, "/nowhere", 404),
        ]:
            with pytest.raises(ab.BrazeAPIError) as caught:
                client._get(path, params)
            assert caught.value.status_code == status
    with FakeAntavo() as fake:
        assert raw(fake, "POST", "/customers")[0] in (401, 405)


def test_data_helpers_check_what_they_are_given() -> None:
    """add_customer needs an id, add_event a customer; update_customer moves updated_at."""
    fake = FakeAntavo()
    with pytest.raises(ValueError, match="'id'"):
        fake.add_customer({"score": 1})
    with pytest.raises(ValueError, match="customer"):
        fake.add_event({"action": "a"})
    fake.add_customer({"id": "c-1", "updated_at": 5})
    assert fake.update_customer("c-1", score=2)["updated_at"] > 5
    with pytest.raises(RuntimeError, match="not running"):
        _ = fake.url
    assert "url=None" in repr(fake)


def test_times_may_be_iso_strings_and_are_served_as_antavo_serves_them() -> None:
    """updated_at and event timestamps given as ISO 8601 strings are read (updated_at served
    as unix seconds, timestamps as Antavo's ISO form); a value that is not a time is a
    ValueError when it is added, naming the record and the field."""
    with FakeAntavo() as fake, fake.client() as client:
        fake.add_customer({"id": "c-1", "score": 1, "updated_at": "2026-01-01T00:00:00Z"})
        fake.add_customer({"id": "c-2", "updated_at": "2026-01-02T00:00:00+0000"})
        fake.add_customer({"id": "c-3", "updated_at": 1_767_225_599})  # just before c-1
        fake.update_customer("c-3", updated_at="2026-01-03")
        assert client.customer("c-1")["updated_at"] == 1_767_225_600
        changed = client.changed_customers("2026-01-01T12:00:00Z", "2026-02-01T00:00:00Z")
        assert [(c["id"], c["updated_at"]) for c in changed] == [
            ("c-2", 1_767_312_000),
            ("c-3", 1_767_398_400),
        ]
        fake.add_event({"id": "e-1", "customer": "c-1", "action": "a",
                        "timestamp": "2026-01-01T00:00:05+00:00"})  # fmt: skip
        events = list(client.events("2026-01-01T00:00:00Z", "2026-01-01T00:01:00Z"))
        assert [e["id"] for e in events] == ["e-1"]
        assert fake.events[0]["timestamp"] == "2026-01-01T00:00:05.000Z"
    fake = FakeAntavo()
    with pytest.raises(ValueError, match=r"customer c-9: updated_at: 'yesterday' is not a time"):
        fake.add_customer({"id": "c-9", "updated_at": "yesterday"})
    fake.add_customer({"id": "c-8"})
    with pytest.raises(ValueError, match=r"customer c-8: updated_at: True is not a time"):
        fake.update_customer("c-8", updated_at=True)
    with pytest.raises(ValueError, match=r"event e-2: timestamp: '2026-13-01' is not a time"):
        fake.add_event({"id": "e-2", "customer": "c-8", "timestamp": "2026-13-01"})
    assert set(fake.customers) == {"c-8"}
    assert fake.events == []
