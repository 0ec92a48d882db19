"""What Braze answered, per object: its ``errors[]`` -> per-item rejections, and the outcomes
of a ``track()`` call -> a :class:`TrackResult`. Pure: no I/O.

Braze documents no per-item fields [``shared/reference/braze-api.md`` 1.6]; what it sends in
practice is ``{"type": ..., "input_array": ..., "index": ...}``. An error that names an object
(array and index) rejects that one item; any other is a warning about the request, failing
nothing. Known codes get their meaning in words beside them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from attrs import frozen

from .._braze.limits import BRAZE_ERROR_CODES
from ..exceptions import AntavoBrazeError, error_for_status
from .batching import Batch, BatchOutcome, Item

if TYPE_CHECKING:
    from .._http import Result

__all__ = [
    "MAX_REASON",
    "RejectedObject",
    "TrackResult",
    "batch_outcome",
    "oversize_outcome",
    "read_errors",
    "settle_track",
]

MAX_REASON = 300  # characters kept of a reason (Braze may echo member data)


def read_errors(
    errors: Any,
    where: Mapping[tuple[str, int], int],
    redact: Callable[[str], str],
) -> tuple[dict[int, str], tuple[str, ...]]:
    """``(rejected, warnings)`` of an answer's ``errors``: ``rejected`` maps the item number
    that ``where`` gives for ``(input_array, index)`` to its reason; ``warnings`` are the errors
    that name no item of the request. Every text passes ``redact`` (the API key) first."""
    rejected: dict[int, str] = {}
    warnings: list[str] = []
    for error in errors if isinstance(errors, list) else [errors]:
        if not isinstance(error, dict):
            warnings.append(redact(str(error))[:MAX_REASON])
            continue
        reason = redact(str(error.get("type") or error.get("message") or error))
        plain = BRAZE_ERROR_CODES.get(reason)
        if plain is not None:
            reason = f"{reason} ({plain})"
        index = error.get("index")
        number = None
        if isinstance(index, int) and not isinstance(index, bool):
            number = where.get((str(error.get("input_array")), index))
        if number is None:
            warnings.append(reason[:MAX_REASON])  # Braze did not say which object
        else:
            rejected[number] = reason[:MAX_REASON]
    return rejected, tuple(warnings)


@frozen
class RejectedObject:
    """An object that did not reach Braze: its array and index in the caller's input.

    ``stage``: ``"validation"`` (refused before sending), ``"braze"`` (Braze refused it) or
    ``"transport"`` (the request never got a usable answer).
    """

    input_array: str
    index: int
    stage: str
    reason: str


@frozen
class TrackResult:
    """What :meth:`BrazeClient.track` achieved: requests made, objects accepted, rejections,
    and errors Braze reported without saying which object they were about (``warnings``)."""

    requests: int
    accepted: int
    rejected: tuple[RejectedObject, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """True when Braze accepted every object."""
        return not self.rejected


def settle_track(
    outcomes: Iterable[BatchOutcome],
    where: Sequence[tuple[str, int]],
    groups: Sequence[list[Item]],
) -> tuple[int, list[RejectedObject], list[str], AntavoBrazeError | None]:
    """``(accepted, rejected, warnings, error)`` of a ``track()`` call's batch ``outcomes``;
    ``where[record]`` is an item's ``(array, index)`` in the caller's input. The first error
    that failed a whole request is kept to be raised; a fatal one raised by ``outcomes`` (the
    call stopped) rejects every item not yet settled as ``"interrupted"``."""
    accepted = 0
    rejected: list[RejectedObject] = []
    warnings: list[str] = []
    settled = [False] * len(where)
    error: AntavoBrazeError | None = None
    try:
        for outcome in outcomes:
            warnings.extend(outcome.warnings)
            if error is None and outcome.error is not None and outcome.stage != "validation":
                error = outcome.error
            for number, item in enumerate(outcome.batch.items):
                settled[item.record] = True
                failure = outcome.failure(number)
                if failure is None:
                    accepted += 1
                else:
                    array, index = where[item.record]
                    rejected.append(RejectedObject(array, index, *failure))
    except AntavoBrazeError as fatal:
        error = fatal
        reason = f"not sent: the call stopped at {type(fatal).__name__}: {fatal}"[:MAX_REASON]
        for group in groups:  # batches the stop left unbuilt
            if not settled[group[0].record]:
                array, index = where[group[0].record]
                rejected.append(RejectedObject(array, index, "interrupted", reason))
    return accepted, rejected, warnings, error


def batch_outcome(result: Result, redact: Callable[[str], str]) -> BatchOutcome:
    """The outcome of one ``/users/track`` request's ``result`` (its batch is the tag): the
    error that failed it whole, with the retry policy's ``retryable`` answer on it, or Braze's
    per-object ``errors[]`` (``redact`` hides the API key in them)."""
    batch: Batch = result.exchange.tag
    exchange = result.exchange
    common: dict[str, Any] = {
        "attempts": exchange.attempt,
        "unknown": exchange.unknown,
        "not_sent": result.not_sent,
        "retryable": result.retryable,
    }
    if result.error is not None:
        result.error.retryable = result.retryable  # the retry policy's one answer
        return BatchOutcome(batch, error=result.error, stage=result.stage, **common)
    errors = result.payload.get("errors")
    if not errors:
        return BatchOutcome(batch, **common)
    rejected, warnings = read_errors(errors, batch.locate(), redact)
    return BatchOutcome(batch, rejected=rejected, warnings=warnings, **common)


def oversize_outcome(batch: Batch) -> BatchOutcome:
    """A batch over Braze's 4 MB body limit: refused without sending (as Braze would, 413)."""
    error = error_for_status(
        413, "", f"object of {len(batch.body)} bytes exceeds Braze's 4 MB request limit"
    )
    error.method, error.path, error.attempts, error.retryable = "POST", "/users/track", 0, False
    return BatchOutcome(batch, error=error, stage="validation", not_sent=True)
