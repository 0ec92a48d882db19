"""The generated field plan: registered in linecache, so tracebacks and debuggers show it."""

from __future__ import annotations

import gc
import linecache
import traceback
from types import FunctionType
from typing import Any, cast

import pytest

import antavo_braze as ab
from antavo_braze._build.plan import FieldStep, Plan, compile_getter


def mapping_of(*fields: tuple[str, str, str]) -> ab.Mapping:
    """A mapping of ``(loyalty_field, remote_field, type)`` fields."""
    return ab.Mapping.from_dict(
        {"fields": [{"loyalty_field": lf, "remote_field": rf, "type": t} for lf, rf, t in fields]}
    )


def filename_of(plan: Plan) -> str:
    """The file name the plan's fill function was compiled under."""
    return cast(FunctionType, plan.fill).__code__.co_filename


def test_a_coercion_error_in_the_plan_shows_the_generated_line() -> None:
    """A bad value raised from the plan gives a traceback that quotes the generated source."""
    plan = ab.Mapper(mapping_of(("points", "loyalty_points", "number"))).plan
    with pytest.raises(ab.CoercionError) as caught:
        plan.values({"points": "many"})
    text = "".join(traceback.format_exception(caught.value))
    assert f'File "{filename_of(plan)}"' in text
    assert "raise exc.at(location0) from None" in text
    assert "in fill" in text


def test_a_bug_in_a_step_shows_the_line_that_called_it() -> None:
    """An unexpected error inside a step is traced to the plan line that ran it."""

    def broken(value: Any) -> Any:
        raise ZeroDivisionError("a bug in a coercer")

    step = FieldStep("tier_name", "tier", compile_getter("tier"), broken, "tier", None)
    plan = Plan((step,), "test")
    with pytest.raises(ZeroDivisionError) as caught:
        plan.values({"tier": "gold"})
    frames = traceback.extract_tb(caught.value.__traceback__)
    fill_frame = next(f for f in frames if f.name == "fill")
    assert fill_frame.filename.startswith("<antavo_braze field plan test-")
    assert fill_frame.line == "out['tier_name'] = coerce0(v)"


def test_linecache_returns_the_plan_source() -> None:
    """linecache.getline returns each line of the generated function, steps named in it."""
    plan = ab.Mapper(mapping_of(("points", "loyalty_points", "number"))).plan
    name = filename_of(plan)
    assert linecache.getline(name, 1) == "def fill(record, out, absent):\n"
    source = "".join(linecache.getlines(name))
    assert "# step 0: points -> loyalty_points" in source
    assert "MIN_INTEGER <= v <= MAX_INTEGER" in source
    linecache.checkcache()  # what traceback printing does first: the entry must survive it
    assert linecache.getline(name, 1) == "def fill(record, out, absent):\n"


def test_two_mappings_get_two_filenames() -> None:
    """Each compiled plan has its own file name, even for the same mapping."""
    mapping = mapping_of(("points", "loyalty_points", "number"))
    first, second = ab.Mapper(mapping).plan, ab.Mapper(mapping).plan
    assert filename_of(first) != filename_of(second)
    assert linecache.getlines(filename_of(first)) == linecache.getlines(filename_of(second))


def test_fill_carries_its_steps() -> None:
    """fill.steps are the steps the plan was generated from, in order."""
    mapper = ab.Mapper(
        mapping_of(("points", "loyalty_points", "number"), ("tier", "tier", "string"))
    )
    assert mapper.plan.fill.steps is mapper.plan.steps
    assert [s.remote_field for s in mapper.plan.fill.steps] == ["loyalty_points", "tier"]
    assert mapper.plan.fill({"tier": "gold"}, {}, [0, 0]) == {"tier": "gold"}


def test_event_plans_are_labelled_by_action() -> None:
    """An event's property plan is named after its action."""
    mapping = ab.Mapping.from_dict(
        {
            "fields": [],
            "events": [
                {
                    "action": "checkin",
                    "as": "event",
                    "properties": [{"loyalty_field": "venue", "remote_field": "venue"}],
                }
            ],
        }
    )
    _, plan = ab.Mapper(mapping)._events["checkin"]
    assert plan is not None
    assert filename_of(plan).startswith("<antavo_braze field plan event checkin-")


def test_the_linecache_entry_goes_with_the_plan() -> None:
    """A plan nobody holds leaves nothing behind in linecache (many mappers stay bounded)."""
    plan: Plan | None = ab.Mapper(mapping_of(("points", "loyalty_points", "number"))).plan
    assert plan is not None
    name = filename_of(plan)
    assert name in linecache.cache
    del plan
    gc.collect()
    assert name not in linecache.cache


def test_the_plan_limits_are_braze_limits() -> None:
    """The inline integer check lets through Braze's 64-bit range and no more."""
    plan = ab.Mapper(mapping_of(("points", "loyalty_points", "number"))).plan
    assert plan.values({"points": 2**63 - 1}) == {"loyalty_points": 2**63 - 1}
    with pytest.raises(ab.CoercionError):
        plan.values({"points": 2**63})
    assert plan.values({"other": 1}) == {}
