"""How a submitted change gets into the background sender's queue: it takes room
(``max_queue``: waiting for it, or :class:`~antavo_braze.QueueFull`), a redelivered receipt
is recognised, and with a spool the change is written to disk first (threads submitting at
once share one disk sync) — then the worker (``worker.py``) has it."""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any, NamedTuple

from ..exceptions import QueueFull
from .spool import Row
from .window import Change
from .worker import Worker

__all__ = ["Admission", "Intake", "Receipts"]

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


class Admission(NamedTuple):
    """One group of changes to admit: its spool rows, parsed records and submissions, the
    idempotency receipt and its lifetime, and the submitter's trace context."""

    rows: list[Row]
    records: list[Any]
    submissions: list[Any]
    receipt: str | None
    receipt_ttl: float
    context: Any


class Intake:
    """Admits changes into ``worker``'s queue (see the module documentation)."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.receipts = Receipts()

    def admit(self, admission: Admission, *, timeout: float | None) -> bool:
        """Take room in the queue for the admission's rows (waiting for it, or raising
        :class:`QueueFull`), then queue them; with a spool, write them to it first. False:
        its receipt was accepted before (a redelivery), nothing is queued."""
        worker = self.worker
        if worker.spool is not None:  # the spool's path: a group of one
            (answer,) = self.admit_groups([admission], timeout=timeout)
            if isinstance(answer, Exception):
                raise answer
            return answer
        deadline = None if timeout is None else time.monotonic() + timeout
        with worker.cond:
            worker.start()
            if self.receipts.seen(admission.receipt, admission.receipt_ttl):
                return False
            full = self._take_room(len(admission.rows), deadline, timeout)
            if full is not None:
                raise full
            if admission.receipt is not None:
                self.receipts.remember(admission.receipt)
            self.enqueue(
                admission.rows, admission.records, [], admission.submissions, admission.context
            )
            return True

    def _take_room(
        self, count: int, deadline: float | None, timeout: float | None
    ) -> QueueFull | None:
        """Take room in the queue for ``count`` changes (lock held), waiting for it until
        ``deadline``; the :class:`QueueFull` to answer when there is none."""
        worker = self.worker
        settings = worker.settings  # read now: a caller may tune a running sender
        while count and worker.outstanding + count > settings.max_queue:
            if settings.on_full == "raise":
                return QueueFull(f"{worker.outstanding} changes are waiting (max_queue)")
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return QueueFull(f"no room in the queue within {timeout}s")
            worker.cond.wait(left)
        worker.outstanding += count  # room taken now, the changes queued by the caller
        return None

    def admit_groups(
        self, admissions: list[Admission], *, timeout: float | None
    ) -> list[bool | Exception]:
        """:meth:`admit` for several groups (several webhooks) with ONE spool write: one
        deadline for all of them. Per group: True (queued), False (a redelivery), or the
        exception that kept it out (:class:`QueueFull` when it found no room in time)."""
        worker = self.worker
        assert worker.spool is not None
        assert worker.backlog is not None
        deadline = None if timeout is None else time.monotonic() + timeout
        answers: list[bool | Exception] = [False] * len(admissions)
        taken: list[int] = []
        with worker.cond:
            worker.start()
            for number, admission in enumerate(admissions):
                full = self._take_room(len(admission.rows), deadline, timeout)
                if full is None:
                    taken.append(number)
                else:
                    answers[number] = full
            backlog = worker.backlog
            if backlog.pending:  # written in order with the backlog being loaded
                self._spool_groups(admissions, taken, answers)
                return answers
            backlog.writing += 1
        try:  # written without the lock: other submits share the disk sync
            self._spool_groups(admissions, taken, answers)
        finally:
            with worker.cond:
                backlog.writing -= 1
        return answers

    def _spool_groups(
        self, admissions: list[Admission], taken: list[int], answers: list[bool | Exception]
    ) -> None:
        """Write the groups that got room in one spool transaction, then queue them."""
        worker = self.worker
        assert worker.spool is not None
        try:
            written = worker.spool.add_many(
                [(admissions[n].rows, admissions[n].receipt, admissions[n].receipt_ttl)
                 for n in taken]
            )  # fmt: skip
        except BaseException as exc:
            with worker.cond:
                worker.outstanding -= sum(len(admissions[n].rows) for n in taken)
                worker.cond.notify_all()
            if not isinstance(exc, Exception):
                raise
            for n in taken:
                answers[n] = exc
            return
        with worker.cond:
            for n, ids in zip(taken, written, strict=True):
                admission = admissions[n]
                if ids is None:  # a redelivery
                    worker.outstanding -= len(admission.rows)
                    worker.cond.notify_all()
                    continue
                self.enqueue(
                    admission.rows, admission.records, ids, admission.submissions,
                    admission.context,
                )  # fmt: skip
                answers[n] = True

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
