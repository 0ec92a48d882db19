"""Status -> error in one table (error_for_status); errors that say which call failed, keep
their cause, and carry the retry policy's one ``retryable`` answer."""

from __future__ import annotations

import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

import antavo_braze as ab
from antavo_braze.exceptions import error_for_status
from antavo_braze.testing import FakeBraze
from tests.servers import free_port

FAST = ab.RetryPolicy(attempts=3, wait_initial=0.001, wait_max=0.01, wait_jitter=0.0)


@pytest.mark.parametrize(
    ("status", "error_class"),
    [
        (400, ab.BadRequestError),
        (401, ab.AuthenticationError),
        (403, ab.PermissionDeniedError),
        (404, ab.BrazeAPIError),
        (408, ab.BrazeAPIError),
        (413, ab.BadRequestError),
        (415, ab.BadRequestError),
        (429, ab.RateLimitError),
        (500, ab.ServerError),
        (503, ab.ServerError),
        (599, ab.ServerError),
    ],
)
def test_the_translation_table(status: int, error_class: type[ab.BrazeAPIError]) -> None:
    """Each status maps to its documented class; the body is kept."""
    error = error_for_status(status, "the body")
    assert type(error) is error_class
    assert (error.status_code, error.body) == (status, "the body")
    assert f"HTTP {status}" in str(error)


@given(status=st.integers(min_value=300, max_value=599))
def test_every_error_status_gets_a_braze_api_error(status: int) -> None:
    """Any status gives a BrazeAPIError; 5xx always a ServerError, nothing else one."""
    error = error_for_status(status, "")
    assert isinstance(error, ab.BrazeAPIError)
    assert isinstance(error, ab.ServerError) == (500 <= status <= 599)


def test_401_and_403_say_what_to_fix() -> None:
    """A 401 says to check the key and instance; a 403 names the missing permission."""
    assert "check the API key" in str(error_for_status(401, ""))
    denied = error_for_status(403, "", "no", permission="users.track")
    assert str(denied) == "no (the API key lacks the users.track permission)"


def test_a_refused_connection_keeps_its_oserror_and_names_the_call() -> None:
    """A TransportError from a refused connection says method, path, URL and attempts, is
    retryable, and has the OSError as __cause__."""
    url = f"http://127.0.0.1:{free_port()}"
    with (
        ab.BrazeClient(url, "key", retry=FAST) as client,
        pytest.raises(ab.TransportError) as caught,
    ):
        client.request("GET", "/events/list", params={"page": 0})
    error = caught.value
    assert (error.method, error.path, error.attempts) == ("GET", "/events/list", 3)
    assert error.url is not None
    assert error.url.startswith(url + "/events/list")
    assert error.retryable is True
    assert isinstance(error.__cause__, OSError), repr(error.__cause__)


@pytest.mark.parametrize(
    ("status", "error_class", "attempts", "retryable"),
    [
        (503, ab.ServerError, 3, True),
        (408, ab.BrazeAPIError, 3, True),  # retried, so retryable (REVIEW 1.2's 408 bug)
        (400, ab.BadRequestError, 1, False),
        (404, ab.BrazeAPIError, 1, False),
    ],
)
def test_status_errors_carry_the_one_retryable_answer(
    status: int, error_class: type[ab.BrazeAPIError], attempts: int, retryable: bool
) -> None:
    """An error answer becomes its class with method, path and attempts, and ``retryable`` is
    what the retry policy decided (the same value the dead letter records)."""
    with FakeBraze(api_key="key") as fake:
        fake.inject(times=10, status=status, body={"message": "no"})
        with fake.client(retry=FAST) as client, pytest.raises(ab.BrazeAPIError) as caught:
            client.request("GET", "/events/list")
    error = caught.value
    assert type(error) is error_class
    assert (error.method, error.path, error.attempts) == ("GET", "/events/list", attempts)
    assert error.retryable is retryable


def test_track_raises_the_located_error_with_its_result() -> None:
    """track()'s typed error names POST /users/track, carries the result and is retryable."""
    with FakeBraze(api_key="key") as fake:
        fake.inject(times=10, status=502)
        with fake.client(retry=FAST) as client, pytest.raises(ab.ServerError) as caught:
            client.track(attributes=[{"external_id": "a", "points": 1}])
    error = caught.value
    assert (error.method, error.path, error.retryable) == ("POST", "/users/track", True)
    assert error.result is not None
    assert error.result.accepted == 0


def test_located_errors_survive_pickling() -> None:
    """Method, path, attempts and retryable travel with the error (worker processes)."""
    error = error_for_status(503, "b")
    error.method, error.path, error.attempts, error.retryable = "POST", "/users/track", 5, True
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is ab.ServerError
    assert (copy.method, copy.path, copy.attempts, copy.retryable) == (
        "POST",
        "/users/track",
        5,
        True,
    )
