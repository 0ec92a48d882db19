"""Mapping config: loading, round-trips and every problem reported with its path."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import antavo_braze as ab

from .conftest import DATA, load


def problems_of(config: Any) -> tuple[str, ...]:
    """The problems MappingError lists for ``config``."""
    with pytest.raises(ab.MappingError) as info:
        ab.Mapping.from_dict(config)
    return info.value.problems


def test_design_example_loads(mapping: ab.Mapping) -> None:
    """The DESIGN.md example loads into typed models."""
    assert [f.remote_field for f in mapping.fields] == ["loyalty_points", "loyalty_tier"]
    assert mapping.fields[0].type is ab.BrazeType.NUMBER
    assert mapping.fields[1].type is None
    assert mapping.events[1].properties == (
        ab.FieldMapping("points", "points", ab.BrazeType.NUMBER),
    )
    assert mapping.triggers[0].when == ab.TriggerCondition(action=("checkout",))


def test_round_trip_is_exact(mapping: ab.Mapping) -> None:
    """to_dict gives back the config it was loaded from."""
    assert mapping.to_dict() == load("mapping.json")
    assert ab.Mapping.from_dict(mapping.to_dict()) == mapping


def test_full_mapping_round_trips(full_mapping: ab.Mapping) -> None:
    """Purchases ('as'), currencies and list triggers survive a round trip."""
    config = full_mapping.to_dict()
    assert config["events"][3] == {"action": "coupon_redeem", "as": "purchase", "currency": "EUR"}
    assert ab.Mapping.from_dict(config) == full_mapping


def test_empty_mapping_is_valid() -> None:
    """An empty config is a mapping with nothing in it."""
    assert ab.Mapping.from_dict({}) == ab.Mapping()
    assert ab.Mapping().to_dict() == {}
    only_fields = {"fields": [{"loyalty_field": "a", "remote_field": "b"}]}
    assert ab.Mapping.from_dict(only_fields).to_dict() == only_fields


def test_every_problem_is_listed_with_its_path() -> None:
    """All problems at once, each with its JSON path."""
    problems = problems_of(
        {
            "fields": [
                {"loyalty_field": "a", "remote_field": "x"},
                {"loyalty_field": "b", "remote_field": "x", "extra": 1},
                {"loyalty_field": "c", "remote_field": "$y", "type": "nubmer"},
                {"remote_field": 5},
            ],
            "events": [{"action": "a", "as": "foo"}, {"action": "a"}],
            "triggers": [{"when": {"action": []}, "attributes": []}],
            "oops": 1,
        }
    )
    assert "$.fields[2].type: unknown type 'nubmer'" in problems[1]
    expected_starts = [
        "$.fields[1]: unknown key(s) 'extra'",
        "$.fields[3].loyalty_field: required key missing",
        "$.fields[3].remote_field: expected a string",
        "$.events[0].as: must be one of 'event', 'purchase'",
        "$.triggers[0].when: 'action' must be",
        "$: unknown key(s) 'oops'",
        "$.fields[1].remote_field: duplicate remote_field 'x' (also at $.fields[0].remote_field)",
        "$.fields[2].remote_field: '$y' cannot start with '$'",
        "$.events[1].action: duplicate action 'a'",
        "$.triggers[0].attributes: list at least one attribute",
    ]
    for start in expected_starts:
        assert any(p.startswith(start) for p in problems), (start, problems)
    assert len(problems) == 11


@pytest.mark.parametrize(
    ("field", "message"),
    [
        ({"loyalty_field": "a", "remote_field": ""}, "cannot be empty"),
        ({"loyalty_field": "a", "remote_field": "x" * 256}, "256 characters"),
        ({"loyalty_field": "a", "remote_field": "external_id"}, "Braze identifier"),
        ({"loyalty_field": "a", "remote_field": "braze_id"}, "Braze identifier"),
        ({"loyalty_field": "a", "remote_field": "user_alias"}, "Braze identifier"),
        ({"loyalty_field": "a", "remote_field": "app_id"}, "Braze identifier"),
        ({"loyalty_field": "a", "remote_field": "_update_existing_only"}, "Braze identifier"),
        ({"loyalty_field": "a", "remote_field": " padded"}, "leading or trailing spaces"),
        ({"loyalty_field": "a..b", "remote_field": "x"}, "not a field name"),
        ({"loyalty_field": "", "remote_field": "x"}, "not a field name"),
        ({"loyalty_field": "g", "remote_field": "gender", "type": "number"}, "standard attribute"),
        ({"loyalty_field": 3, "remote_field": "x"}, "expected a string"),
        ({"loyalty_field": "a", "remote_field": "x", "type": 7}, "unknown type 7"),
    ],
)
def test_field_problems(field: dict[str, Any], message: str) -> None:
    """Each invalid field entry is reported at $.fields[0]."""
    problems = problems_of({"fields": [field]})
    assert any(p.startswith("$.fields[0]") and message in p for p in problems), problems


@pytest.mark.parametrize(
    ("event", "message"),
    [
        ({"action": "a", "name": "$bad"}, "cannot start with '$'"),
        ({"action": ""}, "cannot be empty"),
        (
            {"action": "a", "properties": [{"loyalty_field": "t", "remote_field": "time"}]},
            "reserved by Braze",
        ),
        (
            {
                "action": "a",
                "as": "purchase",
                "properties": [{"loyalty_field": "p", "remote_field": "price"}],
            },
            "reserved",
        ),
        ({"action": "a", "as": "purchase", "currency": "euro"}, "ISO 4217"),
        ({"action": "a", "currency": "EUR"}, "only purchases"),
        ({"action": "a", "properties": {}}, "expected a list"),
        ({"name": "x"}, "required key missing"),
    ],
)
def test_event_problems(event: dict[str, Any], message: str) -> None:
    """Each invalid event entry is reported under $.events[0]."""
    problems = problems_of({"events": [event]})
    assert any(p.startswith("$.events[0]") and message in p for p in problems), problems


def test_trigger_shapes() -> None:
    """Triggers take an action name or a list, and optional where equalities."""
    mapping = ab.Mapping.from_dict(
        {
            "triggers": [
                {
                    "when": {
                        "action": ["checkout", "checkout_accept"],
                        "where": {"data.currency": "EUR"},
                    },
                    "attributes": [{"loyalty_field": "data.total", "remote_field": "last_total"}],
                }
            ]
        }
    )
    assert mapping.triggers[0].when.action == ("checkout", "checkout_accept")
    assert mapping.to_dict()["triggers"][0]["when"]["action"] == ["checkout", "checkout_accept"]
    problems = problems_of({"triggers": [{"when": {"action": "x", "if": 1}, "attributes": []}]})
    assert any("unknown key(s) 'if'" in p for p in problems)
    problems = problems_of(
        {
            "triggers": [
                {
                    "when": {"action": "x", "where": []},
                    "attributes": [{"loyalty_field": "a", "remote_field": "b"}],
                }
            ]
        }
    )
    assert any("'where' must map" in p for p in problems)
    problems = problems_of({"triggers": [{"when": {}, "attributes": []}]})
    assert any(p.startswith("$.triggers[0].when") for p in problems)


@pytest.mark.parametrize("config", [[], "x", None])
def test_non_object_config(config: Any) -> None:
    """A config that is not an object is one clear problem."""
    assert problems_of(config)[0].startswith("$: expected an object")


def test_wrong_container_types() -> None:
    """Lists where objects belong, and objects where lists belong, are reported."""
    problems = problems_of({"fields": "score", "events": [1]})
    assert "$.fields: expected a list, got str" in problems
    assert any(p.startswith("$.events[0]: expected an object") for p in problems), problems


def test_from_file_json_and_toml(tmp_path: Path) -> None:
    """JSON and TOML files load; problems name the file."""
    toml = tmp_path / "m.toml"
    toml.write_text(
        '[[fields]]\nloyalty_field = "score"\nremote_field = "points"\ntype = "number"\n'
    )
    assert ab.Mapping.from_file(toml).fields[0].remote_field == "points"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"fields": [{"loyalty_field": "a"}]}))
    with pytest.raises(ab.MappingError, match=r"bad\.json: \$\.fields\[0\]\.remote_field"):
        ab.Mapping.from_file(bad)
    broken = tmp_path / "broken.json"
    broken.write_text("{nope")
    with pytest.raises(ab.MappingError, match="not valid JSON") as caught:
        ab.Mapping.from_file(broken)
    assert "a mapping file is JSON" not in str(caught.value)  # it is one, just broken
    yaml = tmp_path / "m.yaml"
    yaml.write_text("fields:\n  - loyalty_field: score\n")
    with pytest.raises(
        ab.MappingError,
        match=r"m\.yaml: not valid JSON .*\(a mapping file is JSON, or TOML when it ends in",
    ):
        ab.Mapping.from_file(yaml)
    with pytest.raises(ab.MappingError, match="cannot read"):
        ab.Mapping.from_file(tmp_path / "missing.json")


def test_mapping_error_is_a_configuration_error() -> None:
    """MappingError sits under ConfigurationError and shows in notebooks."""
    with pytest.raises(ab.ConfigurationError) as info:
        ab.Mapping.from_dict({"fields": 1})
    assert "<li>" in info.value._repr_html_()  # type: ignore[attr-defined]


def test_mapping_html(full_mapping: ab.Mapping) -> None:
    """A mapping renders as a table in notebooks."""
    html = full_mapping._repr_html_()
    assert "<table>" in html
    assert "loyalty_points_earned" in html
    assert "purchase" in html


names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12)
field_entries = st.builds(
    lambda lf, rf, t: {"loyalty_field": lf, "remote_field": rf, **({"type": t} if t else {})},
    names,
    names.map(lambda n: "c_" + n),
    st.sampled_from([None, *[t.value for t in ab.BrazeType]]),
)


@given(
    st.lists(field_entries, max_size=6, unique_by=lambda f: f["remote_field"]),
    st.lists(names, max_size=4, unique=True),
)
def test_round_trip_property(fields: list[dict[str, Any]], actions: list[str]) -> None:
    """Any valid config survives from_dict → to_dict → from_dict unchanged."""
    config: dict[str, Any] = {"fields": fields, "events": [{"action": a} for a in actions]}
    config = {key: value for key, value in config.items() if value}  # empty sections are omitted
    mapping = ab.Mapping.from_dict(config)
    assert mapping.to_dict() == config
    assert ab.Mapping.from_dict(mapping.to_dict()) == mapping


def test_data_dir_fixtures_exist() -> None:
    """The fixture files the suite relies on are present."""
    assert (DATA / "member.json").is_file()
