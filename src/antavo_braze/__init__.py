"""antavo_braze: sync Antavo loyalty data into Braze, typed and without losing a record.

Data flows one way: Antavo member / event → :class:`Mapping` → :class:`Mapper` (coercion) →
batches → :class:`BrazeClient` → :class:`SyncReport` (and a dead letter for failures).
"""

from __future__ import annotations

import importlib
from types import ModuleType

from ._client import BrazeClient, RejectedObject, TrackResult
from ._coerce import coerce, infer_type
from ._deadletter import DeadLetterSink, JsonlDeadLetter, MemoryDeadLetter, read_dead_letters
from ._mapper import MappedEvent, Mapper
from ._mapping import Mapping
from ._ratelimit import InProcessPacer, NonBlockingPacer, Pacer
from ._retry import RetryPolicy
from ._state import MemoryStateStore, SqliteStateStore, StateStore
from ._sync import Progress, RecordFailure, Syncer, SyncReport
from ._types import BrazeType
from ._version import __version__
from .exceptions import (
    AntavoBrazeError,
    AuthenticationError,
    BadRequestError,
    BrazeAPIError,
    CoercionError,
    ConfigurationError,
    MappingError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    TransportError,
)
from .models import (
    AttributesObject,
    EventMapping,
    EventObject,
    FieldMapping,
    LoyaltyEvent,
    LoyaltyMember,
    PurchaseObject,
    Trigger,
    TriggerCondition,
)

__all__ = [
    "AntavoBrazeError",
    "AttributesObject",
    "AuthenticationError",
    "BadRequestError",
    "BrazeAPIError",
    "BrazeClient",
    "BrazeType",
    "CoercionError",
    "ConfigurationError",
    "DeadLetterSink",
    "EventMapping",
    "EventObject",
    "FieldMapping",
    "InProcessPacer",
    "JsonlDeadLetter",
    "LoyaltyEvent",
    "LoyaltyMember",
    "MappedEvent",
    "Mapper",
    "Mapping",
    "MappingError",
    "MemoryDeadLetter",
    "MemoryStateStore",
    "NonBlockingPacer",
    "Pacer",
    "PermissionDeniedError",
    "Progress",
    "PurchaseObject",
    "RateLimitError",
    "RecordFailure",
    "RejectedObject",
    "RetryPolicy",
    "ServerError",
    "SqliteStateStore",
    "StateStore",
    "SyncReport",
    "Syncer",
    "TrackResult",
    "TransportError",
    "Trigger",
    "TriggerCondition",
    "__version__",
    "coerce",
    "infer_type",
    "read_dead_letters",
]


def __getattr__(name: str) -> ModuleType:
    # ``ab.testing`` loads on first use: the library itself never imports its test double.
    if name == "testing":
        return importlib.import_module(".testing", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
