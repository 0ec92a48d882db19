"""JSON encoding: orjson when installed (the ``fast`` extra), else the standard library.

``dumps`` encodes anything JSON-ready; ``dumps_object`` is its hot twin for one wire object
at a time (the stdlib form calls one prebuilt C encoder instead of building one per call,
which costs more than encoding a small object).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from json import encoder as _stdlib_encoder
from typing import Any

__all__ = ["BACKEND", "dumps", "dumps_object", "loads"]

dumps: Callable[[Any], bytes]
dumps_object: Callable[[Any], bytes]
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

    _make = getattr(_stdlib_encoder, "c_make_encoder", None)
    if _make is None:  # pragma: no cover - Python builds without the C accelerator
        dumps_object = dumps
    else:
        _c_encode = _make(
            None,  # markers: no cycle check (see above)
            _encoder.default,
            _stdlib_encoder.encode_basestring,  # ensure_ascii=False
            None,  # indent
            ":",
            ",",
            False,  # sort_keys
            False,  # skipkeys
            False,  # allow_nan
        )

        def dumps_object(value: Any) -> bytes:
            """Compact UTF-8 JSON of one dict (the hot path of building requests)."""
            return "".join(_c_encode(value, 0)).encode()

    def loads(data: bytes | str) -> Any:
        """Parse JSON (bytes must be UTF-8)."""
        return json.loads(data)

else:
    BACKEND = "orjson"

    # orjson's own functions, unwrapped: one Python call less per object on the hot path.
    dumps = dumps_object = orjson.dumps
    loads = orjson.loads
