"""JSON encoding: orjson when installed (the ``fast`` extra), else the standard library."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

__all__ = ["BACKEND", "dumps", "loads"]

dumps: Callable[[Any], bytes]
loads: Callable[[bytes | str], Any]

try:
    # ANTAVO_BRAZE_JSON=json forces the standard library (benchmarks, debugging).
    if os.environ.get("ANTAVO_BRAZE_JSON") == "json":
        raise ModuleNotFoundError("orjson disabled by ANTAVO_BRAZE_JSON")
    import orjson
except ModuleNotFoundError:  # pragma: no cover - exercised in the no-orjson CI leg
    BACKEND = "json"
    # No cycle check (15% of the encoding time): what is encoded here is wire objects built
    # from coerced values, which are acyclic by construction (nesting is capped at 32 levels).
    _encoder = json.JSONEncoder(
        ensure_ascii=False, separators=(",", ":"), allow_nan=False, check_circular=False
    )

    def dumps(value: Any) -> bytes:
        """Compact UTF-8 JSON."""
        return _encoder.encode(value).encode()

    loads = json.loads
else:
    BACKEND = "orjson"

    def dumps(value: Any) -> bytes:
        """Compact UTF-8 JSON."""
        return orjson.dumps(value)

    loads = orjson.loads
