"""BrazeClient against FakeBraze over real HTTP: statuses, retries, pacing, reads, secrets."""

from __future__ import annotations

import logging
import pickle
import threading
from typing import Any

import pytest

import antavo_braze as ab
from antavo_braze._braze.limits import PERMISSIONS
from antavo_braze._http.endpoint import resolve_endpoint
from antavo_braze.testing import FakeBraze

from .conftest import in_threads

KEY = "test-key"


def failed_track(client: ab.BrazeClient, error: type[Exception], **objects: Any) -> ab.TrackResult:
    """Run a track() that must raise ``error``; return the TrackResult the error carries."""
    with pytest.raises(error) as info:
        client.track(**objects)
    result = getattr(info.value, "result", None)
    assert isinstance(result, ab.TrackResult)
    return result


@pytest.fixture(autouse=True)
def _every_retry_logged(caplog: pytest.LogCaptureFixture) -> None:
    """Capture the send loop's DEBUG records too (repeated retries are logged at DEBUG)."""
    caplog.set_level(logging.DEBUG, logger="antavo_braze.http")


def retry_waits(caplog: pytest.LogCaptureFixture) -> list[float]:
    """The waits the send loop decided on, from its retry log records (every level)."""
    return [r.wait for r in caplog.records if r.name == "antavo_braze.http" and hasattr(r, "wait")]


def attrs(n: int, prefix: str = "m") -> list[ab.AttributesObject]:
    """n attributes objects for distinct members."""
    return [ab.AttributesObject(f"{prefix}-{i}", {"loyalty_points": i}) for i in range(n)]


def event(eid: str = "m-1", name: str = "loyalty_enrolled") -> ab.EventObject:
    """A valid custom event."""
    return ab.EventObject(eid, name, "2026-01-01T00:00:00Z", {"source": "web"})


# --- configuration -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("US-03", "https://rest.iad-03.braze.com"),
        ("eu-01", "https://rest.fra-01.braze.eu"),
        ("US-10", "https://rest.us-10.braze.com"),
        ("https://rest.iad-01.braze.com/", "https://rest.iad-01.braze.com"),
        ("rest.iad-02.braze.com", "https://rest.iad-02.braze.com"),
        ("http://127.0.0.1:8080/braze", "http://127.0.0.1:8080/braze"),
        ("http://localhost:9000", "http://localhost:9000"),
        ("http://[::1]:9000/x/", "http://[::1]:9000/x"),
    ],
)
def test_endpoint_resolution(given: str, expected: str) -> None:
    """Instance names resolve; URLs keep their path prefix."""
    assert resolve_endpoint(given) == expected
    assert ab.BrazeClient(given, KEY).endpoint == expected


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://rest.iad-01.braze.com",
        "ftp://x",
        "",
        "https://x.braze.com?q=1",
        "https://",
        "http://evil.com\\.localhost",  # Python's parser: .localhost; urllib3: evil.com
        "http://evil.com%2f.localhost",
        "http://a.localhost",  # plain http only to localhost itself and loopback literals
        "https//rest.iad-03.braze.com",
        "https://user:pw@rest.iad-01.braze.com",
        "https://dashboard-03.braze.com",
        "US-11",
    ],
)
def test_bad_endpoints(endpoint: str) -> None:
    """Plain http off loopback and malformed endpoints are configuration errors."""
    with pytest.raises(ab.ConfigurationError):
        ab.BrazeClient(endpoint, KEY)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_in_flight": 0},
        {"batch_mode": "bulk"},
        {"timeout": 0},
        {"batch_mode": "legacy", "limits": ab.BatchLimits()},
        {"proxy": "https://proxy:3128"},
        {"proxy": "socks5://proxy:1080"},
    ],
)
def test_bad_options(kwargs: dict[str, Any]) -> None:
    """Invalid options are refused up front."""
    with pytest.raises(ab.ConfigurationError):
        ab.BrazeClient("US-01", KEY, **kwargs)


def test_empty_key_is_refused() -> None:
    """A client needs a key, of printable ASCII: a CR/LF can never inject a header."""
    with pytest.raises(ab.ConfigurationError, match="key"):
        ab.BrazeClient("US-01", " ")
    for bad in ("abc\r\nX-Evil: 1", "abc\ndef", "clé"):
        with pytest.raises(ab.ConfigurationError, match="printable ASCII") as info:
            ab.BrazeClient("US-01", bad)
        assert bad not in str(info.value)


def test_from_env() -> None:
    """from_env reads the three variables and names the missing ones."""
    client = ab.BrazeClient.from_env(
        {"BRAZE_REST_ENDPOINT": "EU-02", "BRAZE_API_KEY": "k", "BRAZE_APP_ID": "app"}
    )
    assert (client.endpoint, client.app_id) == ("https://rest.fra-02.braze.eu", "app")
    with pytest.raises(ab.ConfigurationError, match="BRAZE_API_KEY"):
        ab.BrazeClient.from_env({"BRAZE_REST_ENDPOINT": "EU-02"})


def test_key_never_in_repr_or_pickle() -> None:
    """The key is not in repr, vars or a pickle."""
    client = ab.BrazeClient("US-01", "super-secret-key")
    assert "super-secret-key" not in repr(client)
    assert "super-secret-key" not in repr(vars(client))
    assert not any(isinstance(v, str) and "super-secret" in v for v in vars(client).values())
    with pytest.raises(TypeError):
        pickle.dumps(client._key)


# --- /users/track ------------------------------------------------------------------------------


def test_track_delivers_and_counts(fake: FakeBraze, client: ab.BrazeClient) -> None:
    """Attributes, events and purchases reach the fake; the result counts them."""
    purchase = ab.PurchaseObject("m-0", "p-1", "EUR", 9.5, "2026-01-01T00:00:00Z", 2)
    result = client.track(attributes=attrs(3), events=[event("m-0")], purchases=[purchase])
    assert result == ab.TrackResult(requests=1, accepted=5, rejected=())
    assert result.ok
    assert fake.profiles["m-2"] == {"loyalty_points": 2}
    assert fake.events[0]["name"] == "loyalty_enrolled"
    assert fake.purchases[0]["quantity"] == 2
    assert fake.requests[0].user_agent is not None
    assert fake.requests[0].user_agent.startswith("antavo-braze-python/")


def test_track_batches_75_combined(fake: FakeBraze, client: ab.BrazeClient) -> None:
    """200 objects take 3 requests of at most 75 objects."""
    result = client.track(attributes=attrs(200))
    assert result.requests == 3
    assert result.accepted == 200
    sizes = sorted(len(r.body["attributes"]) for r in fake.requests)
    assert sizes == [50, 75, 75]


def test_legacy_mode_sends_75_per_array() -> None:
    """In legacy mode one request carries 75 attributes and 75 events."""
    with FakeBraze(batch_mode="legacy") as fake, fake.client(batch_mode="legacy") as client:
        result = client.track(attributes=attrs(75), events=[event(f"m-{i}") for i in range(75)])
        assert result.requests == 1
        assert result.accepted == 150


def test_combined_fake_refuses_legacy_batches() -> None:
    """A combined-limit account answers a 150-object request with 400, never retried."""
    with FakeBraze() as fake, fake.client(batch_mode="legacy") as client:
        events = [event(f"m-{i}") for i in range(75)]
        result = failed_track(client, ab.BadRequestError, attributes=attrs(75), events=events)
        assert result.accepted == 0
        assert {r.stage for r in result.rejected} == {"braze"}
        assert "Max Input Length Exceeded" in result.rejected[0].reason
        assert len(fake.requests) == 1


def test_partial_errors_map_back_to_inputs(fake: FakeBraze, client: ab.BrazeClient) -> None:
    """Objects Braze rejects are reported by their array and index in the caller's input."""
    fake.block("m-1")
    bad_event = ab.EventObject("m-3", "$reserved", "2026-01-01T00:00:00Z")
    result = client.track(attributes=attrs(3), events=[event("m-0"), bad_event])
    assert [(r.input_array, r.index, r.stage) for r in result.rejected] == [
        ("attributes", 1, "braze"),
        ("events", 1, "braze"),
    ]
    assert "BLACKLISTED" in result.rejected[0].reason
    assert result.accepted == 3
    assert "m-1" not in fake.profiles


def test_unattributed_errors_are_warnings(
    fake: FakeBraze, client: ab.BrazeClient, caplog: pytest.LogCaptureFixture
) -> None:
    """Errors without input_array/index fail nothing but are logged."""
    fake.inject(
        status=201, body={"message": "success", "errors": ["something odd", {"type": "odd"}]}
    )
    with caplog.at_level(logging.WARNING, logger="antavo_braze"):
        result = client.track(attributes=attrs(1))
    assert result.ok
    assert "something odd" in caplog.text


@pytest.mark.parametrize("status", [400, 404, 413, 415])
def test_client_errors_are_not_retried(
    fake: FakeBraze, client: ab.BrazeClient, status: int
) -> None:
    """4xx other than 429 fail at once, with the status in the reason."""
    fake.inject(status=status)
    result = failed_track(client, ab.BrazeAPIError, attributes=attrs(2))
    assert len(fake.requests) == 1
    assert [r.stage for r in result.rejected] == ["braze", "braze"]
    assert str(status) in result.rejected[0].reason


def test_request_raises_typed_errors(fake: FakeBraze, client: ab.BrazeClient) -> None:
    """request() raises the exception class for each status."""
    for status, error in [
        (400, ab.BadRequestError),
        (404, ab.BrazeAPIError),
        (403, ab.PermissionDeniedError),
        (401, ab.AuthenticationError),
        (418, ab.BrazeAPIError),
    ]:
        fake.inject(status=status)
        with pytest.raises(error) as info:
            client.request("GET", "/events/list")
        assert info.value.status_code == status


def test_401_raises_and_redacts_the_echoed_key(fake: FakeBraze) -> None:
    """A bad key raises AuthenticationError at once, and the echoed key is redacted."""
    with (
        fake.client(api_key="wrong-secret-key") as client,
        pytest.raises(ab.AuthenticationError) as info,
    ):
        client.track(attributes=attrs(1))
    assert "wrong-secret-key" not in str(info.value)
    assert "wrong-secret-key" not in info.value.body
    assert "[REDACTED]" in info.value.body
    assert "wrong-secret-key" not in repr(info.value.args)


def test_403_raises(fake: FakeBraze) -> None:
    """A key without users.track raises PermissionDeniedError."""
    fake.add_key("read-only", ["events.list"])
    with fake.client(api_key="read-only") as client, pytest.raises(ab.PermissionDeniedError):
        client.track(attributes=attrs(1))


def test_5xx_is_retried_then_succeeds(fake: FakeBraze, caplog: pytest.LogCaptureFixture) -> None:
    """Server errors are retried with backoff until one succeeds."""
    fake.inject(times=2, status=503)
    with caplog.at_level(logging.DEBUG, logger="antavo_braze.http"), fake.client() as client:
        result = client.track(attributes=attrs(1))
    assert result.ok
    assert result.requests == 3
    assert retry_waits(caplog) == [0.001, 0.002]


def test_5xx_exhausted_fails_the_objects(fake: FakeBraze) -> None:
    """After every attempt the objects fail (stage braze), none is lost."""
    fake.inject(times=5, status=502)
    with fake.client() as client:
        result = failed_track(client, ab.ServerError, attributes=attrs(2))
    assert result.requests == 5
    assert [r.stage for r in result.rejected] == ["braze", "braze"]
    assert "502" in result.rejected[0].reason
    with fake.client() as client:
        fake.inject(times=5, status=500)
        with pytest.raises(ab.ServerError):
            client.request("GET", "/events/list")


def test_backoff_uses_the_policy(fake: FakeBraze, caplog: pytest.LogCaptureFixture) -> None:
    """The loop waits what the policy decides: wait_initial doubling up to wait_max."""
    fake.inject(times=4, status=500)
    policy = ab.RetryPolicy(attempts=5, wait_initial=0.01, wait_max=0.02, wait_jitter=0.0)
    with (
        caplog.at_level(logging.DEBUG, logger="antavo_braze.http"),
        fake.client(retry=policy) as client,
    ):
        assert client.track(attributes=attrs(1)).ok
    assert retry_waits(caplog) == [0.01, 0.02, 0.02, 0.02]


def test_429_waits_what_braze_says(fake: FakeBraze, caplog: pytest.LogCaptureFixture) -> None:
    """A 429 waits X-Ratelimit-Retry-After (or Retry-After) before retrying."""
    fake.inject(status=429, headers={"X-Ratelimit-Retry-After": "0.2"})
    fake.inject(status=429, headers={"Retry-After": "0.1"})
    with caplog.at_level(logging.DEBUG, logger="antavo_braze.http"), fake.client() as client:
        result = client.track(attributes=attrs(1))
    assert result.ok
    assert retry_waits(caplog) == [0.2, 0.1]
    assert isinstance(client.pacer, ab.InProcessPacer)
    assert client.pacer.waited == 0.0  # the pacer's hold had passed by the retry: no double wait


def test_429_longer_than_allowed_fails_fast(
    fake: FakeBraze, caplog: pytest.LogCaptureFixture
) -> None:
    """A demand over max_rate_limit_wait fails the records instead of hanging."""
    fake.inject(status=429, headers={"Retry-After": "3600"})
    policy = ab.RetryPolicy(max_rate_limit_wait=60)
    with (
        caplog.at_level(logging.DEBUG, logger="antavo_braze.http"),
        fake.client(retry=policy) as client,
    ):
        result = failed_track(client, ab.RateLimitError, attributes=attrs(1))
    assert retry_waits(caplog) == []
    assert result.requests == 1
    assert result.rejected[0].stage == "braze"
    assert "rate limited" in result.rejected[0].reason
    assert "3600" in result.rejected[0].reason


def test_429_storm_exhausts_into_rate_limit_error(fake: FakeBraze) -> None:
    """429 on every attempt ends as RateLimitError."""
    fake.inject(times=3, status=429)
    with (
        fake.client(retry=ab.RetryPolicy(attempts=3, wait_initial=0, wait_jitter=0)) as client,
        pytest.raises(ab.RateLimitError, match="after 3 attempt"),
    ):
        client.request("POST", "/users/track", body=b'{"attributes":[]}')


def test_dropped_connections_are_retried(fake: FakeBraze) -> None:
    """A connection dropped without an answer is retried."""
    fake.inject(times=2, drop=True)
    with fake.client() as client:
        result = client.track(attributes=attrs(3))
    assert result.ok
    assert fake.profiles["m-0"] == {"loyalty_points": 0}


def test_dropped_every_time_is_a_transport_failure(fake: FakeBraze) -> None:
    """When every attempt is dropped the objects fail with stage transport."""
    fake.inject(times=5, drop=True)
    with fake.client() as client:
        result = failed_track(client, ab.TransportError, attributes=attrs(1))
    assert result.rejected[0].stage == "transport"
    with fake.client() as client:
        fake.inject(times=5, drop=True)
        with pytest.raises(ab.TransportError, match="after 5 attempt"):
            client.request("GET", "/events/list")


def test_slow_replies_time_out_and_retry(fake: FakeBraze) -> None:
    """A reply slower than the timeout is retried; the next, fast one succeeds."""
    fake.inject(delay=0.5)
    with fake.client(timeout=0.1) as client:
        assert client.track(attributes=attrs(1)).ok
    fake.inject(times=2, delay=0.3)
    with fake.client(timeout=0.05, retry=ab.RetryPolicy(attempts=2)) as client:
        result = failed_track(client, ab.TransportError, attributes=attrs(1))
    assert result.rejected[0].stage == "transport"
    assert "Timeout" in result.rejected[0].reason


def test_connection_refused_is_a_transport_error() -> None:
    """Nothing listening: TransportError after the attempts, with no key in the message."""
    client = ab.BrazeClient(
        "http://127.0.0.1:9", "secret-123", retry=ab.RetryPolicy(attempts=2, wait_initial=0)
    )
    with pytest.raises(ab.TransportError) as info:
        client.request("GET", "/events/list")
    assert "secret-123" not in str(info.value)


def test_key_never_logged(fake: FakeBraze, caplog: pytest.LogCaptureFixture) -> None:
    """Retry logs never contain the key."""
    fake.inject(times=2, status=503)
    with caplog.at_level(logging.DEBUG), fake.client() as client:
        client.track(attributes=attrs(1))
    assert "HTTP 503" in caplog.text
    assert "POST /users/track -> 201 (attempt 3" in caplog.text
    assert KEY not in caplog.text


def test_oversize_object_fails_without_sending(fake: FakeBraze, client: ab.BrazeClient) -> None:
    """An object over 4 MB cannot be sent; it fails alone and its neighbours go."""
    huge = ab.AttributesObject("m-big", {f"a{i}": "x" * 250 for i in range(17_000)})
    result = client.track(attributes=[*attrs(2), huge])
    assert [(r.index, r.stage) for r in result.rejected] == [(2, "validation")]
    assert result.accepted == 2


def test_payload_too_large_from_braze() -> None:
    """A 413 from Braze is a non-retried failure."""
    with FakeBraze(max_body_bytes=200) as fake, fake.client() as client:
        result = failed_track(client, ab.BadRequestError, attributes=attrs(20))
    assert result.rejected[0].reason.startswith("Braze answered HTTP 413")
    assert len(fake.requests) == 1


# --- concurrency and pacing -------------------------------------------------------------------


def test_many_threads_share_one_client(fake: FakeBraze) -> None:
    """Eight threads tracking through one client deliver everything."""
    with fake.client(max_in_flight=8) as client:
        results: list[ab.TrackResult] = []

        def work(n: int) -> None:
            results.append(client.track(attributes=attrs(100, prefix=f"t{n}")))

        in_threads(work, 8)
    assert sum(r.accepted for r in results) == 800
    assert len(fake.profiles) == 800


def test_same_profile_never_in_flight_twice() -> None:
    """Batches touching the same external_id are never sent concurrently."""
    with (
        FakeBraze(latency=0.02) as fake,
        fake.client(max_in_flight=8, limits=ab.BatchLimits(max_objects=2)) as client,
    ):
        objects = [ab.AttributesObject(f"m-{i % 3}", {"n": i}) for i in range(30)]
        result = client.track(attributes=objects)
    assert result.ok
    assert fake.overlapping_requests == 0
    assert fake.profiles["m-0"] == {"n": 27}  # the last update per member wins


def test_distinct_profiles_do_go_concurrently() -> None:
    """The overlap counter really detects concurrency (so the test above can fail)."""
    with FakeBraze(latency=0.05) as fake:
        barrier = threading.Barrier(2)

        def send() -> None:
            with fake.client(max_in_flight=1) as client:
                barrier.wait()
                client.track(attributes=attrs(1))

        threads = [threading.Thread(target=send) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert fake.overlapping_requests == 1


def test_pacing_keeps_429s_under_one_percent() -> None:
    """10,000 objects at 20 requests/s: every object delivered, ≤1% of requests get 429."""
    with FakeBraze(rate_limit=20, rate_window=1.0) as fake, fake.client(max_in_flight=4) as client:
        result = client.track(attributes=attrs(10_000))
    assert result.accepted == 10_000
    assert len(fake.profiles) == 10_000
    total = sum(fake.status_counts.values())
    assert fake.status_counts[429] <= 0.01 * total, fake.status_counts


def test_pacing_with_seconds_remaining_reset() -> None:
    """The MAU reading of X-RateLimit-Reset (seconds remaining) paces as well."""
    with (
        FakeBraze(rate_limit=10, rate_window=1.0, reset_style="seconds") as fake,
        fake.client(max_in_flight=2) as client,
    ):
        result = client.track(attributes=attrs(2_000))
    assert result.accepted == 2_000
    assert fake.status_counts[429] <= 1


def test_a_configured_burst_budget_holds_where_braze_counts() -> None:
    """requests=3 per 0.5 s against a fake allowing exactly that, with late arrivals: no 429.

    Braze counts a request when it arrives. Here the first three wait 1.05 s on the way in,
    the next three 0.55 s, the last three not at all: a budget counted from the sends lets
    a group go every 0.5 s and all nine arrive together (one 0.5 s window holds at least five:
    429s). Counted from the answers, a group goes only 0.5 s after the last one was answered.
    """
    budget, window = 3, 0.5
    with FakeBraze(rate_limit=budget, rate_window=window) as fake:
        fake.inject(times=budget, delay=2 * window + 0.05)
        fake.inject(times=budget, delay=window + 0.05)
        pacer = ab.InProcessPacer(requests=budget, per=window)
        limits = ab.BatchLimits(max_objects=1)  # one request per object
        with fake.client(max_in_flight=3 * budget, pacer=pacer, limits=limits) as client:
            result = client.track(attributes=attrs(3 * budget))
        assert fake.status_counts[429] == 0, fake.status_counts
        assert result.accepted == 3 * budget
        assert result.requests == 3 * budget


def test_thirty_percent_503_still_delivers_everything() -> None:
    """With 30% of requests failing 503, retries still deliver all 10,000 objects."""
    with FakeBraze() as fake:
        fake.fail_randomly(0.3, status=503, seed=7)
        policy = ab.RetryPolicy(attempts=10, wait_initial=0.001, wait_max=0.01, wait_jitter=0)
        with fake.client(max_in_flight=4, retry=policy) as client:
            result = client.track(attributes=attrs(10_000))
    assert result.accepted == 10_000
    assert len(fake.profiles) == 10_000
    assert fake.status_counts[503] > 0


# --- read endpoints and permissions ------------------------------------------------------------


def test_list_event_names_reads_every_page(fake: FakeBraze, client: ab.BrazeClient) -> None:
    """600 names come back from three pages of 250."""
    fake.event_names.update(f"event_{i:04d}" for i in range(600))
    names = client.list_event_names()
    assert names == sorted(fake.event_names)
    assert [r.query.get("page") for r in fake.requests] == ["0", "1", "2"]


def test_list_events_follows_link_cursor(fake: FakeBraze, client: ab.BrazeClient) -> None:
    """/events is followed through its Link header until no next page."""
    fake.event_names.update(f"e{i:03d}" for i in range(120))
    events = client.list_events()
    assert [e["name"] for e in events] == sorted(fake.event_names)
    assert len(fake.requests) == 3


def test_list_events_under_a_path_prefix() -> None:
    """A path prefix in the endpoint is kept for every request, cursors included."""
    with FakeBraze(prefix="/braze") as fake, fake.client() as client:
        assert client.endpoint.endswith("/braze")
        fake.event_names.update(f"e{i:03d}" for i in range(60))
        assert len(client.list_events()) == 60
        assert client.track(attributes=attrs(1)).ok
    assert all(r.status in (200, 201) for r in fake.requests)


def test_event_series(fake: FakeBraze, client: ab.BrazeClient) -> None:
    """data_series counts recorded events per day."""
    client.track(
        events=[
            ab.EventObject("m", "loyalty_enrolled", "2026-11-20T10:00:00Z"),
            ab.EventObject("m", "loyalty_enrolled", "2026-11-20T11:00:00Z"),
            ab.EventObject("m", "loyalty_enrolled", "2026-11-21T11:00:00Z"),
        ]
    )
    series = client.event_series("loyalty_enrolled", length=3, ending_at="2026-11-22T00:00:00Z")
    assert series == [
        {"time": "2026-11-20", "count": 2},
        {"time": "2026-11-21", "count": 1},
        {"time": "2026-11-22", "count": 0},
    ]
    hourly = client.event_series(
        "loyalty_enrolled",
        length=2,
        unit="hour",
        ending_at="2026-11-20T11:30:00Z",
        app_id="a",
        segment_id="s",
    )
    assert hourly == [
        {"time": "2026-11-20T10:00:00Z", "count": 1},
        {"time": "2026-11-20T11:00:00Z", "count": 1},
    ]
    with pytest.raises(ab.ConfigurationError):
        client.event_series("x", length=0)
    with pytest.raises(ab.ConfigurationError):
        client.event_series("x", length=1, unit="week")


def test_check_permissions(fake: FakeBraze) -> None:
    """Full keys have all of them; limited keys show what is missing; probes change no data."""
    with fake.client() as client:
        assert client.check_permissions() == dict.fromkeys(PERMISSIONS, True)
    fake.add_key("partial", ["users.track", "events.get"])
    with fake.client(api_key="partial") as client:
        assert client.check_permissions() == {
            "users.track": True,
            "events.list": False,
            "events.data_series": False,
            "events.get": True,
            "custom_attributes.get": False,
            "users.export.ids": False,
            "users.merge": False,
            "users.delete": False,
        }
    with fake.client(api_key="nope") as client, pytest.raises(ab.AuthenticationError):
        client.check_permissions()
    assert fake.profiles == {}
    assert fake.events == []


def test_invalid_json_from_braze(fake: FakeBraze, client: ab.BrazeClient) -> None:
    """A 2xx whose body is not Braze's JSON is a failed attempt, retried, never a success."""
    fake.inject(times=5, status=200, body=b"not json")
    with pytest.raises(ab.TransportError, match="not Braze's answer"):
        client.list_event_names()
    fake.inject(times=5, status=201, body=b"<html>proxy says hi</html>")
    result = failed_track(client, ab.TransportError, attributes=attrs(1))
    assert [(r.stage, r.index) for r in result.rejected] == [("transport", 0)]
    assert "not Braze's answer" in result.rejected[0].reason
    assert result.requests == 5
    assert client.track(attributes=attrs(1)).ok


def test_a_403_names_the_missing_permission(fake: FakeBraze) -> None:
    """A key without users.track gets an error that names the permission."""
    fake.add_key("reader", ["events.list"])
    with (
        ab.BrazeClient(fake.url, "reader") as client,
        pytest.raises(ab.PermissionDeniedError) as info,
    ):
        client.track(attributes=[{"external_id": "a", "x": 1}])
    assert "lacks the users.track permission" in str(info.value)


def test_repeated_retry_warnings_are_collapsed_with_a_count(
    fake: FakeBraze, caplog: pytest.LogCaptureFixture
) -> None:
    """The first retry for a reason warns; its repeats end as one line with their count."""
    fake.inject(times=4, status=503)
    policy = ab.RetryPolicy(attempts=10, wait_initial=0.001, wait_max=0.01, wait_jitter=0)
    caplog.set_level(logging.DEBUG, logger="antavo_braze")
    with fake.client(retry=policy) as client:
        result = client.track(attributes=[{"external_id": "a", "x": 1}])
    assert result.accepted == 1
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert retry_waits(caplog) == [0.001, 0.002, 0.004, 0.008]  # every retry, at some level
    assert messages == [
        "POST /users/track: HTTP 503; retry 1 in 0.00s",
        "POST /users/track: HTTP 503: 3 more retries for the same reason",
    ]
