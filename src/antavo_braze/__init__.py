"""antavo_braze: sync Antavo loyalty data into Braze, typed and without losing a record.

Data flows one way: Antavo member / event → :class:`Mapping` → :class:`Mapper` (coercion) →
batches → :class:`BrazeClient` → :class:`SyncReport` (and a dead letter for failures).
"""

from __future__ import annotations

import importlib
import logging
from types import ModuleType

from ._accounting import (
    DroppedField,
    FieldCounts,
    FieldProblem,
    Progress,
    RecordFailure,
    RecordOutcome,
    SyncReport,
)
from ._antavo._client import AntavoClient
from ._audit import AuditExample, AuditReport, FieldAudit
from ._batching import BatchLimits
from ._client import BrazeClient, RejectedObject, TrackResult
from ._coerce import coerce, infer_type
from ._deadletter import (
    DeadLetterEntry,
    DeadLetterObject,
    DeadLetterSink,
    JsonlDeadLetter,
    MemoryDeadLetter,
    read_dead_letters,
)
from ._filecheck import FieldCheck, FileCheck, check_file
from ._http import BrazeResponse
from ._input import BadInput, RecordSource, read_records
from ._localpacer import SharedMemoryPacer
from ._mapper import MappedEvent, Mapper
from ._mapping import Mapping
from ._ratelimit import Clock, InProcessPacer, NonBlockingPacer, Pacer
from ._redis import RedisOrder, RedisPacer, RedisStateStore
from ._retry import AttemptOutcome, RetryDecision, RetryPolicy, decide_retry
from ._schema import CustomAttribute, SchemaProblem
from ._sender import BackgroundSender, SenderStats, Submission
from ._shard import shard_of
from ._state import MemoryStateStore, SqliteStateStore, StateStore
from ._sync import Syncer
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
    QueueFull,
    RateLimitError,
    ServerError,
    SyncInterrupted,
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

# A library leaves the handlers to the application: without any, nothing is printed (the
# loggers are antavo_braze.http, .client, .sync, .sender, .serve, .redis; see reference.md).
logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "AntavoBrazeError",
    "AntavoClient",
    "AttemptOutcome",
    "AttributesObject",
    "AuditExample",
    "AuditReport",
    "AuthenticationError",
    "BackgroundSender",
    "BadInput",
    "BadRequestError",
    "BatchLimits",
    "BrazeAPIError",
    "BrazeClient",
    "BrazeResponse",
    "BrazeType",
    "Clock",
    "CoercionError",
    "ConfigurationError",
    "CustomAttribute",
    "DeadLetterEntry",
    "DeadLetterObject",
    "DeadLetterSink",
    "DroppedField",
    "EventMapping",
    "EventObject",
    "FieldAudit",
    "FieldCheck",
    "FieldCounts",
    "FieldMapping",
    "FieldProblem",
    "FileCheck",
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
    "QueueFull",
    "RateLimitError",
    "RecordFailure",
    "RecordOutcome",
    "RecordSource",
    "RedisOrder",
    "RedisPacer",
    "RedisStateStore",
    "RejectedObject",
    "RetryDecision",
    "RetryPolicy",
    "SchemaProblem",
    "SenderStats",
    "ServerError",
    "SharedMemoryPacer",
    "SqliteStateStore",
    "StateStore",
    "Submission",
    "SyncInterrupted",
    "SyncReport",
    "Syncer",
    "TrackResult",
    "TransportError",
    "Trigger",
    "TriggerCondition",
    "__version__",
    "check_file",
    "coerce",
    "decide_retry",
    "infer_type",
    "read_dead_letters",
    "read_records",
    "shard_of",
]


def __getattr__(name: str) -> ModuleType:
    # ``ab.testing`` loads on first use: the library itself never imports its test double.
    if name == "testing":
        return importlib.import_module(".testing", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
