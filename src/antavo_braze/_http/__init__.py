"""The transport: one connection pool and one send loop for every request the client makes."""

from .connection import BrazeResponse, Connection, ProtocolError
from .exchange import DEFAULT_GRACE, CallOptions, CallStats, Exchange, Result
from .loop import Interrupt, IterSource, KeyRegistry, SendLoop, Source
from .pool import ConnectionPool, Proxy, TLSVerificationError, resolve_proxy

__all__ = [
    "DEFAULT_GRACE",
    "BrazeResponse",
    "CallOptions",
    "CallStats",
    "Connection",
    "ConnectionPool",
    "Exchange",
    "Interrupt",
    "IterSource",
    "KeyRegistry",
    "ProtocolError",
    "Proxy",
    "Result",
    "SendLoop",
    "Source",
    "TLSVerificationError",
    "resolve_proxy",
]
