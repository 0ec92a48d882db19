"""What FakeBraze holds, as Braze would: profiles, events, purchases, attribute types.

Plain data under one lock. Writes follow Braze's semantics (``shared/reference/braze-api.md``
2.1, 7 and ``braze-2026.md`` 1.3-1.5): ``null`` removes an attribute, ``add``/``remove`` and
``$add``/``$remove``/``$update`` edit arrays, ``_merge_objects`` deep-merges, a custom
attribute's type is fixed by its first value (a later value of another type is ignored and the
request still answered ``success``; a blocklisted attribute keeps nothing), future times become
now, merges and deletes are applied after ``identity_delay`` seconds (Braze queues them).
"""

from __future__ import annotations

import functools
import re
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from . import _rules as rules
from ._rules import Verdict

__all__ = ["Profiles", "data_type_of"]

_ISO_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?\Z")


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


def deep_merge(target: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(target)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and set(value) != {"$time"}:
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def apply_attribute(profile: dict[str, Any], name: str, value: Any, merge: bool) -> None:
    """Write one attribute value to a profile as Braze would [2.1]."""
    if value is None:
        profile.pop(name, None)
        return
    current = profile.get(name)
    if isinstance(value, dict):
        ops = set(value)
        if ops and ops <= {"add", "remove"}:
            items = (
                [v for v in current if v not in value.get("remove", [])]
                if isinstance(current, list)
                else []
            )
            for item in value.get("add", []):
                if item in items:
                    items.remove(item)  # an existing value moves to the end
                items.append(item)
            profile[name] = items[-rules.DEFAULT_MAX_ARRAY_ITEMS :]
            return
        if ops == {"inc"}:
            profile[name] = (current if isinstance(current, int) else 0) + value["inc"]
            return
        if ops and ops <= {"$add", "$remove", "$update"}:
            objects = list(current) if isinstance(current, list) else []
            objects.extend(value.get("$add", []))  # Braze's order: $add, $remove, $update
            for rule in value.get("$remove", []):
                key, match = rule["$identifier_key"], rule.get("$identifier_value")
                objects = [o for o in objects if o.get(key) != match]
            for rule in value.get("$update", []):
                key, match = rule["$identifier_key"], rule.get("$identifier_value")
                new = rule.get("$new_object", {})
                objects = [
                    (deep_merge(o, new) if merge else {**new, key: match})
                    if o.get(key) == match
                    else o
                    for o in objects
                ]
            if rules.size(objects) <= rules.MAX_NESTED_BYTES:  # over: dropped, still "success"
                profile[name] = objects
            return
        if merge and isinstance(current, dict) and set(value) != {"$time"}:
            profile[name] = deep_merge(current, value)
            return
    profile[name] = value


class Profiles:
    """Everything FakeBraze holds, and Braze's way of writing to it (under ``lock``)."""

    def __init__(self, identity_delay: float = 0.0) -> None:
        self.lock = threading.Lock()
        self.identity_delay = identity_delay
        self.profiles: dict[str, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self.purchases: list[dict[str, Any]] = []
        self.event_names: set[str] = set()
        self.types: dict[str, str] = {}
        self.status: dict[str, str] = {}
        self.ignored = 0  # values dropped because their type was not the attribute's
        self.merges_applied = 0
        self.deletes_applied = 0
        self._pending: list[tuple[float, Callable[[], None]]] = []

    def reset(self) -> None:
        """Forget everything held (the caller holds the lock)."""
        self.profiles.clear()
        self.events.clear()
        self.purchases.clear()
        self.event_names.clear()
        self.types.clear()
        self.status.clear()
        self.ignored = self.merges_applied = self.deletes_applied = 0
        self._pending.clear()

    # --- /users/track ------------------------------------------------------------------------

    def write(self, accepted: Mapping[str, list[dict[str, Any]]]) -> None:
        """Apply accepted track objects: attributes, then events, then purchases [7]."""
        with self.lock:
            for obj in accepted["attributes"]:
                profile_id = rules.profile_id(obj)
                if obj.get("_update_existing_only") and profile_id not in self.profiles:
                    continue
                profile = self.profiles.setdefault(profile_id, {})
                merge = obj.get("_merge_objects") is True
                for name, value in obj.items():
                    if (
                        name not in rules.CONTROL_KEYS
                        or (name in rules.SECONDARY_IDENTIFIERS and ("external_id" in obj))
                    ) and self.keeps(name, value):
                        apply_attribute(profile, name, value, merge)
            now = datetime.now(rules.UTC)
            for name in ("events", "purchases"):
                for obj in accepted[name]:
                    profile_id = rules.profile_id(obj)
                    if obj.get("_update_existing_only") and profile_id not in self.profiles:
                        continue
                    self.profiles.setdefault(profile_id, {})
                    record = dict(obj)
                    # Future times become now [3.1, 3.2].
                    moment = min(rules.parse_time(obj["time"]), now)
                    record["time"] = moment.isoformat().replace("+00:00", "Z")
                    if "properties" in record:
                        record["properties"] = rules.kept_properties(record["properties"])
                    if name == "events":
                        self.event_names.add(obj["name"])
                        self.events.append(record)
                    else:
                        self.purchases.append(record)

    def keeps(self, name: str, value: Any) -> bool:
        """Whether Braze would store ``value`` for custom attribute ``name`` (and fix the
        attribute's type on its first value)."""
        if name in rules.STANDARD_ATTRIBUTES:
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

    # --- reads -------------------------------------------------------------------------------

    def sorted_event_names(self) -> list[str]:
        with self.lock:
            return sorted(self.event_names)

    def event_times(self, name: str) -> list[datetime]:
        with self.lock:
            return [rules.parse_time(e["time"]) for e in self.events if e["name"] == name]

    def attribute_rows(self) -> list[dict[str, Any]]:
        """``GET /custom_attributes`` rows, alphabetical (braze-2026.md 1.5)."""
        with self.lock:
            names = sorted(self.types.keys() | self.status.keys())
            return [
                {
                    "array_length": (
                        rules.DEFAULT_MAX_ARRAY_ITEMS if self.types.get(n) == "Array" else None
                    ),
                    "data_type": self.types.get(n, "String"),
                    "description": None,
                    "name": n,
                    "status": self.status.get(n, "Active"),
                    "tag_names": [],
                }
                for n in names
            ]

    def exported(self, ids: list[str], fields: list[str]) -> tuple[list[Any], list[str]]:
        """``/users/export/ids``: (users, invalid_user_ids) (braze-2026.md 1.6)."""
        users, invalid = [], []
        with self.lock:
            for external_id in ids:
                profile = self.profiles.get(external_id)
                if profile is None:
                    invalid.append(external_id)
                    continue
                users.append(_exported(external_id, profile, fields))
        return users, invalid

    # --- merges and deletes (braze-2026.md 1.3, 1.4) ----------------------------------------

    def apply(self, verdict: Verdict, *, store: bool) -> None:
        """Do what Braze goes on to do after its answer: store the accepted track objects
        (when ``store``), queue the merges and deletes."""
        if store and verdict.accepted and verdict.reply.status == 201:
            self.write(verdict.accepted)
        for merge, keep in verdict.merges:
            self._later(functools.partial(self._apply_merge, merge, keep))
        for external_id in verdict.deletes:
            self._later(functools.partial(self._apply_delete, external_id))

    def _later(self, action: Callable[[], None]) -> None:
        if self.identity_delay <= 0:
            with self.lock:
                action()
            return
        with self.lock:
            self._pending.append((time.monotonic() + self.identity_delay, action))
        timer = threading.Timer(self.identity_delay, self.apply_due)
        timer.daemon = True
        timer.start()

    def apply_due(self) -> None:
        """Apply the merges and deletes whose delay has passed."""
        with self.lock:
            now = time.monotonic()
            due = [a for t, a in self._pending if t <= now]
            self._pending = [(t, a) for t, a in self._pending if t > now]
            for action in due:
                action()

    def _apply_merge(self, merge: str, keep: str) -> None:
        old = self.profiles.pop(merge, None)
        if old is None:
            return
        kept = self.profiles.setdefault(keep, {})
        for name, value in old.items():
            kept.setdefault(name, value)  # the kept profile's own values win
        for record in (*self.events, *self.purchases):
            if record.get("external_id") == merge:
                record["external_id"] = keep
        self.merges_applied += 1

    def _apply_delete(self, external_id: str) -> None:
        if self.profiles.pop(external_id, None) is not None:
            self.deletes_applied += 1


def _exported(external_id: str, profile: Mapping[str, Any], fields: list[str]) -> dict[str, Any]:
    user: dict[str, Any] = {"external_id": external_id}
    for name in fields:
        if name in rules.STANDARD_ATTRIBUTES and name in profile:
            user[name] = profile[name]
    if "custom_attributes" in fields:
        # Braze exports a stored {"$time": ...} as its text.
        user["custom_attributes"] = {
            k: (v["$time"] if isinstance(v, dict) and set(v) == {"$time"} else v)
            for k, v in profile.items()
            if k not in rules.STANDARD_ATTRIBUTES
        }
    return user
