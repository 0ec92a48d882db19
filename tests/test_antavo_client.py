"""AntavoClient against FakeAntavo over real HTTP: signing, paging, retries, errors, secrets."""

from __future__ import annotations

import itertools
import logging
import pickle
from datetime import datetime, timezone
from typing import Any

import pytest
import requests
from escherauth import Escher, EscherRequestsAuth
from hypothesis import given, settings
from hypothesis import strategies as st

import antavo_braze as ab
from antavo_braze._antavo.client import ESCHER_OPTIONS, credential_scope
from antavo_braze._antavo.shapes import (
    customer_ids,
    event_envelope,
    format_time,
    page_continues,
    to_utc,
)
from antavo_braze.testing import FakeAntavo, RecordedAntavoRequest, verify_signature

from .servers import free_port

KEY, SECRET = "test-key", "test-secret"


def escher_accepts(fake: FakeAntavo, request: RecordedAntavoRequest) -> str:
    """Run escherauth's own verifier on a request FakeAntavo received; the key it accepted."""
    verifier = Escher(KEY, SECRET, credential_scope(fake.stack), dict(ESCHER_OPTIONS))
    wire = {
        "method": request.method,
        "url": request.target,
        "headers": [list(h) for h in request.headers],
        "body": "",
    }
    return str(verifier.authenticate(wire, {KEY: SECRET}, ["date"]))


@pytest.fixture
def fake() -> Any:
    with FakeAntavo() as server:
        yield server


def test_signature_passes_escherauths_verifier_and_the_spec_verifier(fake: FakeAntavo) -> None:
    """A read is signed so that both escherauth's verifier and the fake's own accept it."""
    fake.add_customer({"id": "c-1", "score": 5})
    with fake.client() as client:
        assert client.customer("c-1")["score"] == 5
    request = fake.requests[-1]
    assert request.status == 200
    assert escher_accepts(fake, request) == KEY
    names = {name.lower() for name, _ in request.headers}
    assert {"authorization", "date", "host"} <= names
    assert request.query["api_key"] == KEY  # the key travels in the signed query too


def test_query_that_needs_percent_2c_and_2b_is_signed_as_sent(fake: FakeAntavo) -> None:
    """Commas (%2C) and a '+' offset (%2B) are encoded on the wire and verify on both sides."""
    fake.add_customer({"id": "c-1", "updated_at": 1_780_000_000})
    with fake.client() as client:
        client.customer("c-1", fields=["groups", "purchases.ytd"])
        listed = client._get("/customers", {"updated_at.gt": "2026-01-01T00:00:00+0000"})
    assert listed == [{"id": "c-1"}]
    first, second = fake.requests[-2:]
    assert "fields=groups%2Cpurchases.ytd" in first.target
    assert "updated_at.gt=2026-01-01T00%3A00%3A00%2B0000" in second.target
    assert first.status == second.status == 200
    assert escher_accepts(fake, first) == escher_accepts(fake, second) == KEY


def test_worked_example_of_the_reference() -> None:
    """escherauth with Antavo's parameters gives the reference's worked-example signature,
    and the spec verifier accepts it (and refuses it once the query changes)."""
    moment = datetime(2026, 12, 6, 10, 0, tzinfo=timezone.utc)
    auth = EscherRequestsAuth(
        "example-key",
        "example-secret",
        "st2/api/antavo_request",
        {**ESCHER_OPTIONS, "current_time": moment},
    )
    target = (
        "/customers/-/events?api_key=example-key&timestamp.gte=2026-12-06T09%3A00%3A00Z"
        "&timestamp.lt=2026-12-06T09%3A59%3A00Z&order=asc&limit=100&offset=0"
    )
    prepared = requests.Request("GET", "https://api.st2.antavo.com" + target).prepare()
    auth(prepared)
    assert prepared.headers["Authorization"] == (
        "ANTAVO-HMAC-SHA256 Credential=example-key/20261206/st2/api/antavo_request, "
        "SignedHeaders=date;host, "
        "Signature=7f7755092a17c96ca1c13cf9f15311d5bf3c32f7ddc8e1ff48f568d19dddb6ba"
    )
    headers = list(prepared.headers.items())
    check = {"api_key": "example-key", "api_secret": "example-secret", "stack": "st2"}
    now = moment.timestamp()
    assert verify_signature("GET", target, headers, b"", now=now, **check) is None
    tampered = target.replace("limit=100", "limit=101")
    assert verify_signature("GET", tampered, headers, b"", now=now, **check) == (
        "the signatures do not match"
    )


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"api_secret": "wrong"}, "the signatures do not match"),
        ({"stack": "other"}, "credential scope"),
    ],
)
def test_a_bad_signature_is_refused_with_a_hint(
    fake: FakeAntavo, change: dict[str, str], reason: str
) -> None:
    """A wrong secret or stack: 401 from the fake, AuthenticationError with Antavo's code and
    a hint; never retried."""
    with fake.client(**change) as client, pytest.raises(ab.AuthenticationError) as caught:
        client.customer("c-1")
    error = caught.value
    assert error.status_code == 401
    assert error.antavo_code == 2132  # type: ignore[attr-defined]
    assert "ANTAVO_API_SECRET" in error.hint  # type: ignore[attr-defined]
    assert reason in error.body  # the fake says why in its answer
    assert len(fake.requests) == 1
    assert "wrong" not in str(error)


def test_clock_skew_over_300_seconds_is_refused_and_named(fake: FakeAntavo) -> None:
    """The fake's clock 400 s ahead: 401, and the hint names the skew; 200 s passes."""
    fake.add_customer({"id": "c-1"})
    fake.clock_offset = 200
    with fake.client() as client:
        assert client.customer("c-1")["id"] == "c-1"
        fake.clock_offset = 400
        with pytest.raises(ab.AuthenticationError) as caught:
            client.customer("c-1")
    assert "clock" in str(caught.value)


def test_403_is_permission_denied_with_the_ip_filter_hint(fake: FakeAntavo) -> None:
    """A 403 (IP filter) raises PermissionDeniedError at once, naming the IP filter."""
    fake.fail_next(403, body={"error": {"type": "ForbiddenException", "code": 7, "message": "IP"}})
    with fake.client() as client, pytest.raises(ab.PermissionDeniedError) as caught:
        client.customer("c-1")
    assert "IP filter" in str(caught.value)
    assert caught.value.antavo_code == 7  # type: ignore[attr-defined]
    assert len(fake.requests) == 1


def test_5xx_429_and_dropped_connections_are_retried(fake: FakeAntavo) -> None:
    """Server errors, 429 and a dropped connection are retried until the read succeeds."""
    fake.add_customer({"id": "c-1"})
    fake.fail_next(503, count=2)
    fake.fail_next(429)
    fake.fail_next(drop=True)
    with fake.client() as client:
        assert client.customer("c-1")["id"] == "c-1"
        assert client.requests == 5
    assert [r.status for r in fake.requests] == [503, 503, 429, 0, 200]


def test_retries_end_in_a_typed_error(fake: FakeAntavo) -> None:
    """After every attempt failed, ServerError (5xx) or RateLimitError (429) is raised."""
    fake.fail_next(502, count=3)
    with fake.client(retry=ab.RetryPolicy(attempts=3, wait_initial=0, wait_jitter=0)) as client:
        with pytest.raises(ab.ServerError, match="after 3 attempt"):
            client.customer("c-1")
        fake.fail_next(429, count=2)
        client.retry = ab.RetryPolicy(attempts=2, wait_initial=0, wait_jitter=0)
        with pytest.raises(ab.RateLimitError, match="rate limit"):
            client.customer("c-1")


def test_rate_limited_fake_is_waited_out(fake: FakeAntavo) -> None:
    """Beyond the fake's rate the client gets 429s, waits them out and reads everything."""
    for number in range(6):
        fake.add_customer({"id": f"c-{number}"})
    fake.rate_limit, fake.rate_window = 2, 0.2
    policy = ab.RetryPolicy(attempts=50, wait_initial=0.05, wait_max=0.1, wait_jitter=0.0)
    with fake.client(retry=policy) as client:
        found = [client.customer(f"c-{n}")["id"] for n in range(6)]
    assert found == [f"c-{n}" for n in range(6)]
    assert any(r.status == 429 for r in fake.requests)


def test_pacing_holds_requests_beyond_requests_per_minute(fake: FakeAntavo) -> None:
    """With requests_per_minute=3, three reads go and the pacer holds a fourth."""
    fake.add_customer({"id": "c-1"})
    with fake.client(requests_per_minute=3) as client:
        for _ in range(3):
            client.customer("c-1")
        assert client._pacer.try_acquire() > 30  # seconds until the minute frees a slot


def test_404_names_antavos_code(fake: FakeAntavo) -> None:
    """A missing customer: HTTP 404 with Antavo's code 160212, not retried."""
    with fake.client() as client, pytest.raises(ab.BrazeAPIError) as caught:
        client.customer("nobody")
    assert caught.value.status_code == 404
    assert caught.value.antavo_code == 160212  # type: ignore[attr-defined]
    assert "Customer not found" in str(caught.value)
    assert len(fake.requests) == 1


def test_secrets_stay_out_of_repr_errors_and_logs(
    fake: FakeAntavo, caplog: pytest.LogCaptureFixture
) -> None:
    """Neither the key nor the secret shows in repr, an error, or urllib3's debug log."""
    key, secret = "k3y-only-here", "s3cret-only-here"
    caplog.set_level(logging.DEBUG)
    with fake.client(api_key=key, api_secret=secret) as client:
        with pytest.raises(ab.AuthenticationError) as caught:
            client.customer("c-1")
        fast = ab.RetryPolicy(attempts=2, wait_initial=0, wait_jitter=0)
        closed = ab.AntavoClient(
            f"http://127.0.0.1:{free_port()}", key, secret, stack="test", retry=fast
        )
        with pytest.raises(ab.TransportError) as down:
            closed.customer("c-1")
        shown = " ".join([repr(client), str(caught.value), str(down.value), caplog.text])
        with pytest.raises(TypeError):
            pickle.dumps(client)
    assert "api_key=***" in caplog.text
    assert key not in shown
    assert secret not in shown


def test_customers_over_three_pages(fake: FakeAntavo) -> None:
    """250 changed customers come over three list pages, each once, each fetched in full."""
    for number in range(250):
        fake.add_customer({"id": f"c-{number:03d}", "score": number, "updated_at": 1000 + number})
    with fake.client() as client:
        found = list(client.changed_customers(999, 2000))
    assert sorted(c["id"] for c in found) == [f"c-{n:03d}" for n in range(250)]
    assert all("score" in c for c in found)
    pages = [r for r in fake.requests if r.path == "/customers"]
    assert len(pages) == 3
    assert [r.query["updated_at.gt"] for r in pages] == ["1970-01-01T00:16:39Z"] * 3


def test_changed_customers_respects_the_window(fake: FakeAntavo) -> None:
    """Only updated_at after since and not after until; a later change waits."""
    for number, moment in enumerate([100, 200, 300, 400]):
        fake.add_customer({"id": f"c-{number}", "updated_at": moment})
    with fake.client() as client:
        found = [c["id"] for c in client.changed_customers(100, 300)]
    assert found == ["c-1", "c-2"]


def test_customer_pages_shifting_while_read_lose_nothing(fake: FakeAntavo) -> None:
    """Customers of page one changed while page two is read (the list moves by three): none
    is lost or repeated, and the next window has the changed ones again."""
    for number in range(250):
        fake.add_customer({"id": f"c-{number:03d}", "updated_at": 1000 + number})
    moved: list[str] = []

    def shift(path: str) -> None:
        pages = [r for r in fake.requests if r.path == "/customers"]
        if path == "/customers" and len(pages) == 1 and not moved:
            for number in range(3):  # three customers of page one move to the list's end
                fake.update_customer(f"c-{number:03d}", updated_at=5000 + number)
                moved.append(f"c-{number:03d}")

    fake.on_request = shift
    with fake.client() as client:
        found = [c["id"] for c in client.changed_customers(999, 2000)]
        assert len(found) == len(set(found))
        assert set(found) == {f"c-{n:03d}" for n in range(250)}
        later = [c["id"] for c in client.changed_customers(2000, 6000)]
    assert later == moved


def test_customer_list_moving_more_than_the_overlap_is_read_again(fake: FakeAntavo) -> None:
    """Fifty customers of page one leave the list while page two is read: the window is
    read again from the start, and nothing is lost or repeated."""
    for number in range(250):
        fake.add_customer({"id": f"c-{number:03d}", "updated_at": 1000 + number})
    done: list[bool] = []

    def shift(path: str) -> None:
        pages = [r for r in fake.requests if r.path == "/customers"]
        if path == "/customers" and len(pages) == 1 and not done:
            done.append(True)
            for number in range(50):
                fake.customers[f"c-{number:03d}"]["updated_at"] = 10  # out of the window

    fake.on_request = shift
    with fake.client() as client:
        found = [c["id"] for c in client.changed_customers(999, 2000)]
    assert len(found) == len(set(found))
    # c-000..c-049 were read (page one) before they left; they are fetched anyway.
    assert set(found) >= {f"c-{n:03d}" for n in range(50, 250)}


def test_events_over_pages_oldest_first_as_envelopes(fake: FakeAntavo) -> None:
    """Events in [since, until) over several pages, oldest first, as sync_events envelopes."""
    for number in range(230):
        fake.add_event(
            {
                "customer": f"c-{number % 7}",
                "action": "point_add",
                "timestamp": 1_780_000_000 + number,
                "data": {"points": number},
            }
        )
    fake.add_event({"customer": "c-1", "action": "opt_in", "timestamp": 1_780_000_000 + 500})
    with fake.client() as client:
        found = list(client.events(1_780_000_000, 1_780_000_230))
        opt_ins = list(client.events(1_780_000_000, 1_780_001_000, actions=["opt_in"]))
    assert [e["data"]["points"] for e in found] == list(range(230))
    assert found[0]["customer"] == "c-0"
    assert found[0]["action"] == "point_add"
    assert found[0]["id"] == fake.events[0]["id"]
    assert [e["action"] for e in opt_ins] == ["opt_in"]
    pages = [r for r in fake.requests if r.path == "/customers/-/events"]
    assert pages[0].query["order"] == "asc"
    assert pages[0].query["timestamp.lt"] == format_time(to_utc(1_780_000_230))


def test_event_pages_shifting_while_read_give_each_event_once(fake: FakeAntavo) -> None:
    """A late event that becomes visible inside the window while page two is read: every
    event comes exactly once (the total tells the client to look again)."""
    for number in range(150):
        fake.add_event(
            {"id": f"{number + 10:024x}", "customer": "c-1", "action": "point_add",
             "timestamp": 1_780_000_000 + number}
        )  # fmt: skip
    added: list[bool] = []

    def late(path: str) -> None:
        pages = [r for r in fake.requests if r.path == path == "/customers/-/events"]
        if len(pages) == 1 and not added:
            added.append(True)  # an id that sorts before page two: everything shifts by one
            fake.add_event(
                {"id": f"{1:024x}", "customer": "c-2", "action": "opt_in",
                 "timestamp": 1_780_000_050}
            )  # fmt: skip

    fake.on_request = late
    with fake.client() as client:
        found = [e["id"] for e in client.events(1_780_000_000, 1_780_001_000)]
    assert len(found) == len(set(found)) == 151
    assert f"{1:024x}" in found


def test_endpoint_forms_and_from_env() -> None:
    """A stack name, an api.<stack> URL, a loopback URL with stack=; http elsewhere refused."""
    client = ab.AntavoClient("st2", KEY, SECRET)
    assert (client.endpoint, client.stack) == ("https://api.st2.antavo.com", "st2")
    assert ab.AntavoClient("https://api.st9.antavo.com/", KEY, SECRET).stack == "st9"
    with pytest.raises(ab.ConfigurationError, match="stack"):
        ab.AntavoClient("https://antavo.example.com", KEY, SECRET)
    with pytest.raises(ab.ConfigurationError, match="https"):
        ab.AntavoClient("http://api.st2.antavo.com", KEY, SECRET)
    with pytest.raises(ab.ConfigurationError, match="ANTAVO_API_SECRET"):
        ab.AntavoClient.from_env({"ANTAVO_STACK": "st2", "ANTAVO_API_KEY": KEY})
    env = {"ANTAVO_API_URL": "http://127.0.0.1:9", "ANTAVO_STACK": "st3"}
    built = ab.AntavoClient.from_env({**env, "ANTAVO_API_KEY": KEY, "ANTAVO_API_SECRET": SECRET})
    assert (built.endpoint, built.stack) == ("http://127.0.0.1:9", "st3")
    assert SECRET not in repr(built)


def test_a_callers_session_is_used_and_left_open(fake: FakeAntavo) -> None:
    """session= brings the caller's requests.Session: its headers go out, close() keeps it."""
    fake.add_customer({"id": "c-1"})
    session = requests.Session()
    session.headers["X-Trace"] = "t-1"
    with fake.client(session=session) as client:
        client.customer("c-1")
    assert ("X-Trace", "t-1") in fake.requests[-1].headers
    assert session.adapters  # still usable
    session.close()


# --- the pure shapes -------------------------------------------------------------------------


@given(st.integers(min_value=0, max_value=32_503_680_000))
def test_times_round_trip_through_the_filter_format(seconds: int) -> None:
    """Unix seconds -> the Z form -> back: the same second, never a '+'."""
    text = format_time(to_utc(seconds))
    assert "+" not in text
    assert text.endswith("Z")
    assert to_utc(text).timestamp() == seconds


@given(st.dictionaries(st.text(min_size=1, max_size=5), st.integers(), max_size=5))
def test_event_envelope_reads_properties_as_data(data: dict[str, int]) -> None:
    """properties [{name, value}] become data {name: value}; Customer.id the customer."""
    event = {
        "id": "e1",
        "action": "a",
        "Customer": {"id": "c"},
        "timestamp": "2026-01-01T00:00:00.000Z",
        "properties": [{"name": k, "label": k, "value": v} for k, v in data.items()],
    }
    envelope = event_envelope(event)
    assert envelope["customer"] == "c"
    assert envelope["data"] == data
    assert envelope["id"] == "e1"


@given(st.lists(st.text(min_size=1, max_size=3), max_size=20), st.integers(0, 5))
def test_a_page_joins_when_it_holds_the_previous_tail(ids: list[str], overlap: int) -> None:
    """A page that starts with the previous page's last items joins it."""
    tail = ids[len(ids) - overlap :] if overlap else []
    assert page_continues(tail, [*tail, "new"])


def test_customer_list_envelopes() -> None:
    """A list, a {data} envelope and one {id} object are each read; junk is refused."""
    assert customer_ids([{"id": "a"}, {"id": 2}]) == ["a", "2"]
    assert customer_ids({"data": [{"id": "a"}]}) == ["a"]
    assert customer_ids({"id": "a"}) == ["a"]
    with pytest.raises(ValueError, match="usable id"):
        customer_ids([{"name": "x"}])


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (datetime(2026, 12, 6, 9, 0, 0, 500_000), "2026-12-06T09:00:00Z"),  # naive: UTC
        ("2026-12-06T10:00:00+01:00", "2026-12-06T09:00:00Z"),
        ("2026-12-06", "2026-12-06T00:00:00Z"),
        (datetime(2026, 12, 6, tzinfo=timezone.utc).date(), "2026-12-06T00:00:00Z"),
        (1_796_547_600.9, "2026-12-06T09:00:00Z"),
    ],
)
def test_times_in_every_accepted_form(value: Any, expected: str) -> None:
    """Datetimes (naive = UTC), dates, unix seconds and ISO strings become whole UTC seconds."""
    assert format_time(to_utc(value)) == expected


@pytest.mark.parametrize("value", [True, "yesterday", object(), 1e20])
def test_what_is_not_a_time_is_refused(value: Any) -> None:
    """A bool, a word, an object or an absurd number is a ConfigurationError."""
    with pytest.raises(ab.ConfigurationError, match="time"):
        to_utc(value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"api_key": ""}, "ANTAVO_API_KEY"),
        ({"api_secret": ""}, "ANTAVO_API_SECRET"),
        ({"api_key": "bad key!"}, "Escher credential"),
        ({"requests_per_minute": 0}, "requests_per_minute"),
        ({"page_size": 500}, "page_size"),
        ({"timeout": 0}, "timeout"),
        ({"stack": "Not A Stack"}, "stack name"),
        ({"endpoint": ""}, "empty"),
        ({"endpoint": "ftp://api.st2.antavo.com"}, "not an Antavo API URL"),
        ({"endpoint": "https://user:pw@api.st2.antavo.com"}, "no credentials"),
    ],
)
def test_bad_configuration_is_refused_clearly(kwargs: dict[str, Any], message: str) -> None:
    """Every bad option is a ConfigurationError saying which, never the secret."""
    options: dict[str, Any] = {"endpoint": "st2", "api_key": KEY, "api_secret": SECRET}
    options.update(kwargs)
    endpoint = options.pop("endpoint")
    with pytest.raises(ab.ConfigurationError, match=message) as caught:
        ab.AntavoClient(endpoint, **options)
    assert SECRET not in str(caught.value)


def test_window_and_ids_are_checked(fake: FakeAntavo) -> None:
    """A window that ends before it starts, and an empty customer id, are refused unsent;
    a closed client refuses to read."""
    client = fake.client()
    with pytest.raises(ab.ConfigurationError, match="ends before it starts"):
        list(client.events(2000, 1000))
    with pytest.raises(ab.ConfigurationError, match="customer id"):
        client.customer("")
    client.close()
    with pytest.raises(ab.ConfigurationError, match="closed"):
        client.customer("c-1")
    assert fake.requests == []


def test_answers_that_are_not_antavos_fail_clearly(fake: FakeAntavo) -> None:
    """A 2xx that is not JSON is retried then fails; a list without ids, an event page
    without data, and an event without a customer are errors naming what came."""
    policy = ab.RetryPolicy(attempts=2, wait_initial=0, wait_jitter=0)
    with fake.client(retry=policy) as client:
        fake.fail_next(200, count=2, body=b"<html>not json</html>")
        with pytest.raises(ab.TransportError, match="not Antavo's answer"):
            client.customer("c-1")
        fake.fail_next(200, body=[{"name": "no id"}])
        with pytest.raises(ab.ServerError, match="usable id"):
            list(client.changed_customers(0, 10))
        fake.fail_next(200, body={"total": 1})
        with pytest.raises(ab.ServerError, match="no 'data' list"):
            list(client.events(0, 10))
        fake.fail_next(200, body={"total": 1, "data": [{"id": "e1", "action": "x"}]})
        with pytest.raises(ab.ServerError, match="names no customer"):
            list(client.events(0, 10))
        fake.fail_next(200, body=["a", "b"])
        with pytest.raises(ab.ServerError, match="not an object"):
            client.customer("c-1")


def test_a_customer_listed_but_gone_is_skipped(fake: FakeAntavo) -> None:
    """A customer the list names that 404s when fetched (merged, erased) is left out."""
    fake.add_customer({"id": "c-1", "updated_at": 100})
    fake.add_customer({"id": "c-2", "updated_at": 101})
    fake.on_request = lambda path: fake.customers.pop("c-1", None) if path.endswith("c-1") else None
    with fake.client() as client:
        assert [c["id"] for c in client.changed_customers(0, 200)] == ["c-2"]


def test_a_list_that_keeps_moving_gives_up(fake: FakeAntavo) -> None:
    """A list that moves by more than the overlap on every second page: after three
    re-reads, a TransportError that says so."""
    for number in range(400):
        fake.add_customer({"id": f"c-{number:03d}", "updated_at": 1000 + number})
    lists = itertools.count(1)

    def churn(path: str) -> None:
        if path == "/customers" and next(lists) % 2 == 0:  # each page two: 50 leave first
            for customer_id in sorted(fake.customers)[:50]:
                del fake.customers[customer_id]

    fake.on_request = churn
    with fake.client() as client, pytest.raises(ab.TransportError, match="kept changing"):
        list(client.changed_customers(999, 5000))


def test_from_env_without_an_endpoint() -> None:
    """No ANTAVO_API_URL and no ANTAVO_STACK: the error names them first."""
    with pytest.raises(ab.ConfigurationError, match=r"ANTAVO_API_URL \(or ANTAVO_STACK\)"):
        ab.AntavoClient.from_env({"ANTAVO_API_KEY": KEY, "ANTAVO_API_SECRET": SECRET})


def test_an_answer_larger_than_the_bound_is_cut_off(
    fake: FakeAntavo, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A body beyond MAX_BODY is not read to its end: the attempt fails (bounded memory)."""
    import antavo_braze._antavo.client as module

    monkeypatch.setattr(module, "MAX_BODY", 1000)
    fake.add_customer({"id": "c-1", "notes": "x" * 5000})
    with (
        fake.client(retry=ab.RetryPolicy(attempts=1)) as client,
        pytest.raises(ab.TransportError, match="larger than 1000 bytes"),
    ):
        client.customer("c-1")


def test_a_listing_error_other_than_404_is_raised(fake: FakeAntavo) -> None:
    """A customer the list names that answers 500 for good: the error is raised."""
    fake.add_customer({"id": "c-1", "updated_at": 100})
    fake.fail_next(500, count=5, path="/customers/c-1")
    policy = ab.RetryPolicy(attempts=2, wait_initial=0, wait_jitter=0)
    with fake.client(retry=policy) as client, pytest.raises(ab.ServerError):
        list(client.changed_customers(0, 200))


def test_shapes_tolerate_what_antavo_may_send() -> None:
    """updated_at as a number or ISO text; a customer key spelled three ways; properties
    as a list or a mapping; an existing data object kept."""
    from antavo_braze._antavo.shapes import event_customer, updated_at

    assert updated_at({"updated_at": 5}) == 5.0
    assert updated_at({"updated_at": "1970-01-01T00:00:10Z"}) == 10.0
    assert updated_at({"updated_at": "garbage"}) is None
    assert updated_at({}) is None
    assert event_customer({"Customer": {"id": "a"}}) == "a"
    assert event_customer({"customer": {"id": "b"}}) == "b"
    assert event_customer({"customer": "c"}) == "c"
    assert event_customer({"customer": True}) is None
    envelope = event_envelope({"id": "e", "customer": "c", "action": "x",
                               "data": {"kept": 1}, "properties": {"extra": 2}})  # fmt: skip
    assert envelope["data"] == {"kept": 1, "extra": 2}
    assert "timestamp" not in envelope
    with pytest.raises(ValueError, match="not a list"):
        customer_ids("text")
    with pytest.raises(ValueError, match="empty or too long"):
        customer_ids([{"id": ""}])


@settings(max_examples=12, deadline=None)
@given(
    count=st.integers(min_value=1, max_value=260),
    moved=st.sets(st.integers(min_value=0, max_value=259), max_size=40),
    at_request=st.integers(min_value=1, max_value=4),
)
def test_paging_never_loses_or_repeats_a_customer(
    count: int, moved: set[int], at_request: int
) -> None:
    """Whatever customers change (and move to the list's end) at whichever page: every
    customer is read exactly once — the unchanged ones from this window, the changed ones
    either here or in the next window."""
    moved = {m for m in moved if m < count}
    with FakeAntavo() as fake:
        for number in range(count):
            fake.add_customer({"id": f"c-{number:03d}", "updated_at": 1000 + number})
        lists = itertools.count(1)

        def churn(path: str) -> None:
            if path == "/customers" and next(lists) == at_request:
                for number in moved:
                    fake.update_customer(f"c-{number:03d}", updated_at=5000 + number)

        fake.on_request = churn
        with fake.client() as client:
            first = [c["id"] for c in client.changed_customers(999, 2000)]
            fake.on_request = None
            second = [c["id"] for c in client.changed_customers(2000, 9000)]
    assert len(first) == len(set(first))
    unchanged = {f"c-{n:03d}" for n in range(count) if n not in moved}
    assert unchanged <= set(first)
    assert set(first) | set(second) == {f"c-{n:03d}" for n in range(count)}
