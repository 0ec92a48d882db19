"""The audit: does Braze hold what Antavo holds? (``syncer.audit(members, fix=False)``)

Each member's mapped values — as this mapping would send them — are compared with what Braze
exports for that profile (``/users/export/ids``: only the mapped fields, 50 ids per request,
paced under that endpoint's own limit). Per field the report counts equal, different and
missing in Braze, with examples. With ``fix`` only the drifted fields are sent again.

Members are read in chunks, so memory stays bounded by the chunk, never by the input. The
comparison itself (:func:`compare`) is pure.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any, Literal

from attrs import field, frozen

from .._braze.limits import IDS_PER_REQUEST
from .._build.coerce import to_datetime
from .._build.mapper import Mapper
from ..exceptions import CoercionError
from .input import BadInput
from .report import SyncReport, counted

__all__ = [
    "AuditExample",
    "AuditReport",
    "FieldAudit",
    "compare",
    "drift_of",
    "same_value",
]

Verdict = Literal["equal", "different", "missing"]
_EXAMPLES = 5  # per field and kind
_CHUNK = IDS_PER_REQUEST * 20  # members compared per round of export requests


@frozen
class AuditExample:
    """One drifted value: what the mapping would send (``expected``) and what Braze holds
    (``found``; ``None`` when it holds nothing for the field)."""

    external_id: str
    remote_field: str
    kind: Literal["different", "missing"]
    expected: Any
    found: Any = None


@frozen
class FieldAudit:
    """One mapped field across the audited members."""

    remote_field: str
    equal: int = 0
    different: int = 0
    missing: int = 0  # Braze holds nothing for it (or no profile at all)
    examples: tuple[AuditExample, ...] = ()

    @property
    def drifted(self) -> int:
        """Members for which Braze does not hold the mapped value."""
        return self.different + self.missing


@frozen
class AuditReport:
    """What :meth:`Syncer.audit` found.

    ``members``: records compared; ``not_in_braze``: of those, with no Braze profile at all;
    ``drifted``: with at least one field different or missing; ``invalid``: records the
    mapping refused (not compared; ``invalid_examples`` says why); ``fields``: per remote
    field, equal / different / missing with examples; ``fixed``: with ``fix=True``, the report
    of sending the drifted fields again.
    """

    members: int
    drifted: int
    not_in_braze: int
    fields: Mapping[str, FieldAudit] = field(factory=dict)
    invalid: int = 0
    invalid_examples: tuple[str, ...] = ()
    requests: int = 0
    elapsed: float = 0.0
    fixed: SyncReport | None = None

    @property
    def ok(self) -> bool:
        """True when Braze holds every mapped value (after the fix, if one was made)."""
        if self.fixed is not None:
            return self.fixed.ok and self.invalid == 0
        return self.drifted == 0 and self.invalid == 0

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``--report-json`` (it holds member ids: keep it private)."""
        out: dict[str, Any] = {
            "members": self.members,
            "drifted": self.drifted,
            "not_in_braze": self.not_in_braze,
            "invalid": self.invalid,
            "invalid_examples": list(self.invalid_examples),
            "requests": self.requests,
            "elapsed": round(self.elapsed, 3),
            "fields": {
                name: {
                    "equal": f.equal,
                    "different": f.different,
                    "missing": f.missing,
                    "examples": [
                        {
                            "external_id": e.external_id,
                            "kind": e.kind,
                            "expected": e.expected,
                            "found": e.found,
                        }
                        for e in f.examples
                    ],
                }
                for name, f in self.fields.items()
            },
        }
        if self.fixed is not None:
            out["fixed"] = {
                "total": self.fixed.total,
                "succeeded": self.fixed.succeeded,
                "failed": self.fixed.failed,
                "requests": self.fixed.requests,
            }
        return out

    def __str__(self) -> str:
        rate = f", {self.members / self.elapsed:,.0f} members/s" if self.elapsed > 0 else ""
        lines = [
            f"audited {self.members} members: {self.drifted} drifted, "
            f"{self.not_in_braze} not in Braze; {counted(self.requests, 'request')}{rate}"
        ]
        width = max((len(name) for name in self.fields), default=0)
        for name, counts in self.fields.items():
            lines.append(
                f"  {name:<{width}}  equal {counts.equal}, different {counts.different}, "
                f"missing {counts.missing}"
            )
            for example in counts.examples[:3]:
                found = "nothing" if example.kind == "missing" else repr(example.found)
                lines.append(
                    f"    {example.external_id}: Antavo {example.expected!r}, Braze {found}"
                )
        if self.invalid:
            lines.append(f"{self.invalid} record(s) the mapping refused were not compared")
            lines.extend(f"  {text}" for text in self.invalid_examples[:3])
        if self.fixed is not None:
            lines.append(f"fix: {self.fixed.summary()}")
        return "\n".join(lines)


# --- the comparison (pure) -----------------------------------------------------------------


def _moment(value: Any) -> datetime | None:
    if isinstance(value, dict) and set(value) == {"$time"}:
        value = value["$time"]
    if not isinstance(value, str) or len(value) < 10 or not value[:4].isdigit():
        return None
    try:
        return to_datetime(value)
    except (CoercionError, ValueError, OverflowError):
        return None


def same_value(expected: Any, found: Any) -> bool:
    """Whether Braze's ``found`` is the value the mapping sends as ``expected``: dates by
    their moment (Braze may add milliseconds), numbers by value (never a boolean for a
    number), objects and lists element by element."""
    if expected is None or found is None:
        return expected is None and found is None
    if isinstance(expected, bool) or isinstance(found, bool):
        return isinstance(expected, bool) and isinstance(found, bool) and expected == found
    if isinstance(expected, (int, float)) and isinstance(found, (int, float)):
        return float(expected) == float(found)
    moment = _moment(expected)
    if moment is not None:
        other = _moment(found)
        return other is not None and other == moment
    if isinstance(expected, dict) and isinstance(found, dict):
        return expected.keys() == found.keys() and all(
            same_value(v, found[k]) for k, v in expected.items()
        )
    if isinstance(expected, list) and isinstance(found, list):
        return len(expected) == len(found) and all(
            same_value(a, b) for a, b in zip(expected, found, strict=True)
        )
    return bool(expected == found)


def compare(expected: Mapping[str, Any], held: Mapping[str, Any] | None) -> dict[str, Verdict]:
    """Per field of ``expected`` (the mapped values): equal, different or missing in
    ``held`` (what Braze exported; ``None``: no profile). A cleared field (``None``) is equal
    when Braze holds nothing."""
    out: dict[str, Verdict] = {}
    for name, value in expected.items():
        if held is None or name not in held or held[name] is None:
            out[name] = "equal" if value is None else "missing"
        else:
            out[name] = "equal" if same_value(value, held[name]) else "different"
    return out


def drift_of(expected: Mapping[str, Any], verdicts: Mapping[str, Verdict]) -> dict[str, Any]:
    """The values to send again: the fields that are not equal."""
    return {name: expected[name] for name, verdict in verdicts.items() if verdict != "equal"}


# --- running it ------------------------------------------------------------------------------


class _Tally:
    def __init__(self, fields: Iterable[str]) -> None:
        self.counts = {name: {"equal": 0, "different": 0, "missing": 0} for name in fields}
        self.examples: dict[str, list[AuditExample]] = {name: [] for name in self.counts}
        self.members = self.drifted = self.not_in_braze = self.invalid = 0
        self.invalid_examples: list[str] = []
        self.requests = 0

    def add(
        self,
        external_id: str,
        expected: Mapping[str, Any],
        held: Mapping[str, Any] | None,
        verdicts: Mapping[str, Verdict],
    ) -> None:
        self.members += 1
        self.not_in_braze += held is None
        self.drifted += any(v != "equal" for v in verdicts.values())
        for name, verdict in verdicts.items():
            self.counts[name][verdict] += 1
            examples = self.examples[name]
            if verdict != "equal" and sum(e.kind == verdict for e in examples) < _EXAMPLES:
                found = None if held is None else held.get(name)
                examples.append(AuditExample(external_id, name, verdict, expected[name], found))

    def refuse(self, text: str) -> None:
        self.invalid += 1
        if len(self.invalid_examples) < _EXAMPLES:
            self.invalid_examples.append(text[:300])

    def report(self, elapsed: float, fixed: SyncReport | None) -> AuditReport:
        return AuditReport(
            members=self.members,
            drifted=self.drifted,
            not_in_braze=self.not_in_braze,
            fields={
                name: FieldAudit(
                    name, c["equal"], c["different"], c["missing"], tuple(self.examples[name])
                )
                for name, c in self.counts.items()
            },
            invalid=self.invalid,
            invalid_examples=tuple(self.invalid_examples),
            requests=self.requests + (fixed.requests if fixed is not None else 0),
            elapsed=elapsed,
            fixed=fixed,
        )


def drifted_members(
    mapper: Mapper,
    export: Callable[[list[str], list[str]], list[dict[str, Any]]],
    members: Iterable[Any],
    tally: _Tally,
) -> Iterator[dict[str, Any]]:
    """Compare ``members`` chunk by chunk; yield a wire attributes object (``external_id``
    plus the drifted values) for every member Braze does not hold as mapped."""
    fields = [remote for _, remote, _ in mapper.fields]
    chunk: list[tuple[str, dict[str, Any]]] = []

    def flush() -> Iterator[dict[str, Any]]:
        ids = list(dict.fromkeys(external_id for external_id, _ in chunk))
        held = {str(u["external_id"]): u for u in export(ids, fields)}
        tally.requests += -(-len(ids) // IDS_PER_REQUEST)
        for external_id, expected in chunk:
            profile = held.get(external_id)
            verdicts = compare(expected, profile)
            tally.add(external_id, expected, profile, verdicts)
            drift = drift_of(expected, verdicts)
            if drift:
                yield {"external_id": external_id, **drift}
        chunk.clear()

    for position, record in enumerate(members):
        if isinstance(record, BadInput):
            tally.refuse(f"line {record.line}: {record.reason}")
            continue
        try:
            external_id, expected = mapper.member_attributes(record)
        except CoercionError as exc:
            tally.refuse(f"#{position} {exc.record_id or '?'}: {exc}")
            continue
        chunk.append((external_id, expected))
        if len(chunk) >= _CHUNK:
            yield from flush()
    if chunk:
        yield from flush()


def new_tally(mapper: Mapper) -> _Tally:
    """An empty tally of ``mapper``'s fields."""
    return _Tally(remote for _, remote, _ in mapper.fields)
