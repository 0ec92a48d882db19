"""Shared helpers for the benchmarks: the 10-field mapping, member generation, machine facts."""

from __future__ import annotations

import json
import os
import platform
import random
from collections.abc import Iterable, Iterator
from typing import Any

# Ten fields covering all seven Braze types.
MAPPING: dict[str, Any] = {
    "fields": [
        {"loyalty_field": "score", "remote_field": "loyalty_points", "type": "number"},
        {"loyalty_field": "spendable", "remote_field": "loyalty_spendable", "type": "number"},
        {"loyalty_field": "tier", "remote_field": "loyalty_tier", "type": "string"},
        {"loyalty_field": "status", "remote_field": "loyalty_status", "type": "string"},
        {"loyalty_field": "newsletter", "remote_field": "newsletter", "type": "boolean"},
        {"loyalty_field": "optin_at", "remote_field": "loyalty_optin_at", "type": "date"},
        {"loyalty_field": "last_visit", "remote_field": "last_visit_at", "type": "date"},
        {"loyalty_field": "interests", "remote_field": "interests", "type": "array"},
        {"loyalty_field": "tier_status", "remote_field": "tier_status", "type": "object"},
        {"loyalty_field": "accounts", "remote_field": "accounts", "type": "array_of_objects"},
    ]
}
FIELDS = [(f["loyalty_field"], f["remote_field"]) for f in MAPPING["fields"]]


def member(number: int, rng: random.Random) -> dict[str, Any]:
    """One generated Antavo member with the ten mapped fields and a few unmapped ones."""
    score = rng.randrange(60_000)
    return {
        "id": f"member-{number:08d}",
        "email": f"m{number}@example.com",
        "score": score,
        "spendable": str(score // 2),
        "tier": rng.choice(("Bronze", "Silver", "Gold")),
        "status": "active",
        "newsletter": rng.choice((True, False, "yes")),
        "optin_at": 1_700_000_000 + number,
        "last_visit": f"2026-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d} "
        f"{rng.randrange(24):02d}:{rng.randrange(60):02d}:{rng.randrange(60):02d}",
        "interests": ["running", "yoga"],
        "tier_status": {"name": "Gold", "next": {"name": "Platinum", "points": 5000}},
        "accounts": [{"id": "main", "earned": score, "spendable": score // 2}],
    }


def members(count: int, seed: int = 0) -> Iterator[dict[str, Any]]:
    """``count`` members, lazily."""
    rng = random.Random(seed)
    for number in range(count):
        yield member(number, rng)


def reference_bodies(records: Iterable[dict[str, Any]]) -> Iterator[bytes]:
    """The bare-Python reference: copy mapped fields (no validation), json.dumps 75 at a time."""
    chunk: list[dict[str, Any]] = []
    for record in records:
        obj = {"external_id": record["id"]}
        for loyalty, remote in FIELDS:
            if loyalty in record:
                obj[remote] = record[loyalty]
        chunk.append(obj)
        if len(chunk) == 75:
            yield json.dumps({"attributes": chunk}).encode()
            chunk = []
    if chunk:
        yield json.dumps({"attributes": chunk}).encode()


def machine() -> str:
    """A line describing this machine."""
    return f"nproc={os.cpu_count()} python={platform.python_version()} machine={platform.machine()}"
