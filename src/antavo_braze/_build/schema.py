"""Braze's own attribute types (``GET /custom_attributes``) against the mapping. Pure: no I/O.

Braze fixes a custom attribute's type from its first values; later values of another type are
ignored with a success answer. :func:`check_schema` finds, before anything is sent, the mapped
fields whose values Braze would so ignore, and the attributes Braze has blocklisted.

Braze's ``data_type`` strings: the endpoint's documented example is ``"Number"``; the data-types
page names Boolean, Number, String, Time, Array, Object and Array of objects
(``shared/reference/braze-2026.md`` 1.5). The exact strings for Time, Object and Array of
objects are not shown in Braze's docs, so every spelling of each name is accepted (any case,
spaces, ``_`` or ``-``), with the synonyms Braze's dashboard and docs use.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from attrs import frozen

from .._braze.limits import STANDARD_ATTRIBUTES
from .._braze.types import BrazeType
from ..models import FieldMapping

__all__ = ["CustomAttribute", "SchemaProblem", "braze_type_of", "check_schema"]

# Normalised data_type text -> our type. Uncertain spellings (see the module docstring) are
# listed side by side so that whichever Braze sends is understood.
_DATA_TYPES: dict[str, BrazeType] = {
    "number": BrazeType.NUMBER,
    "integer": BrazeType.NUMBER,
    "int": BrazeType.NUMBER,
    "float": BrazeType.NUMBER,
    "decimal": BrazeType.NUMBER,
    "string": BrazeType.STRING,
    "text": BrazeType.STRING,
    "boolean": BrazeType.BOOLEAN,
    "bool": BrazeType.BOOLEAN,
    "time": BrazeType.DATE,
    "date": BrazeType.DATE,
    "datetime": BrazeType.DATE,
    "date time": BrazeType.DATE,
    "timestamp": BrazeType.DATE,
    "array": BrazeType.ARRAY,
    "array of strings": BrazeType.ARRAY,
    "object": BrazeType.OBJECT,
    "nested object": BrazeType.OBJECT,
    "json object": BrazeType.OBJECT,
    "hash": BrazeType.OBJECT,
    "array of objects": BrazeType.ARRAY_OF_OBJECTS,
    "object array": BrazeType.ARRAY_OF_OBJECTS,
    "objects array": BrazeType.ARRAY_OF_OBJECTS,
}
_SEPARATORS = re.compile(r"[\s_\-/]+")
_BLOCKED = frozenset({"blocklisted", "blacklisted", "blocked"})


def braze_type_of(data_type: str | None) -> BrazeType | None:
    """Our type for one of Braze's ``data_type`` strings (any spelling), or ``None``."""
    if not isinstance(data_type, str):
        return None
    return _DATA_TYPES.get(_SEPARATORS.sub(" ", data_type).strip().lower())


@frozen
class CustomAttribute:
    """One custom attribute as Braze describes it (``GET /custom_attributes``).

    ``data_type`` is Braze's text (``"Number"``, ``"Time"``, ...); :attr:`type` is ours.
    """

    name: str
    data_type: str | None = None
    array_length: int | None = None
    status: str | None = None
    description: str | None = None

    @property
    def type(self) -> BrazeType | None:
        """The :class:`BrazeType` Braze fixed for this attribute (``None``: not understood)."""
        return braze_type_of(self.data_type)

    @property
    def blocklisted(self) -> bool:
        """True when Braze drops every value of this attribute."""
        return (self.status or "").strip().lower() in _BLOCKED

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> CustomAttribute:
        """From one entry of Braze's ``attributes`` list (unknown keys ignored)."""
        length = data.get("array_length")
        return cls(
            name=str(data.get("name", "")),
            data_type=_text(data.get("data_type")),
            array_length=length
            if isinstance(length, int) and not isinstance(length, bool)
            else None,
            status=_text(data.get("status")),
            description=_text(data.get("description")),
        )


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


@frozen
class SchemaProblem:
    """A mapped field whose values Braze would not keep: ``expected`` is the mapping's type
    (``"inferred"`` when undeclared), ``found`` what Braze holds, ``reason`` what to do."""

    remote_field: str
    expected: str
    found: str
    reason: str

    def __str__(self) -> str:
        return f"{self.remote_field}: {self.reason}"


def check_schema(
    fields: Iterable[FieldMapping], attributes: Iterable[CustomAttribute]
) -> list[SchemaProblem]:
    """The problems of mapped attribute ``fields`` against Braze's ``attributes``.

    A field is a problem when Braze holds an attribute of that name with a type the field's
    values would not have (Braze ignores such values and still answers success), when the
    attribute is blocklisted, or when Braze reports a ``data_type`` this SDK does not know
    (it cannot be checked; the problem says so). Standard profile attributes (``email``,
    ``dob``, ...) are Braze's own and not checked; attributes Braze does not hold yet are fine.
    An undeclared field sends values with the type they arrive with, and Antavo sends numbers,
    flags and dates as text: against an attribute Braze holds as anything but a string, the
    type must be declared.
    """
    known = {attribute.name: attribute for attribute in attributes}
    problems: list[SchemaProblem] = []
    seen: set[str] = set()
    for item in fields:
        name = item.remote_field
        attribute = known.get(name)
        if attribute is None or name in STANDARD_ATTRIBUTES or name in seen:
            continue
        seen.add(name)
        expected = item.type.value if item.type is not None else "inferred"
        found = attribute.data_type or "?"
        if attribute.blocklisted:
            problems.append(
                SchemaProblem(
                    name,
                    expected,
                    found,
                    f"Braze has blocklisted {name!r} (status {attribute.status!r}): every value "
                    "is dropped; reactivate it in Braze or remove it from the mapping",
                )
            )
            continue
        braze_type = attribute.type
        if braze_type is None:
            problems.append(
                SchemaProblem(
                    name,
                    expected,
                    found,
                    f"Braze reports data_type {found!r}, which this SDK does not know: the "
                    "field cannot be checked (please report the spelling)",
                )
            )
        elif item.type is None and braze_type is not BrazeType.STRING:
            problems.append(
                SchemaProblem(
                    name,
                    expected,
                    found,
                    f"no type declared: values go out as they arrive (Antavo sends numbers, "
                    f"flags and dates as text), and Braze holds {name!r} as {found}, so it "
                    f'would ignore them; declare "type": "{braze_type.value}"',
                )
            )
        elif item.type is not None and item.type is not braze_type:
            problems.append(
                SchemaProblem(
                    name,
                    expected,
                    found,
                    f"the mapping sends {item.type.value} but Braze holds {name!r} as {found}: "
                    f'Braze would ignore every value (and still answer success); declare "type": '
                    f'"{braze_type.value}" or change the attribute\'s type in Braze',
                )
            )
    return problems
