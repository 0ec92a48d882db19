"""Braze beyond /users/track: schema checks, merges and erasures, audits, eCommerce events.

Everything runs against FakeBraze over real HTTP.
"""

from __future__ import annotations

import json
import random
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import antavo_braze as ab
from antavo_braze._build.schema import braze_type_of
from antavo_braze._identity import GUARD_MIN_RECORDS, delete_guard
from antavo_braze._run.audit import compare, same_value
from antavo_braze._users import throttle
from antavo_braze.testing import FakeBraze

MEMBER_MAPPING = {
    "fields": [
        {"loyalty_field": "score", "remote_field": "loyalty_points", "type": "number"},
        {"loyalty_field": "tier", "remote_field": "loyalty_tier", "type": "string"},
        {"loyalty_field": "optin_at", "remote_field": "loyalty_since", "type": "date"},
        {"loyalty_field": "newsletter", "remote_field": "newsletter", "type": "boolean"},
        {"loyalty_field": "first_name", "remote_field": "first_name"},
    ]
}
IDENTITY_MAPPING = {
    "events": [
        {"action": "customer_merge", "as": "merge", "into": "data.target"},
        {"action": "erase", "as": "delete"},
        {"action": "opt_in", "name": "loyalty_enrolled"},
    ]
}


def members(count: int, start: int = 0) -> list[dict[str, Any]]:
    """``count`` Antavo customers with every mapped field."""
    return [
        {
            "id": f"m{n}",
            "score": str(100 + n),  # Antavo sends points as text
            "tier": "gold" if n % 2 else "silver",
            "optin_at": 1_700_000_000 + n,  # unix seconds
            "newsletter": "1" if n % 3 else "0",
            "first_name": f"Name{n}",
        }
        for n in range(start, start + count)
    ]


def paths(fake: FakeBraze, path: str) -> list[Any]:
    """Bodies of the requests the fake received on ``path``."""
    return [r.body for r in fake.requests if r.path == path]


# --- data types and the schema check ---------------------------------------------------------

SPELLINGS = {
    ab.BrazeType.NUMBER: ["Number", "number", "NUMBER", "Integer", "Float"],
    ab.BrazeType.STRING: ["String", "string", "Text"],
    ab.BrazeType.BOOLEAN: ["Boolean", "boolean", "Bool"],
    ab.BrazeType.DATE: ["Time", "time", "Date", "DateTime", "Date Time", "date_time"],
    ab.BrazeType.ARRAY: ["Array", "array", "Array of Strings"],
    ab.BrazeType.OBJECT: ["Object", "object", "Nested Object", "JSON Object"],
    ab.BrazeType.ARRAY_OF_OBJECTS: [
        "Array of Objects",
        "array of objects",
        "array_of_objects",
        "Array-of-Objects",
        "Object Array",
    ],
}


@pytest.mark.parametrize("braze_type", list(SPELLINGS))
def test_every_documented_data_type_spelling_is_understood(braze_type: ab.BrazeType) -> None:
    """Each spelling of each of Braze's seven type names maps to its BrazeType."""
    for spelling in SPELLINGS[braze_type]:
        assert braze_type_of(spelling) is braze_type, spelling
    assert braze_type_of("Geolocation") is None
    assert braze_type_of(None) is None


@given(
    st.sampled_from([s for spellings in SPELLINGS.values() for s in spellings]),
    st.sampled_from([str.upper, str.lower, str.title, lambda s: s.replace(" ", "_")]),
)
def test_data_type_spelling_ignores_case_and_separators(spelling: str, change: Any) -> None:
    """Case and the separator between words never change what a data_type means."""
    assert braze_type_of(change(spelling)) is braze_type_of(spelling)


def test_custom_attributes_reads_every_page(fake: FakeBraze, client: ab.BrazeClient) -> None:
    """120 attributes come back in 3 pages of 50, one request per page, with their types."""
    for n in range(120):
        fake.set_attribute(f"attr_{n:03d}", ["Number", "Time", "Array of Objects"][n % 3])
    fake.set_attribute("old_flag", "Boolean", status="Blocklisted")
    attributes = client.custom_attributes()
    assert len(attributes) == 121
    by_name = {a.name: a for a in attributes}
    assert by_name["attr_001"].type is ab.BrazeType.DATE
    assert by_name["attr_002"].type is ab.BrazeType.ARRAY_OF_OBJECTS
    assert by_name["old_flag"].blocklisted
    assert len([r for r in fake.requests if r.path == "/custom_attributes"]) == 3


def test_fake_keeps_the_first_type_and_answers_success_for_another(
    fake: FakeBraze, client: ab.BrazeClient
) -> None:
    """A later value of another type is ignored with a success answer, as Braze does."""
    first = client.track(
        attributes=[{"external_id": "a", "points": 5, "since": "2026-01-02T03:04:05Z"}]
    )
    later = client.track(attributes=[{"external_id": "a", "points": "5", "since": 1700000000}])
    assert first.ok
    assert later.ok
    assert fake.profiles["a"] == {"points": 5, "since": "2026-01-02T03:04:05Z"}
    assert fake.attribute_types == {"points": "Number", "since": "Time"}


def test_check_schema_against_what_braze_holds(fake: FakeBraze, client: ab.BrazeClient) -> None:
    """Mismatched, undeclared non-string and blocklisted attributes are problems; the rest pass."""
    client.track(
        attributes=[
            {
                "external_id": "seed",
                "points": 5,
                "since": "2026-01-02T03:04:05Z",
                "flag": True,
                "tier": "gold",
                "tags": ["a"],
            }
        ]
    )
    fake.set_attribute("legacy", "String", status="Blocklisted")
    mapping = ab.Mapping.from_dict(
        {
            "fields": [
                {"loyalty_field": "score", "remote_field": "points", "type": "string"},
                {"loyalty_field": "optin", "remote_field": "since", "type": "number"},
                {"loyalty_field": "nl", "remote_field": "flag"},
                {"loyalty_field": "tier", "remote_field": "tier"},
                {"loyalty_field": "tags", "remote_field": "tags", "type": "array"},
                {"loyalty_field": "new", "remote_field": "brand_new", "type": "number"},
                {"loyalty_field": "mail", "remote_field": "email"},
                {"loyalty_field": "x", "remote_field": "legacy", "type": "string"},
            ],
            "triggers": [
                {
                    "when": {"action": "checkout"},
                    "attributes": [
                        {
                            "loyalty_field": "data.total",
                            "remote_field": "last_total",
                            "type": "number",
                        }
                    ],
                }
            ],
        }
    )
    client.track(attributes=[{"external_id": "seed", "last_total": "high"}])
    problems = {p.remote_field: p for p in mapping.check_schema(client.custom_attributes())}
    assert set(problems) == {"points", "since", "flag", "legacy", "last_total"}
    assert (problems["points"].expected, problems["points"].found) == ("string", "Number")
    assert (problems["since"].expected, problems["since"].found) == ("number", "Time")
    assert problems["flag"].expected == "inferred"
    assert '"type": "boolean"' in problems["flag"].reason
    assert "blocklisted" in problems["legacy"].reason
    assert all(isinstance(p, ab.SchemaProblem) for p in problems.values())


def test_unknown_data_type_is_reported_not_passed(fake: FakeBraze, client: ab.BrazeClient) -> None:
    """A data_type the SDK cannot read fails the check instead of passing silently."""
    fake.set_attribute("where", "Geolocation")
    mapping = ab.Mapping.from_dict({"fields": [{"loyalty_field": "w", "remote_field": "where"}]})
    (problem,) = mapping.check_schema(client.custom_attributes())
    assert problem.found == "Geolocation"
    assert "does not know" in problem.reason


# --- merges and erasures ---------------------------------------------------------------------


def test_client_identity_endpoints_send_50_ids_per_request(
    fake: FakeBraze, client: ab.BrazeClient
) -> None:
    """export, merge and delete split 120 ids into requests of at most 50."""
    client.track(attributes=[{"external_id": f"u{n}", "points": n} for n in range(120)])
    exported = client.export_users([f"u{n}" for n in range(120)] + ["nobody"], ["points"])
    assert sorted(u["points"] for u in exported) == list(range(120))
    assert sorted(len(b["external_ids"]) for b in paths(fake, "/users/export/ids")) == [21, 50, 50]
    assert client.merge_users([(f"u{n}", f"u{n + 60}") for n in range(55)]) == 55
    assert [len(b["merge_updates"]) for b in paths(fake, "/users/merge")] == [50, 5]
    assert client.delete_users([f"u{n}" for n in range(60, 120)]) == 60
    assert [len(b["external_ids"]) for b in paths(fake, "/users/delete")] == [50, 10]
    assert sorted(fake.profiles, key=lambda i: int(i[1:])) == [f"u{n}" for n in range(55, 60)]


def test_merge_event_merges_into_the_target(fake: FakeBraze, client: ab.BrazeClient) -> None:
    """An "as": "merge" event merges its customer into "into"; the kept profile's values win."""
    client.track(
        attributes=[
            {"external_id": "old", "points": 1, "only_old": "x"},
            {"external_id": "new", "points": 2},
        ]
    )
    syncer = ab.Syncer(client, IDENTITY_MAPPING)
    report = syncer.sync_events(
        [{"customer": "old", "action": "customer_merge", "data": {"target": "new"}}]
    )
    assert (report.succeeded, report.merged) == (1, 1)
    assert paths(fake, "/users/merge") == [
        {
            "merge_updates": [
                {
                    "identifier_to_merge": {"external_id": "old"},
                    "identifier_to_keep": {"external_id": "new"},
                }
            ]
        }
    ]
    assert fake.profiles == {"new": {"points": 2, "only_old": "x"}}


def test_merge_without_a_target_fails_alone(client: ab.BrazeClient) -> None:
    """A merge event that does not name its target fails validation; its neighbours go."""
    report = ab.Syncer(client, IDENTITY_MAPPING).sync_events(
        [
            {"customer": "a", "action": "customer_merge", "data": {}},
            {"customer": "a", "action": "opt_in"},
        ]
    )
    assert (report.succeeded, report.failed) == (1, 1)
    assert report.failures[0].field == "data.target"


def test_delete_needs_allow_deletes(fake: FakeBraze, client: ab.BrazeClient) -> None:
    """Without allow_deletes an erasure fails, saying how to allow it, and nothing is deleted."""
    client.track(attributes=[{"external_id": "a", "points": 1}])
    report = ab.Syncer(client, IDENTITY_MAPPING).sync_events([{"customer": "a", "action": "erase"}])
    assert report.failed == 1
    assert "allow_deletes=True" in report.failures[0].reason
    assert "a" in fake.profiles
    assert paths(fake, "/users/delete") == []


def test_mass_delete_guard_stops_a_run_of_200_erasures(
    fake: FakeBraze, client: ab.BrazeClient
) -> None:
    """200 erasures out of 200 records is over max_delete_ratio: nothing is deleted."""
    client.track(attributes=[{"external_id": f"e{n}", "points": n} for n in range(200)])
    syncer = ab.Syncer(client, IDENTITY_MAPPING, allow_deletes=True)
    report = syncer.sync_events([{"customer": f"e{n}", "action": "erase"} for n in range(200)])
    assert (report.total, report.failed, report.deleted) == (200, 200, 0)
    assert all("mass-delete guard" in f.reason for f in report.failures)
    assert paths(fake, "/users/delete") == []
    assert len(fake.profiles) == 200


def test_deletes_under_the_ratio_go_ahead(fake: FakeBraze, client: ab.BrazeClient) -> None:
    """5 erasures among 200 records (2.5%) are under the default 5% and are deleted."""
    client.track(attributes=[{"external_id": f"e{n}", "points": n} for n in range(5)])
    events = [{"customer": f"o{n}", "action": "opt_in"} for n in range(195)]
    events += [{"customer": f"e{n}", "action": "erase"} for n in range(5)]
    report = ab.Syncer(client, IDENTITY_MAPPING, allow_deletes=True).sync_events(events)
    assert (report.succeeded, report.deleted, report.failed) == (200, 5, 0)
    assert not any(k.startswith("e") for k in fake.profiles)


@given(st.integers(0, 500), st.integers(0, 1000), st.booleans(), st.floats(0, 1, allow_nan=False))
def test_delete_guard_rule(deletes: int, records: int, allow: bool, ratio: float) -> None:
    """Deleting is refused without permission, and over the ratio of 100+ records only."""
    refusal = delete_guard(deletes, records, allow_deletes=allow, max_delete_ratio=ratio)
    if deletes == 0:
        assert refusal is None
    elif not allow:
        assert refusal is not None
        assert "allow_deletes" in refusal
    else:
        over = records >= GUARD_MIN_RECORDS and deletes > ratio * records
        assert (refusal is not None) == over


def test_delete_is_verified_after_braze_applies_it() -> None:
    """Braze applies the delete 0.6 s later: the SDK polls export until it is gone."""
    with FakeBraze(identity_delay=0.6) as fake, fake.client() as client:
        client.track(attributes=[{"external_id": "gone", "points": 1}])
        syncer = ab.Syncer(client, IDENTITY_MAPPING, allow_deletes=True, verify_deletes_within=30)
        report = syncer.sync_events([{"customer": "gone", "action": "erase"}])
        assert (report.succeeded, report.deleted) == (1, 1)
        assert "deleted (verified) 1" in str(report)
        assert len(paths(fake, "/users/export/ids")) >= 2  # held at first, gone later
        assert "gone" not in fake.profiles


def test_delete_not_verified_in_time_fails() -> None:
    """A delete Braze has not applied within verify_deletes_within fails, not succeeds."""
    with FakeBraze(identity_delay=30) as fake, fake.client() as client:
        client.track(attributes=[{"external_id": "slow", "points": 1}])
        syncer = ab.Syncer(client, IDENTITY_MAPPING, allow_deletes=True, verify_deletes_within=0.5)
        report = syncer.sync_events([{"customer": "slow", "action": "erase"}])
        assert (report.failed, report.deleted) == (1, 0)
        assert "still holds the profile" in report.failures[0].reason


def test_delete_without_permission_fails_the_records(fake: FakeBraze) -> None:
    """A key without users.delete fails the erasures with the missing permission named."""
    fake.add_key("no-delete", ["users.track", "users.export.ids"])
    with fake.client(api_key="no-delete") as client:
        report = ab.Syncer(client, IDENTITY_MAPPING, allow_deletes=True).sync_events(
            [{"customer": "a", "action": "erase"}]
        )
    assert report.failed == 1
    assert "users.delete" in report.failures[0].reason


# --- audit -------------------------------------------------------------------------------------


def test_audit_counts_exactly_the_drift_planted_behind_the_sdks_back(
    fake: FakeBraze, client: ab.BrazeClient
) -> None:
    """Drift written straight into the fake's profiles is counted exactly, field by field."""
    rows = members(300)
    syncer = ab.Syncer(client, MEMBER_MAPPING)
    assert syncer.sync_members(rows).ok
    chooser = random.Random(7)
    ids = [r["id"] for r in rows]
    changed = chooser.sample(ids, 17)
    removed = chooser.sample([i for i in ids if i not in changed], 9)
    gone = chooser.sample([i for i in ids if i not in changed + removed], 4)
    renamed = chooser.sample([i for i in ids if i not in changed + removed + gone], 3)
    with fake._lock:
        for external_id in changed:
            fake.profiles[external_id]["loyalty_points"] = -1
        for external_id in removed:
            del fake.profiles[external_id]["loyalty_tier"]
        for external_id in gone:
            del fake.profiles[external_id]
        for external_id in renamed:
            fake.profiles[external_id]["first_name"] = "Someone Else"
    report = syncer.audit(rows)
    assert (report.members, report.not_in_braze) == (300, 4)
    assert report.drifted == 17 + 9 + 4 + 3
    points, tier = report.fields["loyalty_points"], report.fields["loyalty_tier"]
    assert (points.equal, points.different, points.missing) == (300 - 17 - 4, 17, 4)
    assert (tier.equal, tier.different, tier.missing) == (300 - 9 - 4, 0, 9 + 4)
    names = report.fields["first_name"]
    assert (names.different, names.missing) == (3, 4)
    since = report.fields["loyalty_since"]
    assert (since.equal, since.different, since.missing) == (296, 0, 4)
    assert {e.external_id for e in points.examples if e.kind == "different"} <= set(changed)
    assert all(e.found == -1 for e in points.examples if e.kind == "different")
    assert report.requests == 6  # 300 ids, 50 per export request
    assert not report.ok


def test_audit_fix_sends_only_the_drifted_fields(fake: FakeBraze, client: ab.BrazeClient) -> None:
    """fix=True re-sends just the fields that drifted; a second audit finds nothing."""
    rows = members(60)
    syncer = ab.Syncer(client, MEMBER_MAPPING)
    syncer.sync_members(rows)
    with fake._lock:
        fake.profiles["m1"]["loyalty_points"] = 5
        del fake.profiles["m2"]["newsletter"]
        del fake.profiles["m3"]
    before = len(fake.requests)
    report = syncer.audit(rows, fix=True)
    assert report.fixed is not None
    assert report.fixed.succeeded == 3
    assert report.ok
    sent = [r.body for r in fake.requests[before:] if r.path == "/users/track"]
    objects = {o["external_id"]: set(o) - {"external_id"} for b in sent for o in b["attributes"]}
    assert objects["m1"] == {"loyalty_points"}
    assert objects["m2"] == {"newsletter"}
    assert objects["m3"] == {
        "loyalty_points",
        "loyalty_tier",
        "loyalty_since",
        "newsletter",
        "first_name",
    }
    again = syncer.audit(rows)
    assert (again.drifted, again.not_in_braze) == (0, 0)


def test_audit_exports_only_the_mapped_fields(fake: FakeBraze, client: ab.BrazeClient) -> None:
    """The export asks for the mapped standard fields and custom attributes only."""
    ab.Syncer(client, MEMBER_MAPPING).audit(members(3))
    (body,) = paths(fake, "/users/export/ids")
    assert body["fields_to_export"] == ["external_id", "first_name", "custom_attributes"]


def test_audit_reports_records_the_mapping_refuses(client: ab.BrazeClient) -> None:
    """A record whose value cannot be coerced is counted as invalid, not compared."""
    rows = members(3)
    rows[1]["score"] = "lots"
    report = ab.Syncer(client, MEMBER_MAPPING).audit(rows)
    assert (report.members, report.invalid) == (2, 1)
    assert "score" in report.invalid_examples[0]


@given(
    st.one_of(
        st.integers(-(10**6), 10**6),
        st.floats(allow_nan=False, allow_infinity=False),
        st.booleans(),
        st.text(max_size=20),
        st.lists(st.integers(0, 9), max_size=5),
    )
)
def test_a_value_is_the_same_as_itself(value: Any) -> None:
    """same_value is reflexive, and a JSON round trip never makes a value drift."""
    assert same_value(value, value)
    assert same_value(value, json.loads(json.dumps(value)))


def test_comparison_rules() -> None:
    """Dates compare by moment, booleans never equal numbers, a cleared field wants nothing."""
    assert same_value("2026-01-02T03:04:05Z", "2026-01-02T03:04:05.000Z")
    assert not same_value("2026-01-02T03:04:05Z", "2026-01-02T03:04:06Z")
    assert not same_value(True, 1)
    assert same_value(5, 5.0)
    assert compare({"a": None, "b": 1, "c": 2}, {"c": 3}) == {
        "a": "equal",
        "b": "missing",
        "c": "different",
    }
    assert compare({"a": 1}, None) == {"a": "missing"}


# --- eCommerce events --------------------------------------------------------------------------

CHECKOUT = {
    "customer": "buyer",
    "action": "checkout",
    "timestamp": "2026-04-28T14:35:42Z",
    "data": {
        "transaction_id": "ord_77821",
        "total": 129.9,
        "currency": "EUR",
        "shipping": 4.9,
        "discount": 10,
        "points_burned": 0,
        "items": [
            {
                "product_id": "SKU-RUN-4821",
                "product_name": "Running Shoe",
                "sku": "UB-BLK-11",
                "product_url": "https://shop.example/shoe",
                "product_category": "shoes",
                "price": 100,
                "quantity": 1,
            },
            {"product_id": "SOC-1102", "price": "14.95", "quantity": 2},
        ],
    },
}


def test_order_placed_has_the_properties_braze_documents(
    fake: FakeBraze, client: ab.BrazeClient
) -> None:
    """A checkout becomes ecommerce.order_placed with Braze's required order and product keys."""
    mapping = {"events": [{"action": "checkout", "as": "order_placed"}]}
    report = ab.Syncer(client, mapping).sync_events([CHECKOUT])
    assert report.ok
    (event,) = fake.events
    assert event["name"] == "ecommerce.order_placed"
    properties = event["properties"]
    for key in ("order_id", "total_value", "currency", "products", "source"):
        assert key in properties
    assert properties["order_id"] == "ord_77821"
    assert properties["total_value"] == 129.9
    assert properties["currency"] == "EUR"
    assert (properties["shipping"], properties["total_discounts"]) == (4.9, 10.0)
    shoe, socks = properties["products"]
    for product in (shoe, socks):
        assert {"product_id", "product_name", "variant_id", "quantity", "price"} <= set(product)
    assert shoe["variant_id"] == "UB-BLK-11"
    assert shoe["metadata"] == {"product_category": "shoes"}
    assert socks == {
        "product_id": "SOC-1102",
        "product_name": "SOC-1102",
        "variant_id": "SOC-1102",
        "quantity": 2,
        "price": 14.95,
    }
    assert fake.purchases == []


def test_purchase_and_order_placed_shadow_run(fake: FakeBraze, client: ab.BrazeClient) -> None:
    """["purchase", "order_placed"] sends the purchases and the order event together."""
    mapping = {"events": [{"action": "checkout", "as": ["purchase", "order_placed"]}]}
    report = ab.Syncer(client, mapping).sync_events([CHECKOUT])
    assert report.ok
    assert report.succeeded == 1
    assert sorted(p["product_id"] for p in fake.purchases) == ["SKU-RUN-4821", "SOC-1102"]
    assert [e["name"] for e in fake.events] == ["ecommerce.order_placed"]


def test_order_without_transaction_id_fails_naming_the_field(client: ab.BrazeClient) -> None:
    """Braze requires order_id: a checkout without transaction_id fails validation alone."""
    mapping = {"events": [{"action": "checkout", "as": "order_placed"}]}
    broken = json.loads(json.dumps(CHECKOUT))
    del broken["data"]["transaction_id"]
    report = ab.Syncer(client, mapping).sync_events([broken, CHECKOUT])
    assert (report.succeeded, report.failed) == (1, 1)
    assert report.failures[0].field == "data.transaction_id"


def test_as_values_round_trip_and_are_checked() -> None:
    """The new "as" values survive to_dict, and wrong combinations are listed with paths."""
    config = {
        "events": [
            {"action": "checkout", "as": ["purchase", "order_placed"], "currency": "EUR"},
            {"action": "customer_merge", "as": "merge", "into": "data.target"},
            {"action": "erase", "as": "delete"},
        ]
    }
    assert ab.Mapping.from_dict(config).to_dict() == config
    with pytest.raises(ab.MappingError) as error:
        ab.Mapping.from_dict(
            {
                "events": [
                    {"action": "a", "as": "merge"},
                    {"action": "b", "as": ["purchase", "event"]},
                    {"action": "c", "as": "delete", "name": "x"},
                ]
            }
        )
    text = str(error.value)
    assert "$.events[0].into" in text
    assert "$.events[1].as" in text
    assert "$.events[2].name" in text


# --- permissions and pacing --------------------------------------------------------------------


def test_export_is_paced_under_its_own_limit() -> None:
    """90 export requests against a fake allowing 40 per second never draw a 429."""
    with (
        FakeBraze(export_rate_limit=40, record=False) as fake,
        fake.client(max_in_flight=8) as client,
    ):
        client.export_users([f"u{n}" for n in range(90 * 50)], ["points"])
        assert fake.status_counts[429] == 0
        assert sum(fake.status_counts.values()) == 90


def test_merge_and_delete_are_paced_under_their_shared_limit() -> None:
    """Merges and deletes sent at once from two threads share one budget: with Braze's
    20,000 a minute scaled down to 10 a second (client and fake alike, the fake allowing
    a little more for loopback jitter), 30 requests never draw a 429, and both endpoints
    count against the same budget, not /users/export/ids' or /users/track's."""
    with (
        FakeBraze(identity_rate_limit=12, identity_rate_window=1.0, record=False) as fake,
        fake.client(max_in_flight=8) as client,
    ):
        identity = throttle(client, "identity")
        identity.requests, identity.per = 10, 1.0
        pairs = [(f"old{n}", f"new{n}") for n in range(15 * 50)]
        gone = [f"gone{n}" for n in range(15 * 50)]
        with ThreadPoolExecutor(2) as pool:
            merged = pool.submit(client.merge_users, pairs)
            deleted = pool.submit(client.delete_users, gone)
            assert (merged.result(timeout=60), deleted.result(timeout=60)) == (750, 750)
        assert fake.status_counts[429] == 0
        assert sum(fake.status_counts.values()) == 30


def test_the_fake_enforces_the_shared_merge_and_delete_limit() -> None:
    """FakeBraze answers merges and deletes past their shared budget with 429 and
    Retry-After (which the client waits out): the pacing test above can fail."""
    with (
        FakeBraze(identity_rate_limit=2, identity_rate_window=1.0, record=False) as fake,
        fake.client() as client,
    ):
        assert client.merge_users([(f"a{n}", f"b{n}") for n in range(4 * 50)]) == 200
        assert client.delete_users([f"c{n}" for n in range(4 * 50)]) == 200
        assert fake.status_counts[429] >= 1  # 8 requests at once: two windows hold only 4
        assert fake.status_counts[200] + fake.status_counts[202] == 8


def test_dry_run_settles_merges_and_deletes(client: ab.BrazeClient) -> None:
    """A dry run accounts for identity events: allowed ones would succeed, guarded ones fail."""
    events = [
        {"customer": "a", "action": "erase"},
        {"customer": "b", "action": "customer_merge", "data": {"target": "c"}},
    ]
    refused = ab.Syncer(None, IDENTITY_MAPPING).dry_run("events", events)
    assert (refused.succeeded, refused.failed) == (1, 1)
    allowed = ab.Syncer(None, IDENTITY_MAPPING, allow_deletes=True).dry_run("events", events)
    assert (allowed.succeeded, allowed.failed, allowed.requests) == (2, 0, 0)


TYPE_NAMES = {
    ab.BrazeType.NUMBER: "Number",
    ab.BrazeType.STRING: "String",
    ab.BrazeType.BOOLEAN: "Boolean",
    ab.BrazeType.DATE: "Time",
    ab.BrazeType.ARRAY: "Array",
    ab.BrazeType.OBJECT: "Object",
    ab.BrazeType.ARRAY_OF_OBJECTS: "Array of Objects",
}


@given(
    st.lists(
        st.tuples(st.sampled_from(list(ab.BrazeType)), st.sampled_from(list(ab.BrazeType))),
        min_size=1,
        max_size=7,
    )
)
def test_check_schema_flags_exactly_the_mismatched_types(
    pairs: list[tuple[ab.BrazeType, ab.BrazeType]],
) -> None:
    """A declared type is a problem exactly when Braze holds the attribute as another type."""
    fields = [
        ab.FieldMapping(f"f{n}", f"attr_{n}", declared) for n, (declared, _) in enumerate(pairs)
    ]
    attributes = [
        ab.CustomAttribute(f"attr_{n}", TYPE_NAMES[held]) for n, (_, held) in enumerate(pairs)
    ]
    mapping = ab.Mapping(fields=tuple(fields))
    flagged = {p.remote_field for p in mapping.check_schema(attributes)}
    assert flagged == {f"attr_{n}" for n, (declared, held) in enumerate(pairs) if declared != held}


def test_merge_refused_by_braze_fails_the_merge_records(fake: FakeBraze) -> None:
    """A key without users.merge fails the merges, naming the permission; retryable, as a 403 on
    /users/track is (a key given the permission lets a replay send them)."""
    fake.add_key("no-merge", ["users.track"])
    with fake.client(api_key="no-merge") as client:
        report = ab.Syncer(client, IDENTITY_MAPPING).sync_events(
            [
                {"customer": "a", "action": "customer_merge", "data": {"target": "b"}},
                {"customer": "a", "action": "opt_in"},
            ]
        )
    assert (report.succeeded, report.failed, report.merged) == (1, 1, 0)
    failure = report.failures[0]
    assert failure.stage == "braze"
    assert failure.retryable
    assert "users.merge" in failure.reason


def test_merge_during_an_outage_fails_retryable(fake: FakeBraze, client: ab.BrazeClient) -> None:
    """A merge Braze answers 503 to after every retry fails as retryable."""
    fake.inject(times=10, status=503, path="/users/merge")
    report = ab.Syncer(client, IDENTITY_MAPPING).sync_events(
        [{"customer": "a", "action": "customer_merge", "data": {"target": "b"}}]
    )
    assert report.failed == 1
    assert report.failures[0].retryable


def test_delete_that_cannot_be_verified_fails(fake: FakeBraze) -> None:
    """Without users.export.ids the delete is queued but not verified: it fails, saying so."""
    fake.add_key("no-export", ["users.track", "users.delete"])
    with fake.client(api_key="no-export") as client:
        client.track(attributes=[{"external_id": "a", "points": 1}])
        report = ab.Syncer(client, IDENTITY_MAPPING, allow_deletes=True).sync_events(
            [{"customer": "a", "action": "erase"}]
        )
    assert (report.failed, report.deleted) == (1, 0)
    assert "deleted (queued) but not verified" in report.failures[0].reason
    assert "users.export.ids" in report.failures[0].reason
    assert "a" not in fake.profiles  # it was deleted; only the proof is missing


def test_audit_report_as_plain_data(fake: FakeBraze, client: ab.BrazeClient) -> None:
    """to_dict carries the counts, examples and the fix's outcome; str names what drifted."""
    rows = members(4)
    rows[0]["score"] = "bad"
    syncer = ab.Syncer(client, MEMBER_MAPPING)
    syncer.sync_members(rows[1:])
    with fake._lock:
        fake.profiles["m1"]["loyalty_points"] = 0
    report = syncer.audit(rows, fix=True)
    data = json.loads(json.dumps(report.to_dict()))
    assert (data["members"], data["drifted"], data["invalid"]) == (3, 1, 1)
    assert data["fixed"] == {"total": 1, "succeeded": 1, "failed": 0, "requests": 1}
    assert data["fields"]["loyalty_points"]["examples"][0]["found"] == 0
    text = str(report)
    assert "m1: Antavo 101, Braze 0" in text
    assert "1 record(s) the mapping refused" in text
    assert "fix: 1 record: 1 succeeded" in text
    assert not report.ok  # a refused record is never "all in Braze"


def test_background_sender_carries_erasures_and_merges(
    fake: FakeBraze, client: ab.BrazeClient
) -> None:
    """Per-change callers get a merge's and a delete's own outcome from their Submission."""
    client.track(attributes=[{"external_id": f"s{n}", "points": n} for n in range(3)])
    syncer = ab.Syncer(client, IDENTITY_MAPPING, allow_deletes=True)
    with ab.BackgroundSender(syncer, flush_interval=0.05) as sender:
        erased = sender.submit_event({"customer": "s0", "action": "erase"})
        merged = sender.submit_event(
            {"customer": "s1", "action": "customer_merge", "data": {"target": "s2"}}
        )
        assert erased.result(timeout=30).status == "succeeded"
        assert merged.result(timeout=30).status == "succeeded"
    assert sorted(fake.profiles) == ["s2"]


def test_other_endpoints_rate_limit_headers_never_hold_back_track(fake: FakeBraze) -> None:
    """An export's exhausted window is that endpoint's: /users/track's pacer ignores it, and
    still learns from /users/track's own headers."""
    import time as _time

    exhausted = {
        "X-RateLimit-Limit": "40",
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset": str(int(_time.time()) + 3600),
    }
    pacer = ab.InProcessPacer()
    with fake.client(pacer=pacer) as client:
        fake.inject(
            path="/users/export/ids",
            status=201,
            headers=exhausted,
            body={"users": [], "message": "success"},
        )
        assert client.export_users(["m-1"], ["loyalty_points"]) == []
        assert pacer.try_acquire() == 0  # track is not held by the export's window
        pacer.observe(None, {})  # give the slot back
        fake.inject(path="/users/track", status=201, headers=exhausted)
        client.track(attributes=[{"external_id": "m-1", "loyalty_points": 1}])
        assert pacer.try_acquire() > 0  # track's own window is honoured


@pytest.mark.parametrize(("status", "retryable"), [(408, True), (400, False)])
def test_a_merge_failure_is_as_retryable_as_the_retry_policy_says(
    fake: FakeBraze, status: int, retryable: bool
) -> None:
    """A merge answered 408 every time fails retryable (as /users/track's would), a 400 not:
    one answer to "retryable?", the retry policy's."""
    fake.inject(times=20, status=status, path="/users/merge")
    policy = ab.RetryPolicy(attempts=2, wait_initial=0.01, wait_max=0.02, wait_jitter=0)
    with fake.client(retry=policy) as client:
        report = ab.Syncer(client, IDENTITY_MAPPING).sync_events(
            [{"customer": "a", "action": "customer_merge", "data": {"target": "b"}}]
        )
    assert report.failed == 1
    assert report.failures[0].retryable is retryable
