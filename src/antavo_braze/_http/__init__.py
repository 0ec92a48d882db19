"""The transport: one connection pool and one send loop for every request the client makes."""

from .connection import BrazeResponse, Connection, ProtocolError
from .loop import CallStats, Exchange, Interrupt, IterSource, KeyRegistry, Result, SendLoop, Source
from .pool import ConnectionPool, Proxy, TLSVerificationError, resolve_proxy

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
