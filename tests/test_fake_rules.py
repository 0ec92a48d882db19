"""FakeBraze's oracle (testing/_rules.py): its numbers equal the library's, and its rules answer
the Braze reference's examples as Braze does; where the library checks the same rule, it agrees.

No sockets except where a test says so: ``handle`` is a pure function from request to reply.
"""

from __future__ import annotations

import urllib.request
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import antavo_braze as ab
from antavo_braze._braze import limits
from antavo_braze._build.coerce import coerce_properties
from antavo_braze._json import dumps
from antavo_braze.testing import FakeBraze
from antavo_braze.testing import _rules as rules
from antavo_braze.testing._endpoints import answer, handle
from antavo_braze.testing._profiles import Profiles
from antavo_braze.testing._rules import Account, Reply, Request

# --- 1. the oracle's copy of Braze's numbers equals the library's --------------------------------

# (the oracle's name, the library's value). Every upper-case constant of _rules is here or in
# _OURS_ONLY, so a number added to the oracle cannot skip this test.
_SAME = [
    ("MAX_OBJECTS", limits.MAX_OBJECTS),
    ("MAX_BODY_BYTES", limits.MAX_BODY_BYTES),
    ("MAX_EXTERNAL_ID_BYTES", limits.MAX_EXTERNAL_ID_BYTES),
    ("MAX_STRING_LENGTH", limits.MAX_STRING_LENGTH),
    ("DEFAULT_MAX_ARRAY_ITEMS", limits.DEFAULT_MAX_ARRAY_ITEMS),
    ("MAX_NESTED_BYTES", limits.MAX_NESTED_BYTES),
    ("MAX_PURCHASE_PROPERTY_BYTES", limits.MAX_PURCHASE_PROPERTY_BYTES),
    ("MAX_PURCHASE_QUANTITY", limits.MAX_PURCHASE_QUANTITY),
    ("MIN_YEAR", limits.MIN_YEAR),
    ("MAX_YEAR", limits.MAX_YEAR),
    ("MAX_PROPERTIES", limits.MAX_PROPERTIES),
    ("PRIMARY_IDENTIFIERS", limits.PRIMARY_IDENTIFIERS),
    ("SECONDARY_IDENTIFIERS", limits.SECONDARY_IDENTIFIERS),
    ("ARRAYS", limits.ARRAYS),
    ("EVENT_PROPERTY_RESERVED", limits.EVENT_PROPERTY_RESERVED),
    ("PURCHASE_PROPERTY_RESERVED", limits.PURCHASE_PROPERTY_RESERVED),
    ("EVENTS_LIST_PAGE", limits.EVENTS_LIST_PAGE),
    ("CUSTOM_ATTRIBUTES_PAGE", limits.CUSTOM_ATTRIBUTES_PAGE),
    ("IDS_PER_REQUEST", limits.IDS_PER_REQUEST),
    ("EXPORT_RATE_SECONDS", limits.EXPORT_IDS_RATE[1]),
    ("IDENTITY_RATE_SECONDS", limits.IDENTITY_RATE[1]),
    ("ALL_PERMISSIONS", frozenset(limits.PERMISSIONS)),
]
# Checked below in their own shape, or the oracle's alone (the library has no such number).
_OURS_ONLY = {
    "ENDPOINT_PERMISSIONS",  # keyed by (method, path): compared by path below
    "STANDARD_ATTRIBUTES",  # a superset of the library's: compared below
    "CONTROL_KEYS",  # derived from the identifiers
    "EVENTS_PAGE",  # GET /events: the library follows the Link header, it counts nothing
    "NOT_FOUND",  # a Reply
    "UNPARSED",  # a marker
    "UTC",
}


@pytest.mark.parametrize(("name", "library"), _SAME, ids=[name for name, _ in _SAME])
def test_oracle_number_equals_the_librarys(name: str, library: Any) -> None:
    """FakeBraze's own copy of a Braze number equals _braze/limits' (two homes, one value)."""
    assert getattr(rules, name) == library


def test_every_oracle_number_is_compared() -> None:
    """Every upper-case constant of testing/_rules.py is compared with the library or named as
    the oracle's alone."""
    constants = {name for name in vars(rules) if name.isupper() and not name.startswith("_")}
    assert constants == {name for name, _ in _SAME} | _OURS_ONLY


def test_oracle_endpoint_permissions_equal_the_librarys() -> None:
    """Each endpoint needs the same permission in the fake as the library says it does."""
    by_path = {path: permission for (_, path), permission in rules.ENDPOINT_PERMISSIONS.items()}
    assert by_path == limits.ENDPOINT_PERMISSIONS


def test_oracle_standard_attributes_hold_the_librarys() -> None:
    """The library's standard attributes are standard to the fake too; the fake adds only the
    subscription fields (which the library sends but never maps)."""
    assert limits.STANDARD_ATTRIBUTES <= rules.STANDARD_ATTRIBUTES
    extra = rules.STANDARD_ATTRIBUTES - limits.STANDARD_ATTRIBUTES
    assert extra == {"email_subscribe", "push_subscribe", "subscription_groups"}


def test_fake_defaults_are_the_oracles_numbers() -> None:
    """FakeBraze's default body limit and identity window are Braze's."""
    with FakeBraze() as fake:
        account = fake.account()
    assert fake.max_body_bytes == account.max_body_bytes == limits.MAX_BODY_BYTES
    assert fake.identity_rate_window == limits.IDENTITY_RATE[1]
    assert account.keys == {"test-key": frozenset(limits.PERMISSIONS)}


# --- 2. the reference's examples, answered as Braze answers them ---------------------------------

ACCEPT = "accept"  # Braze processes the object as sent
DROP = "drop"  # Braze refuses it (errors[]) or drops it: nothing of it is stored
TRIM = "trim"  # Braze keeps part of it and drops the rest silently

_T = "2026-01-02T03:04:05Z"
_LONG = "x" * 255


def _attrs(**fields: Any) -> dict[str, Any]:
    return {"external_id": "m1", **fields}


def _event(**fields: Any) -> dict[str, Any]:
    return {"external_id": "m1", "name": "points_earned", "time": _T, **fields}


def _purchase(**fields: Any) -> dict[str, Any]:
    return {
        "external_id": "m1",
        "product_id": "voucher",
        "currency": "EUR",
        "price": 5.0,
        "time": _T,
        **fields,
    }


@attrs.frozen
class Case:
    """One example from the Braze reference: an object, its array, what Braze does with it."""

    name: str
    array: str
    obj: dict[str, Any]
    braze: str  # ACCEPT, DROP or TRIM
    section: str  # where shared/reference/braze-api.md (or braze-2026.md) says so
    coerce_as: str | None = None  # the Braze type for ab.coerce of the one custom attribute


_BIG_OBJECT = {f"k{i}": "v" * 200 for i in range(600)}  # ~125 KB

CASES = [
    # 1.1 identifiers
    Case("external id", "attributes", _attrs(tier="gold"), ACCEPT, "1.1"),
    Case("email only", "attributes", {"email": "a@example.com", "tier": "g"}, ACCEPT, "1.1"),
    Case(
        "user alias",
        "attributes",
        {"user_alias": {"alias_name": "a", "alias_label": "l"}, "tier": "g"},
        ACCEPT,
        "1.1",
    ),
    Case("no identifier", "attributes", {"tier": "gold"}, DROP, "1.1: one identifier"),
    Case(
        "two primary identifiers",
        "attributes",
        {"external_id": "m1", "braze_id": "b1", "tier": "g"},
        DROP,
        "1.1: only one primary per object",
    ),
    Case(
        "external_id with user_alias",
        "attributes",
        {"external_id": "m1", "user_alias": {"alias_name": "a", "alias_label": "l"}},
        DROP,
        "1.1: external_id and user_alias in one attributes object is an error",
    ),
    Case("external_id of 987 bytes", "attributes", {"external_id": "e" * 987}, ACCEPT, "1.1"),
    Case(
        "external_id of 988 bytes",
        "attributes",
        {"external_id": "e" * 988},
        DROP,
        "1.1: EXTERNAL_USER_ID_TOO_LARGE",
    ),
    # 2.1 custom attribute values
    Case("string of 255", "attributes", _attrs(s=_LONG), ACCEPT, "2.1 String", "string"),
    Case("string of 256", "attributes", _attrs(s=_LONG + "x"), DROP, "2.1 String", "string"),
    Case("key of 255", "attributes", _attrs(**{"k" * 255: 1}), ACCEPT, "2.1 keys"),
    Case("key of 256", "attributes", _attrs(**{"k" * 256: 1}), DROP, "2.1 keys"),
    Case("boolean", "attributes", _attrs(b=True), ACCEPT, "2.1 Boolean", "boolean"),
    Case("null removes", "attributes", _attrs(b=None), ACCEPT, "2.1 Remove an attribute"),
    Case("time text", "attributes", _attrs(d=_T), ACCEPT, "2.1 Time", "date"),
    Case("increment", "attributes", _attrs(n={"inc": 5}), ACCEPT, "2.1 Increment"),
    Case("array", "attributes", _attrs(a=["x", "y"]), ACCEPT, "2.1 Array", "array"),
    Case("array add/remove", "attributes", _attrs(a={"add": ["x"]}), ACCEPT, "2.1 Array"),
    Case(
        "array of 500",
        "attributes",
        _attrs(a=[str(i) for i in range(500)]),
        ACCEPT,
        "2.1 Array: default 500",
        "array",
    ),
    Case("object", "attributes", _attrs(o={"tier": "Gold"}), ACCEPT, "2.1 Object", "object"),
    Case(
        "object with $time",
        "attributes",
        _attrs(o={"since": {"$time": _T}}),
        ACCEPT,
        "2.1 Object: dates inside are {'$time': ...}",
        "object",
    ),
    Case(
        "nested key with a space",
        "attributes",
        _attrs(o={"a b": 1}),
        DROP,
        "2.1 Object: keys may not contain spaces; braze-2026.md 1.8",
        "object",
    ),
    Case(
        "nested key with a dot",
        "attributes",
        _attrs(o={"a.b": 1}),
        DROP,
        "2.1 Object: '.' is not allowed in API keys",
        "object",
    ),
    Case(
        "nested key starting with $",
        "attributes",
        _attrs(o={"$a": 1}),
        DROP,
        "2.1 Object: '$' is not allowed in API keys",
        "object",
    ),
    Case(
        "nested null",
        "attributes",
        _attrs(o={"a": None}),
        DROP,
        "1.6, 2.1: null inside a nested attribute drops its whole update",
    ),
    Case(
        "malformed nested $time",
        "attributes",
        _attrs(o={"since": {"$time": "not a date"}}),
        DROP,
        "2.1 Object: a malformed $time blocks the whole nested attribute",
    ),
    Case(
        "object over 100 KB",
        "attributes",
        _attrs(o=_BIG_OBJECT),
        DROP,
        "2.1 Object: max 100 KB, an update over it is dropped",
        "object",
    ),
    Case(
        "array of objects",
        "attributes",
        _attrs(ao=[{"id": 1}, {"id": 2}]),
        ACCEPT,
        "2.1 Array of objects",
        "array_of_objects",
    ),
    Case(
        "array of objects operators",
        "attributes",
        _attrs(
            ao={
                "$add": [{"id": 3}],
                "$remove": [{"$identifier_key": "id", "$identifier_value": 1}],
                "$update": [
                    {"$identifier_key": "id", "$identifier_value": 2, "$new_object": {"x": 1}}
                ],
            }
        ),
        ACCEPT,
        "2.1 Array of objects: $add, $remove, $update",
    ),
    # 3.1 events
    Case("event", "events", _event(), ACCEPT, "3.1"),
    Case("event name of 255", "events", _event(name="e" * 255), ACCEPT, "3.1"),
    Case("event name of 256", "events", _event(name="e" * 256), DROP, "3.1: up to 255"),
    Case("event name starting with $", "events", _event(name="$e"), DROP, "3.1: no leading $"),
    Case("event without time", "events", {"external_id": "m1", "name": "e"}, DROP, "3.1"),
    Case("event property 'time'", "events", _event(properties={"time": 1}), DROP, "3.1 reserved"),
    Case(
        "event property 'event_name'",
        "events",
        _event(properties={"event_name": "x"}),
        DROP,
        "3.1 reserved",
    ),
    Case(
        "event property key starting with $",
        "events",
        _event(properties={"$p": 1}),
        DROP,
        "3.1: no leading $",
    ),
    Case(
        "event property string of 256",
        "events",
        _event(properties={"p": _LONG + "x"}),
        DROP,
        "3.1: strings up to 255",
    ),
    Case(
        "256 event properties",
        "events",
        _event(properties={f"p{i}": i for i in range(256)}),
        ACCEPT,
        "3.1: 256 distinct properties",
    ),
    Case(
        "300 event properties",
        "events",
        _event(properties={f"p{i}": i for i in range(300)}),
        TRIM,
        "3.1: only the first 256 are kept",
    ),
    Case(
        "nested event properties over 100 KB",
        "events",
        _event(properties={"o": _BIG_OBJECT}),
        DROP,
        "3.1: over 100 KB is rejected",
    ),
    # 3.2 purchases
    Case("purchase", "purchases", _purchase(), ACCEPT, "3.2"),
    Case("quantity 100", "purchases", _purchase(quantity=100), ACCEPT, "3.2: at most 100"),
    Case("quantity 101", "purchases", _purchase(quantity=101), DROP, "3.2: at most 100"),
    Case("currency not ISO 4217", "purchases", _purchase(currency="EURO"), DROP, "3.2"),
    Case(
        "purchase without price",
        "purchases",
        {k: v for k, v in _purchase().items() if k != "price"},
        DROP,
        "3.2: price required",
    ),
    Case("product_id of 256", "purchases", _purchase(product_id="p" * 256), DROP, "3.2"),
    Case(
        "purchase property 'price'",
        "purchases",
        _purchase(properties={"price": 1}),
        DROP,
        "3.2 reserved",
    ),
    Case(
        "purchase properties over 50 KB",
        "purchases",
        _purchase(properties={f"p{i}": "v" * 200 for i in range(300)}),
        DROP,
        "3.2: properties up to 50 KB",
    ),
]
_BY_NAME = {case.name: case for case in CASES}

# Where the library does not (yet) do what Braze's answer asks of it. Engineer rc is making
# the library's rules agree (issue 22); each of these turns into a pass, and strict xfail then
# says to remove the line.
_TRACK_DISAGREES: dict[str, str] = {}
_COERCE_DISAGREES: dict[str, str] = {}


def _track_request(body: Any, key: str = "test-key", **headers: str) -> Request:
    return Request(
        "POST",
        "/users/track",
        headers={
            "content-type": "application/json",
            "authorization": f"Bearer {key}",
            **headers,
        },
        body=body if isinstance(body, bytes) else dumps(body),
    )


def _oracle_verdict(case: Case) -> tuple[str, Reply]:
    reply = handle(_track_request({case.array: [case.obj]}))
    assert reply.status == 201, reply
    accepted = reply.body[f"{case.array}_processed"] == 1
    assert accepted == ("errors" not in reply.body)
    return (ACCEPT if accepted else DROP), reply


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_oracle_answers_as_braze(case: Case) -> None:
    """handle() accepts or refuses the reference's example as Braze does (a trimmed object is
    accepted: Braze keeps part of it)."""
    verdict, reply = _oracle_verdict(case)
    assert verdict == (DROP if case.braze == DROP else ACCEPT), (case.section, reply)
    if verdict == DROP:
        assert reply.body["errors"][0]["input_array"] == case.array


def _library_refuses(case: Case) -> bool:
    """What the library must do: refuse what Braze would not keep whole (nothing silent)."""
    return case.braze in (DROP, TRIM)


@pytest.fixture(scope="module")
def track_refused() -> set[str]:
    """The names of the cases BrazeClient.track refuses before sending (one call for all)."""
    arrays: dict[str, list[Case]] = {"attributes": [], "events": [], "purchases": []}
    for case in CASES:
        arrays[case.array].append(case)
    with FakeBraze() as fake, fake.client() as client:
        result = client.track(**{name: [c.obj for c in cases] for name, cases in arrays.items()})
    refused = (r for r in result.rejected if r.stage == "validation")
    return {arrays[r.input_array][r.index].name for r in refused}


def _marked(names: dict[str, str], cases: list[Case]) -> list[Any]:
    return [
        pytest.param(
            case,
            id=case.name,
            marks=[pytest.mark.xfail(strict=True, reason=names[case.name])]
            if case.name in names
            else [],
        )
        for case in cases
    ]


@pytest.mark.parametrize("case", _marked(_TRACK_DISAGREES, CASES))
def test_track_agrees_with_the_oracle(case: Case, track_refused: set[str]) -> None:
    """BrazeClient.track refuses before sending exactly what Braze would not keep whole."""
    assert (case.name in track_refused) == _library_refuses(case), case.section


_COERCED = [case for case in CASES if case.coerce_as is not None]


@pytest.mark.parametrize("case", _marked(_COERCE_DISAGREES, _COERCED))
def test_coerce_agrees_with_the_oracle(case: Case) -> None:
    """ab.coerce refuses an attribute value exactly when Braze would not keep it whole."""
    (value,) = (v for k, v in case.obj.items() if k != "external_id")
    assert case.coerce_as is not None
    try:
        ab.coerce(value, case.coerce_as)
    except ab.CoercionError:
        refused = True
    else:
        refused = False
    assert refused == _library_refuses(case), case.section


_PROPERTY_CASES = [
    case
    for case in CASES
    if case.array == "events" and "properties" in case.obj and "time" not in case.obj["properties"]
]


@pytest.mark.parametrize("case", _PROPERTY_CASES, ids=[c.name for c in _PROPERTY_CASES])
def test_mapper_properties_agree_with_the_oracle(case: Case) -> None:
    """The mapper's property check refuses exactly the event properties Braze would not keep
    whole."""
    try:
        coerce_properties(case.obj["properties"])
    except ab.CoercionError:
        refused = True
    else:
        refused = False
    assert refused == _library_refuses(case), case.section


def test_fake_keeps_the_first_256_properties() -> None:
    """Over real HTTP, FakeBraze stores an event with 300 properties, keeping the first 256 as
    Braze does (shared/reference/braze-api.md 3.1)."""
    event = _BY_NAME["300 event properties"].obj
    with FakeBraze() as fake:
        request = urllib.request.Request(
            f"{fake.url}/users/track",
            data=dumps({"events": [event]}),
            headers={"Content-Type": "application/json", "Authorization": "Bearer test-key"},
        )
        with urllib.request.urlopen(request, timeout=10) as answer:  # loopback only
            assert answer.status == 201
    assert list(fake.events[0]["properties"]) == [f"p{i}" for i in range(256)]


# --- 3. whole requests: framing, counts, keys (1.2, 1.3, 1.7, 5) --------------------------------


def test_combined_mode_takes_75_objects_and_refuses_76() -> None:
    """75 objects across the arrays are one request; 76 get 400 Max Input Length Exceeded."""
    half = [_attrs(n=i) for i in range(40)]
    events = [_event() for _ in range(35)]
    assert handle(_track_request({"attributes": half, "events": events})).status == 201
    refused = handle(_track_request({"attributes": half, "events": [*events, _event()]}))
    assert (refused.status, refused.body["message"]) == (400, "Max Input Length Exceeded")


def test_legacy_mode_counts_each_array() -> None:
    """Legacy accounts take 75 per array (225 in all) and refuse 76 in one array."""
    legacy = Account(batch_mode="legacy")
    full = {
        "attributes": [_attrs(n=i) for i in range(75)],
        "events": [_event() for _ in range(75)],
        "purchases": [_purchase() for _ in range(75)],
    }
    assert handle(_track_request(full), legacy).status == 201
    full["events"].append(_event())
    assert handle(_track_request(full), legacy).status == 400


@pytest.mark.parametrize(
    ("request_", "status", "section"),
    [
        (_track_request(b"x" * (limits.MAX_BODY_BYTES + 1)), 413, "1.3: over 4 MB"),
        (
            _track_request({"attributes": []}, **{"content-type": "text/plain"}),
            415,
            "1.7: Content-Type must be application/json",
        ),
        (_track_request(b'{"attributes": [1,]}'), 400, "1.6: invalid JSON"),
        (_track_request({"users": []}), 400, "1.1: only attributes, events, purchases"),
        (_track_request({"attributes": {}}), 400, "1.1: the three are arrays"),
        (_track_request({"attributes": []}, key="other"), 401, "5: invalid key"),
        (Request("POST", "/users/track", headers={}), 401, "5: no Authorization header"),
        (
            Request("GET", "/nope", headers={"authorization": "Bearer test-key"}),
            404,
            "1.7: invalid URL",
        ),
    ],
    ids=[
        "too large",
        "wrong content type",
        "bad json",
        "unknown array",
        "not arrays",
        "bad key",
        "no key",
        "unknown path",
    ],
)
def test_whole_request_answers(request_: Request, status: int, section: str) -> None:
    """A request broken as a whole gets Braze's status for it."""
    assert handle(request_).status == status, section


def test_key_without_the_permission_gets_403() -> None:
    """A valid key without users.track gets 403 Access Denied (reference 1.7, 5)."""
    rules_ = Account(keys={"test-key": frozenset({"events.list"})})
    reply = handle(_track_request({"attributes": []}), rules_)
    assert (reply.status, reply.body) == (403, {"message": "Access Denied"})


def test_blocked_profile_is_refused_by_name() -> None:
    """A blocklisted external_id is refused with BLACKLISTED_EXTERNAL_USER_ID (reference 1.6)."""
    reply = handle(
        _track_request({"attributes": [_attrs(n=1)]}), Account(blocked=frozenset({"m1"}))
    )
    assert reply.body["errors"] == [
        {"type": "BLACKLISTED_EXTERNAL_USER_ID", "input_array": "attributes", "index": 0}
    ]


def test_handle_is_pure() -> None:
    """The same request gets the same reply twice, and nothing is held between calls."""
    request = _track_request({"attributes": [_attrs(n=1)], "events": [_event(name="$bad")]})
    first, second = handle(request), handle(request)
    assert first == second
    assert first.body["attributes_processed"] == 1
    assert first.body["events_processed"] == 0


@settings(max_examples=60, deadline=None)
@given(
    counts=st.tuples(*(st.integers(0, 40) for _ in range(3))),
    bad=st.sets(st.integers(0, 119), max_size=10),
    legacy=st.booleans(),
)
def test_every_object_is_processed_or_named_in_errors(
    counts: tuple[int, int, int], bad: set[int], legacy: bool
) -> None:
    """Over the object limit the whole request is refused; under it every object is either
    counted as processed or named once in errors[], by array and index."""
    makers = {"attributes": lambda: _attrs(n=1), "events": _event, "purchases": _purchase}
    body: dict[str, list[dict[str, Any]]] = {}
    position = 0
    for (name, make), count in zip(makers.items(), counts, strict=True):
        objects = []
        for _ in range(count):
            obj = make()
            if position in bad:
                obj = {k: v for k, v in obj.items() if k != "external_id"}  # no identifier
            objects.append(obj)
            position += 1
        body[name] = objects
    rules_ = Account(batch_mode="legacy" if legacy else "combined")
    reply = handle(_track_request(body), rules_)
    over = max(counts) if legacy else sum(counts)
    if over > limits.MAX_OBJECTS:
        assert reply.status == 400
        return
    assert reply.status == 201
    errors = reply.body.get("errors", [])
    for name, objects in body.items():
        named = sorted(e["index"] for e in errors if e["input_array"] == name)
        assert named == [i for i, o in enumerate(objects) if "external_id" not in o]
        if objects:
            assert reply.body[f"{name}_processed"] + len(named) == len(objects)


# --- 4. the other endpoints, answered by the same pure function (reference 4; braze-2026 1.3-1.6)


def _get(path: str, **query: str) -> Request:
    return Request("GET", path, query, {"authorization": "Bearer test-key"})


def _post(path: str, body: Any) -> Request:
    headers = {"authorization": "Bearer test-key", "content-type": "application/json"}
    return Request("POST", path, {}, headers, dumps(body))


def _held_events(count: int) -> Profiles:
    held = Profiles()
    held.write(
        {
            "attributes": [],
            "events": [_event(name=f"e{i:03}") for i in range(count)],
            "purchases": [],
        }
    )
    return held


def test_events_list_pages_250_names_alphabetically() -> None:
    """GET /events/list gives 250 names a page, in order, from what is held (reference 4)."""
    held = _held_events(260)
    first = handle(_get("/events/list"), held=held).body["events"]
    second = handle(_get("/events/list", page="1"), held=held).body["events"]
    assert (len(first), first[0], second) == (250, "e000", [f"e{i}" for i in range(250, 260)])
    assert handle(_get("/events/list", page="x"), held=held).status == 400


def test_events_get_links_the_next_page() -> None:
    """GET /events gives 50 a page and the next one in a Link header (reference 4)."""
    held = _held_events(60)
    reply = handle(_get("/events"), Account(url="https://braze.test"), held)
    assert len(reply.body["events"]) == 50
    assert reply.headers["Link"].startswith("<https://braze.test/events?cursor=")
    assert reply.headers["Link"].endswith('rel="next"')


def test_data_series_counts_the_held_events() -> None:
    """GET /events/data_series counts the named event per day (reference 4)."""
    reply = handle(
        _get("/events/data_series", event="e000", length="2", ending_at="2026-01-03T00:00:00Z"),
        held=_held_events(1),
    )
    assert reply.body["data"] == [
        {"time": "2026-01-02", "count": 1},
        {"time": "2026-01-03", "count": 0},
    ]
    assert handle(_get("/events/data_series", event="e", length="101")).status == 400


def test_export_answers_from_what_is_held() -> None:
    """POST /users/export/ids returns held profiles and names the unknown ids; 51 ids get 400
    (braze-2026.md 1.6)."""
    held = Profiles()
    held.write({"attributes": [_attrs(tier="gold")], "events": [], "purchases": []})
    body = {"external_ids": ["m1", "nobody"], "fields_to_export": ["custom_attributes"]}
    reply = handle(_post("/users/export/ids", body), held=held)
    assert reply.body["users"] == [{"external_id": "m1", "custom_attributes": {"tier": "gold"}}]
    assert reply.body["invalid_user_ids"] == ["nobody"]
    too_many = {"external_ids": [str(i) for i in range(51)], "fields_to_export": []}
    assert handle(_post("/users/export/ids", too_many)).status == 400


def test_merge_and_delete_are_queued_not_applied() -> None:
    """Merges and deletes are answered at once; what Braze goes on to do is in the verdict and
    nothing held changes (braze-2026.md 1.3, 1.4)."""
    held = Profiles()
    held.write({"attributes": [_attrs(tier="gold")], "events": [], "purchases": []})
    merge = {
        "merge_updates": [
            {
                "identifier_to_merge": {"external_id": "m1"},
                "identifier_to_keep": {"external_id": "k"},
            }
        ]
    }
    verdict = answer(_post("/users/merge", merge), Account(), held)
    assert (verdict.reply.status, verdict.merges) == (200, (("m1", "k"),))
    deleted = answer(_post("/users/delete", {"external_ids": ["m1"]}), Account(), held)
    assert (deleted.reply.status, deleted.reply.body["deleted"], deleted.deletes) == (
        202,
        1,
        ("m1",),
    )
    assert held.profiles == {"m1": {"tier": "gold"}}
