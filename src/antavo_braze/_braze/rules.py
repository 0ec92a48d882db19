"""Braze's value rules, one check per rule, shared by coercion and ``track()``'s wire checks.

Every check answers the reason a value breaks the rule (a short sentence), or ``None`` when it
keeps it; callers wrap the reason in their own error (``CoercionError`` while mapping,
``WireError`` for a plain wire dict), so both paths refuse the same values with the same words.
The hot coercers keep their inline fast blocks (plain keys, short strings, 64-bit ints) and call
these only for what the fast block did not accept. Sources: ``shared/reference/braze-api.md``
(section numbers in brackets) and ``shared/reference/braze-2026.md`` ("2026 n.n").
FakeBraze keeps its own copy of the rules on purpose (an independent oracle).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .limits import (
    DEFAULT_MAX_ARRAY_ITEMS,
    MAX_EXTERNAL_ID_BYTES,
    MAX_INTEGER,
    MAX_NESTED_BYTES,
    MAX_PROPERTIES,
    MAX_STRING_LENGTH,
    MIN_INTEGER,
    PRIMARY_IDENTIFIERS,
    SECONDARY_IDENTIFIERS,
)

__all__ = [
    "MAX_DEPTH",
    "array_problem",
    "depth_problem",
    "float_problem",
    "identifier_problem",
    "int_problem",
    "is_plain_key",
    "key_problem",
    "name_problem",
    "property_count_problem",
    "reserved_problem",
    "size_problem",
    "string_problem",
    "time_problem",
]

# Ours: Braze documents no depth limit [2.1]; deeper than this is certainly a mistake and
# would only end in a RecursionError. Depth 0 is the attribute or property value itself.
MAX_DEPTH = 32


def string_problem(text: str) -> str | None:
    """Strings hold at most 255 characters [2.1; 3.1 for event properties]."""
    if len(text) > MAX_STRING_LENGTH:
        return f"{len(text)} characters is longer than Braze's {MAX_STRING_LENGTH}"
    return None


def int_problem(value: int) -> str | None:
    """Integers fit the signed 64-bit range (see :data:`MIN_INTEGER`)."""
    if not MIN_INTEGER <= value <= MAX_INTEGER:
        return "outside the signed 64-bit range"
    return None


def float_problem(value: float) -> str | None:
    """NaN and infinity are not JSON numbers (Braze would answer 400) [1.6]."""
    if value - value != 0:
        return "NaN and infinity are not numbers Braze can store"
    return None


def name_problem(name: Any, what: str) -> str | None:
    """Attribute names, event names and event-property keys: non-empty strings of at most 255
    characters that do not start with ``$`` [2.1 keys; 3.1 event name and property keys].
    ``what`` names the kind in the answer ("attribute", "event name", "property")."""
    if not isinstance(name, str) or not name:
        return f"{what} keys must be non-empty strings"
    if name.startswith("$"):
        return f"{what} {name[:40]!r} cannot start with '$'"
    if len(name) > MAX_STRING_LENGTH:
        return f"{what} {name[:40]!r} must have 1 to {MAX_STRING_LENGTH} characters"
    return None


def is_plain_key(key: Any) -> bool:
    """The quick form of :func:`key_problem` (``True`` exactly when it answers ``None``)."""
    return (
        type(key) is str
        and 0 < len(key) <= MAX_STRING_LENGTH
        and key[0] != "$"
        and "." not in key
        and " " not in key
    )


def key_problem(key: Any) -> str | None:
    """Keys of nested custom attributes (objects, arrays of objects): strings of 1 to 255
    characters, no spaces, and no ``.`` or ``$`` [2.1 "Object / nested custom attribute";
    2026 1.8]."""
    if not isinstance(key, str):
        return f"object keys must be strings, not {type(key).__name__}"
    if not key:
        return "object keys cannot be empty"
    if key.startswith("$"):
        return f"object key {key[:40]!r} cannot start with '$'"
    if "." in key:
        return f"object key {key[:40]!r} cannot contain '.'"
    if " " in key:
        return f"object key {key[:40]!r} cannot contain spaces"
    if len(key) > MAX_STRING_LENGTH:
        return f"object keys are limited to {MAX_STRING_LENGTH} characters"
    return None


def array_problem(
    count: int, limit: int = DEFAULT_MAX_ARRAY_ITEMS, *, unique: bool = False
) -> str | None:
    """Arrays keep at most their attribute's maximum (500 by default; Braze drops the oldest
    beyond it), so more is refused rather than cut [2.1 "Array"]. ``unique``: ``count`` is of
    distinct values (Braze collapses duplicates in scalar arrays)."""
    if count > limit:
        return f"{count} {'unique ' if unique else ''}items is more than the limit of {limit}"
    return None


def depth_problem(depth: int) -> str | None:
    """Nesting stops at :data:`MAX_DEPTH` levels below the value (ours: see there)."""
    if depth > MAX_DEPTH:
        return f"nested deeper than {MAX_DEPTH} levels"
    return None


def size_problem(size: int, limit: int = MAX_NESTED_BYTES) -> str | None:
    """Objects, arrays of objects and properties with nesting stay within their byte limit
    (100 KB; 50 KB for purchase properties) [2.1, 3.1, 3.2]."""
    if size > limit:
        return f"{size} bytes is over Braze's {limit // 1024} KB limit"
    return None


def property_count_problem(count: int) -> str | None:
    """At most 256 distinct properties per event or purchase; Braze silently keeps only the
    first 256, so more is refused rather than cut [3.1]."""
    if count > MAX_PROPERTIES:
        return f"{count} properties is more than Braze keeps ({MAX_PROPERTIES})"
    return None


def reserved_problem(key: str, reserved: frozenset[str]) -> str | None:
    """Reserved property keys (``time``, ``event_name``; for purchases also ``product_id``,
    ``quantity``, ``price``, ``currency``) are an API error [3.1, 3.2]."""
    if key in reserved:
        return f"property {key!r} is reserved by Braze"
    return None


def time_problem(value: Any) -> str | None:
    """A ``$time`` (and an event's ``time``) is a non-null date string; a malformed one blocks
    the whole nested attribute [2.1 "Time", "Object"; 3.1]. The caller then parses it (the date
    parser is coercion's)."""
    if not isinstance(value, str):
        return "must be an ISO 8601 string"
    return None


def identifier_problem(obj: Mapping[str, Any]) -> str | None:
    """One identifier per object: at most one primary (``external_id``, ``user_alias``,
    ``braze_id``), else ``email`` or ``phone`` [1.1]; ``external_id`` a non-empty string of at
    most 987 bytes [1.1 EXTERNAL_USER_ID_TOO_LARGE]; ``user_alias`` exactly
    ``{alias_name, alias_label}``."""
    primaries = [name for name in PRIMARY_IDENTIFIERS if name in obj]
    if len(primaries) > 1:
        return f"more than one primary identifier ({', '.join(primaries)})"
    if not primaries and not any(obj.get(name) for name in SECONDARY_IDENTIFIERS):
        return "missing identifier (external_id, user_alias, braze_id, email or phone)"
    if "external_id" in obj:
        external_id = obj["external_id"]
        if not isinstance(external_id, str) or not external_id.strip():
            return "external_id must be a non-empty string"
        if len(external_id.encode()) > MAX_EXTERNAL_ID_BYTES:
            return f"external_id is longer than {MAX_EXTERNAL_ID_BYTES} bytes"
    if "user_alias" in obj:
        alias = obj["user_alias"]
        if (
            not isinstance(alias, Mapping)
            or set(alias) != {"alias_name", "alias_label"}
            or not all(isinstance(v, str) and v for v in alias.values())
        ):
            return "user_alias must be {'alias_name': ..., 'alias_label': ...}"
    if "braze_id" in obj and not (isinstance(obj["braze_id"], str) and obj["braze_id"]):
        return "braze_id must be a non-empty string"
    return None
