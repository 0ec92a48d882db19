"""antavo_braze: sync Antavo loyalty data into Braze, typed and without losing a record.

Data flows one way: Antavo member / event → :class:`Mapping` → :class:`Mapper` (coercion) →
batches → :class:`BrazeClient` → :class:`SyncReport` (and a dead letter for failures).
"""

from __future__ import annotations

import importlib
import inspect
import logging
import typing
from types import FunctionType, ModuleType

import attrs

from ._antavo.client import AntavoClient
from ._braze.types import BrazeType
from ._build.batching import BatchLimits
from ._build.coerce import coerce, infer_type
from ._build.mapper import MappedEvent, Mapper
from ._build.mapping import Mapping
from ._build.schema import CustomAttribute, SchemaProblem
from ._client import BrazeClient, RejectedObject, TrackResult
from ._http import BrazeResponse
from ._http.pacing import Clock, InProcessPacer, NonBlockingPacer, Pacer
from ._http.retry import AttemptOutcome, RetryDecision, RetryPolicy, decide_retry
from ._run.audit import AuditExample, AuditReport, FieldAudit
from ._run.deadletter import (
    DeadLetterEntry,
    DeadLetterObject,
    DeadLetterSink,
    JsonlDeadLetter,
    MemoryDeadLetter,
    read_dead_letters,
)
from ._run.filecheck import FieldCheck, FileCheck, check_file
from ._run.input import BadInput, RecordSource, read_records
from ._run.report import (
    DroppedField,
    FieldCounts,
    FieldProblem,
    Progress,
    RecordFailure,
    RecordOutcome,
    SyncReport,
)
from ._run.state import MemoryStateStore, SqliteStateStore, StateStore
from ._scale.localpacer import SharedMemoryPacer
from ._scale.redis import RedisOrder, RedisPacer, RedisStateStore
from ._scale.shard import shard_of
from ._sender import BackgroundSender, SenderStats, Submission
from ._sync import Syncer
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


def _present_as_public() -> None:
    """Public classes and functions report ``antavo_braze`` as their module (repr, docs,
    pickling by name), wherever in the private layers they are defined."""
    namespace = globals()
    for name in __all__:
        value = namespace[name]
        module = getattr(value, "__module__", "")
        if module.startswith(f"{__name__}._") and isinstance(value, (type, FunctionType)):
            if isinstance(value, type):
                # get_type_hints (and cattrs through it) reads a class's string annotations in
                # its module's namespace: resolve them where they were written, first.
                own = inspect.get_annotations(value)
                hints = typing.get_type_hints(value, include_extras=True)
                value.__annotations__ = {key: hints[key] for key in own}
                if attrs.has(value):
                    attrs.resolve_types(value)
            value.__module__ = __name__


_present_as_public()
