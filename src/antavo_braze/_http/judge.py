"""What an ended attempt means: retry it (and when), or the :class:`Result` it ends with.

The send loop does the I/O; the :class:`AttemptJudge` of one call keeps the books about it: the
call's stats, the retry warnings (the first per reason, the repeats summed up at the end), the
circuit that opens after ``give_up_after`` exchanges in a row got no answer, and the error each
failure becomes (method, URL, attempts, cause; never the API key).
"""

from __future__ import annotations

import logging
import random
import signal
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from .._braze.limits import ENDPOINT_PERMISSIONS
from .._json import loads
from .._telemetry import Active, log_fields
from ..exceptions import AntavoBrazeError, BrazeAPIError, TransportError, error_for_status
from .connection import BrazeResponse
from .exchange import CallOptions, Exchange, Result
from .pool import TLSVerificationError, UnmendableError
from .retry import AttemptOutcome, Failure, RetryDecision, RetryPolicy, decide_retry

__all__ = ["TRACK", "AttemptJudge", "Verdict", "braze_answer"]

log = logging.getLogger("antavo_braze.http")

TRACK = "/users/track"
_BRAZE_MESSAGES = ("success", "queued")  # "queued": Braze's maintenance answer (still applied)

# A retry's due time (time.monotonic()), or how the exchange ended.
Verdict = float | Result


class AttemptJudge:
    """Decides, for one call, what each ended attempt means (see the module docstring)."""

    def __init__(
        self,
        policy: RetryPolicy,
        options: CallOptions,
        base_url: str,
        redact: Callable[[str], str],
        telemetry: Active | None,
    ) -> None:
        self.policy = policy
        self.options = options
        self.stats = options.stats
        self.base_url = base_url
        self.redact = redact
        self.telemetry = telemetry
        self.stopping = False  # the loop takes no new work: a retry ends "interrupted"
        self.stop_reason: str | None = None  # why it stopped, when not for a signal (halt)
        self.signal: int | None = None  # the signal that stopped it
        self.unreachable = False  # the circuit is open: what follows is not sent
        self._failures_in_a_row = 0
        self._answers = 0  # HTTP answers of any status: Braze (or something) is reachable
        self._unknown = 0  # exchanges that went out whole without a usable answer
        self._retry_reasons: Counter[str] = Counter()

    def answered(self, exchange: Exchange, response: BrazeResponse) -> Verdict:
        """An answer came: a 2xx that is Braze's answer ends the exchange; anything else is
        decided by the retry policy."""
        status = response.status_code
        self._answers += 1
        self.stats.statuses[str(status)] += 1
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "%s %s -> %d (attempt %d, %.1f ms)",
                exchange.method,
                exchange.path,
                status,
                exchange.attempt,
                (time.monotonic() - exchange.started) * 1000,
                extra=log_fields(
                    "http",
                    endpoint=f"{exchange.method} {exchange.path}",
                    status=status,
                    attempt=exchange.attempt,
                ),
            )
        if 200 <= status < 300:
            payload = braze_answer(exchange.path, response.content)
            if payload is not None:
                self._failures_in_a_row = 0
                if self.telemetry is not None:
                    self.telemetry.end_try(exchange, AttemptOutcome(status), payload=payload)
                return Result(exchange, response, payload, None, "")
            exchange.unknown = True  # a gateway's page, a cut or garbled body: was it applied?
            outcome = AttemptOutcome(status, response.headers, "invalid_answer")
        else:
            self._failures_in_a_row = 0  # Braze is reachable
            outcome = AttemptOutcome(status, response.headers)
        return self.decide(exchange, outcome, response, None)

    def failed(self, exchange: Exchange, exc: BaseException) -> Verdict:
        """An attempt got no usable answer (``exc`` says why)."""
        self.stats.statuses["error"] += 1
        failure: Failure = "transport"
        if isinstance(exc, TLSVerificationError):
            failure = "tls"
        elif isinstance(exc, UnmendableError):
            failure = "unmendable"
        return self.decide(exchange, AttemptOutcome(failure=failure), None, exc)

    def decide(
        self,
        exchange: Exchange,
        outcome: AttemptOutcome,
        response: BrazeResponse | None,
        exc: BaseException | None,
    ) -> Verdict:
        """Retry (the due time) or the result, by :func:`decide_retry`; counts, logs, and
        opens the circuit."""
        decision = decide_retry(
            self.policy, outcome, exchange.attempt, time.time(), random.random()
        )
        if self.telemetry is not None:
            self.telemetry.end_try(exchange, outcome, decision, exc)
        what = f"HTTP {outcome.status}" if exc is None else self._reason(exc)
        if outcome.failure == "invalid_answer":
            what += " that is not Braze's answer"
        if decision.retry:
            if self.stopping:
                return self.interrupted(exchange)
            self._retrying(exchange, outcome, decision, what)
            return time.monotonic() + decision.wait
        error, stage = self._error(exchange, outcome, decision, response, what)
        error.__cause__ = exc
        fatal = decision.fatal
        if exchange.unknown:
            self._unknown += 1
        give_up_after = self.options.give_up_after
        if stage == "transport" and outcome.status is None:
            self._failures_in_a_row += 1
            if give_up_after is not None and self._failures_in_a_row >= give_up_after:
                self.unreachable = True
                if not self._answers:  # nothing ever answered: stop, as for a TLS refusal
                    fatal = True
                    cause = error
                    error = self._located(
                        TransportError(
                            f"Braze unreachable at {self.base_url}: {self._failures_in_a_row} "
                            f"requests in a row got no answer and none was ever answered "
                            f"({self._unknown} went out whole and may have been applied); "
                            f"last: {error}"
                        ),
                        exchange,
                    )
                    error.__cause__ = cause
        return Result(exchange, response, None, error, stage, fatal, retryable=decision.retryable)

    def _retrying(
        self, exchange: Exchange, outcome: AttemptOutcome, decision: RetryDecision, what: str
    ) -> None:
        self.stats.retries += 1
        if decision.rate_limited:
            self.stats.rate_limited += 1
            self.stats.rate_limit_wait += decision.wait
        # The first retry for a reason is a warning; repeats are counted and summed up when
        # the loop ends (a failing server would otherwise print a line per batch).
        where = f"{exchange.method} {exchange.path}: {what}"
        seen = self._retry_reasons[where]
        self._retry_reasons[where] = seen + 1
        log.log(
            logging.DEBUG if seen else logging.WARNING,
            "%s; retry %d in %.2fs",
            where,
            exchange.attempt,
            decision.wait,
            extra=log_fields(
                "http",
                endpoint=f"{exchange.method} {exchange.path}",
                status=outcome.status,
                attempt=exchange.attempt,
                wait=decision.wait,
                reason=what,
            ),
        )

    def log_repeats(self) -> None:
        """The repeated retry reasons, one line each (when the loop ends)."""
        for where, count in self._retry_reasons.items():
            if count > 1:
                endpoint, _, reason = where.partition(": ")
                log.warning(
                    "%s: %d more retries for the same reason",
                    where,
                    count - 1,
                    extra=log_fields("http", endpoint=endpoint, reason=reason, count=count - 1),
                )

    def give_up(self, exchange: Exchange) -> Result:
        """The result of an exchange the open circuit does not send."""
        error = TransportError(
            "not sent: Braze unreachable "
            f"({self.options.give_up_after} requests in a row got no answer)"
        )
        return Result(exchange, None, None, error, "transport", not_sent=True, retryable=True)

    def interrupted(self, exchange: Exchange) -> Result:
        """The result of an exchange the stop ended (sent or not)."""
        name = self.stop_reason or signal.Signals(self.signal or signal.SIGINT).name
        if exchange.unknown:
            text = f"interrupted ({name}) after the request went out: Braze may have applied it"
        else:
            text = f"interrupted ({name}) before it was sent"
        return Result(
            exchange,
            None,
            None,
            TransportError(text),
            "interrupted",
            not_sent=not exchange.unknown,
            retryable=True,
        )

    def _reason(self, exc: BaseException) -> str:
        if isinstance(exc, UnmendableError):  # its message says it all; the class is internal
            return self.redact(str(exc))[:300]
        return self.redact(f"{type(exc).__name__}: {exc}")[:300]

    def _located(self, error: AntavoBrazeError, exchange: Exchange) -> AntavoBrazeError:
        """``error`` marked with the call it ends: method, URL (no secrets in it), attempts."""
        error.method = exchange.method
        error.url = self.base_url + exchange.target
        error.path = exchange.path
        error.attempts = exchange.attempt
        return error

    def _error(
        self,
        exchange: Exchange,
        outcome: AttemptOutcome,
        decision: RetryDecision,
        response: BrazeResponse | None,
        what: str,
    ) -> tuple[AntavoBrazeError, str]:
        where = f"{exchange.method} {self.base_url}{exchange.path}"
        if outcome.failure in ("tls", "unmendable"):
            error: AntavoBrazeError = TransportError(f"{where}: {decision.reason}: {what}")
            return self._located(error, exchange), "transport"
        if outcome.failure is not None:
            message = f"{where} failed after {exchange.attempt} attempt(s): {what}"
            return self._located(TransportError(message), exchange), "transport"
        assert response is not None
        assert outcome.status is not None
        needed = ENDPOINT_PERMISSIONS.get(exchange.path)
        error = _status_error(outcome.status, self.redact(response.text), where, decision, needed)
        return self._located(error, exchange), "braze"


def braze_answer(path: str, content: bytes) -> Any:
    """The 2xx body as Braze's answer, or ``None`` when it is not one: not a JSON object (or
    too deep), and for ``/users/track`` a ``"message"`` other than ``"success"``/``"queued"`` or
    ``errors`` that is not a list (``{}``, a gateway's ``{"status": "ok"}``, an error page)."""
    try:
        payload = loads(content)
    except (ValueError, RecursionError, MemoryError):
        return None
    if not isinstance(payload, dict):
        return None
    if path == TRACK and (
        payload.get("message") not in _BRAZE_MESSAGES
        or not isinstance(payload.get("errors", []), list)
    ):
        return None
    return payload


def _status_error(
    status: int, body: str, where: str, decision: RetryDecision, permission: str | None
) -> BrazeAPIError:
    # Redacted above, truncated here: a key can never be cut in half into a message.
    text = f"Braze answered HTTP {status} to {where}: {body[:300]}"
    if decision.reason.startswith("rate limited"):
        text = f"{decision.reason} ({where})"
    return error_for_status(status, body, text, permission=permission)
