"""FakeBraze beyond ``/users/track``: attribute types, schema, export, merge and delete.

As Braze does (``shared/reference/braze-2026.md`` 1.3-1.6):

- a custom attribute's type is fixed by its first value; a later value of another type is
  ignored and the request is still answered ``success``; a blocklisted attribute keeps nothing;
- ``GET /custom_attributes`` lists them, 50 per page, alphabetically, the next page in ``Link``;
- ``POST /users/export/ids`` returns what a profile holds, only the fields asked for;
- ``POST /users/merge`` and ``POST /users/delete`` are answered at once and applied after
  ``identity_delay`` seconds (Braze queues them); with ``identity_rate_limit`` they share one
  budget of that many requests per ``identity_rate_window`` seconds (Braze: 20,000 a minute).
"""

from __future__ import annotations

import base64
import functools
import math
import re
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._fake import FakeBraze, _Exchange

__all__ = ["Beyond", "data_type_of"]

Reply = tuple[int, Any, dict[str, str], Any]

# Braze's own profile fields: not custom attributes, so never typed here.
_STANDARD = frozenset(
    {
        "first_name",
        "last_name",
        "email",
        "phone",
        "dob",
        "gender",
        "country",
        "language",
        "home_city",
        "time_zone",
        "email_subscribe",
        "push_subscribe",
        "subscription_groups",
    }
)
_ISO_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?\Z")
_PAGE = 50
_MAX_IDS = 50


def data_type_of(value: Any) -> str | None:
    """The ``data_type`` Braze would fix from ``value`` (``None``: an operator or null, which
    fixes nothing by itself)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "Boolean"
    if isinstance(value, (int, float)):
        return "Number"
    if isinstance(value, str):
        return "Time" if _ISO_TIME.match(value) else "String"
    if isinstance(value, list):
        return "Array of Objects" if value and all(isinstance(v, dict) for v in value) else "Array"
    if isinstance(value, dict):
        ops = set(value)
        if ops == {"$time"}:
            return "Time"
        if ops and ops <= {"add", "remove"}:
            return "Array"
        if ops == {"inc"}:
            return "Number"
        if ops and ops <= {"$add", "$remove", "$update"}:
            return "Array of Objects"
        return "Object"
    return None


class Beyond:
    """The state and endpoints FakeBraze serves beyond ``/users/track`` (under its lock)."""

    def __init__(
        self,
        fake: FakeBraze,
        *,
        identity_delay: float = 0.0,
        export_rate_limit: int | None = None,
        identity_rate_limit: int | None = None,
        identity_rate_window: float = 60.0,
    ) -> None:
        self.fake = fake
        self.identity_delay = identity_delay
        self.export_rate_limit = export_rate_limit
        self.identity_rate_limit = identity_rate_limit
        self.identity_rate_window = identity_rate_window
        self.types: dict[str, str] = {}
        self.status: dict[str, str] = {}
        self.ignored = 0  # values dropped because their type was not the attribute's
        self.merges_applied = 0
        self.deletes_applied = 0
        self._pending: list[tuple[float, Callable[[], None]]] = []
        self._export_window: tuple[int, int] = (-1, 0)
        self._identity_window: tuple[int, int] = (-1, 0)

    def reset(self) -> None:
        self.types.clear()
        self.status.clear()
        self.ignored = self.merges_applied = self.deletes_applied = 0
        self._pending.clear()
        self._export_window = (-1, 0)
        self._identity_window = (-1, 0)

    def routes(self) -> dict[tuple[str, str], tuple[str, Callable[[_Exchange], Reply]]]:
        return {
            ("GET", "/custom_attributes"): ("custom_attributes.get", self._custom_attributes),
            ("POST", "/users/export/ids"): ("users.export.ids", self._export),
            ("POST", "/users/merge"): ("users.merge", self._merge),
            ("POST", "/users/delete"): ("users.delete", self._delete),
        }

    # --- attribute types (called by FakeBraze._store, under its lock) ----------------------

    def keeps(self, name: str, value: Any) -> bool:
        """Whether Braze would store ``value`` for custom attribute ``name`` (and fix the
        attribute's type on its first value)."""
        if name in _STANDARD:
            return True
        if self.status.get(name, "Active") != "Active":
            self.ignored += value is not None
            return False
        found = data_type_of(value)
        if found is None:
            return True
        fixed = self.types.setdefault(name, found)
        if fixed == found or (fixed == "String" and found == "Time"):  # a date-like text
            return True
        self.ignored += 1
        return False

    # --- GET /custom_attributes --------------------------------------------------------------

    def _custom_attributes(self, ex: _Exchange) -> Reply:
        with self.fake._lock:
            names = sorted(self.types.keys() | self.status.keys())
            rows: list[dict[str, Any]] = [
                {
                    "array_length": 500 if self.types.get(n) == "Array" else None,
                    "data_type": self.types.get(n, "String"),
                    "description": None,
                    "name": n,
                    "status": self.status.get(n, "Active"),
                    "tag_names": [],
                }
                for n in names
            ]
        try:
            start = (
                int(base64.urlsafe_b64decode(ex.query["cursor"]).decode())
                if "cursor" in ex.query
                else 0
            )
        except (ValueError, UnicodeDecodeError):
            return 400, {"message": "invalid cursor"}, {}, None
        headers: dict[str, str] = {}
        if start + _PAGE < len(rows):
            cursor = base64.urlsafe_b64encode(str(start + _PAGE).encode()).decode()
            headers["Link"] = f'<{self.fake.url}/custom_attributes?cursor={cursor}>; rel="next"'
        page = rows[start : start + _PAGE]
        return 200, {"message": "success", "attributes": page}, headers, None

    # --- POST /users/export/ids --------------------------------------------------------------

    def _export_allowed(self) -> tuple[bool, dict[str, str]]:
        if self.export_rate_limit is None:
            return True, {}
        count, _wait = self._count_in_window("_export_window", 1.0)
        if count > self.export_rate_limit:
            return False, {"Retry-After": "1", "X-Ratelimit-Retry-After": "1"}
        return True, {}

    def _export(self, ex: _Exchange) -> Reply:
        allowed, headers = self._export_allowed()
        if not allowed:
            return 429, {"message": "Rate Limited"}, headers, None
        body, problem = _json_body(ex)
        if problem:
            return 400, {"message": problem}, {}, body
        ids = body.get("external_ids")
        fields = body.get("fields_to_export")
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            return 400, {"message": "external_ids must be an array of strings"}, {}, body
        if len(ids) > _MAX_IDS:
            return 400, {"message": f"at most {_MAX_IDS} external_ids"}, {}, body
        if not isinstance(fields, list) or not all(isinstance(f, str) for f in fields):
            return 400, {"message": "fields_to_export is required"}, {}, body
        self.apply_due()
        users, invalid = [], []
        with self.fake._lock:
            for external_id in ids:
                profile = self.fake.profiles.get(external_id)
                if profile is None:
                    invalid.append(external_id)
                    continue
                users.append(self._exported(external_id, profile, fields))
        payload: dict[str, Any] = {"message": "success", "users": users}
        if invalid:
            payload["invalid_user_ids"] = invalid
        return 201, payload, {}, body

    @staticmethod
    def _exported(
        external_id: str, profile: Mapping[str, Any], fields: list[str]
    ) -> dict[str, Any]:
        user: dict[str, Any] = {"external_id": external_id}
        for name in fields:
            if name in _STANDARD and name in profile:
                user[name] = profile[name]
        if "custom_attributes" in fields:
            custom = {k: v for k, v in profile.items() if k not in _STANDARD}
            user["custom_attributes"] = _exported_times(custom)
        return user

    # --- POST /users/merge and /users/delete -------------------------------------------------

    def _identity_allowed(self) -> tuple[bool, dict[str, str]]:
        """One more request under the budget /users/merge and /users/delete share (a fixed
        window of ``identity_rate_window`` seconds)."""
        if self.identity_rate_limit is None:
            return True, {}
        count, left = self._count_in_window("_identity_window", self.identity_rate_window)
        if count > self.identity_rate_limit:
            wait = str(max(1, math.ceil(left)))
            return False, {"Retry-After": wait, "X-Ratelimit-Retry-After": wait}
        return True, {}

    def _count_in_window(self, name: str, length: float) -> tuple[int, float]:
        """Count one more request in the fixed window of ``length`` seconds kept in attribute
        ``name``: (requests in the window so far, seconds until it ends)."""
        now = time.time()
        window = math.floor(now / length)
        with self.fake._lock:
            current, count = getattr(self, name)
            count = count + 1 if current == window else 1
            setattr(self, name, (window, count))
        return count, (window + 1) * length - now

    def _merge(self, ex: _Exchange) -> Reply:
        allowed, headers = self._identity_allowed()
        if not allowed:
            return 429, {"message": "Rate Limited"}, headers, None
        body, problem = _json_body(ex)
        if problem:
            return 400, {"message": problem}, {}, body
        updates = body.get("merge_updates")
        if not isinstance(updates, list) or len(updates) > _MAX_IDS:
            return (
                400,
                {"message": f"merge_updates must be an array of at most {_MAX_IDS}"},
                {},
                body,
            )
        pairs = []
        for update in updates:
            try:
                merge = update["identifier_to_merge"]["external_id"]
                keep = update["identifier_to_keep"]["external_id"]
            except (KeyError, TypeError):
                return (
                    400,
                    {
                        "message": "each merge update needs identifier_to_merge and "
                        "identifier_to_keep"
                    },
                    {},
                    body,
                )
            pairs.append((str(merge), str(keep)))
        for merge, keep in pairs:
            self._later(functools.partial(self._apply_merge, merge, keep))
        return 200, {"message": "success"}, {}, body

    def _delete(self, ex: _Exchange) -> Reply:
        allowed, headers = self._identity_allowed()
        if not allowed:
            return 429, {"message": "Rate Limited"}, headers, None
        body, problem = _json_body(ex)
        if problem:
            return 400, {"message": problem}, {}, body
        ids = body.get("external_ids")
        if (
            not isinstance(ids, list)
            or not all(isinstance(i, str) for i in ids)
            or len(ids) > _MAX_IDS
        ):
            return (
                400,
                {"message": f"external_ids must be an array of at most {_MAX_IDS} strings"},
                {},
                body,
            )
        for external_id in ids:
            self._later(functools.partial(self._apply_delete, external_id))
        return 202, {"message": "success", "deleted": len(ids)}, {}, body

    def _later(self, action: Callable[[], None]) -> None:
        if self.identity_delay <= 0:
            with self.fake._lock:
                action()
            return
        with self.fake._lock:
            self._pending.append((time.monotonic() + self.identity_delay, action))
        timer = threading.Timer(self.identity_delay, self.apply_due)
        timer.daemon = True
        timer.start()

    def apply_due(self) -> None:
        """Apply the merges and deletes whose delay has passed."""
        with self.fake._lock:
            now = time.monotonic()
            due = [a for t, a in self._pending if t <= now]
            self._pending = [(t, a) for t, a in self._pending if t > now]
            for action in due:
                action()

    def _apply_merge(self, merge: str, keep: str) -> None:
        fake = self.fake
        old = fake.profiles.pop(merge, None)
        if old is None:
            return
        kept = fake.profiles.setdefault(keep, {})
        for name, value in old.items():
            kept.setdefault(name, value)  # the kept profile's own values win
        for record in (*fake.events, *fake.purchases):
            if record.get("external_id") == merge:
                record["external_id"] = keep
        self.merges_applied += 1

    def _apply_delete(self, external_id: str) -> None:
        if self.fake.profiles.pop(external_id, None) is not None:
            self.deletes_applied += 1


def _json_body(ex: _Exchange) -> tuple[Any, str | None]:
    from ._fake import _UNPARSED, _loads_or_unparsed

    body = _loads_or_unparsed(ex.raw)
    if body is _UNPARSED:
        return None, "Invalid JSON: syntax or parse error"
    if not isinstance(body, dict):
        return body, "Invalid request body"
    return body, None


def _exported_times(custom: dict[str, Any]) -> dict[str, Any]:
    """Braze exports a stored ``{"$time": ...}`` as its text."""
    return {
        k: (v["$time"] if isinstance(v, dict) and set(v) == {"$time"} else v)
        for k, v in custom.items()
    }
