"""Braze's ``errors[]`` of a ``/users/track`` answer -> per-item rejections. Pure: no I/O.

Braze documents no per-item fields [``shared/reference/braze-api.md`` 1.6]; what it sends in
practice is ``{"type": ..., "input_array": ..., "index": ...}``. An error that names an object
(array and index) rejects that one item; any other is a warning about the request, failing
nothing. Known codes get their meaning in words beside them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from .._braze.limits import BRAZE_ERROR_CODES

__all__ = ["MAX_REASON", "read_errors"]

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
