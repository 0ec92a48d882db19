"""FakeBraze itself: validation, profile updates, limits, headers and faults, over real HTTP."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import urllib3

from antavo_braze.testing import FakeBraze

HEADERS = {"Authorization": "Bearer test-key", "Content-Type": "application/json"}
T = "2026-01-01T00:00:00Z"


class Answer:
    """A plain HTTP answer read with urllib3 (the fake is tested apart from our client)."""

    def __init__(self, response: urllib3.BaseHTTPResponse) -> None:
        self.status_code = response.status
        self.headers = response.headers
        self.content = response.data

    def json(self) -> Any:
        """The body as JSON."""
        return json.loads(self.content)


def call(
    method: str, url: str, data: bytes | None = None, headers: dict[str, str] | None = None
) -> Answer:
    """One request over a fresh connection, no retries, 5 s timeout (``urllib3.request``
    would reuse a module-wide pool, whose idle connection the server may have closed)."""
    with urllib3.PoolManager() as pool:
        response = pool.request(
            method, url, body=data, headers=headers or HEADERS, timeout=5.0, retries=False
        )
    return Answer(response)


def post(
    fake: FakeBraze, body: Any, headers: dict[str, str] | None = None, raw: bytes | None = None
) -> Answer:
    """POST /users/track to the fake."""
    data = raw if raw is not None else json.dumps(body).encode()
    return call("POST", fake.url + "/users/track", data, headers or HEADERS)


def test_valid_request_answers_201_with_counts(fake: FakeBraze) -> None:
    """A good request gets 201 and per-array processed counts."""
    response = post(
        fake,
        {
            "attributes": [{"external_id": "a", "x": 1}],
            "events": [{"external_id": "a", "name": "e", "time": T}],
        },
    )
    assert response.status_code == 201
    assert response.json() == {
        "message": "success",
        "attributes_processed": 1,
        "events_processed": 1,
    }


@pytest.mark.parametrize(
    ("obj", "error"),
    [
        ({"x": 1}, "missing identifier"),
        ({"external_id": "a", "braze_id": "b", "x": 1}, "more than one primary"),
        ({"external_id": "", "x": 1}, "non-empty"),
        ({"external_id": "x" * 988}, "EXTERNAL_USER_ID_TOO_LARGE"),
        ({"user_alias": {"alias_name": "n"}}, "alias_label"),
        ({"external_id": "a", "$x": 1}, "cannot start with '$'"),
        ({"external_id": "a", "s": "x" * 256}, "longer than 255"),
        ({"external_id": "a", "arr": [1, 1]}, "unique"),
        ({"external_id": "a", "arr": [[1]]}, "scalars only"),
        ({"external_id": "a", "arr": list(range(501))}, "more than 500"),
        ({"external_id": "a", "o": {"a.b": 1}}, "cannot start with '$' or contain '.'"),
        ({"external_id": "a", "o": {"k": None}}, "null inside"),
        ({"external_id": "a", "o": {"t": {"$time": "nope"}}}, "invalid time"),
        ({"external_id": "a", "o": {"k": "x" * 102_400}}, "longer than 255"),
        ({"external_id": "a", "_update_existing_only": "yes"}, "boolean"),
        ({"external_id": "a", "n": {"inc": "1"}}, "integer"),
        ({"external_id": "a", "n": {"add": 1}}, "takes a list"),
        ({"external_id": "a", "n": {"$remove": [{"x": 1}]}}, "$identifier_key"),
        ({"external_id": "a", "n": {"$add": 3}}, "takes a list"),
        ({"external_id": "a", "d": {"$time": "bad"}}, "invalid time"),
        ("string", "JSON objects"),
    ],
)
def test_invalid_attribute_objects(fake: FakeBraze, obj: Any, error: str) -> None:
    """Invalid objects are listed in errors[] with input_array and index; the rest is kept."""
    response = post(fake, {"attributes": [{"external_id": "ok", "v": 1}, obj]})
    assert response.status_code == 201
    (item,) = response.json()["errors"]
    assert item["input_array"] == "attributes"
    assert item["index"] == 1
    assert error in item["type"]
    assert fake.profiles["ok"] == {"v": 1}


@pytest.mark.parametrize(
    ("array", "obj", "error"),
    [
        ("events", {"external_id": "a", "time": T}, "event name"),
        ("events", {"external_id": "a", "name": "$e", "time": T}, "event name"),
        ("events", {"external_id": "a", "name": "e"}, "time"),
        ("events", {"external_id": "a", "name": "e", "time": "yesterday"}, "invalid time"),
        (
            "events",
            {"external_id": "a", "name": "e", "time": T, "properties": {"time": 1}},
            "properties",
        ),
        ("events", {"external_id": "a", "name": "e", "time": T, "properties": []}, "properties"),
        ("events", {"external_id": "a", "name": "e", "time": T, "app_id": 3}, "app_id"),
        ("purchases", {"external_id": "a", "currency": "EUR", "price": 1, "time": T}, "product_id"),
        (
            "purchases",
            {"external_id": "a", "product_id": "p", "currency": "EURO", "price": 1, "time": T},
            "currency",
        ),
        (
            "purchases",
            {"external_id": "a", "product_id": "p", "currency": "EUR", "price": "1", "time": T},
            "price",
        ),
        (
            "purchases",
            {
                "external_id": "a",
                "product_id": "p",
                "currency": "EUR",
                "price": 1,
                "quantity": 101,
                "time": T,
            },
            "quantity",
        ),
        (
            "purchases",
            {
                "external_id": "a",
                "product_id": "p",
                "currency": "EUR",
                "price": 1,
                "time": T,
                "properties": {"price": 1},
            },
            "properties",
        ),
    ],
)
def test_invalid_events_and_purchases(
    fake: FakeBraze, array: str, obj: dict[str, Any], error: str
) -> None:
    """Events and purchases are validated like Braze does."""
    response = post(fake, {array: [obj]})
    (item,) = response.json()["errors"]
    assert (item["input_array"], item["index"]) == (array, 0)
    assert error in item["type"]
    assert fake.events == []
    assert fake.purchases == []


def test_request_level_errors(fake: FakeBraze) -> None:
    """Bad JSON 400, wrong content type 415, too many objects 400, unknown keys 400."""
    assert post(fake, None, raw=b"{nope").status_code == 400
    assert post(fake, {}, headers={"Authorization": "Bearer test-key"}).status_code == 415
    many = {
        "attributes": [{"external_id": str(i)} for i in range(50)],
        "events": [{"external_id": str(i), "name": "e", "time": T} for i in range(26)],
    }
    response = post(fake, many)
    assert (response.status_code, response.json()["message"]) == (400, "Max Input Length Exceeded")
    assert post(fake, {"attributes": [], "other": []}).status_code == 400
    assert post(fake, {"attributes": {}}).status_code == 400
    assert post(fake, [1]).status_code == 400


def test_legacy_limit(fake: FakeBraze) -> None:
    """In legacy mode 75 per array pass and 76 in one array do not."""
    with FakeBraze(batch_mode="legacy") as legacy:
        ok = {
            "attributes": [{"external_id": str(i)} for i in range(75)],
            "events": [{"external_id": str(i), "name": "e", "time": T} for i in range(75)],
        }
        assert post(legacy, ok).status_code == 201
        assert (
            post(legacy, {"attributes": [{"external_id": str(i)} for i in range(76)]}).status_code
            == 400
        )


def test_body_over_limit_is_413() -> None:
    """Bodies over the byte limit get 413."""
    with FakeBraze(max_body_bytes=100) as fake:
        assert post(fake, {"attributes": [{"external_id": "a", "s": "x" * 200}]}).status_code == 413


def test_auth_and_permissions(fake: FakeBraze) -> None:
    """Unknown keys 401 (echoing the key), missing permission 403, unknown path 404."""
    response = post(
        fake, {}, headers={"Authorization": "Bearer other", "Content-Type": "application/json"}
    )
    assert response.status_code == 401
    assert "other" in response.json()["message"]
    assert post(fake, {}, headers={"Content-Type": "application/json"}).status_code == 401
    fake.add_key("reader", ["events.list"])
    assert (
        post(
            fake, {}, headers={"Authorization": "Bearer reader", "Content-Type": "application/json"}
        ).status_code
        == 403
    )
    assert call("GET", fake.url + "/nothing").status_code == 404
    assert [r.key_valid for r in fake.requests] == [False, False, True, True]


def test_profile_updates(fake: FakeBraze) -> None:
    """null removes, objects replace or merge, arrays add/remove, inc increments."""
    post(
        fake,
        {
            "attributes": [
                {
                    "external_id": "a",
                    "s": "x",
                    "o": {"k": 1, "n": {"a": 1}},
                    "arr": ["a", "b", "d"],
                    "n": 5,
                }
            ]
        },
    )
    post(
        fake,
        {
            "attributes": [
                {
                    "external_id": "a",
                    "s": None,
                    "_merge_objects": True,
                    "o": {"n": {"b": 2}},
                    "arr": {"add": ["a", "c"], "remove": ["b"]},
                    "n": {"inc": 3},
                }
            ]
        },
    )
    assert fake.profiles["a"] == {
        "o": {"k": 1, "n": {"a": 1, "b": 2}},
        "arr": ["d", "a", "c"],
        "n": 8,
    }
    post(fake, {"attributes": [{"external_id": "a", "o": {"z": 1}}]})
    assert fake.profiles["a"]["o"] == {"z": 1}


def test_array_of_objects_operators(fake: FakeBraze) -> None:
    """$add, $remove and $update change arrays of objects in Braze's order."""
    post(
        fake,
        {"attributes": [{"external_id": "a", "pets": [{"id": 1, "n": "x"}, {"id": 2, "n": "y"}]}]},
    )
    post(
        fake,
        {
            "attributes": [
                {
                    "external_id": "a",
                    "pets": {
                        "$add": [{"id": 3, "n": "z"}],
                        "$remove": [{"$identifier_key": "id", "$identifier_value": 1}],
                        "$update": [
                            {
                                "$identifier_key": "id",
                                "$identifier_value": 2,
                                "$new_object": {"n": "w"},
                            }
                        ],
                    },
                }
            ]
        },
    )
    assert fake.profiles["a"]["pets"] == [{"n": "w", "id": 2}, {"id": 3, "n": "z"}]
    post(
        fake,
        {
            "attributes": [
                {
                    "external_id": "a",
                    "_merge_objects": True,
                    "pets": {
                        "$update": [
                            {
                                "$identifier_key": "id",
                                "$identifier_value": 3,
                                "$new_object": {"age": 4},
                            }
                        ]
                    },
                }
            ]
        },
    )
    assert fake.profiles["a"]["pets"][1] == {"id": 3, "n": "z", "age": 4}


def test_update_existing_only(fake: FakeBraze) -> None:
    """_update_existing_only does not create profiles."""
    post(
        fake,
        {
            "attributes": [{"external_id": "new", "x": 1, "_update_existing_only": True}],
            "events": [
                {"external_id": "new2", "name": "e", "time": T, "_update_existing_only": True}
            ],
        },
    )
    assert fake.profiles == {}
    assert fake.events == []


def test_other_identifiers_and_email_attribute(fake: FakeBraze) -> None:
    """Aliases, braze_id and email-only objects are accepted; email with external_id is stored."""
    response = post(
        fake,
        {
            "attributes": [
                {"user_alias": {"alias_name": "n", "alias_label": "l"}, "x": 1},
                {"braze_id": "b1", "x": 2},
                {"email": "a@example.com", "x": 3},
                {"external_id": "e", "email": "e@example.com"},
            ]
        },
    )
    assert "errors" not in response.json()
    assert fake.profiles["e"] == {"email": "e@example.com"}
    assert fake.profiles["alias:l:n"] == {"x": 1}


def test_future_event_times_become_now(fake: FakeBraze) -> None:
    """Events in the future are stored with the current time, as Braze does."""
    post(
        fake,
        {
            "events": [{"external_id": "a", "name": "e", "time": "2999-01-01T00:00:00Z"}],
            "purchases": [
                {"external_id": "a", "product_id": "p", "currency": "EUR", "price": 1, "time": T}
            ],
        },
    )
    assert fake.events[0]["time"] < "2999"
    assert fake.purchases[0]["time"] == T


def test_rate_limit_headers_and_429(fake: FakeBraze) -> None:
    """Responses carry X-RateLimit-*; over the limit a 429 says how long to wait."""
    with FakeBraze(rate_limit=2, rate_window=60) as limited:
        first = post(limited, {})
        assert first.headers["X-RateLimit-Limit"] == "2"
        assert first.headers["X-RateLimit-Remaining"] == "1"
        assert int(first.headers["X-RateLimit-Reset"]) > time.time() - 1
        post(limited, {})
        third = post(limited, {})
        assert third.status_code == 429
        assert int(third.headers["X-Ratelimit-Retry-After"]) >= 1
        assert "X-RateLimit-Remaining" not in third.headers
    with FakeBraze(rate_limit=2, rate_window=60, reset_style="seconds") as limited:
        assert int(post(limited, {}).headers["X-RateLimit-Reset"]) <= 60


def test_faults(fake: FakeBraze) -> None:
    """Injected statuses, headers, delays and drops apply to the next requests only."""
    fake.inject(status=503, headers={"Retry-After": "1"}, path="/users/track")
    fake.inject(drop=True)
    response = post(fake, {})
    assert (response.status_code, response.headers["Retry-After"]) == (503, "1")
    with pytest.raises(urllib3.exceptions.HTTPError):
        post(fake, {})
    fake.inject(delay=0.05, status=500)
    started = time.perf_counter()
    assert post(fake, {}).status_code == 500
    assert time.perf_counter() - started >= 0.05
    assert post(fake, {}).status_code == 201


def test_random_faults_and_reset(fake: FakeBraze) -> None:
    """fail_randomly answers a share of track requests with the status; reset clears state."""
    fake.fail_randomly(1.0, status=502)
    assert post(fake, {}).status_code == 502
    fake.fail_randomly(0)
    post(fake, {"attributes": [{"external_id": "a", "x": 1}]})
    assert fake.profiles
    fake.reset()
    assert (fake.profiles, fake.events, fake.requests) == ({}, [], [])


def test_reset_forgets_everything(fake: FakeBraze) -> None:
    """After reset() nothing learned survives: event names, blocks, faults, counters."""
    body = {
        "attributes": [{"external_id": "a", "x": 1}],
        "events": [{"external_id": "a", "name": "ev", "time": "2026-01-01T00:00:00Z"}],
    }
    fake.block("b")
    fake.inject(status=503)
    fake.fail_randomly(0.5)
    post(fake, body)
    post(fake, body)
    assert fake.event_names == {"ev"}
    fake.reset()
    assert (fake.event_names, fake.status_counts, fake.objects_received) == (set(), {}, 0)
    listed = json.loads(call("GET", fake.url + "/events/list").content)
    assert listed["events"] == []
    for _ in range(20):  # the random faults and the pending fault are gone
        assert post(fake, {"attributes": [{"external_id": "b", "y": 2}]}).status_code == 201
    assert fake.profiles["b"] == {"y": 2}  # no longer blocked
    assert fake.api_key == "test-key"  # keys are kept


def test_read_endpoint_parameters(fake: FakeBraze) -> None:
    """Bad parameters on read endpoints get 400."""
    get = lambda path: call("GET", fake.url + path)  # noqa: E731
    assert get("/events/list?page=x").status_code == 400
    assert get("/events?cursor=%%%").status_code == 400
    assert get("/events/data_series?event=e").status_code == 400
    assert get("/events/data_series?event=e&length=101").status_code == 400


def test_record_off_keeps_counts_only() -> None:
    """record=False keeps no profiles or requests, only counts (for huge benchmarks)."""
    with FakeBraze(record=False) as fake:
        post(fake, {"attributes": [{"external_id": "a", "x": 1}]})
        assert fake.profiles == {}
        assert fake.requests == []
        assert fake.objects_received == 1
        assert fake.status_counts[201] == 1


def test_prefix_and_lifecycle() -> None:
    """A prefixed fake answers 404 outside the prefix; url needs a running server."""
    fake = FakeBraze(prefix="/braze/")
    with pytest.raises(RuntimeError):
        _ = fake.url
    with fake:
        assert fake.url.endswith("/braze")
        assert (
            call("POST", fake.url.removesuffix("/braze") + "/users/track", b"{}").status_code == 404
        )
        assert "profiles=0" in repr(fake)
    fake.stop()


def test_validate_off_accepts_and_counts() -> None:
    """validate=False skips object checks (load tests) but still counts objects."""
    with FakeBraze(validate=False, record=False) as fake:
        response = post(fake, {"attributes": [{"x": 1}, {"external_id": "a"}]})
        assert response.json() == {"message": "success"}
        assert fake.objects_received == 2
        assert post(fake, {"attributes": [{"x": 1}] * 76}).status_code == 400


def test_recorded_requests_read_as_data(fake: FakeBraze) -> None:
    """Recorded requests read by attribute or by key."""
    post(fake, {"attributes": [{"external_id": "a", "x": 1}]})
    request = fake.requests[0]
    assert request["body"] == request.body == {"attributes": [{"external_id": "a", "x": 1}]}
    assert (request["method"], request["path"], request["status"]) == ("POST", "/users/track", 201)
    with pytest.raises(KeyError):
        request["nope"]
