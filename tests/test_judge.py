"""The send loop's parts that need no server: the attempt judge, the call options, the source."""

from __future__ import annotations

import time
from collections.abc import Iterator

import antavo_braze as ab
from antavo_braze._http import CallOptions, CallStats, Exchange, IterSource, KeyRegistry, Result
from antavo_braze._http.connection import BrazeResponse
from antavo_braze._http.judge import AttemptJudge

URL = "https://rest.fra-01.braze.eu"
NO_WAIT = ab.RetryPolicy(attempts=2, wait_initial=0, wait_jitter=0)


def judge(options: CallOptions | None = None) -> AttemptJudge:
    """A judge for one call with the key ``secret`` redacted."""
    options = options or CallOptions(5.0)
    return AttemptJudge(NO_WAIT, options, URL, lambda text: text.replace("secret", "***"), None)


def circuit_open(referee: AttemptJudge) -> bool:
    """Whether the judge's circuit is open (read through a call: it changes under us)."""
    return referee.unreachable


def tried(path: str = "/users/track", attempt: int = 1) -> Exchange:
    """An exchange after ``attempt`` tries."""
    exchange = Exchange("POST", path, b"{}")
    exchange.attempt = attempt
    return exchange


def test_a_braze_answer_ends_the_exchange() -> None:
    """A 2xx with Braze's body is the result, its payload parsed; the status is counted."""
    verdict = judge().answered(tried(), BrazeResponse(201, {}, b'{"message": "success"}'))
    assert isinstance(verdict, Result)
    assert verdict.error is None
    assert verdict.payload == {"message": "success"}


def test_a_server_error_with_tries_left_is_retried() -> None:
    """A 500 on the first of two tries gives a due time, and counts a retry."""
    options = CallOptions(5.0)
    before = time.monotonic()
    verdict = judge(options).answered(tried(), BrazeResponse(500, {}, b"down"))
    assert isinstance(verdict, float)
    assert verdict >= before
    assert options.stats.retries == 1
    assert options.stats.statuses["500"] == 1


def test_the_last_try_ends_with_a_located_typed_error() -> None:
    """A 500 on the last try ends as a ServerError that names the call and hides the key."""
    verdict = judge().answered(tried(attempt=2), BrazeResponse(500, {}, b"secret went wrong"))
    assert isinstance(verdict, Result)
    assert verdict.stage == "braze"
    assert isinstance(verdict.error, ab.ServerError)
    assert verdict.error.url == URL + "/users/track"
    assert verdict.error.attempts == 2
    assert "secret" not in str(verdict.error)
    assert verdict.retryable


def test_a_retry_while_stopping_ends_interrupted() -> None:
    """Once the loop stops, what would be retried ends 'interrupted' (named by the halt)."""
    referee = judge()
    referee.stopping, referee.stop_reason = True, "the run stopped at AuthenticationError"
    verdict = referee.failed(tried(), OSError("reset"))
    assert isinstance(verdict, Result)
    assert verdict.stage == "interrupted"
    assert "AuthenticationError" in str(verdict.error)
    assert verdict.not_sent


def test_the_circuit_opens_after_failures_in_a_row() -> None:
    """give_up_after failures without any answer open the circuit; never answered: fatal."""
    referee = judge(CallOptions(5.0, give_up_after=2))
    first = referee.failed(tried(attempt=2), OSError("refused"))
    assert isinstance(first, Result)
    assert not first.fatal
    assert not circuit_open(referee)
    second = referee.failed(tried(attempt=2), OSError("refused"))
    assert isinstance(second, Result)
    assert second.fatal
    assert circuit_open(referee)
    assert "Braze unreachable" in str(second.error)
    assert referee.give_up(tried()).not_sent


def test_call_options_count_into_their_own_stats() -> None:
    """Each CallOptions without stats counts into a fresh CallStats; given ones are kept."""
    stats = CallStats()
    assert CallOptions(1.0).stats is not CallOptions(1.0).stats
    assert CallOptions(1.0, stats=stats).stats is stats
    assert CallOptions(1.0).grace == 5.0


def test_next_ready_pulls_and_claims_the_next_exchange() -> None:
    """next_ready builds the next exchange (runs the generator) and claims its profiles."""
    registry = KeyRegistry()
    built: list[str] = []

    def exchanges() -> Iterator[Exchange]:
        built.append("mapped")
        yield Exchange("POST", "/users/track", b"{}", keys=frozenset({"a"}))

    source = IterSource(exchanges(), registry)
    assert built == []  # nothing is mapped until the loop asks
    assert source.next_ready() == 0.0
    assert built == ["mapped"]
    assert not registry.claim(frozenset({"a"}))  # claimed by the source
    exchange = source.take()
    assert exchange.keys == frozenset({"a"})
    assert source.next_ready() is None
    assert source.exhausted
