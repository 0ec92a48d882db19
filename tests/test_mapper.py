"""The mapper: Antavo members and events to Braze wire objects, offline."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest

import antavo_braze as ab
from antavo_braze._build.converter import unstructure_attributes, unstructure_event
from antavo_braze._build.mapper import MISSING, get_path

from .conftest import load

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=timezone.utc)


def make_mapper(mapping: ab.Mapping, **kwargs: Any) -> ab.Mapper:
    """A mapper with a fixed clock."""
    return ab.Mapper(mapping, clock=lambda: NOW, **kwargs)


def test_sample_member_maps_to_expected_attributes(full_mapping: ab.Mapping) -> None:
    """The sample Antavo member becomes the expected Braze attributes object."""
    obj = make_mapper(full_mapping).map_member(load("member.json"))
    assert unstructure_attributes(obj) == load("member_expected.json")


def test_member_model_and_dict_map_the_same(full_mapping: ab.Mapping) -> None:
    """LoyaltyMember(id, fields) and the Antavo dict give the same object."""
    record = load("member.json")
    model = ab.LoyaltyMember(id=record["id"], fields=record)
    mapper = make_mapper(full_mapping)
    assert mapper.map_member(model) == mapper.map_member(record)


def test_absent_fields_are_omitted_and_none_is_null(mapping: ab.Mapping) -> None:
    """Absent mapped fields are left out; a present None is sent as null."""
    mapper = make_mapper(mapping)
    assert mapper.map_member({"id": "m-1"}).attributes == {}
    assert mapper.map_member({"id": "m-1", "score": None}).attributes == {"loyalty_points": None}
    assert mapper.map_member({"id": "m-1", "tiers": []}).attributes == {}
    assert mapper.map_member({"id": "m-1", "tiers": None}).attributes == {}


def test_dotted_paths() -> None:
    """Dotted paths reach into dicts and lists; flat CSV keys with dots work too."""
    record = {"tiers": [{"name": "Gold", "next": {"points": "5"}}], "a.b": 1}
    assert get_path(record, "tiers.0.name") == "Gold"
    assert get_path(record, "tiers.0.next.points") == "5"
    assert get_path(record, "tiers.1.name") is MISSING
    assert get_path(record, "tiers.x") is MISSING
    assert get_path(record, "a.b") == 1
    assert get_path(record, "missing") is MISSING
    assert get_path({"tiers": "Gold"}, "tiers.0") is MISSING


def test_bad_value_names_record_and_field(mapping: ab.Mapping) -> None:
    """A coercion failure says which record, which field, which value and what was expected."""
    with pytest.raises(ab.CoercionError) as info:
        make_mapper(mapping).map_member({"id": "m-9", "score": "lots"})
    error = info.value
    assert (error.record_id, error.field, error.value, error.type) == (
        "m-9",
        "score",
        "lots",
        "number",
    )
    assert "record 'm-9': field 'score': cannot coerce 'lots' to number" in str(error)


def test_nested_failure_path() -> None:
    """Failures inside objects report the full path."""
    mapping = ab.Mapping.from_dict(
        {"fields": [{"loyalty_field": "tiers.0", "remote_field": "tier", "type": "object"}]}
    )
    with pytest.raises(ab.CoercionError) as info:
        make_mapper(mapping).map_member({"id": "m", "tiers": [{"next": {"a.b": 1}}]})
    assert info.value.field == "tiers.0.next"


@pytest.mark.parametrize(
    ("member", "message"),
    [
        ({"score": 1}, "no 'id'"),
        ({"id": ""}, "empty"),
        ({"id": True}, "string id"),
        ({"id": "x" * 988}, "987 bytes"),
        ("m-1", "expected a dict"),
    ],
)
def test_member_id_problems(mapping: ab.Mapping, member: Any, message: str) -> None:
    """Members without a usable id are rejected clearly."""
    with pytest.raises(ab.CoercionError, match=message):
        make_mapper(mapping).map_member(member)


def test_integer_ids_become_strings(mapping: ab.Mapping) -> None:
    """A numeric Antavo id is sent as a string external_id."""
    assert make_mapper(mapping).map_member({"id": 42}).external_id == "42"


def events_by_action(full_mapping: ab.Mapping) -> dict[str, ab.MappedEvent]:
    """Map every sample event with the full mapping."""
    mapper = make_mapper(full_mapping, app_id="app-1")
    return {e["action"]: mapper.map_event(e) for e in load("events.json")}


def test_sample_events(full_mapping: ab.Mapping) -> None:
    """The sample events map to custom events, purchases, trigger attributes or skips."""
    mapped = events_by_action(full_mapping)
    opt_in = mapped["opt_in"].objects
    assert [unstructure_event(o) for o in opt_in] == [
        {  # type: ignore[arg-type]
            "external_id": "m-1",
            "name": "loyalty_enrolled",
            "time": "2026-11-01T10:00:00Z",
            "app_id": "app-1",
            "properties": {
                "email": "ada@example.com",
                "first_name": "Ada",
                "last_name": "Lovelace",
                "source": "web",
                "terms_and_conditions": "Yes",
            },
        }
    ]
    checkout = mapped["checkout"].objects
    assert checkout[0] == ab.AttributesObject(
        "m-1", {"last_purchase_total": 129.9, "last_purchase_at": "2025-11-01T12:26:40Z"}
    )
    event = checkout[1]
    assert isinstance(event, ab.EventObject)
    assert event.name == "loyalty_purchase"
    assert event.properties is not None
    assert event.properties["items"][0]["product_id"] == "p-1"
    point_add = mapped["point_add"].objects[0]
    assert point_add == ab.EventObject(
        "m-1", "loyalty_points_earned", "2025-11-01T12:28:20Z", {"points": 325}, "app-1"
    )
    coupon = mapped["coupon_redeem"].objects
    assert coupon == (
        ab.PurchaseObject(
            "m-1",
            "coupon_redeem",
            "EUR",
            10.0,
            "2025-11-01T12:35:00Z",
            1,
            {"transaction_id": "tx-1002"},
            "app-1",
        ),
    )
    assert mapped["opt_out"].objects == (
        ab.AttributesObject("m-1", {"loyalty_status_change": "opt_out"}),
    )
    for action in (
        "point_spend",
        "checkout_accept",
        "refund_item",
        "profile",
        "reward",
        "tier_change",
    ):
        assert mapped[action].skipped, action
        assert mapped[action].objects == ()


def test_wildcard_sends_every_action() -> None:
    """'*' maps every action to an event named after it (or the given name)."""
    mapper = make_mapper(ab.Mapping.from_dict({"events": [{"action": "*"}]}))
    for event in load("events.json"):
        mapped = mapper.map_event(event)
        assert not mapped.skipped
        assert mapped.objects[0].name == event["action"]  # type: ignore[union-attr]
    named = make_mapper(ab.Mapping.from_dict({"events": [{"action": "*", "name": "antavo"}]}))
    assert named.map_event(load("events.json")[0]).objects[0].name == "antavo"  # type: ignore[union-attr]


def test_event_time_falls_back_to_now(mapping: ab.Mapping) -> None:
    """Without timestamp or effective_timestamp the event is stamped now."""
    mapped = make_mapper(mapping).map_event({"customer": "m", "action": "opt_in"})
    assert mapped.objects[0].time == "2026-11-28T12:00:00Z"  # type: ignore[union-attr]


def test_loyalty_event_model(mapping: ab.Mapping) -> None:
    """LoyaltyEvent maps like its envelope dict."""
    mapper = make_mapper(mapping)
    model = ab.LoyaltyEvent(
        customer_id="m",
        action="point_add",
        data={"points": "5"},
        time=datetime(2026, 1, 1, tzinfo=timezone.utc),
    )
    mapped = mapper.map_event(model)
    assert mapped.objects == (
        ab.EventObject("m", "loyalty_points_earned", "2026-01-01T00:00:00Z", {"points": 5}),
    )
    assert mapped == mapper.map_event(model.envelope())


def test_triggers_with_where_and_lists() -> None:
    """Triggers fire on listed actions when every where-equality holds, merging attributes."""
    mapping = ab.Mapping.from_dict(
        {
            "triggers": [
                {
                    "when": {
                        "action": ["checkout", "checkout_accept"],
                        "where": {"data.currency": "EUR"},
                    },
                    "attributes": [
                        {"loyalty_field": "data.total", "remote_field": "last_eur_total"}
                    ],
                },
                {
                    "when": {"action": "checkout"},
                    "attributes": [{"loyalty_field": "customer", "remote_field": "last_buyer"}],
                },
            ]
        }
    )
    mapper = make_mapper(mapping)
    eur = {"customer": "m", "action": "checkout", "data": {"currency": "EUR", "total": 5}}
    assert mapper.map_event(eur).objects == (
        ab.AttributesObject("m", {"last_eur_total": 5, "last_buyer": "m"}),
    )
    usd = {"customer": "m", "action": "checkout", "data": {"currency": "USD", "total": 5}}
    assert mapper.map_event(usd).objects == (ab.AttributesObject("m", {"last_buyer": "m"}),)
    assert mapper.map_event({"customer": "m", "action": "opt_in"}).skipped


def test_trigger_timestamp_defaults_to_event_time() -> None:
    """A trigger reading 'timestamp' gets the resolved event time when the envelope has none."""
    mapping = ab.Mapping.from_dict(
        {
            "triggers": [
                {
                    "when": {"action": "point_add"},
                    "attributes": [
                        {
                            "loyalty_field": "timestamp",
                            "remote_field": "last_points_at",
                            "type": "date",
                        }
                    ],
                }
            ]
        }
    )
    event = {"customer": "m", "action": "point_add", "data": {"effective_timestamp": 0}}
    assert make_mapper(mapping).map_event(event).objects == (
        ab.AttributesObject("m", {"last_points_at": "1970-01-01T00:00:00Z"}),
    )


def test_purchases_one_per_line_item_split_at_100() -> None:
    """'as': 'purchase' sends one purchase per line, quantities over 100 split."""
    mapping = ab.Mapping.from_dict({"events": [{"action": "checkout", "as": "purchase"}]})
    event = {
        "customer": "m",
        "action": "checkout",
        "timestamp": 0,
        "data": {
            "transaction_id": "tx",
            "currency": "eur",
            "items": [
                {"product_id": "p1", "price": "9.5", "quantity": 250, "sku": "S1"},
                {"product_id": 7, "price": 1},
            ],
        },
    }
    purchases = make_mapper(mapping).map_event(event).objects
    assert [(p.product_id, p.quantity, p.price, p.currency) for p in purchases] == [  # type: ignore[union-attr]
        ("p1", 100, 9.5, "EUR"),
        ("p1", 100, 9.5, "EUR"),
        ("p1", 50, 9.5, "EUR"),
        ("7", 1, 1.0, "EUR"),
    ]
    assert purchases[0].properties == {"transaction_id": "tx", "sku": "S1"}  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"items": [{"product_id": "p", "price": 1}]}, "data.currency"),
        ({"currency": "EUR", "items": [{"price": 1}]}, "data.items[0].product_id"),
        ({"currency": "EUR", "items": [{"product_id": "p"}]}, "data.items[0].price"),
        ({"currency": "EUR", "items": [{"product_id": "p", "price": "x"}]}, "data.items[0].price"),
        (
            {"currency": "EUR", "items": [{"product_id": "p", "price": 1, "quantity": 0}]},
            "data.items[0].quantity",
        ),
        (
            {"currency": "EUR", "items": [{"product_id": "p", "price": 1, "quantity": 1.5}]},
            "data.items[0].quantity",
        ),
        ({"currency": "EUR", "items": "p"}, "data.items"),
        ({"currency": "EUR", "items": [3]}, "data.items[0]"),
    ],
)
def test_purchase_problems(data: dict[str, Any], field: str) -> None:
    """Bad purchase data fails with the path of the bad value."""
    mapping = ab.Mapping.from_dict({"events": [{"action": "checkout", "as": "purchase"}]})
    with pytest.raises(ab.CoercionError) as info:
        make_mapper(mapping).map_event({"customer": "m", "action": "checkout", "data": data})
    assert info.value.field == field
    assert info.value.record_id == "m"


def test_mapped_purchase_properties() -> None:
    """Listed properties are read from the order data and shared by its purchases."""
    mapping = ab.Mapping.from_dict(
        {
            "events": [
                {
                    "action": "checkout",
                    "as": "purchase",
                    "currency": "USD",
                    "properties": [{"loyalty_field": "transaction_id", "remote_field": "order"}],
                }
            ]
        }
    )
    event = {
        "customer": "m",
        "action": "checkout",
        "timestamp": 0,
        "data": {"transaction_id": "t1", "items": [{"product_id": "p", "price": 2}]},
    }
    (purchase,) = make_mapper(mapping).map_event(event).objects
    assert purchase.properties == {"order": "t1"}  # type: ignore[union-attr]
    assert purchase.currency == "USD"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("event", "message"),
    [
        ({"action": "opt_in"}, "expected a string id"),
        ({"customer": "m"}, "no 'action'"),
        ({"customer": "m", "action": "opt_in", "data": [1]}, "must be an object"),
        ({"customer": "m", "action": "opt_in", "timestamp": "yesterday"}, "ISO 8601"),
        ({"customer": "m", "action": "opt_in", "data": {"time": 1}}, "reserved"),
        ("opt_in", "expected a dict"),
    ],
)
def test_event_problems(mapping: ab.Mapping, event: Any, message: str) -> None:
    """Malformed events fail with a clear reason."""
    with pytest.raises(ab.CoercionError, match=message):
        make_mapper(mapping).map_event(event)


def test_one_off_attributes(mapping: ab.Mapping) -> None:
    """attributes() coerces values outside the mapping, with optional declared types."""
    mapper = make_mapper(mapping)
    obj = mapper.attributes(
        "m",
        {"last_purchase": "2026-01-01", "gender": "male", "n": "5"},
        {"last_purchase": "date", "n": ab.BrazeType.NUMBER},
    )
    assert obj == ab.AttributesObject(
        "m", {"last_purchase": "2026-01-01T00:00:00Z", "gender": "M", "n": 5}
    )
    with pytest.raises(ab.CoercionError) as info:
        mapper.attributes("m", {"n": "x"}, {"n": "number"})
    assert (info.value.field, info.value.record_id) == ("n", "m")


def test_truncation_option(mapping: ab.Mapping) -> None:
    """truncate_strings cuts long strings to 255 instead of failing."""
    mapper = make_mapper(mapping, truncate_strings=True)
    obj = mapper.map_member({"id": "m", "tiers": [{"name": "x" * 300}]})
    assert obj.attributes["loyalty_tier"] == "x" * 255
