"""Every Braze number and reserved name the SDK relies on, each with its source, in one place.

Sources are the entries of ``shared/reference/braze-api.md`` (section numbers in brackets).
FakeBraze keeps its own copy on purpose (an independent oracle); ``tests/test_limits.py``
checks that the two agree.
"""

from __future__ import annotations

__all__ = [
    "ARRAYS",
    "CUSTOM_ATTRIBUTES_PAGE",
    "CUSTOM_ATTRIBUTES_RATE",
    "DEFAULT_MAX_ARRAY_ITEMS",
    "DELETE_VERIFY_SECONDS",
    "EVENTS_LIST_PAGE",
    "EVENT_PROPERTY_RESERVED",
    "EXPORT_IDS_RATE",
    "IDENTITY_RATE",
    "IDS_PER_REQUEST",
    "INSTANCES",
    "MAX_BODY_BYTES",
    "MAX_CUSTOM_ATTRIBUTE_PAGES",
    "MAX_EVENT_LIST_PAGES",
    "MAX_EXTERNAL_ID_BYTES",
    "MAX_INTEGER",
    "MAX_INTERIM_RESPONSES",
    "MAX_NESTED_BYTES",
    "MAX_OBJECTS",
    "MAX_PROPERTIES",
    "MAX_PURCHASE_PROPERTY_BYTES",
    "MAX_PURCHASE_QUANTITY",
    "MAX_RESPONSE_BYTES",
    "MAX_RESPONSE_HEAD_BYTES",
    "MAX_STRING_LENGTH",
    "MAX_VALUE_TEXT",
    "MAX_YEAR",
    "MIN_INTEGER",
    "MIN_YEAR",
    "OPTIONAL_PERMISSIONS",
    "PERMISSIONS",
    "PERMISSION_USES",
    "PRIMARY_IDENTIFIERS",
    "PURCHASE_PROPERTY_RESERVED",
    "REQUIRED_PERMISSIONS",
    "RESERVED_IDENTIFIERS",
    "SECONDARY_IDENTIFIERS",
    "STANDARD_ATTRIBUTES",
    "TRACK_RATE_REQUESTS",
    "TRACK_RATE_SECONDS",
]

# --- /users/track requests [1.2, 1.3] -----------------------------------------------------------
MAX_OBJECTS = 75  # objects per request: combined across the arrays, or per array ("legacy")
MAX_BODY_BYTES = 4_000_000  # request body limit of every endpoint (413 above it)
ARRAYS = ("attributes", "events", "purchases")  # the order Braze processes them in [7]
# The default burst budget per workspace since 28 Oct 2024 (contracts may differ) [1]
TRACK_RATE_REQUESTS, TRACK_RATE_SECONDS = 3000, 3.0

# --- identifiers [1.1] ------------------------------------------------------------------------
MAX_EXTERNAL_ID_BYTES = 987  # EXTERNAL_USER_ID_TOO_LARGE
PRIMARY_IDENTIFIERS = ("external_id", "user_alias", "braze_id")  # only one per object
SECONDARY_IDENTIFIERS = ("email", "phone")  # lookup only without a primary
# Keys of a user-attributes object that are not attributes (a mapping may not target them).
RESERVED_IDENTIFIERS = frozenset(
    {"external_id", "braze_id", "user_alias", "app_id", "_update_existing_only"}
)

# --- custom attribute values [2.1] ------------------------------------------------------------
MAX_STRING_LENGTH = 255  # strings, keys, names
DEFAULT_MAX_ARRAY_ITEMS = 500  # arrays: default maximum (configurable per attribute in Braze)
MAX_NESTED_BYTES = 100 * 1024  # objects, arrays of objects, event properties with nesting
MIN_YEAR, MAX_YEAR = 1, 3000  # dates outside are stored as strings (or dropped when nested)
# Integers: 64-bit signed, where JSON encoders (orjson) and Braze's number storage stop.
MIN_INTEGER, MAX_INTEGER = -(2**63), 2**63 - 1

# Standard profile attributes the mapping may target [2.2].
STANDARD_ATTRIBUTES = frozenset(
    {
        "first_name",
        "last_name",
        "email",
        "phone",
        "dob",
        "gender",
        "country",
        "language",
        "home_city",
        "time_zone",
    }
)

# Per-object error codes of /users/track [1.6], in words (the code is kept beside them).
BRAZE_ERROR_CODES = {
    "BLACKLISTED_EXTERNAL_USER_ID": "Braze blocks this external_id: a blocklisted or dummy user",
    "EXTERNAL_USER_ID_TOO_LARGE": f"the external_id is longer than {MAX_EXTERNAL_ID_BYTES} bytes",
    "EMAIL_BAD_FORMAT": "the email address is not valid",
    "INVALID_ATTRIBUTE_EMAIL_SUBSCRIPTION_INFO": "the email subscription fields are not valid",
    "BAD_EMAIL_SUBSCRIPTION_STATE": "email_subscribe must be opted_in, subscribed or unsubscribed",
    "BAD_PUSH_SUBSCRIPTION_STATE": "push_subscribe must be opted_in, subscribed or unsubscribed",
    "BAD_SUBSCRIPTION_GROUP_ID": "a subscription group id is not one of this workspace",
    "BAD_SUBSCRIPTION_GROUP_STATE": "a subscription group state must be subscribed or unsubscribed",
    "BAD_SUBSCRIPTION_GROUP_ARRAY": "subscription_groups must be an array",
    "BAD_SUBSCRIPTION_GROUP_HASH": "a subscription_groups entry is not an object",
    "BAD_LOCATION_UPDATE": "the location value is not valid",
    "BAD_DEVICE_ID": "the device id is not valid",
    "BAD_PUSH_TOKEN_APP_ID": "the push token's app id is not one of this workspace",
    "BAD_PUSH_TOKEN_IMPORT": "the push token import is not valid",
    "BAD_PUSH_TOKEN_STRING": "the push token is not a string",
    "BAD_PUSH_TOKEN_VALUE": "the push token is not valid",
}

# --- events and purchases [3.1, 3.2] ------------------------------------------------------------
MAX_PROPERTIES = 256  # distinct properties kept per event or purchase
EVENT_PROPERTY_RESERVED = frozenset({"time", "event_name"})
PURCHASE_PROPERTY_RESERVED = frozenset(
    {"time", "event_name", "product_id", "quantity", "price", "currency"}
)
MAX_PURCHASE_QUANTITY = 100
MAX_PURCHASE_PROPERTY_BYTES = 50 * 1024

# --- read endpoints and permissions [4, 5] ---------------------------------------------------
EVENTS_LIST_PAGE = 250  # names per page of GET /events/list
MAX_EVENT_LIST_PAGES = 1_000  # ours: 250,000 event names is more than any workspace holds
REQUIRED_PERMISSIONS = ("users.track",)  # all a sync needs
# The read endpoints, then what schema checks, audits, merges and erasures use
# (shared/reference/braze-2026.md 1.11).
OPTIONAL_PERMISSIONS = (
    "events.list",
    "events.data_series",
    "events.get",
    "custom_attributes.get",
    "users.export.ids",
    "users.merge",
    "users.delete",
)
PERMISSIONS = REQUIRED_PERMISSIONS + OPTIONAL_PERMISSIONS
# What each optional permission is for (``antavo-braze check`` prints it).
PERMISSION_USES = {
    "events.list": "read endpoints",
    "events.data_series": "read endpoints",
    "events.get": "read endpoints",
    "custom_attributes.get": "validate --against-braze, --check-schema",
    "users.export.ids": "audit, delete verification",
    "users.merge": '"as": "merge" events',
    "users.delete": '"as": "delete" events',
}
# The permission each endpoint needs (a 403 names it).
ENDPOINT_PERMISSIONS = {
    "/users/track": "users.track",
    "/events/list": "events.list",
    "/events/data_series": "events.data_series",
    "/events": "events.get",
    "/custom_attributes": "custom_attributes.get",
    "/users/export/ids": "users.export.ids",
    "/users/merge": "users.merge",
    "/users/delete": "users.delete",
}

# --- beyond /users/track (shared/reference/braze-2026.md 1.3-1.6) ---------------------------
CUSTOM_ATTRIBUTES_PAGE = 50  # attributes per page of GET /custom_attributes
# 1,000 requests per hour, shared with /events, /events/list and /purchases/product_list.
CUSTOM_ATTRIBUTES_RATE = (1000, 3600.0)
MAX_CUSTOM_ATTRIBUTE_PAGES = 1_000  # ours: 50,000 attributes is more than any workspace holds
IDS_PER_REQUEST = 50  # external ids per /users/export/ids, /users/merge, /users/delete request
# /users/export/ids: 40 requests per second on the default limit with fields_to_export (no
# campaigns_received / canvases_received); workspaces onboarded since 2024-08-22 without it
# get 250/min, and Braze's 429 then paces the rest.
EXPORT_IDS_RATE = (40, 1.0)
# /users/delete, /users/merge (with alias/new, alias/update, identify): 20,000 per minute shared.
IDENTITY_RATE = (20_000, 60.0)
# Deletion usually completes within a second; caches can take up to five minutes.
DELETE_VERIFY_SECONDS = 300.0

# REST endpoints per instance [5].
INSTANCES = {
    **{f"US-0{n}": f"https://rest.iad-0{n}.braze.com" for n in range(1, 9)},
    "US-10": "https://rest.us-10.braze.com",
    "EU-01": "https://rest.fra-01.braze.eu",
    "EU-02": "https://rest.fra-02.braze.eu",
    "AU-01": "https://rest.au-01.braze.com",
    "ID-01": "https://rest.id-01.braze.com",
    "JP-01": "https://rest.jp-01.braze.com",
    "KR-01": "https://rest.kr-01.braze.com",
}

# --- ours: bounds on what a server or an input may make us hold ------------------------------
# Braze's answers are a few hundred bytes (an errors[] for 75 objects a few KB); a response
# larger than this, before or after decoding, is refused rather than buffered.
MAX_RESPONSE_BYTES = 8 * 1024 * 1024
MAX_RESPONSE_HEAD_BYTES = 64 * 1024  # status line and headers together
MAX_INTERIM_RESPONSES = 16  # 1xx answers before the real one (100, 103, ...)
# Text inputs longer than this cannot be a number, boolean or date: refused before parsing.
MAX_VALUE_TEXT = 64
