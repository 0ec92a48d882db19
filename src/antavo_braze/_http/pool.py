"""The client's connections: opened by urllib3 (DNS, TCP, proxy tunnel, verified TLS) in helper
threads, kept alive between requests, closed with the client, never shared across ``fork()``.
"""

from __future__ import annotations

import base64
import os
import socket
import ssl
import threading
import urllib.request
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any
from urllib.parse import unquote, urlsplit

from attrs import field, frozen
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.exceptions import HTTPError

from .._fork import reset_after_fork
from ..exceptions import ConfigurationError
from .connection import Connection
from .endpoint import Target, is_loopback

__all__ = [
    "ConnectionPool",
    "Proxy",
    "TLSVerificationError",
    "UnmendableError",
    "resolve_proxy",
    "unmendable",
]

_CONNECT_THREADS = 16
# OpenSSL reasons of a handshake that no retry can mend: the two sides share no protocol
# version or cipher, or the "server" does not speak TLS at all.
_TLS_PROTOCOL_REASONS = frozenset(
    {
        "UNSUPPORTED_PROTOCOL",
        "TLSV1_ALERT_PROTOCOL_VERSION",
        "WRONG_VERSION_NUMBER",
        "NO_PROTOCOLS_AVAILABLE",
        "SSLV3_ALERT_HANDSHAKE_FAILURE",
        "NO_SHARED_CIPHER",
        "NO_CIPHERS_AVAILABLE",
        "UNSAFE_LEGACY_RENEGOTIATION_DISABLED",
    }
)
# getaddrinfo's "this name does not exist" (EAI_AGAIN, a resolver that did not answer, may mend).
_NO_SUCH_NAME = frozenset(
    getattr(socket, name) for name in ("EAI_NONAME", "EAI_NODATA") if hasattr(socket, name)
)
_PROXY_REFUSALS = ("Tunnel connection failed: 407", "Tunnel connection failed: 403")


class UnmendableError(OSError):
    """A connection failure no retry can mend: stop at once (see :func:`unmendable`)."""


class TLSVerificationError(UnmendableError):
    """The server's certificate did not verify (hostname, chain, expiry): retrying cannot help."""


def _causes(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain and len(chain) < 10:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def unmendable(exc: BaseException, host: str) -> UnmendableError | None:
    """The unmendable failure behind a connection error, or ``None`` (retrying may help).

    TLS: the certificate did not verify, or no protocol version/cipher in common; DNS: the
    name does not exist (not a resolver that did not answer); a proxy answering 407 or 403 to
    CONNECT."""
    for cause in _causes(exc):
        if isinstance(cause, UnmendableError):
            return cause
        if isinstance(cause, ssl.SSLCertVerificationError):
            return TLSVerificationError(f"{host}: {cause.verify_message or cause}")
        if isinstance(cause, ssl.CertificateError):  # pragma: no cover - old Pythons
            return TLSVerificationError(f"{host}: {cause}")
        if isinstance(cause, ssl.SSLError) and cause.reason in _TLS_PROTOCOL_REASONS:
            return UnmendableError(
                f"{host}: TLS handshake refused ({cause.reason}): the server offers no "
                "TLS version or cipher we accept (TLS 1.2 at least), or does not speak TLS"
            )
        if isinstance(cause, socket.gaierror) and cause.errno in _NO_SUCH_NAME:
            return UnmendableError(f"{host}: the host name does not resolve ({cause.strerror})")
        text = str(cause)
        if any(refusal in text for refusal in _PROXY_REFUSALS):
            return UnmendableError(f"the proxy refused the tunnel to {host}: {text[:200]}")
    return None


@frozen
class Proxy:
    """A forward proxy: CONNECT tunnels for https, absolute-form requests for http."""

    host: str
    port: int
    authorization: str | None = field(default=None, repr=False)  # Proxy-Authorization value

    @property
    def url(self) -> str:
        """The proxy's address, without credentials (safe to show)."""
        return f"http://{self.host}:{self.port}"


def _parse_proxy(url: str, origin: str) -> Proxy:
    text = url.strip()
    if "://" not in text:
        text = "http://" + text
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise ConfigurationError(f"malformed proxy URL from {origin}") from None
    if parts.scheme.lower() == "https":
        raise ConfigurationError(
            f"proxy from {origin}: https:// proxies (TLS to the proxy itself) are not supported; "
            "use the proxy's http:// address (the connection to Braze stays TLS end to end)"
        )
    if parts.scheme.lower() != "http" or not parts.hostname:
        raise ConfigurationError(f"proxy from {origin} must be http://host:port")
    host = parts.hostname
    if any(c in host for c in "\\%/") or any(c.isspace() for c in host):
        raise ConfigurationError(f"proxy host from {origin} is not a host name")
    authorization = None
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        authorization = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
    return Proxy(host, port or 80, authorization)


def resolve_proxy(target: Target, proxy: str | None, trust_env: bool) -> Proxy | None:
    """The proxy to reach ``target`` through: ``proxy`` if given, else (``trust_env``) the
    ``HTTPS_PROXY`` / ``HTTP_PROXY`` variables unless ``NO_PROXY`` (or a loopback target)
    exempts the host. Python's own ``urllib.request`` reads the variables."""
    if proxy is not None:
        return _parse_proxy(proxy, "proxy=")
    if not trust_env or is_loopback(target.host):
        return None
    found = urllib.request.getproxies_environment()
    url = found.get(target.scheme)
    if not url:
        return None
    bypass = getattr(urllib.request, "proxy_bypass_environment")  # noqa: B009 - not in typeshed
    if bypass(target.host, found):
        return None
    return _parse_proxy(url, f"{target.scheme.upper()}_PROXY")


class ConnectionPool:
    """Opens, keeps and closes the client's connections to one target.

    Connections are opened in helper threads so that a DNS lookup or TLS handshake never
    stalls the send loop; each is bounded by the time left of its attempt. After ``fork()`` a
    child starts with no connections and no threads of its parent (it opens its own).
    """

    def __init__(
        self,
        target: Target,
        *,
        max_idle: int,
        ca_bundle: str | None = None,
        proxy: Proxy | None = None,
    ) -> None:
        self.target = target
        self.proxy = proxy
        self.max_idle = max_idle
        self._tls: dict[str, Any] = {}
        if target.scheme == "https":
            # urllib3's defaults: CERT_REQUIRED, hostname checked, TLS 1.2 at least, and the
            # system's trust store unless a CA bundle is given.
            self._tls = {"cert_reqs": "CERT_REQUIRED", "ca_certs": ca_bundle}
        # http through a proxy: absolute-form request targets, credentials per request.
        self.forwarding = proxy is not None and target.scheme == "http"
        self.closed = False
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._idle: list[Connection] = []
        self._executor: ThreadPoolExecutor | None = None
        reset_after_fork(self)

    def __repr__(self) -> str:
        via = f", proxy={self.proxy.url!r}" if self.proxy else ""
        return f"ConnectionPool({self.target.url!r}{via}, idle={len(self._idle)})"

    def _after_fork(self) -> None:
        # The parent's sockets and threads are not ours: drop them without touching them
        # (closing an inherited descriptor here would not close the parent's, but reading
        # from it would steal the parent's answers).
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._idle = []
        self._executor = None

    def _check(self) -> None:
        if self.closed:
            raise ConfigurationError("this BrazeClient is closed")
        if os.getpid() != self._pid:  # forked without register_at_fork (or before it ran)
            self._after_fork()

    # --- opening -------------------------------------------------------------------------

    def open(self, timeout: float) -> Connection:
        """A new connection (blocking; the loop calls it in a helper thread)."""
        target, proxy = self.target, self.proxy
        connection: HTTPConnection
        if target.scheme == "https":
            if proxy is None:
                connection = HTTPSConnection(target.host, target.port, timeout=timeout, **self._tls)
            else:
                connection = HTTPSConnection(proxy.host, proxy.port, timeout=timeout, **self._tls)
                headers = (
                    {"Proxy-Authorization": proxy.authorization} if proxy.authorization else {}
                )
                connection.set_tunnel(target.host, target.port, headers=headers)
        else:
            host, port = (proxy.host, proxy.port) if proxy else (target.host, target.port)
            connection = HTTPConnection(host, port, timeout=timeout)
        try:
            connection.connect()
        except (OSError, HTTPError, ValueError) as exc:
            connection.close()
            refused = unmendable(exc, target.host)
            if refused is not None:
                raise refused from None
            if isinstance(exc, HTTPError):
                raise OSError(str(exc)) from exc
            raise
        sock, connection.sock = connection.sock, None  # the loop owns the socket now
        assert sock is not None
        if self.closed:  # closed while we connected: nobody will take it
            sock.close()
            raise OSError("the client was closed")
        return Connection(sock)

    def connect(self, timeout: float) -> Future[Connection]:
        """Open a connection in a helper thread."""
        with self._lock:
            self._check()
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    max_workers=min(self.max_idle, _CONNECT_THREADS),
                    thread_name_prefix="antavo-braze-connect",
                )
            return self._executor.submit(self.open, timeout)

    # --- keeping -------------------------------------------------------------------------

    def checkout(self) -> Connection | None:
        """An idle connection the server has not closed, and has sent nothing on, meanwhile
        (a stray answer there would be read as the next request's), or ``None``."""
        while True:
            with self._lock:
                self._check()
                connection = self._idle.pop() if self._idle else None
            if connection is None or connection.usable():
                return connection
            connection.close()

    def checkin(self, connection: Connection) -> None:
        """Keep a connection for the next request (or close it when the pool is full/closed)."""
        with self._lock:
            keep = not self.closed and os.getpid() == self._pid and len(self._idle) < self.max_idle
            if keep:
                self._idle.append(connection)
        if not keep:
            connection.close()

    def close(self) -> None:
        """Close every idle connection and stop the helper threads; the pool is then unusable."""
        with self._lock:
            if os.getpid() != self._pid:
                self._after_fork()
            self.closed = True
            idle, self._idle = self._idle, []
            executor, self._executor = self._executor, None
        for connection in idle:
            connection.close()
        if executor is not None:
            # Never wait behind connects queued at a slow proxy: queued ones are cancelled,
            # running ones close their socket when they finish (``open`` sees ``closed``).
            executor.shutdown(wait=False, cancel_futures=True)
