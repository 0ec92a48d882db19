"""Edges of the endpoints beyond /users/track: bad calls, bad answers, FakeBraze's checks."""

from __future__ import annotations

from typing import Any

import pytest

import antavo_braze as ab
from antavo_braze._build.ecommerce import order_placed_properties
from antavo_braze.testing import FakeBraze
from antavo_braze.testing._profiles import data_type_of


@pytest.mark.parametrize(
    ("value", "data_type"),
    [
        (None, None),
        (True, "Boolean"),
        (3, "Number"),
        (2.5, "Number"),
        ("gold", "String"),
        ("2026-01-02T03:04:05Z", "Time"),
        ("2026-01-02 03:04:05", "Time"),
        (["a"], "Array"),
        ([], "Array"),
        ([{"id": 1}], "Array of Objects"),
        ({"$time": "2026-01-02T03:04:05Z"}, "Time"),
        ({"add": ["x"]}, "Array"),
        ({"inc": 1}, "Number"),
        ({"$add": [{"id": 1}]}, "Array of Objects"),
        ({"name": "Gold"}, "Object"),
        (object(), None),
    ],
)
def test_fake_fixes_types_as_braze_detects_them(value: Any, data_type: str | None) -> None:
    """FakeBraze reads the Braze type of every kind of value (operators included)."""
    assert data_type_of(value) == data_type


def test_blocklisted_attribute_keeps_nothing(fake: FakeBraze, client: ab.BrazeClient) -> None:
    """A value for a blocklisted attribute is dropped with a success answer."""
    fake.set_attribute("legacy", "String", status="Blocklisted")
    assert client.track(attributes=[{"external_id": "a", "legacy": "x", "kept": 1}]).ok
    assert fake.profiles["a"] == {"kept": 1}
    assert fake.store.ignored == 1


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("/users/export/ids", b"{not json", "Invalid JSON"),
        ("/users/export/ids", b"[1]", "Invalid request body"),
        ("/users/export/ids", b'{"external_ids": "a", "fields_to_export": []}', "array of strings"),
        (
            "/users/export/ids",
            b'{"external_ids": ['
            + b",".join(b'"x"' for _ in range(51))
            + b'], "fields_to_export": []}',
            "at most 50",
        ),
        ("/users/export/ids", b'{"external_ids": ["a"]}', "fields_to_export is required"),
        ("/users/merge", b"{not json", "Invalid JSON"),
        ("/users/merge", b'{"merge_updates": "x"}', "at most 50"),
        ("/users/merge", b'{"merge_updates": [{"identifier_to_merge": {}}]}', "identifier_to_keep"),
        ("/users/delete", b"{not json", "Invalid JSON"),
        ("/users/delete", b'{"external_ids": [1]}', "at most 50"),
    ],
)
def test_fake_refuses_malformed_identity_requests(
    client: ab.BrazeClient, path: str, body: bytes, message: str
) -> None:
    """FakeBraze answers 400, as Braze does, to what Braze would refuse."""
    with pytest.raises(ab.BadRequestError, match=message):
        client.request("POST", path, body=body)


def test_fake_refuses_a_bad_cursor(client: ab.BrazeClient) -> None:
    """An unreadable /custom_attributes cursor is a 400."""
    with pytest.raises(ab.BadRequestError, match="invalid cursor"):
        client.request("GET", "/custom_attributes", params={"cursor": "%%%"})


def test_export_waits_out_a_429() -> None:
    """Beyond the fake's export limit the client retries after Retry-After and gets the rest."""
    with FakeBraze(export_rate_limit=1) as fake, fake.client(max_in_flight=1) as client:
        client.track(attributes=[{"external_id": f"u{n}", "points": n} for n in range(60)])
        fake.inject(status=429, headers={"Retry-After": "0"}, path="/users/export/ids")
        exported = client.export_users([f"u{n}" for n in range(60)], ["points"])
        assert len(exported) == 60
        assert fake.status_counts[429] >= 1


def test_merge_and_delete_of_unknown_profiles_change_nothing(
    fake: FakeBraze, client: ab.BrazeClient
) -> None:
    """Merging or deleting a profile Braze does not hold is answered and changes nothing."""
    client.track(attributes=[{"external_id": "keep", "points": 1}])
    client.merge_users([("nobody", "keep")])
    client.delete_users(["nobody"])
    assert fake.profiles == {"keep": {"points": 1}}
    assert (fake.store.merges_applied, fake.store.deletes_applied) == (0, 0)


def test_merge_moves_events_to_the_kept_profile(fake: FakeBraze, client: ab.BrazeClient) -> None:
    """Events of the merged profile belong to the kept one afterwards."""
    client.track(
        attributes=[{"external_id": "keep", "points": 1}],
        events=[{"external_id": "old", "name": "e", "time": "2026-01-02T03:04:05Z"}],
    )
    client.merge_users([("old", "keep")])
    assert [e["external_id"] for e in fake.events] == ["keep"]


@pytest.mark.parametrize(
    ("call", "arguments", "message"),
    [
        ("export_users", ("m-1", ["points"]), "not one string"),
        ("export_users", ([""], ["points"]), "is not an external id"),
        ("export_users", (["m-1"], "points"), "not one string"),
        ("export_users", (["m-1"], [""]), "is not an attribute name"),
        ("merge_users", ([("a",)],), "pairs"),
        ("merge_users", ([("a", "a")],), "into itself"),
        ("delete_users", ([None],), "is not an external id"),
    ],
)
def test_client_refuses_bad_arguments(
    client: ab.BrazeClient, call: str, arguments: tuple[Any, ...], message: str
) -> None:
    """A wrong argument is a ConfigurationError naming it, before anything is sent."""
    with pytest.raises(ab.ConfigurationError, match=message):
        getattr(client, call)(*arguments)


def test_export_of_nothing_sends_nothing(fake: FakeBraze, client: ab.BrazeClient) -> None:
    """No ids, no request."""
    assert client.export_users([], ["points"]) == []
    assert fake.requests == []


def test_answers_that_are_not_lists_are_errors(fake: FakeBraze, client: ab.BrazeClient) -> None:
    """A malformed answer from Braze is an error, never read as an empty result."""
    fake.inject(status=200, body={"message": "success", "attributes": "no"})
    with pytest.raises(ab.BrazeAPIError, match="not a list"):
        client.custom_attributes()
    fake.inject(status=201, body={"message": "success", "users": {}})
    with pytest.raises(ab.BrazeAPIError, match="not a list"):
        client.export_users(["a"], ["points"])


def test_custom_attributes_accepts_the_custom_attributes_key(
    fake: FakeBraze, client: ab.BrazeClient
) -> None:
    """An answer listing them under "custom_attributes" is read too."""
    fake.inject(
        status=200,
        body={"message": "success", "custom_attributes": [{"name": "x", "data_type": "Number"}]},
    )
    assert client.custom_attributes() == [ab.CustomAttribute("x", "Number")]


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"transaction_id": "t", "items": [{"product_id": "p", "price": 1}]}, "data.currency"),
        ({"transaction_id": "t", "currency": "EUR", "items": "x"}, "data.items"),
        ({"transaction_id": "t", "currency": "EUR"}, "data.total"),
        ({"transaction_id": "t", "currency": "EUR", "items": [1]}, "data.items[0]"),
        (
            {
                "transaction_id": "t",
                "currency": "EUR",
                "items": [{"product_id": "p", "price": 1, "quantity": 0}],
            },
            "data.items[0].quantity",
        ),
        (
            {"transaction_id": "t", "currency": "EUR", "items": [{"product_id": "p"}]},
            "data.items[0].price",
        ),
        ({"transaction_id": "t", "currency": "EUR", "total": "lots"}, "data.total"),
        ({"transaction_id": "t", "currency": "EUR", "total": 1, "shipping": "x"}, "data.shipping"),
        ({"transaction_id": " ", "currency": "EUR", "total": 1}, "data.transaction_id"),
    ],
)
def test_order_placed_refuses_what_braze_would_not_count(data: dict[str, Any], field: str) -> None:
    """Each missing or malformed required property fails naming its field."""
    with pytest.raises(ab.CoercionError) as error:
        order_placed_properties(data)
    assert error.value.field == field


def test_order_placed_optional_properties() -> None:
    """Tax, subtotal, cart and URLs are carried when Antavo has them; the total defaults to the
    lines' sum."""
    properties = order_placed_properties(
        {
            "transaction_id": 42,
            "tax": 2,
            "subtotal": 18,
            "cart_id": "c-1",
            "source": "web",
            "items": [{"sku": "S-1", "price": 10, "quantity": 2, "image_url": "https://i/1.png"}],
        },
        currency="eur",
    )
    assert properties["order_id"] == "42"
    assert properties["currency"] == "EUR"
    assert properties["total_value"] == 20.0
    assert (properties["tax"], properties["subtotal_value"], properties["cart_id"]) == (
        2.0,
        18.0,
        "c-1",
    )
    assert properties["source"] == "web"
    assert properties["products"][0]["image_url"] == "https://i/1.png"
    assert properties["products"][0]["product_id"] == "S-1"
