"""Profiling a mapping over sample records: misspelled paths and types to declare."""

from __future__ import annotations

import json
from pathlib import Path

import antavo_braze as ab
from antavo_braze._run.input import BadInput
from antavo_braze._run.profile import profile_fields

from .test_cli import run

MEMBERS = [
    {
        "id": f"m{i}",
        "score": i,
        "email": f"m{i}@example.com",
        "optin_at": 1_735_689_600 + i,
        "points": str(100 * i),
        "birthday": "1990-01-0" + str(i % 9 + 1),
        "newsletter": "true" if i % 2 else "false",
        "tiers": [{"name": "Gold"}],
        "mixed": i if i % 2 else str(i),
    }
    for i in range(20)
]


def mapping(*fields: tuple[str, str] | tuple[str, str, str]) -> ab.Mapping:
    """A mapping of (loyalty_field, remote_field[, type]) pairs."""
    return ab.Mapping.from_dict(
        {
            "fields": [
                {"loyalty_field": f[0], "remote_field": f[1], **({"type": f[2]} if f[2:] else {})}
                for f in fields
            ]
        }
    )


def advice(*fields: tuple[str, str] | tuple[str, str, str]) -> list[str | None]:
    """The advice for each field over MEMBERS."""
    return [p.advice for p in profile_fields(mapping(*fields), MEMBERS)]


def test_misspelled_paths_get_a_suggestion() -> None:
    """A path found in no record is 'never found', with the closest path present."""
    got = advice(("scroe", "a"), ("tier.0.name", "b"), ("Email", "c"), ("zzzzzz", "d"))
    assert got == [
        "never found: did you mean 'score'?",
        "never found: did you mean 'tiers.0.name'?",
        "never found: did you mean 'email'?",
        "never found",
    ]


def test_untyped_fields_that_want_a_type() -> None:
    """Unix seconds, date strings, numeric and boolean strings and mixed types get advice."""
    got = advice(
        ("optin_at", "a"),
        ("birthday", "b"),
        ("points", "c"),
        ("newsletter", "d"),
        ("mixed", "e"),
        ("email", "f"),
        ("optin_at", "g", "date"),
    )
    assert got == [
        "declare type: date (the values look like unix seconds)",
        "declare type: date (the values are date strings)",
        "declare type: number (the values are numbers written as strings)",
        "declare type: boolean (the values are 'true'/'false' strings)",
        "mixed types (int, str): declare a type",
        None,
        None,
    ]


def test_counts_types_and_limit() -> None:
    """found counts the records holding the path; types count value classes; limit caps."""
    records = [*MEMBERS[:3], BadInput(4, "bad"), {"id": "x", "score": None}]
    (profile,) = profile_fields(mapping(("score", "s", "number")), records, limit=4)
    assert (profile.records, profile.found, profile.types) == (4, 4, (("int", 3), ("null", 1)))
    assert profile.declared == "number"
    assert not profile.never_found


def test_validate_with_input_exits_1_on_a_field_never_found(tmp_path: Path) -> None:
    """The CLI prints a line per field and fails when one is never found."""
    members = tmp_path / "m.jsonl"
    members.write_text("\n".join(json.dumps(m) for m in MEMBERS) + "\n")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"fields": [{"loyalty_field": "scroe", "remote_field": "p"}]}))
    result = run("validate", str(bad), "--input", str(members))
    assert result.returncode == 1, result.stderr
    assert "scroe -> p (inferred): found in 0 of 20: 0 valid, 0 invalid" in result.stdout
    assert "never found: did you mean 'score'?" in result.stdout
    good = tmp_path / "good.json"
    good.write_text(
        json.dumps({"fields": [{"loyalty_field": "score", "remote_field": "p", "type": "number"}]})
    )
    ok = run("validate", str(good), "--input", str(members), "--sample", "5")
    assert ok.returncode == 0, ok.stdout
    assert "score -> p (number): found in 5 of 5: 5 valid, 0 invalid" in ok.stdout
    assert "the first 5 records (the file has more" in ok.stdout
