"""HOT: coercion of Python / Antavo values to JSON-ready Braze values. Pure: no I/O.

Every coercer is a plain function ``value -> JSON-ready value`` that raises
:class:`~antavo_braze.CoercionError` (never another exception). :func:`coercer_for` returns the
specialised function for a type once, so hot loops do no per-value dispatch on the type.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from importlib.machinery import EXTENSION_SUFFIXES
from typing import Any

from .._braze.limits import (
    DEFAULT_MAX_ARRAY_ITEMS,
    EVENT_PROPERTY_RESERVED,
    MAX_NESTED_BYTES,
    MAX_STRING_LENGTH,
    MAX_VALUE_TEXT,
    MAX_INTEGER,
    MAX_YEAR,
    MIN_INTEGER,
    MIN_YEAR,
    STANDARD_ATTRIBUTES,
)
from .._braze.rules import (
    MAX_DEPTH,
    array_problem,
    depth_problem,
    float_problem,
    int_problem,
    is_plain_key,
    key_problem,
    name_problem,
    property_count_problem,
    reserved_problem,
    size_problem,
    string_problem,
)
from .._braze.types import BrazeType, BrazeTypeLike
from ..exceptions import CoercionError, ConfigurationError

__all__ = [
    "BUILD",
    "DEFAULT_MAX_ARRAY_ITEMS",
    "MAX_OBJECT_BYTES",
    "MAX_STRING_LENGTH",
    "STANDARD_ATTRIBUTES",
    "Coercer",
    "check_options",
    "coerce",
    "coercer_for",
    "infer_type",
    "standard_coercer",
]

Coercer = Callable[[Any], Any]

# "compiled" when this module is the extension the wheel's optional mypyc build makes of it
# (the hot path), "python" when it runs as source.
BUILD = "compiled" if __file__.endswith(tuple(EXTENSION_SUFFIXES)) else "python"

MAX_OBJECT_BYTES = MAX_NESTED_BYTES
# The rules live in _braze/rules; these names serve the inline fast blocks.
_INT_MIN, _INT_MAX = MIN_INTEGER, MAX_INTEGER
_MAX_DEPTH = MAX_DEPTH

_UTC = timezone.utc
_EPOCH = datetime(1970, 1, 1, tzinfo=_UTC)

_INT_RE = re.compile(r"[+-]?\d+\Z")
_FLOAT_RE = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?\Z")
# "12,5": a decimal comma (European spreadsheets), named in the error so it is fixed at the source.
_DECIMAL_COMMA_RE = re.compile(r"[+-]?\d{1,18},\d{1,18}\Z", re.ASCII)
_DATE_RE = re.compile(
    r"(?P<y>\d{4})-(?P<mo>\d{2})-(?P<d>\d{2})"
    r"(?:[T ](?P<h>\d{2}):(?P<mi>\d{2})(?::(?P<s>\d{2})(?:[.:,](?P<frac>\d{1,9}))?)?"
    r"\s*(?P<tz>Z|z|UTC|[+-]\d{2}(?::?\d{2})?)?)?\Z"
)
_TRUE = frozenset({"true", "t", "yes", "1"})
_FALSE = frozenset({"false", "f", "no", "0"})


def _fail(
    value: object, type: BrazeType | str, reason: str, field: str | None = None
) -> CoercionError:
    return CoercionError(value, str(type), reason, field=field)


# --- number ---------------------------------------------------------------------------------


def coerce_number(value: Any) -> int | float | None:
    """int stays int; finite float; integral Decimal -> int; numeric strings -> number."""
    cls = type(value)
    if cls is int:
        if _INT_MIN <= value <= _INT_MAX:
            return value  # type: ignore[no-any-return]
        raise _fail(value, BrazeType.NUMBER, int_problem(value) or "")
    if cls is float:
        if math.isfinite(value):
            return value  # type: ignore[no-any-return]
        raise _fail(value, BrazeType.NUMBER, float_problem(value) or "")
    if cls is str and len(value) < 19 and value.isdigit() and value.isascii():
        return int(value)  # Antavo sends some counters as digit strings; 18 digits fit 64 bits
    if value is None:
        return None
    if isinstance(value, bool):
        raise _fail(value, BrazeType.NUMBER, "booleans are not numbers (use type 'boolean')")
    if isinstance(value, int):
        return coerce_number(int(value))
    if isinstance(value, float):
        return coerce_number(float(value))
    if isinstance(value, Decimal):
        return _decimal_to_number(value, value)
    if isinstance(value, str):
        text = value.strip()
        if len(text) > MAX_VALUE_TEXT:  # checked before any pattern runs: linear time
            raise _fail(value, BrazeType.NUMBER, f"longer than {MAX_VALUE_TEXT} characters")
        if _INT_RE.match(text):
            return coerce_number(int(text))
        if _FLOAT_RE.match(text):
            number = float(text)
            if math.isfinite(number):
                return number
            raise _fail(value, BrazeType.NUMBER, "the number is too large to store")
        if _DECIMAL_COMMA_RE.match(text):
            raise _fail(
                value,
                BrazeType.NUMBER,
                "not a numeric string: a decimal comma (write 12.5, not 12,5; "
                "export the file with a decimal point)",
            )
        raise _fail(value, BrazeType.NUMBER, "not a numeric string")
    raise _fail(
        value, BrazeType.NUMBER, f"expected int, float, Decimal or numeric str, got {cls.__name__}"
    )


def _decimal_to_number(value: Decimal, original: object) -> int | float:
    if not value.is_finite():
        raise _fail(original, BrazeType.NUMBER, "NaN and infinity are not numbers Braze can store")
    if value == value.to_integral_value():
        whole = coerce_number(int(value))
        assert whole is not None
        return whole
    number = float(value)
    if not math.isfinite(number):  # pragma: no cover - only for absurd exponents
        raise _fail(original, BrazeType.NUMBER, "the number is too large to store")
    return number


# --- string ---------------------------------------------------------------------------------


def _make_string_coercer(truncate: bool) -> Coercer:
    def coerce_string(value: Any) -> str | None:
        cls = type(value)
        if cls is str:
            text: str = value
        elif value is None:
            return None
        elif isinstance(value, bool):
            return "true" if value else "false"
        elif isinstance(value, str):
            text = str(value)
        elif isinstance(value, (int, float, Decimal)):
            if isinstance(value, float) and not math.isfinite(value):
                raise _fail(
                    value, BrazeType.STRING, "NaN and infinity have no string form in Braze"
                )
            text = str(value)
        else:
            raise _fail(
                value, BrazeType.STRING, f"expected str, number or bool, got {cls.__name__}"
            )
        if len(text) > MAX_STRING_LENGTH:
            if truncate:
                return text[:MAX_STRING_LENGTH]
            raise _fail(value, BrazeType.STRING, string_problem(text) or "")
        return text

    return coerce_string


coerce_string = _make_string_coercer(truncate=False)


# --- boolean --------------------------------------------------------------------------------


def coerce_boolean(value: Any) -> bool | None:
    """bool; ints 0/1; strings true/false/t/f/yes/no/1/0 in any case."""
    if value is True or value is False or value is None:
        return value
    if isinstance(value, bool):  # pragma: no cover - numpy-like bool subclasses
        return bool(value)
    if isinstance(value, int):
        if value in (0, 1):
            return value == 1
        raise _fail(value, BrazeType.BOOLEAN, "only the integers 0 and 1 are booleans")
    if isinstance(value, str):
        text = value.strip().lower() if len(value) <= MAX_VALUE_TEXT else value
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise _fail(value, BrazeType.BOOLEAN, "expected true/false, t/f, yes/no or 1/0")
    raise _fail(
        value,
        BrazeType.BOOLEAN,
        f"expected bool, 0/1 or a yes/no string, got {type(value).__name__}",
    )


# --- date -----------------------------------------------------------------------------------


def to_datetime(value: Any) -> datetime | None:
    """Parse any accepted date input into an aware UTC datetime (``None`` passes through)."""
    cls = type(value)
    if cls is str:
        moment = _parse_date_string(value)
    elif cls is int:
        moment = _from_unix(value, value)
    elif value is None:
        return None
    elif isinstance(value, datetime):
        moment = value.replace(tzinfo=_UTC) if value.tzinfo is None else value.astimezone(_UTC)
    elif isinstance(value, date):
        moment = datetime(value.year, value.month, value.day, tzinfo=_UTC)
    elif isinstance(value, bool):
        raise _fail(value, BrazeType.DATE, "booleans are not dates")
    elif isinstance(value, (int, float, Decimal)):
        moment = _from_unix(value, value)
    elif isinstance(value, str):
        moment = _parse_date_string(value)
    else:
        raise _fail(
            value,
            BrazeType.DATE,
            "expected datetime, date, unix seconds or an ISO 8601 string, "
            f"got {type(value).__name__}",
        )
    if not MIN_YEAR <= moment.year <= MAX_YEAR:
        raise _fail(value, BrazeType.DATE, f"year {moment.year} is outside {MIN_YEAR}-{MAX_YEAR}")
    return moment


def _from_unix(seconds: int | float | Decimal, original: object) -> datetime:
    try:
        number = float(seconds)
        if not math.isfinite(number):
            raise ValueError
        return _EPOCH + timedelta(seconds=number)
    except (ValueError, OverflowError, InvalidOperation):
        raise _fail(
            original, BrazeType.DATE, f"unix time out of range (years {MIN_YEAR}-{MAX_YEAR})"
        ) from None


def _parse_date_string(value: str) -> datetime:
    text = value.strip()
    if len(text) > MAX_VALUE_TEXT:  # checked before any pattern runs: linear time
        raise _fail(value, BrazeType.DATE, f"longer than {MAX_VALUE_TEXT} characters")
    if "-" not in text[1:] and _FLOAT_RE.match(text) and "e" not in text.lower():
        return _from_unix(Decimal(text), value)
    match = _DATE_RE.match(text)
    if match is None:
        raise _fail(
            value,
            BrazeType.DATE,
            "expected ISO 8601 (2026-01-02T03:04:05Z), YYYY-MM-DD, "
            "YYYY-MM-DD hh:mm:ss or unix seconds",
        )
    parts = match.groupdict()
    frac = parts["frac"] or "0"
    try:
        moment = datetime(
            int(parts["y"]),
            int(parts["mo"]),
            int(parts["d"]),
            int(parts["h"] or 0),
            int(parts["mi"] or 0),
            int(parts["s"] or 0),
            int(frac[:6].ljust(6, "0")),
            tzinfo=_parse_offset(parts["tz"], value),
        )
    except ValueError as exc:
        raise _fail(value, BrazeType.DATE, f"not a real date or time ({exc})") from None
    if moment.utcoffset():
        try:
            moment = moment.astimezone(_UTC)
        except OverflowError:
            raise _fail(value, BrazeType.DATE, "outside the supported years") from None
    return moment


def _parse_offset(text: str | None, original: str) -> timezone:
    if text is None or text in ("Z", "z", "UTC"):
        return _UTC
    sign = -1 if text[0] == "-" else 1
    digits = text[1:].replace(":", "")
    hours, minutes = int(digits[:2]), int(digits[2:4] or 0)
    if hours > 23 or minutes > 59:
        raise _fail(original, BrazeType.DATE, f"invalid UTC offset {text!r}")
    return timezone(sign * timedelta(hours=hours, minutes=minutes))


def format_datetime(moment: datetime) -> str:
    """ISO 8601 in UTC with a ``Z`` suffix; fractions only when present (``moment`` in UTC)."""
    return moment.isoformat()[:-6] + "Z"  # drop "+00:00"


def coerce_date(value: Any) -> str | None:
    """Any accepted date input -> ISO 8601 UTC string."""
    cls = type(value)
    if cls is int:  # unix seconds, Antavo's optin_at: cached day prefix + time-of-day tables
        day, second = divmod(value, 86_400)
        prefix: str | None = _DAY_PREFIXES.get(day)
        if prefix is None:
            prefix = _unix_day_prefix(value, day)
        time_of_day: str = _MINUTES_OF_DAY[second // 60] + _SECONDS[second % 60]
        return prefix + time_of_day
    if cls is str:
        text: str = value
        # The common UTC shapes, whose digits already are the output.
        if len(text) == 19 and _DATE_TIME_RE.match(text) is not None:
            return text.replace(" ", "T") + "Z"  # the only space the pattern allows
        match = _COMMON_DATE_RE.match(text)
        if match is not None:
            day_text, time_text = match.groups()
            return f"{day_text}T{time_text or '00:00:00'}Z"
        text = text.strip()
        if len(text) > MAX_VALUE_TEXT:
            return _coerce_date_string(text)  # refused, without filling the cache
        return _cached_date_string(text)  # keys: short and normalised (stripped)
    moment = to_datetime(value)
    return None if moment is None else format_datetime(moment)


# Unix seconds -> "YYYY-MM-DDT" for that day (bounded), then "hh:mm:" and "ssZ" from tables.
_DAY_PREFIXES: dict[int, str] = {}
_MAX_CACHED_DAYS = 20_000
_MINUTES_OF_DAY = [f"{m // 60:02d}:{m % 60:02d}:" for m in range(1440)]
_SECONDS = [f"{s:02d}Z" for s in range(60)]


def _unix_day_prefix(value: int, day: int) -> str:
    moment = to_datetime(value)  # raises the explained error for out-of-range values
    assert moment is not None
    prefix = f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}T"
    if len(_DAY_PREFIXES) < _MAX_CACHED_DAYS:
        _DAY_PREFIXES[day] = prefix
    return prefix


# The common UTC shapes whose digits are the output: YYYY-MM-DD, optionally with hh:mm:ss and
# then optionally Z or +00:00. Days 29-31 (month lengths, leap years) go through the full parser.
_DAY = r"[12]\d{3}-(?:0[1-9]|1[0-2])-(?:0[1-9]|1\d|2[0-8])"
_TIME = r"(?:[01]\d|2[0-3]):[0-5]\d:[0-5]\d"
# ASCII: other scripts' digits must go through int() in the full parser, not be copied.
_DATE_TIME_RE = re.compile(rf"{_DAY}[T ]{_TIME}", re.ASCII)  # on 19-character strings only
_COMMON_DATE_RE = re.compile(rf"({_DAY})(?:[T ]({_TIME})(?:Z|\+00:00)?)?\Z", re.ASCII)


def _coerce_date_string(value: str) -> str:
    moment = to_datetime(value)
    assert moment is not None
    return format_datetime(moment)


_cached_date_string = functools.lru_cache(maxsize=8192)(_coerce_date_string)


# --- array ----------------------------------------------------------------------------------


def _make_array_coercer(max_items: int, truncate: bool) -> Coercer:
    string = _make_string_coercer(truncate)
    small = min(max_items, _SMALL_NODES)

    def coerce_array(value: Any) -> list[Any] | None:
        if type(value) is list and len(value) <= small:
            # Fast path: a short list of distinct, short strings is already what Braze takes.
            for item in value:
                if type(item) is not str or len(item) > MAX_STRING_LENGTH:
                    break
            else:
                if len(value) < 2 or len(set(value)) == len(value):
                    return value
        if value is None:
            return None
        if type(value) is not list and (
            isinstance(value, (str, bytes, Mapping))
            or not isinstance(value, (list, tuple, set, frozenset))
        ):
            if isinstance(value, str):
                raise _fail(
                    value,
                    BrazeType.ARRAY,
                    'expected a list, got text (a list written in one cell? set "split": "," '
                    "on the field)",
                )
            raise _fail(
                value, BrazeType.ARRAY, f"expected a list, tuple or set, got {type(value).__name__}"
            )
        items = _sorted_if_set(value)
        seen: set[Any] = set()
        out: list[Any] = []
        scalar: Any  # (declared: a compiled build checks what a name holds against its type)
        key: Any
        for index, item in enumerate(items):
            if type(item) is str and len(item) <= MAX_STRING_LENGTH:
                # A str never equals the tuple keys of numbers and bools: it is its own key.
                scalar, key = item, item
            else:
                try:
                    scalar, kind = _array_scalar(item, string)
                except CoercionError as exc:
                    raise exc.at(f"[{index}]") from None
                key = scalar if kind == "s" else (kind, scalar)
            if key not in seen:
                seen.add(key)
                out.append(scalar)
        problem = array_problem(len(out), max_items, unique=True)
        if problem is not None:
            raise _fail(value, BrazeType.ARRAY, problem)
        _check_size(out, value, BrazeType.ARRAY, len(out))
        return out

    return coerce_array


def _sorted_if_set(value: Any) -> Any:
    if isinstance(value, (set, frozenset)):
        try:
            return sorted(value)
        except TypeError:
            return sorted(value, key=repr)
    return value


def _array_scalar(item: Any, string: Coercer) -> tuple[Any, str]:
    if isinstance(item, bool):
        return item, "b"
    if isinstance(item, str):
        return string(item), "s"
    if isinstance(item, (int, float, Decimal)):
        return coerce_number(item), "n"
    if item is None:
        raise _fail(item, BrazeType.ARRAY, "arrays cannot hold null")
    if isinstance(item, (list, tuple, set, frozenset, Mapping)):
        raise _fail(
            item,
            BrazeType.ARRAY,
            "arrays hold scalars only; nested lists and objects need type 'array_of_objects'",
        )
    raise _fail(
        item, BrazeType.ARRAY, f"arrays hold str, numbers or bools, not {type(item).__name__}"
    )


# --- object and array of objects -------------------------------------------------------------


def _check_key(key: Any, type: BrazeType) -> str:
    problem = key_problem(key)
    if problem is not None:
        raise _fail(key, type, problem)
    return key  # type: ignore[no-any-return]


_is_plain_key = is_plain_key  # the quick test; _check_key explains the others


def type_name(value: object) -> str:
    return type(value).__name__


Nested = Callable[[Any, BrazeType, int, list[int]], Any]


def _make_nested_coercer(truncate: bool, max_items: int) -> Nested:
    string = _make_string_coercer(truncate)

    def nested(value: Any, owner: BrazeType, depth: int, nodes: list[int]) -> Any:
        nodes[0] += 1
        cls = type(value)
        # Fast paths for JSON-shaped data, by exact class.
        if cls is str:
            return value if len(value) <= MAX_STRING_LENGTH else string(value)
        if cls is int or cls is float:
            return coerce_number(value)
        if cls is bool:
            return value
        if depth > _MAX_DEPTH:
            raise _fail(value, owner, depth_problem(depth) or "")
        if cls is dict or isinstance(value, Mapping):
            if len(value) == 1 and "$time" in value:
                try:
                    return {"$time": coerce_date(value["$time"])}
                except CoercionError as exc:
                    raise exc.at("$time") from None
            out: dict[str, Any] = {}
            for key, item in value.items():
                if not _is_plain_key(key):
                    _check_key(key, owner)  # raises the explanation
                item_class = type(item)
                # Scalars inline: most leaves are short strings, ints and bools.
                if (
                    (item_class is str and len(item) <= MAX_STRING_LENGTH)
                    or (item_class is int and _INT_MIN <= item <= _INT_MAX)
                    or item_class is bool
                ):
                    nodes[0] += 1
                    out[key] = item
                    continue
                try:
                    out[key] = nested(item, owner, depth + 1, nodes)
                except CoercionError as exc:
                    raise exc.at(key) from None
            return out
        if cls is list or isinstance(value, (list, tuple, set, frozenset)):
            items = _sorted_if_set(value)
            if len(items) > max_items:
                raise _fail(value, owner, array_problem(len(items), max_items) or "")
            result = []
            for index, item in enumerate(items):
                try:
                    result.append(nested(item, owner, depth + 1, nodes))
                except CoercionError as exc:
                    raise exc.at(f"[{index}]") from None
            return result
        if value is None:
            raise _fail(
                value,
                owner,
                "null inside an object makes Braze drop the whole update; omit the key",
            )
        if isinstance(value, bool):  # pragma: no cover - bool subclasses
            return bool(value)
        if isinstance(value, str):
            return string(str(value))
        if isinstance(value, (int, float, Decimal)):
            return coerce_number(value)
        if isinstance(value, (datetime, date)):
            return {"$time": coerce_date(value)}
        raise _fail(value, owner, f"cannot store a {type_name(value)} inside an object")

    return nested


# No JSON node of a coerced value is longer than this (a 255-character string or key, every
# character escaped as \uXXXX, plus quotes and punctuation): below the node count this allows,
# a value cannot reach 100 KB, and the exact (costly) size check is skipped.
_MAX_NODE_BYTES = 2 * (6 * MAX_STRING_LENGTH + 4)
_SMALL_NODES = MAX_OBJECT_BYTES // _MAX_NODE_BYTES


def _check_size(value: Any, original: Any, type: BrazeType, nodes: int) -> None:
    if nodes <= _SMALL_NODES:
        return
    problem = size_problem(_json_size(value), MAX_OBJECT_BYTES)
    if problem is not None:
        raise _fail(original, type, problem)


def _json_size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


# Keys already found valid (bounded): most objects reuse a handful of key names.
_VALID_KEYS: set[str] = set()
_MAX_VALID_KEYS = 10_000


def _clean_nodes(value: dict[Any, Any] | list[Any], depth: int, max_items: int) -> int:
    """The node count of a dict (or list inside one) that is already valid Braze JSON as it
    is, or -1 if it is not.

    The fast path of objects: no copy, no error messages. Anything unusual (other classes,
    nulls, bad keys, long strings, ``$time``, deep nesting) answers -1, and the full coercer
    then converts or explains.
    """
    if depth > _MAX_DEPTH:
        return -1
    items: Iterable[Any]
    if type(value) is dict:
        if not (_VALID_KEYS.issuperset(value) or _learn_keys(value)):
            return -1
        items = value.values()
    elif len(value) > max_items:
        return -1
    else:
        items = value
    nodes = 1 + len(value)
    for item in items:
        cls = type(item)
        if cls is str:
            if len(item) > MAX_STRING_LENGTH:
                return -1
        elif cls is int:
            if not _INT_MIN <= item <= _INT_MAX:
                return -1
        elif cls is dict or cls is list:
            count = _clean_nodes(item, depth + 1, max_items)
            if count < 0:
                return -1
            nodes += count
        elif cls is float:
            if item - item != 0:  # NaN or infinity
                return -1
        elif cls is not bool:
            return -1
    return nodes


def _learn_keys(value: dict[Any, Any]) -> bool:
    """Whether every key of ``value`` is a valid object key; remembers the valid ones."""
    for key in value:
        if not _is_plain_key(key):
            return False
        if len(_VALID_KEYS) < _MAX_VALID_KEYS:
            _VALID_KEYS.add(key)
    return True


def _make_object_coercer(truncate: bool, max_items: int) -> Coercer:
    nested = _make_nested_coercer(truncate, max_items)

    def coerce_object(value: Any) -> dict[str, Any] | None:
        if type(value) is dict and 0 <= _clean_nodes(value, 0, max_items) <= _SMALL_NODES:
            return value
        if value is None:
            return None
        if type(value) is not dict and not isinstance(value, Mapping):
            raise _fail(value, BrazeType.OBJECT, f"expected a mapping, got {type_name(value)}")
        nodes = [0]
        out: dict[str, Any] = nested(value, BrazeType.OBJECT, 0, nodes)
        if "$time" in out:
            raise _fail(value, BrazeType.OBJECT, "a bare {'$time': ...} is a date; use type 'date'")
        _check_size(out, value, BrazeType.OBJECT, nodes[0])
        return out

    return coerce_object


def _make_array_of_objects_coercer(truncate: bool, max_items: int) -> Coercer:
    nested = _make_nested_coercer(truncate, max_items)

    def coerce_array_of_objects(value: Any) -> list[dict[str, Any]] | None:
        if type(value) is list:
            total = 0
            for item in value:
                count = _clean_nodes(item, 1, max_items) if type(item) is dict else -1
                if count < 0:
                    break
                total += count
            else:
                if total <= _SMALL_NODES:
                    return value
        if value is None:
            return None
        if type(value) is not list and (
            isinstance(value, (str, bytes, Mapping)) or not isinstance(value, (list, tuple))
        ):
            raise _fail(
                value,
                BrazeType.ARRAY_OF_OBJECTS,
                f"expected a list of mappings, got {type_name(value)}",
            )
        out: list[dict[str, Any]] = []
        nodes = [0]
        for index, item in enumerate(value):
            if (type(item) is not dict and not isinstance(item, Mapping)) or (
                len(item) == 1 and "$time" in item
            ):
                raise _fail(
                    item,
                    BrazeType.ARRAY_OF_OBJECTS,
                    "every item must be a mapping",
                    field=f"[{index}]",
                )
            try:
                out.append(nested(item, BrazeType.ARRAY_OF_OBJECTS, 1, nodes))
            except CoercionError as exc:
                raise exc.at(f"[{index}]") from None
        _check_size(out, value, BrazeType.ARRAY_OF_OBJECTS, nodes[0])
        return out

    return coerce_array_of_objects


# --- inference ------------------------------------------------------------------------------


def infer_type(value: Any) -> BrazeType | None:
    """The Braze type a value would be sent as, or ``None`` for ``None``."""
    if value is None:
        return None
    if isinstance(value, bool):
        return BrazeType.BOOLEAN
    if isinstance(value, (int, float, Decimal)):
        return BrazeType.NUMBER
    if isinstance(value, str):
        return BrazeType.STRING
    if isinstance(value, (datetime, date)):
        return BrazeType.DATE
    if isinstance(value, Mapping):
        return BrazeType.OBJECT
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, Mapping) for v in value):
        return BrazeType.ARRAY_OF_OBJECTS
    if isinstance(value, (list, tuple, set, frozenset)):
        return BrazeType.ARRAY
    raise CoercionError(value, "inferred", f"no Braze type for {type_name(value)}; declare a type")


def _make_inferring_coercer(table: dict[BrazeType, Coercer]) -> Coercer:
    number, string, boolean, date_ = (
        table[BrazeType.NUMBER],
        table[BrazeType.STRING],
        table[BrazeType.BOOLEAN],
        table[BrazeType.DATE],
    )

    def coerce_inferred(value: Any) -> Any:
        cls = type(value)
        # Fast paths for the common scalars, in order of frequency in Antavo data.
        if cls is str:
            return string(value)
        if cls is int or cls is float:
            return number(value)
        if cls is bool:
            return boolean(value)
        if value is None:
            return None
        inferred = infer_type(value)
        assert inferred is not None
        if inferred is BrazeType.DATE:
            return date_(value)
        return table[inferred](value)

    return coerce_inferred


# --- standard profile attributes -------------------------------------------------------------

_GENDERS = {
    "m": "M", "male": "M", "man": "M",
    "f": "F", "female": "F", "woman": "F",
    "o": "O", "other": "O",
    "n": "N", "not applicable": "N", "not_applicable": "N", "n/a": "N",
    "p": "P", "prefer not to say": "P", "prefer_not_to_say": "P",
}  # fmt: skip

# ISO 3166-1 alpha-2 (officially assigned) and ISO 639-1 codes: Braze stores NULL for unknown codes.
_COUNTRIES = frozenset(
    "AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR "
    "BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM DO DZ "
    "EC EE EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW "
    "GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN KP KR KW KY "
    "KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV "
    "MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW PY "
    "QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF TG "
    "TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM "
    "ZW".split()
)
_LANGUAGES = frozenset(
    "aa ab ae af ak am an ar as av ay az ba be bg bh bi bm bn bo br bs ca ce ch co cr cs cu cv cy "
    "da de dv dz ee el en eo es et eu fa ff fi fj fo fr fy ga gd gl gn gu gv ha he hi ho hr ht hu "
    "hy hz ia id ie ig ii ik io is it iu ja jv ka kg ki kj kk kl km kn ko kr ks ku kv kw ky la lb "
    "lg li ln lo lt lu lv mg mh mi mk ml mn mr ms mt my na nb nd ne ng nl nn no nr nv ny oc oj om "
    "or os pa pi pl ps pt qu rm rn ro ru rw sa sc sd se sg si sk sl sm sn so sq sr ss st su sv sw "
    "ta te tg th ti tk tl tn to tr ts tt tw ty ug uk ur uz ve vi vo wa wo xh yi yo za zh zu".split()
)


def coerce_dob(value: Any) -> str | None:
    """Braze ``dob``: ``YYYY-MM-DD``."""
    moment = to_datetime(value)
    return None if moment is None else moment.date().isoformat()


def coerce_gender(value: Any) -> str | None:
    """Braze ``gender``: one of M/F/O/N/P (Antavo's male/female/other/... are translated)."""
    if value is None:
        return None
    if isinstance(value, str):
        code = _GENDERS.get(value.strip().lower())
        if code is not None:
            return code
    raise _fail(
        value,
        "gender",
        "expected male/female/other/not applicable/prefer not to say or M/F/O/N/P",
    )


def coerce_country(value: Any) -> str | None:
    """Braze ``country``: ISO 3166-1 alpha-2, upper case."""
    if value is None:
        return None
    if isinstance(value, str) and value.strip().upper() in _COUNTRIES:
        return value.strip().upper()
    raise _fail(value, "country", "expected an ISO 3166-1 alpha-2 code such as 'DE'")


def coerce_language(value: Any) -> str | None:
    """Braze ``language``: ISO 639-1, lower case (``en-GB`` / ``en_GB`` become ``en``)."""
    if value is None:
        return None
    if isinstance(value, str):
        code = re.split(r"[-_]", value.strip(), maxsplit=1)[0].lower()
        if code in _LANGUAGES:
            return code
    raise _fail(value, "language", "expected an ISO 639-1 code such as 'en'")


_STANDARD_SPECIAL: dict[str, Coercer] = {
    "dob": coerce_dob,
    "gender": coerce_gender,
    "country": coerce_country,
    "language": coerce_language,
}


def check_options(max_array_items: Any, truncate_strings: Any) -> None:
    """The coercion options, exactly typed (Python would read 1 as True and 500.0 as 500; a
    compiled build refuses them at its typed entry points): a clear error instead. Called
    where the options come in (``coerce``, the Mapper), before any typed function sees them."""
    if type(truncate_strings) is not bool:
        raise ConfigurationError(
            f"truncate_strings must be True or False, not {truncate_strings!r}"
        )
    if type(max_array_items) is not int or max_array_items < 1:
        raise ConfigurationError(
            f"max_array_items must be a whole number >= 1, not {max_array_items!r}"
        )


def standard_coercer(name: str, *, truncate_strings: bool = False) -> Coercer | None:
    """The coercer for Braze standard profile attribute ``name``, or ``None`` if it is custom."""
    if name in _STANDARD_SPECIAL:
        return _STANDARD_SPECIAL[name]
    if name in STANDARD_ATTRIBUTES:
        return _make_string_coercer(truncate_strings)
    return None


# --- public entry points ---------------------------------------------------------------------

_CACHE: dict[tuple[BrazeType | None, int, bool], Coercer] = {}


def coercer_for(
    type: BrazeTypeLike | None = None,
    *,
    max_array_items: int = DEFAULT_MAX_ARRAY_ITEMS,
    truncate_strings: bool = False,
) -> Coercer:
    """Return the specialised coercer for ``type`` (``None`` infers the type from each value)."""
    braze_type = None if type is None else BrazeType.parse(type)
    key = (braze_type, max_array_items, truncate_strings)
    cached = _CACHE.get(key)
    if cached is not None:
        return cached
    table: dict[BrazeType, Coercer] = {
        BrazeType.NUMBER: coerce_number,
        BrazeType.STRING: _make_string_coercer(truncate_strings),
        BrazeType.BOOLEAN: coerce_boolean,
        BrazeType.DATE: coerce_date,
        BrazeType.ARRAY: _make_array_coercer(max_array_items, truncate_strings),
        BrazeType.OBJECT: _make_object_coercer(truncate_strings, max_array_items),
        BrazeType.ARRAY_OF_OBJECTS: _make_array_of_objects_coercer(
            truncate_strings, max_array_items
        ),
    }
    result = _make_inferring_coercer(table) if braze_type is None else table[braze_type]
    _CACHE[key] = result
    return result


def coerce(
    value: Any,
    type: BrazeTypeLike | None = None,
    *,
    max_array_items: int = DEFAULT_MAX_ARRAY_ITEMS,
    truncate_strings: bool = False,
) -> Any:
    """Coerce ``value`` to the JSON-ready form of Braze ``type`` (inferred when ``None``).

    ``None`` stays ``None`` for every type (Braze then removes the attribute). Raises
    :class:`~antavo_braze.CoercionError` naming the value, the type and the reason.
    """
    check_options(max_array_items, truncate_strings)
    try:
        coercer = coercer_for(
            type, max_array_items=max_array_items, truncate_strings=truncate_strings
        )
    except ValueError as exc:
        raise CoercionError(value, str(type), str(exc)) from None
    return coercer(value)


# --- event and purchase properties -----------------------------------------------------------

EVENT_PROPERTY = "event property"


def _property_value(value: Any, depth: int) -> Any:
    cls = type(value)
    if cls is str:
        if len(value) > MAX_STRING_LENGTH:
            raise _fail(value, EVENT_PROPERTY, string_problem(value) or "")
        return value
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, (int, float, Decimal)):
        return coerce_number(value)
    if isinstance(value, str):
        return _property_value(str(value), depth)
    if isinstance(value, (datetime, date)):
        return coerce_date(value)
    if isinstance(value, Mapping):
        if depth > _MAX_DEPTH:
            raise _fail(value, EVENT_PROPERTY, depth_problem(depth) or "")
        out: dict[str, Any] = {}
        for key, item in value.items():
            name = _check_property_key(key)
            try:
                out[name] = _property_value(item, depth + 1)
            except CoercionError as exc:
                raise exc.at(name) from None
        return out
    if isinstance(value, (list, tuple, set, frozenset)):
        if depth > _MAX_DEPTH:
            raise _fail(value, EVENT_PROPERTY, depth_problem(depth) or "")
        result = []
        for index, item in enumerate(_sorted_if_set(value)):
            if isinstance(item, (datetime, date)):
                raise _fail(
                    item, EVENT_PROPERTY, "Braze allows no dates inside arrays", field=f"[{index}]"
                )
            try:
                result.append(_property_value(item, depth + 1))
            except CoercionError as exc:
                raise exc.at(f"[{index}]") from None
        return result
    raise _fail(value, EVENT_PROPERTY, f"cannot send a {type_name(value)} as a property")


def _check_property_key(key: Any) -> str:
    if type(key) is str and 0 < len(key) <= MAX_STRING_LENGTH and key[0] != "$":
        return key  # the fast block of name_problem
    problem = name_problem(key, "property")
    if problem is not None:
        raise _fail(key, EVENT_PROPERTY, problem)
    return key  # type: ignore[no-any-return]


def coerce_properties(
    data: Mapping[str, Any], reserved: frozenset[str] = EVENT_PROPERTY_RESERVED
) -> dict[str, Any]:
    """Coerce a whole ``data`` mapping into Braze event (or purchase) properties, types inferred.

    ``None`` values are left out (Braze documents no null property type); dates become ISO 8601
    strings; reserved keys, more than 256 properties or over 100 KB are errors.
    """
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = _check_property_key(key)
        if name in reserved:
            problem = reserved_problem(name, reserved)
            raise _fail(key, EVENT_PROPERTY, f"{problem}; map properties explicitly")
        if value is None:
            continue
        try:
            out[name] = _property_value(value, 1)
        except CoercionError as exc:
            raise exc.at(name) from None
    problem = property_count_problem(len(out))
    if problem is not None:
        raise _fail(data, EVENT_PROPERTY, problem)
    # Braze's 100 KB applies to properties holding arrays or objects.
    if any(type(v) is dict or type(v) is list for v in out.values()):
        problem = size_problem(_json_size(out), MAX_OBJECT_BYTES)
        if problem is not None:
            raise _fail(data, EVENT_PROPERTY, problem)
    return out
