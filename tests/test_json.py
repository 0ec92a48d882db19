"""The JSON backend: orjson when installed, the standard library otherwise."""

from __future__ import annotations

import json

from antavo_braze import _json


def test_round_trip_compact_utf8() -> None:
    """dumps gives compact UTF-8 bytes that loads reads back."""
    value = {"name": "Zoë", "n": [1, 2.5, True, None]}
    data = _json.dumps(value)
    assert isinstance(data, bytes)
    assert b" " not in data
    assert _json.loads(data) == value
    assert json.loads(data) == value
    assert _json.BACKEND in ("json", "orjson")
