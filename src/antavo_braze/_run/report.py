"""What a sync call reports: one outcome per input record, added up.

The value types a run hands back (:class:`SyncReport`, :class:`RecordFailure`,
:class:`RecordOutcome`, :class:`FieldCounts`, :class:`Progress` ...) and their renderings.
The tally that fills them is :mod:`.tally`.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import date, datetime
from html import escape
from typing import Any, Literal

import attrs
from attrs import field, frozen

from .deadletter import Outcome

__all__ = [
    "DroppedField",
    "FieldCounts",
    "FieldProblem",
    "Progress",
    "RecordFailure",
    "RecordOutcome",
    "Stage",
    "SyncReport",
    "counted",
    "failure_groups",
    "stderr_progress",
]

Stage = Literal["input", "validation", "braze", "transport", "interrupted", "antavo"]
_SHOWN_FAILURES = 20
_GROUPED_FROM = 5  # more failures than this are shown grouped by stage, field and reason
_SHOWN_GROUPS = 10
_GROUP_EXAMPLES = 5  # input positions shown per failure group
REPORT_VERSION = 1  # of SyncReport.to_dict()'s shape: bumped when a key changes meaning
_HTML_ROWS = 200


@frozen
class FieldProblem:
    """One field of a record that could not be sent: the loyalty ``field`` path, a short,
    redacted form of its ``value``, and why."""

    field: str
    value: str
    reason: str


@frozen
class RecordFailure:
    """Why one input record failed.

    ``index`` is its 0-based position in the input; ``line`` its 1-based line in the input
    file, when known. ``stage``: ``"input"`` (unreadable line), ``"validation"``, ``"braze"``,
    ``"transport"`` or ``"interrupted"``. ``field`` / ``value`` name the first bad field
    (``problems`` lists all of them). ``outcome``: ``"failed"`` (not applied), ``"unknown"``
    (Braze may have applied it) or ``"not_sent"``.
    """

    index: int
    record_id: str | None
    stage: Stage
    reason: str
    retryable: bool = False
    field: str | None = None
    value: str | None = None
    line: int | None = None
    outcome: Outcome = "failed"
    problems: tuple[FieldProblem, ...] = ()


@frozen
class RecordOutcome:
    """What became of one record: ``status`` ``"succeeded"``, ``"failed"`` (``failure`` says
    the stage and reason; the record is in the dead letter) or ``"skipped"`` (``reason``)."""

    status: Literal["succeeded", "failed", "skipped"]
    record_id: str | None = None
    reason: str | None = None
    failure: RecordFailure | None = None

    @property
    def ok(self) -> bool:
        """True unless the record failed (a skip is not a failure)."""
        return self.status != "failed"

    @property
    def stage(self) -> Stage | None:
        """The failed stage (``None`` unless failed)."""
        return None if self.failure is None else self.failure.stage


@frozen
class DroppedField:
    """A field left out of a record that was sent anyway (``on_invalid_field="drop_field"``)."""

    index: int
    record_id: str | None
    field: str
    value: str
    reason: str


@frozen
class FieldCounts:
    """How one mapped field fared over a member sync: in how many records it was ``present``
    (and sent), ``absent``, ``invalid``, and ``cleared`` (sent as null, ``when_missing``);
    ``path`` is its ``loyalty_field``."""

    present: int = 0
    absent: int = 0
    invalid: int = 0
    cleared: int = 0
    path: str = ""


def plural(count: int, noun: str) -> str:
    """``noun`` as it goes with ``count``: singular for one ("record", "records")."""
    return noun if count == 1 else f"{noun}s"


def counted(count: int, noun: str) -> str:
    """``count`` with its noun, singular for one: "1 record", "2 records", "0 records"."""
    return f"{count} {plural(count, noun)}"


@frozen
class SyncReport:
    """One outcome per input record. Always ``total == succeeded + failed + skipped``.

    ``fields`` counts, per remote field, how often it was present, absent, invalid or cleared
    (member syncs); a field never present is named in ``str(report)``. ``skipped_by_reason``
    says why records were skipped. ``possible_duplicates`` counts events and purchases that
    succeeded after an earlier attempt whose answer was lost (Braze may hold them twice).
    ``clears_stopped``: the fields the mass-clear guard stopped clearing, each with
    ``(members that would have lost it, members seen)`` when it stopped.
    """

    total: int
    succeeded: int
    failed: int
    skipped: int
    requests: int
    failures: tuple[RecordFailure, ...] = ()
    attribute_values: int = 0  # attribute values Braze accepted (each one a data point)
    attribute_values_saved: int = 0  # unchanged values change detection did not send
    warnings: tuple[str, ...] = ()
    elapsed: float = 0.0
    fields: Mapping[str, FieldCounts] = field(factory=dict)
    skipped_by_reason: Mapping[str, int] = field(factory=dict)
    dropped: tuple[DroppedField, ...] = ()
    possible_duplicates: int = 0
    retries: int = 0
    rate_limit_waits: int = 0
    rate_limit_wait: float = 0.0  # seconds waited because Braze asked to (429)
    requests_by_status: Mapping[str, int] = field(factory=dict)  # tries; "error": no answer
    merged: int = 0  # profiles merged ("as": "merge"; Braze applies merges asynchronously)
    deleted: int = 0  # profiles deleted and verified gone ("as": "delete")
    clears_stopped: Mapping[str, tuple[int, int]] = field(factory=dict)
    watermark: str | None = None  # a pull from Antavo: where the next pull of its kind starts

    def __attrs_post_init__(self) -> None:
        if self.total != self.succeeded + self.failed + self.skipped:  # pragma: no cover
            raise AssertionError(f"report does not add up: {self!r}")

    @property
    def ok(self) -> bool:
        """True when no record failed."""
        return self.failed == 0

    def summary(self) -> str:
        """One line: counts, requests and time."""
        rate = f", {self.total / self.elapsed:,.0f} records/s" if self.elapsed > 0 else ""
        return (
            f"{counted(self.total, 'record')}: {self.succeeded} succeeded, {self.failed} failed, "
            f"{self.skipped} skipped; {counted(self.requests, 'request')}{rate}"
        )

    @property
    def guard_stopped(self) -> bool:
        """Whether a guard stopped part of the run (a mass clear): worth a look like a failure."""
        return bool(self.clears_stopped)

    def notes(self) -> list[str]:
        """What looks wrong but is not an error: fields never found, values cleared, skips."""
        lines = []
        never = [
            f"{c.path or name} (-> {name})"
            for name, c in self.fields.items()
            if c.absent and c.present == 0 and c.invalid == 0 and c.cleared == 0
        ]
        if never:
            lines.append(
                f"mapped path(s) found in no record, so never sent nor cleared: "
                f"{', '.join(never)} (check the loyalty_field; "
                "`antavo-braze validate MAPPING --input FILE`)"
            )
        for name, (count, seen) in self.clears_stopped.items():
            lines.append(
                f"STOPPED clearing {name}: {count} of the first {seen} members would have lost "
                "it (a misspelled path or a partial export?); nothing more of it was cleared "
                "(max_clear_ratio; --allow-mass-clear if this is meant)"
            )
        cleared = {name: c.cleared for name, c in self.fields.items() if c.cleared}
        if cleared:
            lines.append(
                "cleared (null, when_missing: clear): "
                + ", ".join(f"{name} x{count}" for name, count in cleared.items())
            )
        for reason, count in self.skipped_by_reason.items():
            lines.append(f"skipped {count}: {reason}")
        if self.dropped:
            by_field: Counter[str] = Counter(d.field for d in self.dropped)
            example = {d.field: d for d in reversed(self.dropped)}
            lines.append(
                f"{len(self.dropped)} invalid field value(s) left out (drop_field): "
                + "; ".join(
                    f"{name} x{count} (e.g. {_short(example[name].value)}: {example[name].reason})"
                    for name, count in by_field.most_common(5)
                )
            )
        if self.possible_duplicates:
            lines.append(
                f"{self.possible_duplicates} event record(s) succeeded after an attempt whose "
                "answer was lost: Braze may have recorded them twice"
            )
        if self.merged:
            lines.append(f"merged {self.merged} profile(s) into others (/users/merge)")
        if self.deleted:
            lines.append(f"deleted (verified) {self.deleted} profile(s) (/users/delete)")
        if self.watermark is not None:
            lines.append(f"watermark: the next pull starts at {self.watermark}")
        if self.attribute_values_saved:
            lines.append(
                f"change detection left out {self.attribute_values_saved} unchanged attribute "
                f"values ({self.attribute_values} sent)"
            )
        return lines

    def failure_groups(self) -> list[tuple[tuple[str, str, str], int, RecordFailure]]:
        """The failures grouped by ``(stage, field, reason)``, largest group first: each
        with its count and its first failure (an example)."""
        counts: Counter[tuple[str, str, str]] = Counter()
        first: dict[tuple[str, str, str], RecordFailure] = {}
        for failure in self.failures:
            key = (failure.stage, failure.field or "-", _general_reason(failure))
            counts[key] += 1
            first.setdefault(key, failure)
        return [(key, count, first[key]) for key, count in counts.most_common()]

    def __str__(self) -> str:
        lines = [self.summary(), *self.notes()]
        if len(self.failures) <= _GROUPED_FROM:
            for failure in self.failures:
                where = f"line {failure.line}" if failure.line is not None else f"#{failure.index}"
                lines.append(
                    f"  {where} {failure.record_id or '?'} [{failure.stage}] {failure.reason}"
                )
            return "\n".join(lines)
        groups = self.failure_groups()
        lines.append(f"failures by stage, field and reason ({len(groups)} kinds):")
        for (stage, name, reason), count, example in groups[:_SHOWN_GROUPS]:
            where = f"line {example.line}" if example.line is not None else f"#{example.index}"
            lines.append(
                f"  {count:>7,} x [{stage}] {name}: {reason}  "
                f"(e.g. {where} {example.record_id or '?'}"
                + (f", value {_short(example.value)}" if example.value is not None else "")
                + ")"
            )
        if len(groups) > _SHOWN_GROUPS:
            rest = sum(count for _, count, _ in groups[_SHOWN_GROUPS:])
            lines.append(f"  ... {rest:,} more in {len(groups) - _SHOWN_GROUPS} other kinds")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        colour = "green" if self.ok else "firebrick"
        parts = [f"<p style='color:{colour}'><b>{escape(self.summary())}</b></p>"]
        parts += [f"<p>{escape(note)}</p>" for note in self.notes()]
        if self.fields:
            rows = "".join(
                f"<tr><td><code>{escape(name)}</code></td><td>{c.present}</td>"
                f"<td>{c.absent}</td><td>{c.invalid}</td><td>{c.cleared}</td></tr>"
                for name, c in self.fields.items()
            )
            parts.append(
                "<table><thead><tr><th>field</th><th>present</th><th>absent</th>"
                f"<th>invalid</th><th>cleared</th></tr></thead><tbody>{rows}</tbody></table>"
            )
        if self.failures:
            rows = "".join(
                f"<tr><td>{f.index}</td><td>{'' if f.line is None else f.line}</td>"
                f"<td>{escape(f.record_id or '')}</td><td>{f.stage}</td>"
                f"<td>{escape(f.field or '')}</td><td>{escape(f.reason)}</td></tr>"
                for f in self.failures[:_HTML_ROWS]
            )
            parts.append(
                "<table><thead><tr><th>index</th><th>line</th><th>record</th><th>stage</th>"
                f"<th>field</th><th>reason</th></tr></thead><tbody>{rows}</tbody></table>"
            )
            if len(self.failures) > _HTML_ROWS:
                parts.append(
                    f"<p>Showing {_HTML_ROWS} of {len(self.failures):,} failures: "
                    "<code>pandas.DataFrame(report.failures_table())</code> has them all.</p>"
                )
        return "".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """The outcome as JSON-ready data for schedulers and monitoring (what the CLI's
        ``--report-json`` writes): counts, failures grouped by stage, field and reason,
        requests, the watermark and timings. No member ids or values: the dead letter holds
        the records."""
        watermark = getattr(self, "watermark", None)
        if isinstance(watermark, (datetime, date)):
            watermark = watermark.isoformat()
        by_stage: Counter[str] = Counter(f.stage for f in self.failures)
        dropped: Counter[tuple[str, str]] = Counter((d.field, d.reason) for d in self.dropped)
        return {
            "report_version": REPORT_VERSION,
            "ok": self.ok,
            "counts": {
                "total": self.total,
                "succeeded": self.succeeded,
                "failed": self.failed,
                "skipped": self.skipped,
                "possible_duplicates": self.possible_duplicates,
                "attribute_values": self.attribute_values,
                "attribute_values_saved": self.attribute_values_saved,
                "merged": self.merged,
                "deleted": self.deleted,
            },
            "skipped_by_reason": dict(self.skipped_by_reason),
            "failures": failure_groups(self.failures),
            "failures_by_stage": dict(sorted(by_stage.items())),
            "failures_retryable": sum(1 for f in self.failures if f.retryable),
            "dropped_fields": [
                {"field": name, "reason": reason, "count": count}
                for (name, reason), count in dropped.most_common()
            ],
            "fields": {name: attrs.asdict(counts) for name, counts in self.fields.items()},
            "requests": self.requests,
            "retries": self.retries,
            "requests_by_status": dict(self.requests_by_status),
            "rate_limit_waits": self.rate_limit_waits,
            "rate_limit_wait_seconds": round(self.rate_limit_wait, 3),
            "watermark": watermark,
            "timings": {
                "elapsed_seconds": round(self.elapsed, 3),
                "records_per_second": round(self.total / self.elapsed, 1) if self.elapsed else None,
            },
            "warnings": list(self.warnings[:_SHOWN_FAILURES]),
        }

    def failures_table(self) -> list[dict[str, Any]]:
        """The failures as rows of plain dicts (``pandas.DataFrame(report.failures_table())``)."""
        return [
            {
                "index": f.index,
                "line": f.line,
                "record_id": f.record_id,
                "stage": f.stage,
                "field": f.field,
                "value": f.value,
                "reason": f.reason,
                "retryable": f.retryable,
                "outcome": f.outcome,
            }
            for f in self.failures
        ]


@frozen
class Progress:
    """How far a running sync has got (given to the ``progress`` callback)."""

    done: int
    succeeded: int
    failed: int
    skipped: int
    requests: int
    elapsed: float
    total: int | None = None  # the input's length, when it has one

    @property
    def rate(self) -> float:
        """Records finished per second so far."""
        return self.done / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def fraction(self) -> float | None:
        """How much of the input is done (0 to 1), when its size is known."""
        if not self.total:
            return None
        return min(1.0, self.done / self.total)

    @property
    def eta(self) -> float | None:
        """Seconds left at the rate so far, when the input's size is known."""
        if self.total is None or self.rate <= 0:
            return None
        return max(0, self.total - self.done) / self.rate

    def line(self) -> str:
        """A one-line rendering for terminals: with a known total, also the percentage and
        the time left."""
        of = f"/{self.total:,}" if self.total is not None else ""
        fraction, eta = self.fraction, self.eta
        share = f"{fraction:.0%}, " if fraction is not None else ""
        left = f", ETA {_clock(eta)}" if eta is not None else ""
        # "1 record", "0/1 record", "2/5 records": the count that ends the run decides
        noun = plural(self.done if self.total is None else self.total, "record")
        return (
            f"{self.done:,}{of} {noun} ({share}{self.rate:,.0f}/s{left}): {self.succeeded:,} "
            f"ok, {self.failed:,} failed, {self.skipped:,} skipped, {self.requests:,} requests"
        )


def _clock(seconds: float) -> str:
    """``H:MM:SS`` (whole seconds, rounded up: a last second left still shows)."""
    whole = int(-(-seconds // 1))
    hours, rest = divmod(whole, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


def failure_groups(failures: Iterable[RecordFailure]) -> list[dict[str, Any]]:
    """Failures grouped by stage, field and reason (each problem of a record with several
    bad fields counts in its own group), most frequent first: ``count``, how many of them
    are ``retryable``, and the first few input ``indexes`` (and ``lines``) — never a
    member's id or values."""
    groups: dict[tuple[str, str | None, str], dict[str, Any]] = {}
    for failure in failures:
        keys: list[tuple[str, str | None, str]]
        if failure.problems:
            keys = [
                (failure.stage, p.field, p.reason.replace(p.value, "<value>"))
                for p in failure.problems
            ]
        else:
            reason = failure.reason
            if failure.value:  # the value is its own column, never part of a group's name
                reason = reason.replace(failure.value, "<value>")
            keys = [(failure.stage, failure.field, reason)]
        for key in keys:
            group = groups.get(key)
            if group is None:
                stage, field_name, reason = key
                group = groups[key] = {
                    "stage": stage,
                    "field": field_name,
                    "reason": reason,
                    "count": 0,
                    "retryable": 0,
                    "indexes": [],
                    "lines": [],
                }
            group["count"] += 1
            group["retryable"] += failure.retryable
            if len(group["indexes"]) < _GROUP_EXAMPLES:
                group["indexes"].append(failure.index)
                if failure.line is not None:
                    group["lines"].append(failure.line)
    return sorted(groups.values(), key=lambda g: (-g["count"], g["stage"], g["reason"]))


def by_index(failure: RecordFailure) -> int:
    return failure.index


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _general_reason(failure: RecordFailure) -> str:
    """A failure's reason without what is particular to its record (the value, a byte
    offset), so that one fault hitting every record is one group."""
    reason = failure.reason
    if failure.field and reason.startswith(failure.field + ": "):
        reason = reason[len(failure.field) + 2 :]
    if failure.value is not None:
        reason = reason.replace(failure.value, "…")
    return re.sub(r"\d+", "N", reason) if failure.stage == "input" else reason


def stderr_progress(progress: Progress) -> None:
    """A progress callback printing one updating line to stderr."""
    sys.stderr.write("\r" + progress.line())
    sys.stderr.flush()


def field_counts(
    field_names: tuple[tuple[str, str, bool], ...],
    absent: list[int],
    invalid: Mapping[str, int],
    cleared: Mapping[str, int],
    mapped: int,
) -> dict[str, FieldCounts]:
    """Per remote field, how it fared over the ``mapped`` member records: ``absent`` holds
    the plan's counters (one per field first)."""
    out: dict[str, FieldCounts] = {}
    counts = absent[: len(field_names)]
    for (location, remote, _), missing in zip(field_names, counts, strict=True):
        bad = invalid.get(location, 0)
        out[remote] = FieldCounts(
            present=max(0, mapped - missing - bad),
            absent=missing,
            invalid=bad,
            cleared=cleared.get(remote, 0),
            path=location,
        )
    return out


def outcomes_of(
    failures: Iterable[RecordFailure], skips: Mapping[int, str], count: int
) -> list[RecordOutcome]:
    """Each of the first ``count`` records' own outcome: a record that neither failed nor
    was skipped succeeded."""
    failed = {f.index: f for f in failures}
    out = []
    for position in range(count):
        failure = failed.get(position)
        if failure is not None:
            out.append(RecordOutcome("failed", failure.record_id, failure.reason, failure))
        elif position in skips:
            out.append(RecordOutcome("skipped", reason=skips[position]))
        else:
            out.append(RecordOutcome("succeeded"))
    return out
