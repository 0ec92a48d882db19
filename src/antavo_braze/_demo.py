"""Sample Antavo data for ``antavo-braze demo``, the docs and the benchmarks."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

__all__ = ["DEMO_MAPPING", "sample_events", "sample_member", "sample_members"]

DEMO_MAPPING: dict[str, Any] = {
    "fields": [
        {"loyalty_field": "first_name", "remote_field": "first_name"},
        {"loyalty_field": "email", "remote_field": "email"},
        {"loyalty_field": "gender", "remote_field": "gender"},
        {"loyalty_field": "birth_date", "remote_field": "dob"},
        {"loyalty_field": "score", "remote_field": "loyalty_points_earned", "type": "number"},
        {
            "loyalty_field": "spendable",
            "remote_field": "loyalty_points_spendable",
            "type": "number",
        },
        {"loyalty_field": "tiers.0.name", "remote_field": "loyalty_tier", "type": "string"},
        {
            "loyalty_field": "newsletter_consent",
            "remote_field": "loyalty_newsletter",
            "type": "boolean",
        },
        {"loyalty_field": "optin_at", "remote_field": "loyalty_optin_at", "type": "date"},
        {"loyalty_field": "interests", "remote_field": "loyalty_interests", "type": "array"},
        {"loyalty_field": "tiers.0", "remote_field": "loyalty_tier_status", "type": "object"},
        {
            "loyalty_field": "accounts",
            "remote_field": "loyalty_accounts",
            "type": "array_of_objects",
        },
    ],
    "events": [
        {"action": "opt_in", "name": "loyalty_enrolled"},
        {
            "action": "point_add",
            "name": "loyalty_points_earned",
            "properties": [{"loyalty_field": "points", "remote_field": "points", "type": "number"}],
        },
        {"action": "checkout", "name": "loyalty_purchase"},
    ],
    "triggers": [
        {
            "when": {"action": "checkout"},
            "attributes": [
                {
                    "loyalty_field": "data.total",
                    "remote_field": "last_purchase_total",
                    "type": "number",
                },
                {"loyalty_field": "timestamp", "remote_field": "last_purchase_at", "type": "date"},
            ],
        },
    ],
}

_FIRST = ["Anna", "Ben", "Chloe", "Dara", "Emil", "Fay", "Gus", "Hana", "Ivo", "Jude"]
_TIERS = ["Bronze", "Silver", "Gold", "Platinum"]
_INTERESTS = ["running", "yoga", "cycling", "tennis", "hiking", "swimming"]


def sample_member(number: int, rng: random.Random | None = None) -> dict[str, Any]:
    """One realistic Antavo customer object (deterministic for a given ``number``)."""
    rng = rng or random.Random(number)
    tier = rng.randrange(len(_TIERS))
    score = rng.randrange(0, 60_000)
    return {
        "id": f"member-{number:07d}",
        "first_name": _FIRST[number % len(_FIRST)],
        "email": f"member{number}@example.com",
        "gender": rng.choice(["male", "female", "other", "prefer not to say"]),
        "birth_date": f"19{rng.randrange(50, 99)}-0{rng.randrange(1, 9)}-1{rng.randrange(0, 9)}",
        "language": "en",
        "status": "active",
        "score": score,
        "spendable": str(score - rng.randrange(0, score + 1)),  # Antavo sends some as strings
        "optin_at": 1_700_000_000 + number * 37,
        "newsletter_consent": rng.choice(["yes", "no", True, False]),
        "interests": rng.sample(_INTERESTS, rng.randrange(0, 4)),
        "tiers": [
            {
                "name": _TIERS[tier],
                "since": "2025-03-01T10:00:00Z",
                "next": {"name": _TIERS[min(tier + 1, 3)], "points": str(1000 * (tier + 1))},
            }
        ],
        "accounts": [{"id": "main", "name": "Main", "earned": score, "spendable": score // 2}],
    }


def sample_members(count: int, seed: int = 0) -> Iterator[dict[str, Any]]:
    """``count`` members, generated lazily."""
    rng = random.Random(seed)
    for number in range(count):
        yield sample_member(number, rng)


def sample_events(count: int, seed: int = 0) -> Iterator[dict[str, Any]]:
    """``count`` events: opt_in, point_add and checkout (with line items), and some unmapped."""
    rng = random.Random(seed)
    for number in range(count):
        customer = f"member-{rng.randrange(max(count // 3, 1)):07d}"
        timestamp = 1_760_000_000 + number * 60
        kind = number % 4
        if kind == 0:
            yield {
                "customer": customer,
                "action": "opt_in",
                "timestamp": timestamp,
                "data": {
                    "email": f"{customer}@example.com",
                    "source": "web",
                    "terms_and_conditions": "Yes",
                },
            }
        elif kind == 1:
            yield {
                "customer": customer,
                "action": "point_add",
                "data": {"points": str(rng.randrange(10, 500)), "effective_timestamp": timestamp},
            }
        elif kind == 2:
            items = [
                {
                    "product_id": f"sku-{rng.randrange(100)}",
                    "product_name": "Sneaker",
                    "price": 64.95,
                    "quantity": rng.randrange(1, 3),
                    "subtotal": 129.9,
                }
            ]
            yield {
                "customer": customer,
                "action": "checkout",
                "timestamp": timestamp,
                "data": {
                    "transaction_id": f"tx-{number}",
                    "total": 129.9,
                    "currency": "EUR",
                    "items": items,
                },
            }
        else:
            yield {
                "customer": customer,
                "action": "daily_login",
                "timestamp": timestamp,
                "data": {},
            }
