"""The mapping config: which Antavo fields and events become which Braze attributes and events.

Config is data (a dict, a JSON or TOML file). It is validated once, and every problem is reported
with its JSON path, not just the first.
"""

from __future__ import annotations

import json
import re
import sys
from collections import abc
from collections.abc import Iterable
from html import escape
from os import PathLike
from pathlib import Path
from typing import Any, Literal, get_origin

from attrs import frozen
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError, IterableValidationError
from cattrs.v import format_exception, transform_error

from .converter import make_converter
from .._braze.limits import (
    EVENT_PROPERTY_RESERVED,
    MAX_STRING_LENGTH,
    PURCHASE_PROPERTY_RESERVED,
    RESERVED_IDENTIFIERS,
    STANDARD_ATTRIBUTES,
)
from .schema import CustomAttribute, SchemaProblem, check_schema
from .._braze.types import BrazeType
from ..exceptions import MappingError
from ..models import EventMapping, FieldMapping, Trigger, WhenMissing

__all__ = ["RESERVED_IDENTIFIERS", "Mapping"]

# Standard attributes whose Braze format is fixed: which declared types are compatible with it.
_STANDARD_TYPES: dict[str, frozenset[BrazeType]] = {
    "dob": frozenset({BrazeType.DATE, BrazeType.STRING}),
}
_PATH_SEGMENT = re.compile(r"[^.]+")
_CURRENCY = re.compile(r"[A-Z]{3}\Z")

_converter = make_converter()


def _format_exception(exc: BaseException, type: type | None) -> str:
    if type is not None and get_origin(type) is Literal:
        allowed = ", ".join(repr(a) for a in getattr(type, "__args__", ()))
        return f"must be one of {allowed}"
    if isinstance(exc, ForbiddenExtraKeysError):
        return f"unknown key(s) {', '.join(repr(k) for k in sorted(exc.extra_fields))}"
    if isinstance(exc, KeyError):
        return "required key missing"
    if (isinstance(exc, (TypeError, AttributeError)) and "iterable" in str(exc)) or (
        isinstance(exc, AttributeError) and "items" in str(exc)
    ):
        return "expected an object"
    if isinstance(exc, (ValueError, TypeError)) and exc.args and isinstance(exc.args[0], str):
        return exc.args[0]
    return format_exception(exc, type)  # pragma: no cover - cattrs' wording for the rest


def _structure_problems(exc: BaseException) -> list[str]:
    problems = []
    for line in transform_error(exc, path="$", format_exception=_format_exception):
        message, _, path = line.rpartition(" @ ")
        # cattrs names attributes; the config uses the wire key ("as", a Python keyword).
        path = re.sub(r"\.as_\b", ".as", path)
        problems.append(f"{path}: {message}")
    return problems


@frozen
class Mapping:
    """A validated mapping config: ``fields``, ``events`` and ``triggers``.

    Build it with :meth:`from_dict` or :meth:`from_file`; :meth:`to_dict` gives the config back.
    ``when_missing`` is the default of every field (``"skip"``, or ``"clear"`` to send ``null``
    for a path that resolves to nothing, so that a value gone in Antavo is gone in Braze; see
    the guards in the mapping-file how-to). ``id_field``: the member record's key or dotted
    path that becomes the ``external_id`` (``"id"``).
    """

    fields: tuple[FieldMapping, ...] = ()
    events: tuple[EventMapping, ...] = ()
    triggers: tuple[Trigger, ...] = ()
    when_missing: WhenMissing = "skip"
    id_field: str = "id"

    @classmethod
    def from_dict(cls, config: abc.Mapping[str, Any]) -> Mapping:
        """Validate ``config``; raise :class:`MappingError` listing every problem with its path."""
        if not isinstance(config, abc.Mapping):
            raise MappingError([f"$: expected an object, got {type(config).__name__}"])
        problems: list[str] = []
        mapping: Mapping | None = None
        try:
            mapping = _converter.structure(config, cls)
        except (ClassValidationError, IterableValidationError) as exc:
            problems.extend(_structure_problems(exc))
        problems.extend(p for p in _semantic_problems(config) if p not in problems)
        if problems or mapping is None:
            raise MappingError(problems or ["$: invalid mapping"])
        return mapping

    @classmethod
    def from_file(cls, path: str | PathLike[str]) -> Mapping:
        """Load a JSON (or, by suffix, TOML) mapping file; problems name the file."""
        file = Path(path)
        try:
            text = file.read_text(encoding="utf-8")
        except OSError as exc:
            raise MappingError([f"{file}: cannot read ({exc.strerror})"]) from None
        except UnicodeDecodeError:
            raise MappingError([f"{file}: not UTF-8 text"]) from None
        toml = file.suffix.lower() == ".toml"
        try:
            config = _load_toml(text) if toml else json.loads(text)
        except RecursionError:
            raise MappingError([f"{file}: nested too deeply to be a mapping"]) from None
        except ValueError as exc:
            # A .yaml (or other) file is read as JSON: say which formats a mapping can be.
            known = toml or file.suffix.lower() == ".json"
            hint = "" if known else " (a mapping file is JSON, or TOML when it ends in .toml)"
            raise MappingError(
                [f"{file}: not valid {'TOML' if toml else 'JSON'} ({exc}){hint}"]
            ) from None
        try:
            return cls.from_dict(config)
        except MappingError as exc:
            raise MappingError([f"{file}: {p}" for p in exc.problems]) from None

    def to_dict(self) -> dict[str, Any]:
        """The config as plain data; ``Mapping.from_dict(m.to_dict()) == m``.

        Empty sections and default values are left out, as in a hand-written config.
        """
        out: dict[str, Any] = _converter.unstructure(self)
        return out

    def check_schema(self, attributes: Iterable[CustomAttribute]) -> list[SchemaProblem]:
        """Every mapped attribute (fields and trigger attributes) whose values Braze would
        not keep, against Braze's ``attributes`` (``client.custom_attributes()``)."""
        fields = [*self.fields, *(a for t in self.triggers for a in t.attributes)]
        return check_schema(fields, attributes)

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td>field</td><td><code>{escape(f.loyalty_field)}</code></td>"
            f"<td><code>{escape(f.remote_field)}</code></td><td>{f.type or 'inferred'}</td></tr>"
            for f in self.fields
        )
        rows += "".join(
            f"<tr><td>{e.as_}</td><td><code>{escape(e.action)}</code></td>"
            f"<td><code>{escape(e.braze_name)}</code></td>"
            f"<td>{len(e.properties) if e.properties is not None else 'all'} properties</td></tr>"
            for e in self.events
        )
        rows += "".join(
            f"<tr><td>trigger</td><td><code>{escape(', '.join(t.when.action))}</code></td>"
            f"<td>{escape(', '.join(a.remote_field for a in t.attributes))}</td><td></td></tr>"
            for t in self.triggers
        )
        return (
            "<table><thead><tr><th>kind</th><th>Antavo</th><th>Braze</th><th>type</th></tr>"
            f"</thead><tbody>{rows}</tbody></table>"
        )


def _load_toml(text: str) -> Any:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]
        except ModuleNotFoundError:
            raise ValueError("TOML needs Python 3.11+ or the 'tomli' package") from None
    return tomllib.loads(text)


# --- the checks cattrs cannot express: names, duplicates, cross-field rules -------------------


def _semantic_problems(config: abc.Mapping[str, Any]) -> list[str]:
    problems: list[str] = []
    id_field = config.get("id_field")
    if isinstance(id_field, str) and (
        not id_field or not all(_PATH_SEGMENT.fullmatch(s) for s in id_field.split("."))
    ):
        problems.append(f"$.id_field: {id_field!r} is not a field name or dotted path")
    fields = config.get("fields")
    if isinstance(fields, list):
        problems += _field_list_problems(fields, "$.fields", _attribute_name_problem)
    events = config.get("events")
    if isinstance(events, list):
        seen_actions: dict[str, str] = {}
        for index, entry in enumerate(events):
            path = f"$.events[{index}]"
            if isinstance(entry, abc.Mapping):
                problems += _event_problems(entry, path, seen_actions)
    triggers = config.get("triggers")
    if isinstance(triggers, list):
        for index, entry in enumerate(triggers):
            path = f"$.triggers[{index}]"
            if isinstance(entry, abc.Mapping) and isinstance(entry.get("attributes"), list):
                attributes = entry["attributes"]
                if not attributes:
                    problems.append(f"{path}.attributes: list at least one attribute")
                problems += _field_list_problems(
                    attributes, f"{path}.attributes", _attribute_name_problem
                )
    return problems


def _event_problems(
    entry: abc.Mapping[str, Any], path: str, seen_actions: dict[str, str]
) -> list[str]:
    problems: list[str] = []
    action = entry.get("action")
    if isinstance(action, str):
        if not action:
            problems.append(f"{path}.action: cannot be empty")
        elif action in seen_actions:
            problems.append(
                f"{path}.action: duplicate action {action!r} (also at {seen_actions[action]})"
            )
        else:
            seen_actions[action] = f"{path}.action"
    name = entry.get("name")
    if isinstance(name, str):
        problem = _key_problem(name)
        if problem:
            problems.append(f"{path}.name: {problem}")
    elif name is None and isinstance(action, str) and action != "*" and action.startswith("$"):
        problems.append(f"{path}.action: Braze event names cannot start with '$'; give a 'name'")
    raw_as = entry.get("as", "event")
    sends = set(raw_as) if isinstance(raw_as, (list, tuple)) else {raw_as}
    is_purchase = "purchase" in sends
    currency = entry.get("currency")
    if isinstance(currency, str) and not _CURRENCY.match(currency):
        problems.append(
            f"{path}.currency: expected an ISO 4217 code such as 'EUR', got {currency!r}"
        )
    if currency is not None and not sends & {"purchase", "order_placed"}:
        problems.append(
            f"{path}.currency: only purchases and orders ('as': 'purchase' or "
            "'order_placed') take a currency"
        )
    problems += _identity_problems(entry, path, sends)
    properties = entry.get("properties")
    if isinstance(properties, list):
        reserved = PURCHASE_PROPERTY_RESERVED if is_purchase else EVENT_PROPERTY_RESERVED

        def property_name_problem(name: str, declared_type: object) -> str | None:
            problem = _key_problem(name)
            if problem is None and name in reserved:
                problem = (
                    f"{name!r} is reserved by Braze for {'purchases' if is_purchase else 'events'}"
                )
            return problem

        problems += _field_list_problems(properties, f"{path}.properties", property_name_problem)
    return problems


def _identity_problems(entry: abc.Mapping[str, Any], path: str, sends: set[Any]) -> list[str]:
    """``"as": "merge"`` needs ``"into"`` (a path); identity actions send no event, so they
    take no name or properties; ``order_placed`` builds Braze's documented properties."""
    problems: list[str] = []
    into = entry.get("into")
    if "merge" in sends:
        if not isinstance(into, str) or not all(
            _PATH_SEGMENT.fullmatch(p) for p in into.split(".")
        ):
            problems.append(
                f"{path}.into: 'as': 'merge' needs \"into\": the path in the event of the "
                'customer to merge into (e.g. "data.target")'
            )
    elif into is not None:
        problems.append(f"{path}.into: only 'as': 'merge' takes \"into\"")
    if sends & {"merge", "delete"}:
        for key in ("name", "properties"):
            if entry.get(key) is not None:
                problems.append(
                    f"{path}.{key}: a {next(iter(sends))!r} entry sends no event; remove {key!r}"
                )
    if sends == {"order_placed"} and entry.get("properties") is not None:
        problems.append(
            f"{path}.properties: 'order_placed' sends Braze's documented order properties; "
            "'properties' applies to purchases only"
        )
    return problems


def _field_list_problems(
    entries: list[Any], path: str, name_problem: abc.Callable[[str, object], str | None]
) -> list[str]:
    problems: list[str] = []
    seen: dict[str, str] = {}
    for index, entry in enumerate(entries):
        here = f"{path}[{index}]"
        if not isinstance(entry, abc.Mapping):
            continue
        loyalty_field = entry.get("loyalty_field")
        if isinstance(loyalty_field, str) and (
            not loyalty_field
            or not all(_PATH_SEGMENT.fullmatch(s) for s in loyalty_field.split("."))
        ):
            problems.append(
                f"{here}.loyalty_field: {loyalty_field!r} is not a field name or dotted path"
            )
        split = entry.get("split")
        if isinstance(split, str):
            if not split:
                problems.append(f"{here}.split: cannot be empty (give the separator, e.g. ',')")
            if entry.get("type") not in (None, BrazeType.ARRAY.value):
                problems.append(
                    f"{here}.split: reads text as an array; the type must be 'array' "
                    f"(or omitted), not {entry.get('type')!r}"
                )
        remote = entry.get("remote_field")
        if isinstance(remote, str):
            problem = name_problem(remote, entry.get("type"))
            if problem:
                problems.append(f"{here}.remote_field: {problem}")
            elif remote in seen:
                problems.append(
                    f"{here}.remote_field: duplicate remote_field {remote!r} "
                    f"(also at {seen[remote]})"
                )
            else:
                seen[remote] = f"{here}.remote_field"
    return problems


def _key_problem(name: str) -> str | None:
    if not name:
        return "cannot be empty"
    if len(name) > MAX_STRING_LENGTH:
        return f"{len(name)} characters is longer than Braze's {MAX_STRING_LENGTH}"
    if name.startswith("$"):
        return f"{name!r} cannot start with '$'"
    if name != name.strip():
        return f"{name!r} has leading or trailing spaces (Braze strips them)"
    return None


def _attribute_name_problem(name: str, declared_type: object) -> str | None:
    problem = _key_problem(name)
    if problem:
        return problem
    if name in RESERVED_IDENTIFIERS:
        return f"{name!r} is a Braze identifier, not an attribute"
    if name in STANDARD_ATTRIBUTES and isinstance(declared_type, str):
        allowed = _STANDARD_TYPES.get(name, frozenset({BrazeType.STRING}))
        if (
            declared_type in {t.value for t in BrazeType}
            and BrazeType(declared_type) not in allowed
        ):
            return (
                f"{name!r} is a Braze standard attribute with its own format; "
                f"type {declared_type!r} does not fit it (omit the type)"
            )
    return None
