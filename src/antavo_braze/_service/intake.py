"""How a submitted change gets into the background sender's queue: it takes room
(``max_queue``: waiting for it, or :class:`~antavo_braze.QueueFull`), a redelivered receipt
is recognised, and with a spool the change is written to disk first (threads submitting at
once share one disk sync) — then the worker (``worker.py``) has it."""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any

from ..exceptions import QueueFull
from .spool import Row
from .window import Change
from .worker import Worker

__all__ = ["Intake", "Receipts"]

RECEIPTS_IN_MEMORY = 100_000  # idempotency keys remembered without a spool


class Receipts:
    """The idempotency keys accepted without a spool (a spool keeps its own): the last
    ``RECEIPTS_IN_MEMORY``, each for its time to live (lock held)."""

    def __init__(self) -> None:
        self._accepted: OrderedDict[str, float] = OrderedDict()  # receipt -> when (monotonic)

    def seen(self, receipt: str | None, receipt_ttl: float) -> bool:
        """Whether ``receipt`` was accepted within ``receipt_ttl`` seconds."""
        if receipt is None or receipt not in self._accepted:
            return False
        return time.monotonic() - self._accepted[receipt] < receipt_ttl

    def remember(self, receipt: str | None) -> None:
        if receipt is None:
            return
        self._accepted[receipt] = time.monotonic()
        self._accepted.move_to_end(receipt)
        if len(self._accepted) > RECEIPTS_IN_MEMORY:
            self._accepted.popitem(last=False)


class Intake:
    """Admits changes into ``worker``'s queue (see the module documentation)."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.receipts = Receipts()

    def admit(
        self,
        rows: list[Row],
        records: list[Any],
        submissions: list[Any],
        *,
        timeout: float | None,
        receipt: str | None,
        receipt_ttl: float,
        context: Any,
    ) -> bool:
        """Take room in the queue for ``rows`` (waiting for it, or raising
        :class:`QueueFull`), then queue them; with a spool, write them to it first. False:
        ``receipt`` was accepted before (a redelivery), nothing is queued."""
        count = len(rows)
        worker = self.worker
        deadline = None if timeout is None else time.monotonic() + timeout
        with worker.cond:
            worker.start()
            if worker.spool is None and self.receipts.seen(receipt, receipt_ttl):
                return False
            settings = worker.settings  # read now: a caller may tune a running sender
            while count and worker.outstanding + count > settings.max_queue:
                if settings.on_full == "raise":
                    raise QueueFull(f"{worker.outstanding} changes are waiting (max_queue)")
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise QueueFull(f"no room in the queue within {timeout}s")
                worker.cond.wait(left)
            worker.outstanding += count  # room taken now, the changes queued below
            if worker.backlog is None:
                if receipt is not None:
                    self.receipts.remember(receipt)
                self.enqueue(rows, records, [], submissions, context)
                return True
            if worker.backlog.pending:  # written in order with the backlog being loaded
                return self._spool(rows, records, submissions, receipt, receipt_ttl, context)
            backlog = worker.backlog
            backlog.writing += 1
        # Written without the lock: threads submitting at once share one disk sync.
        try:
            return self._spool(rows, records, submissions, receipt, receipt_ttl, context)
        finally:
            with worker.cond:
                backlog.writing -= 1

    def _spool(
        self,
        rows: list[Row],
        records: list[Any],
        submissions: list[Any],
        receipt: str | None,
        receipt_ttl: float,
        context: Any,
    ) -> bool:
        """Write the changes to the spool, then queue them (their room is taken)."""
        worker = self.worker
        assert worker.spool is not None
        try:
            ids = worker.spool.add(rows, receipt, receipt_ttl)
        except BaseException:
            with worker.cond:
                worker.outstanding -= len(rows)
                worker.cond.notify_all()
            raise
        with worker.cond:
            if ids is None:  # a redelivery
                worker.outstanding -= len(rows)
                worker.cond.notify_all()
                return False
            self.enqueue(rows, records, ids, submissions, context)
            return True

    def enqueue(
        self,
        rows: list[Row],
        records: list[Any],
        ids: list[int],
        submissions: list[Any],
        context: Any,
    ) -> None:
        """Queue accepted changes whose room is taken (lock held); while a spooled backlog
        loads, they wait on disk and are loaded in order with it."""
        worker = self.worker
        backlog = worker.backlog
        if backlog is not None and backlog.pending:  # loaded, in order, with the rest
            backlog.waiting.update(zip(ids, submissions, strict=True))
        else:
            push = worker.queue.push
            for number, ((kind, key, _, seq), record) in enumerate(zip(rows, records, strict=True)):
                change = Change(kind, key, record, submissions[number], seq)  # type: ignore[arg-type]
                change.context = context
                if ids:
                    change.spool_ids.append(ids[number])
                push(change)
            if backlog is not None:
                backlog.known.update(ids)
        worker.counts["received"] += len(rows)
        worker.cond.notify_all()
