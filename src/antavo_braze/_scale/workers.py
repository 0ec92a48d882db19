"""One sync in N processes on one machine: ``Syncer.sync_members(records, workers=N)``.

One process maps, batches and serializes about 100,000 members a second at best, short of
Braze's 75,000 members (1,000 requests) a second once HTTP is added; a machine's other cores
would sit idle. Here every worker is a forked copy of the Syncer that reads the same input and
keeps its share, stably by member (:func:`~antavo_braze.shard_of`), so a member's events stay
in order in one worker. The workers draw on one :class:`SharedMemoryPacer` budget, write
their failures to dead-letter parts that end up in the Syncer's one dead letter (in input
order), and their reports add up to one :class:`SyncReport`, as if one process had run.

Ctrl-C / SIGTERM reach this process only (the workers have a process group of their own); it
passes the signal on, and each worker stops as one process would. Workers stop at different
input positions, so before they end, each one fails its own records up to the furthest
position any worker read (stage ``"interrupted"``, not sent): the merged report then covers
exactly the first ``total`` positions, as one process's would, and ``--resume`` works alike.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import shutil
import signal
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from multiprocessing.connection import Connection, wait
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Literal

from .._http.pacing import InProcessPacer, Pacer
from .._run.checkpoint import Settled
from .._run.deadletter import JsonlDeadLetter, read_dead_letters
from .._run.input import BadInput, reopen_input
from .._run.interrupts import _is_default
from .._run.progress import progress_callback
from .._run.report import FieldCounts, Progress, SyncReport
from .._run.tally import Tally
from ..exceptions import AntavoBrazeError, ConfigurationError, SyncInterrupted
from .localpacer import SharedMemoryPacer
from .redis import RedisPacer
from .shard import shard_of

if TYPE_CHECKING:
    from .._sync import Syncer

log = logging.getLogger("antavo_braze.sync")

__all__ = ["ELSEWHERE", "Workers", "merge_reports", "run_in_workers", "worker_count"]

Workers = int | Literal["auto"]
ELSEWHERE = "another worker's record (workers)"
_MARKER = Settled(-1, ELSEWHERE)  # one instance: the builders read only its reason
_END = object()
_STATS = 5  # per worker in the progress block: done, succeeded, failed, skipped, requests
_POLL = 0.5  # seconds between progress reports


def worker_count(workers: Workers) -> int:
    """``workers`` as a number: ``"auto"`` is the cores this process may use."""
    if workers == "auto":
        affinity = getattr(os, "sched_getaffinity", None)
        return len(affinity(0)) if affinity is not None else os.cpu_count() or 1
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigurationError(f"workers must be a whole number >= 1 or 'auto', not {workers!r}")
    return workers


class _Share:
    """Worker ``index`` of ``count``'s view of the input: its own records, and in place of
    every other one a marker the builders skip (positions and line numbers stay the input's).
    An iterator object, not a generator: when the sync ends, what it has not read is still
    there for :func:`_fail_tail`."""

    def __init__(self, records: Iterable[Any], index: int, count: int, kind: str) -> None:
        from .._build.records import event_id, record_id
        from .._run.input import is_fresh, rows_of

        self._records = iter(rows_of(records))
        self.index, self.count = index, count
        self._key = event_id if kind == "event" else record_id
        self._field = "customer" if kind == "event" else "id"  # what the key reads of a dict
        self.line_of = getattr(records, "line_of", None)
        self._fresh = is_fresh(records)  # the builders may batch our records unencoded
        self.position = 0  # of the next record
        self.last: tuple[int, Any] | None = None  # the last own record handed out
        self.elsewhere = 0  # markers handed out

    def __iter__(self) -> _Share:
        return self

    def owner(self, position: int, record: Any) -> int:
        """The worker that owns ``record``, at ``position`` of the input."""
        cls = type(record)
        if cls is dict:  # the common case, without record_id's general lookup
            key = record.get(self._field)
        else:
            key = None if cls is Settled or cls is BadInput else self._key(record)
        return position % self.count if key is None else shard_of(key, self.count)

    def __next__(self) -> Any:
        record = next(self._records)
        position = self.position
        self.position = position + 1
        if self.owner(position, record) != self.index:
            self.elsewhere += 1
            return _MARKER
        self.last = (position, record)
        return record


class _ListShare(_Share):
    """A worker's view of a list or tuple whose owners the parent worked out before the fork
    (``owners[position]``): other workers' records are never touched, so this worker does
    not copy the memory pages that hold only theirs."""

    def __init__(self, records: Any, index: int, count: int, kind: str, owners: bytes) -> None:
        super().__init__(records, index, count, kind)
        self._list, self._owners = records, owners

    def __next__(self) -> Any:
        position = self.position
        if position >= len(self._owners):
            raise StopIteration
        self.position = position + 1
        if self._owners[position] != self.index:
            self.elsewhere += 1
            return _MARKER
        record = self._list[position]
        self.last = (position, record)
        return record


def _owners(records: Any, count: int, kind: str) -> bytes | None:
    """Each position's worker, for a list or tuple (worked out once, before the fork)."""
    if type(records) not in (list, tuple) or count > 255:
        return None
    share = _Share((), 0, count, kind)
    return bytes([share.owner(position, r) for position, r in enumerate(records)])


class _ProgressSlot:
    """A worker's progress, written where the parent adds them up (without other workers'
    records)."""

    def __init__(self, block: Any, index: int, share: _Share) -> None:
        self._block, self._base, self._share = block, index * _STATS, share

    def __call__(self, progress: Progress) -> None:
        elsewhere = self._share.elsewhere
        base = self._base
        self._block[base : base + _STATS] = [
            progress.done - elsewhere,
            progress.succeeded,
            progress.failed,
            progress.skipped - elsewhere,
            progress.requests,
        ]


class _Job:
    """What every worker inherits (by fork)."""

    def __init__(
        self,
        syncer: Syncer,
        kind: str,
        inputs: list[Iterable[Any]],
        count: int,
        pacer: Pacer | None,
        parts: Path | None,
        progress: Any,
        parent_alive: int,
        parent_end: int,
    ) -> None:
        self.syncer, self.kind, self.inputs, self.count = syncer, kind, inputs, count
        self.pacer, self.parts, self.progress = pacer, parts, progress
        self.parent_alive, self.parent_end = parent_alive, parent_end
        self.owners = _owners(inputs[0], count, kind) if inputs else None


def _watch_parent(fd: int) -> None:
    """Stop this worker like a SIGTERM would if the parent goes away (its end of the pipe
    closes): a killed parent leaves no worker sending on its own."""

    def watch() -> None:
        with contextlib.suppress(OSError):
            while os.read(fd, 1):
                pass
        with contextlib.suppress(OSError):
            os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="antavo-braze-parent-watch", daemon=True).start()


def _worker(job: _Job, index: int, conn: Connection) -> None:
    """A worker's life: sync its share, say where it stopped, fail its records up to where
    the furthest worker stopped, hand its reports over."""
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)  # the terminal's Ctrl-C reaches the parent only, which passes it on
    os.close(job.parent_end)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _watch_parent(job.parent_alive)
    syncer = job.syncer
    client = syncer.client
    assert client is not None
    if job.pacer is not None:
        client.pacer = job.pacer
    sink = None if job.parts is None else JsonlDeadLetter(job.parts / f"part-{index}.jsonl")
    syncer.dead_letter, syncer._owns_sink, syncer.handle_signals = sink, False, True
    signum: int | None = None
    try:
        if job.owners is None:
            share = _Share(job.inputs[index], index, job.count, job.kind)
        else:
            share = _ListShare(job.inputs[index], index, job.count, job.kind, job.owners)
        # Progress costs a clock read per record: only when someone watches.
        watched = syncer._progress not in (None, False)
        syncer._progress = _ProgressSlot(job.progress, index, share) if watched else None
        build = syncer._builder(job.kind)
        try:
            report = syncer._run(job.kind, share, build)
        except SyncInterrupted as stop:
            report, signum = stop.report, stop.signal
        finally:
            # The sync is over: what is left is quick, and the parent waits for it.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            if isinstance(job.pacer, SharedMemoryPacer):
                job.pacer.release()
    except BaseException as exc:  # sent to the parent, which raises it
        conn.send(("error", _portable(exc)))
        return
    conn.send(("stopped", report.total, signum))
    furthest = conn.recv()
    reports = [report]
    if report.total < furthest:
        reports.append(_fail_tail(job.kind, share, sink, report.total, furthest, signum))
    conn.send(("done", reports))


def _portable(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling, else an error that says what it was."""
    import pickle

    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return AntavoBrazeError(f"a worker failed: {type(exc).__name__}: {exc}")
    return exc


def _fail_tail(
    kind: str,
    share: _Share,
    sink: JsonlDeadLetter | None,
    handled: int,
    furthest: int,
    signum: int | None,
) -> SyncReport:
    """This worker's own records in ``[handled, furthest)``, which another worker read past:
    failed as interrupted before they were sent (what an earlier run settled stays skipped)."""
    run = Tally(kind, sink=sink, line_of=share.line_of)
    name = signal.Signals(signum or signal.SIGINT).name
    reason = f"interrupted ({name}) before it was sent"
    key = share._key

    def settle(position: int, record: Any) -> None:
        run.total += 1
        if type(record) is Settled:
            run.skip(position, record.reason)
        else:
            record_id = None if type(record) is BadInput else key(record)
            run.fail(
                position, record, record_id, "interrupted", reason,
                retryable=True, outcome="not_sent",
            )  # fmt: skip

    if share.last is not None and share.last[0] >= handled:  # read, never handled
        settle(*share.last)
    while share.position < furthest:
        if next(share, _END) is _END:
            break
        if share.last is not None and share.last[0] == share.position - 1:
            settle(*share.last)
    return run.report(requests=0)


def merge_reports(reports: list[SyncReport], elapsed: float) -> SyncReport:
    """The workers' reports as one: other workers' records (skipped by each) taken out."""
    elsewhere = sum(report.skipped_by_reason.get(ELSEWHERE, 0) for report in reports)
    reasons: Counter[str] = Counter()
    statuses: Counter[str] = Counter()
    fields: dict[str, FieldCounts] = {}
    clears_stopped: dict[str, tuple[int, int]] = {}
    for report in reports:
        reasons.update(report.skipped_by_reason)
        statuses.update(report.requests_by_status)
        for name, counts in report.fields.items():
            total = fields.get(name, FieldCounts(path=counts.path))
            fields[name] = FieldCounts(
                total.present + counts.present,
                total.absent + counts.absent,
                total.invalid + counts.invalid,
                total.cleared + counts.cleared,
                counts.path,
            )
        for name, (seen, cleared) in report.clears_stopped.items():
            before = clears_stopped.get(name, (0, 0))
            clears_stopped[name] = (before[0] + seen, before[1] + cleared)
    del reasons[ELSEWHERE]

    def add(name: str) -> int:
        return sum(getattr(report, name) for report in reports)

    return SyncReport(
        total=add("total") - elsewhere,
        succeeded=add("succeeded"),
        failed=add("failed"),
        skipped=add("skipped") - elsewhere,
        requests=add("requests"),
        failures=tuple(sorted((f for r in reports for f in r.failures), key=_index)),
        attribute_values=add("attribute_values"),
        attribute_values_saved=add("attribute_values_saved"),
        warnings=tuple(w for r in reports for w in r.warnings),
        elapsed=elapsed,
        fields=fields,
        skipped_by_reason=dict(reasons),
        dropped=tuple(sorted((d for r in reports for d in r.dropped), key=_index)),
        possible_duplicates=add("possible_duplicates"),
        retries=add("retries"),
        rate_limit_waits=add("rate_limit_waits"),
        rate_limit_wait=sum(report.rate_limit_wait for report in reports),
        requests_by_status=dict(statuses),
        merged=add("merged"),
        deleted=add("deleted"),
        clears_stopped=clears_stopped,
    )


def _index(item: Any) -> int:
    return item.index  # type: ignore[no-any-return]


def _shared_pacer(pacer: Pacer) -> Pacer | None:
    """The budget the workers share: an in-process pacer's, moved to shared memory (any
    other pacer — Redis, your own — is shared already, or yours to share)."""
    if type(pacer) is not InProcessPacer:
        if not isinstance(pacer, (SharedMemoryPacer, RedisPacer)):
            log.warning(
                "workers: the client's %s is not shared between processes; each worker "
                "paces itself with its own copy of it",
                type(pacer).__name__,
            )
        return None
    return SharedMemoryPacer(
        requests=pacer._window_requests,
        per=pacer._per,
        hourly=pacer._hourly,
        max_wait=300.0 if pacer._max_wait is None else pacer._max_wait,
    )


class _Signals:
    """While the workers run: SIGINT/SIGTERM to this process are passed on to them (a second
    one too: they then stop at once)."""

    def __init__(self, pids: list[int], enabled: bool) -> None:
        self.pids = pids
        self.received: int | None = None
        self.forwarded = False
        self._previous: dict[int, Any] = {}
        if not enabled or threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGINT, signal.SIGTERM):
            current = signal.getsignal(signum)
            if _is_default(signum, current):
                self._previous[signum] = current
                signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.forward(signum)

    def forward(self, signum: int) -> None:
        """Pass ``signum`` on to every worker (a second time: they stop at once)."""
        if self.received is None:
            self.received = signum
        self.forwarded = True
        for pid in self.pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signum)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def run_in_workers(syncer: Syncer, kind: str, records: Iterable[Any], count: int) -> SyncReport:
    """Sync ``records`` in ``count`` forked workers (see the module docstring)."""
    from .._run.deadletter import start_sink
    from .._run.input import records_length

    client = syncer.client
    if client is None:
        raise ConfigurationError("this Syncer has no client: it can preview and dry-run only")
    if "fork" not in multiprocessing.get_all_start_methods():
        raise ConfigurationError("workers > 1 need fork() (Linux, macOS)")
    # Each worker reads its own copy of the input (opened here: a file that cannot be read
    # again, such as stdin, is a clear error before anything starts).
    inputs = [reopen_input(records) for _ in range(count)]
    started = time.perf_counter()
    start_sink(syncer.dead_letter)
    parts = None
    if syncer.dead_letter is not None:
        where = getattr(syncer.dead_letter, "path", None)
        parts = Path(
            tempfile.mkdtemp(
                prefix=".antavo-braze-workers-",
                dir=None if where is None else Path(where).resolve().parent,
            )
        )
    context = multiprocessing.get_context("fork")
    block = context.RawArray("q", count * _STATS)
    alive_read, alive_write = os.pipe()
    job = _Job(
        syncer, kind, inputs, count, _shared_pacer(client.pacer), parts, block,
        alive_read, alive_write,
    )  # fmt: skip
    total = records_length(records)
    progress = progress_callback(syncer._progress, total)
    connections: list[Connection] = []
    processes = []
    merged: SyncReport | None = None
    error: BaseException | None = None
    asked: int | None = None
    try:
        for index in range(count):
            parent, child = context.Pipe()
            process = context.Process(
                target=_worker, args=(job, index, child), name=f"antavo-braze-worker-{index}"
            )
            process.daemon = True
            process.start()
            child.close()
            connections.append(parent)
            processes.append(process)
        os.close(alive_read)
        for source in [records, *inputs]:  # the workers have theirs; this process reads none
            close = getattr(source, "close", None)
            if callable(close):
                close()
        signals = _Signals([p.pid for p in processes if p.pid], syncer.handle_signals)
        try:
            reports, error, asked = _collect(
                connections, processes, signals, progress, block, started, total
            )
        finally:
            signals.restore()
        elapsed = time.perf_counter() - started
        merged = merge_reports(reports, elapsed) if reports else None
        if parts is not None and syncer.dead_letter is not None:
            entries = [e for part in sorted(parts.iterdir()) for e in read_dead_letters(part)]
            entries.sort(key=lambda e: -1 if e.index is None else e.index)
            for entry in entries:
                syncer.dead_letter.write(entry)
    finally:
        with contextlib.suppress(OSError):
            os.close(alive_write)
        for process in processes:
            process.join(10)
            if process.is_alive():  # pragma: no cover - a worker that never answers
                process.kill()
                process.join()
        if parts is not None:
            shutil.rmtree(parts, ignore_errors=True)
    if error is not None:
        raise error
    assert merged is not None
    if progress is not None:
        progress(_progress_of(merged, elapsed, total))
    if asked is not None:
        raise SyncInterrupted(merged, asked)
    return merged


def _progress_of(report: SyncReport, elapsed: float, total: int | None) -> Progress:
    return Progress(
        report.total, report.succeeded, report.failed, report.skipped, report.requests,
        elapsed, total,
    )  # fmt: skip


def _collect(
    connections: list[Connection],
    processes: list[Any],
    signals: _Signals,
    progress: Callable[[Progress], None] | None,
    block: Any,
    started: float,
    total: int | None,
) -> tuple[list[SyncReport], BaseException | None, int | None]:
    """Wait for every worker to stop, tell them the furthest position read, and gather their
    reports; ``(reports, the first error, the signal that stopped the run)``."""
    count = len(connections)
    stopped: dict[int, tuple[int, int | None]] = {}
    errors: dict[int, BaseException] = {}

    def stop_all(signum: int) -> None:
        if not signals.forwarded:  # once: a second signal would stop the workers at once
            signals.forward(signum)

    while len(stopped) + len(errors) < count:
        waiting = [i for i in range(count) if i not in stopped and i not in errors]
        try:
            ready = wait(
                [connections[i] for i in waiting] + [processes[i].sentinel for i in waiting],
                timeout=_POLL,
            )
            for i in waiting:
                if connections[i] in ready or connections[i].poll():
                    try:
                        message = connections[i].recv()
                    except EOFError:
                        message = ("error", _died(processes[i], i))
                    if message[0] == "stopped":
                        stopped[i] = (message[1], message[2])
                        if message[2] is not None:
                            stop_all(message[2])
                    else:
                        errors[i] = message[1]
                        stop_all(signal.SIGTERM)
                elif processes[i].sentinel in ready:
                    errors[i] = _died(processes[i], i)
                    stop_all(signal.SIGTERM)
        except KeyboardInterrupt:  # our handlers are not installed: pass it on ourselves
            signals.forward(signal.SIGINT)
        if progress is not None:
            live = _live_progress(block, count, started, total)
            if live.done:  # nothing to show before the workers have reported
                progress(live)
    furthest = max((handled for handled, _ in stopped.values()), default=0)
    reports: list[SyncReport] = []
    for i in sorted(stopped):
        try:
            connections[i].send(furthest)
            _, answer = connections[i].recv()
        except (EOFError, OSError):
            errors.setdefault(i, _died(processes[i], i))
            continue
        reports.extend(answer)
    interrupted = [signum for _, signum in stopped.values() if signum is not None]
    signum = (signals.received or interrupted[0]) if interrupted else None
    return reports, _first_cause(errors), signum


def _first_cause(errors: dict[int, BaseException]) -> BaseException | None:
    """The error that stopped the run: the first a worker reported, before any worker's death
    (the others are stopped with SIGTERM once one fails, so a death is often the consequence)."""
    reported = [e for e in errors.values() if not isinstance(e, _WorkerDiedError)]
    if reported:
        return reported[0]
    return next(iter(errors.values()), None)


class _WorkerDiedError(AntavoBrazeError):
    """A worker process ended without sending its report."""


def _died(process: Any, index: int) -> AntavoBrazeError:
    process.join(1)
    return _WorkerDiedError(
        f"worker {index} ended without a report (exit code {process.exitcode}): its records "
        "are not accounted for; run the sync again"
    )


def _live_progress(block: Any, count: int, started: float, total: int | None) -> Progress:
    done, succeeded, failed, skipped, requests = (
        sum(block[i * _STATS + n] for i in range(count)) for n in range(_STATS)
    )
    elapsed = time.perf_counter() - started
    return Progress(done, succeeded, failed, skipped, requests, elapsed, total)
