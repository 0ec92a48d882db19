"""Worst-case coercion cost: hostile values of 1 KB, 100 KB and 1 MB, for every shape that
once backtracked (the old number regex cost ~22 s for one 32 KB value).

Prints microseconds per value and the ratio 1 MB : 1 KB (linear time means about 1000, or
less where the length check refuses before any work). Asserts nothing; the generous bound
it prints against is 1 s per 1 MB value.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

import antavo_braze as ab

SIZES = (1_000, 100_000, 1_000_000)
SHAPES: dict[str, tuple[str, Callable[[int], Any]]] = {
    "digits then x": ("number", lambda n: "1" * n + "x"),
    "1. digits e": ("number", lambda n: "1." + "1" * n + "e"),
    "spaces around": ("number", lambda n: " " * n + "1" + " " * n + "x"),
    "date + zeros": ("date", lambda n: "2026-01-01T00:00:00" + "0" * n),
    "date + spaces x": ("date", lambda n: "2026-01-01" + " " * n + "x"),
    "padded valid date": ("date", lambda n: " " * n + "2026-01-01T10:00:00+02:00"),
    "long string": ("string", lambda n: "x" * n),
    "array of one": ("array", lambda n: ["x" * n]),
    "object key": ("object", lambda n: {"k" * n: 1}),
}


def cost(braze_type: str, value: Any, repeat: int) -> float:
    """Seconds per coercion (success or refusal)."""
    started = time.perf_counter()
    for _ in range(repeat):
        with contextlib.suppress(ab.CoercionError):
            ab.coerce(value, braze_type)
    return (time.perf_counter() - started) / repeat


def main() -> None:
    print(f"{'shape':<20}" + "".join(f"{n:>12,} B" for n in SIZES) + f"{'1MB:1KB':>10}")
    worst = 0.0
    for name, (braze_type, make) in SHAPES.items():
        times = [cost(braze_type, make(n), 200 if n < 100_000 else 5) for n in SIZES]
        worst = max(worst, times[-1])
        cells = "".join(f"{t * 1e6:>12,.1f} µs" for t in times)
        print(f"{name:<20}{cells}{times[-1] / times[0]:>10,.0f}")
    print(f"slowest 1 MB value: {worst * 1e3:.2f} ms (bound: 1000 ms)")


if __name__ == "__main__":
    main()
