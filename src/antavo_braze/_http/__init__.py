"""The transport: one connection pool and one send loop for every request the client makes."""

from ._connection import BrazeResponse, Connection, ProtocolError
from ._loop import CallStats, Exchange, Interrupt, IterSource, KeyRegistry, Result, SendLoop, Source
from ._pool import ConnectionPool, Proxy, TLSVerificationError, resolve_proxy

__all__ = [
    "BrazeResponse",
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
