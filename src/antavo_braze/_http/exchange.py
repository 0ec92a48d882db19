"""What the send loop works on and hands back: one exchange (a logical request and its
attempts), its result, what a call cost, and the options of one call."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any, NamedTuple

from attrs import Factory, frozen

from ..exceptions import AntavoBrazeError

if TYPE_CHECKING:
    from .connection import BrazeResponse
    from .loop import Interrupt

__all__ = ["DEFAULT_GRACE", "CallOptions", "CallStats", "Exchange", "Result"]

DEFAULT_GRACE = 5.0  # seconds in-flight requests get to finish after an interrupt


class Exchange:
    """One logical request and its attempts (``keys``: the profiles it touches)."""

    __slots__ = (
        "attempt",
        "body",
        "deadline",
        "fresh",
        "keys",
        "method",
        "path",
        "slot",
        "span",
        "started",
        "tag",
        "target",
        "unknown",
    )

    def __init__(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        *,
        query: str = "",
        keys: frozenset[str] = frozenset(),
        tag: Any = None,
    ) -> None:
        self.method = method
        self.path = path
        self.target = path + ("?" + query if query else "")
        self.body = body
        self.keys = keys
        self.tag = tag
        self.attempt = 0
        self.unknown = False  # some attempt went out whole and got no usable answer
        self.fresh = False  # the next attempt opens a new connection
        self.deadline = 0.0
        self.started = 0.0
        self.span: Any = None  # the current try's span, when tracing (_telemetry)
        self.slot = False  # the current try holds a pacer slot (given back exactly once)


class Result(NamedTuple):
    """How an exchange ended: answered (``response`` and its JSON ``payload``) or ``error``.

    ``stage`` is ``""`` when answered, ``"braze"`` (an error status), ``"transport"`` (no
    usable answer) or ``"interrupted"``. ``fatal``: no other request can succeed either (401,
    403, TLS, unmendable connection failures). ``not_sent``: the loop gave up before sending
    it at all. ``retryable``: a later try may succeed (decided by
    :func:`~antavo_braze._retry.decide_retry` alone; the dead letter records it).
    """

    exchange: Exchange
    response: BrazeResponse | None
    payload: Any
    error: AntavoBrazeError | None
    stage: str
    fatal: bool = False
    not_sent: bool = False
    retryable: bool = False


class CallStats:
    """What one call cost: attempts made, retries, waits Braze asked for (its 429s), and the
    signal that interrupted it, if one did."""

    __slots__ = (
        "interrupted",
        "rate_limit_wait",
        "rate_limited",
        "requests",
        "retries",
        "statuses",
    )

    def __init__(self) -> None:
        self.requests = 0
        self.statuses: Counter[str] = Counter()  # tries by HTTP status ("error": no answer)
        self.retries = 0
        self.rate_limited = 0
        self.rate_limit_wait = 0.0
        self.interrupted: int | None = None


@frozen
class CallOptions:
    """The options of one call through the loop.

    ``timeout``: seconds per attempt (connect + send + the complete answer). ``grace``: seconds
    in-flight requests get to finish after an interrupt or a fatal result. ``give_up_after``:
    this many exchanges in a row failing without any answer open a circuit (what follows is
    not sent). ``interrupt``: the signal relay the loop watches. ``stats``: where the call's
    cost is counted (a fresh one by default).
    """

    timeout: float
    grace: float = DEFAULT_GRACE
    give_up_after: int | None = None
    interrupt: Interrupt | None = None
    stats: CallStats = Factory(CallStats)
