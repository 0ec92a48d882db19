"""Reading an Antavo list to its end, each item once, while the list may move.

Offset pages re-read ``OVERLAP`` items of the previous page. A page that no longer joins the
previous one (the list moved by more than the overlap), or a ``total`` above what was read,
reads the window again; what was already given is not given twice (reference section 3.2).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from .._telemetry import log_fields
from ..exceptions import TransportError
from .shapes import page_continues

__all__ = ["MAX_RESTARTS", "OVERLAP", "PageReader", "walk"]

log = logging.getLogger("antavo_braze.antavo")

OVERLAP = 10  # items each page re-reads of the previous one, to notice a list that moved
MAX_RESTARTS = 3  # re-reads of a whole window that kept moving before giving up

# A page's body -> (items, their ids, the list's total when Antavo gives it).
PageReader = Callable[[Any], tuple[list[Any], list[str], int | None]]


def walk(
    get: Callable[[str, Mapping[str, str]], Any],
    path: str,
    params: Mapping[str, str],
    page_size: int,
    read_page: PageReader,
) -> Iterator[Any]:
    """Every item of the list at ``path`` (``get(path, params)`` fetches one page), each once."""
    seen: set[str] = set()
    restarts = 0
    offset, tail = 0, list[str]()
    while True:
        body = get(path, {**params, "limit": str(page_size), "offset": str(offset)})
        items, ids, total = read_page(body)
        if not page_continues(tail, ids) or (not items and offset and tail):
            restarts = _restart(path, restarts)
            offset, tail = 0, []
            continue
        for item_id, item in zip(ids, items, strict=True):
            if item_id not in seen:
                seen.add(item_id)
                yield item
        if len(items) < page_size:
            if total is not None and total > len(seen):
                restarts = _restart(path, restarts)
                offset, tail = 0, []
                continue
            return
        overlap = min(OVERLAP, len(items) - 1)
        tail = ids[len(ids) - overlap :] if overlap else []
        offset += len(items) - overlap


def _restart(path: str, restarts: int) -> int:
    if restarts >= MAX_RESTARTS:
        raise TransportError(
            f"Antavo's list {path} kept changing while it was read ({restarts} re-reads): "
            "read a shorter window, or later"
        )
    log.info(
        "Antavo's list %s moved while it was read: reading the window again",
        path,
        extra=log_fields("antavo", endpoint=f"GET {path}", count=restarts + 1),
    )
    return restarts + 1
