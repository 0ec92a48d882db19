"""The Braze REST endpoint: instance names, URL validation, and suggestions for typos.

The client connects to exactly the host and port validated here (never to a URL string that a
second parser might read differently), and sends the API key in clear text only to loopback.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from urllib.parse import urlsplit

from attrs import frozen
from urllib3.exceptions import LocationParseError
from urllib3.util import parse_url

from .._braze.limits import ENDPOINT_PERMISSIONS, INSTANCES
from ..exceptions import ConfigurationError

__all__ = ["Target", "is_loopback", "parse_endpoint", "resolve_endpoint"]

_INSTANCE = re.compile(r"(US|EU|AU|ID|JP|KR)[\s_-]*0*(\d{1,2})", re.IGNORECASE)
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_PATH = re.compile(r"[A-Za-z0-9._~/-]*")
# Host label (iad-03, fra-01, ...) -> instance name, from the REST hosts themselves.
_BY_LABEL = {urlsplit(url).hostname.split(".")[1]: name for name, url in INSTANCES.items()}  # type: ignore[union-attr]
_EXAMPLE = INSTANCES["US-03"]
# Braze's own endpoint paths: an endpoint ending in one was given the request URL, not the base
# (kept as a prefix, every call would go to ".../users/track/users/track"). "/events" alone
# is left out: it could be a gateway's own prefix.
_BRAZE_PATHS = (
    *(path for path in ENDPOINT_PERMISSIONS if path.count("/") > 1),
    "/users/merge",
    "/users/delete",
    "/users/export/ids",
    "/custom_attributes",
)


@frozen
class Target:
    """Where requests go: validated scheme, host, port and path prefix."""

    scheme: str
    host: str
    port: int
    base_path: str

    @property
    def url(self) -> str:
        """The base URL (``client.endpoint``)."""
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = "" if self.port == default else f":{self.port}"
        return f"{self.scheme}://{host}{port}{self.base_path}"

    @property
    def authority(self) -> str:
        """The ``Host`` header value."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


def is_loopback(host: str) -> bool:
    """``localhost`` or a literal loopback address (127.0.0.0/8, ::1): no DNS involved."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _instance(text: str) -> str | None:
    """The instance name ``text`` means (``us03``, ``US-3``, ``iad-03`` -> ``US-03``), if any."""
    match = _INSTANCE.fullmatch(text.strip())
    if match is not None:
        name = f"{match.group(1).upper()}-{int(match.group(2)):02d}"
        if name in INSTANCES:
            return name
        close = difflib.get_close_matches(name, list(INSTANCES), n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigurationError(
            f"unknown Braze instance {text!r}{hint} Known: {', '.join(INSTANCES)}"
        )
    return _BY_LABEL.get(text.strip().lower())


def _fail(endpoint: str, why: str, suggestion: str | None = None) -> ConfigurationError:
    hint = f"; did you mean {suggestion!r}?" if suggestion else ""
    return ConfigurationError(f"not a Braze REST endpoint: {endpoint!r} ({why}){hint}")


def _check_host(endpoint: str, host: str) -> str:
    if not host:
        raise _fail(endpoint, "no host")
    if any(c in host for c in "\\%@") or any(c.isspace() or ord(c) < 32 for c in host):
        raise _fail(endpoint, "the host holds characters no host name has")
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    name = host[:-1] if host.endswith(".") else host
    if len(name) > 253 or not all(_LABEL.fullmatch(label) for label in name.split(".")):
        raise _fail(endpoint, f"{host!r} is not a host name")
    lowered = name.lower()
    labels = lowered.split(".")
    if labels[-2:-1] == ["braze"] and labels[0].startswith(("dashboard", "sdk")):
        number = re.search(r"\d+", labels[0] if labels[0] != "sdk" else labels[1])
        guess = _EXAMPLE
        if labels[0] == "sdk" and len(labels) > 1 and labels[1] in _BY_LABEL:
            guess = INSTANCES[_BY_LABEL[labels[1]]]
        elif number is not None:
            region = "EU" if labels[-1] == "eu" else "US"
            guess = INSTANCES.get(f"{region}-{int(number.group()):02d}", _EXAMPLE)
        raise ConfigurationError(
            f"{endpoint!r} is a Braze {labels[0].split('-')[0]} URL, not the REST endpoint: "
            f"use your REST endpoint, e.g. {guess} (Settings > APIs and Identifiers)"
        )
    return lowered


def parse_endpoint(endpoint: str) -> Target:
    """Validate an instance name (``US-03``) or REST endpoint URL (a path prefix is kept).

    Raises :class:`ConfigurationError` with a suggestion where the mistake is a common one.
    """
    if not isinstance(endpoint, str):
        raise ConfigurationError(f"the Braze REST endpoint must be a string, not {endpoint!r}")
    text = endpoint.strip()
    if not text:
        raise ConfigurationError("the Braze REST endpoint is empty")
    instance = _instance(text)
    if instance is not None:
        text = INSTANCES[instance]
    if "://" not in text:
        scheme_typo = re.match(r"(https?)(:/?|//)(?!/)", text, re.IGNORECASE)
        if scheme_typo is not None:
            fixed = f"{scheme_typo.group(1).lower()}://{text[scheme_typo.end() :]}"
            raise _fail(endpoint, "malformed scheme", fixed)
        text = "https://" + text
    try:
        parts = urlsplit(text)
        port = parts.port
        other = parse_url(text)
    except (ValueError, LocationParseError):
        raise _fail(endpoint, "malformed URL") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise _fail(endpoint, f"unsupported scheme {parts.scheme!r}; use https")
    if "@" in parts.netloc:
        raise _fail(endpoint, "credentials do not belong in the endpoint; the key is separate")
    if parts.query or parts.fragment or "?" in text or "#" in text:
        raise _fail(endpoint, "the endpoint takes no query or fragment")
    host = _check_host(endpoint, parts.hostname or "")
    path = parts.path.rstrip("/")
    if not _PATH.fullmatch(path):
        raise _fail(endpoint, "the path prefix holds characters that need escaping")
    for braze_path in _BRAZE_PATHS:
        if path.lower().endswith(braze_path):
            base = text.strip().rstrip("/")[: -len(braze_path)]
            raise ConfigurationError(
                f"the Braze endpoint {endpoint!r} ends with Braze's path {braze_path!r}: give "
                f"the base URL (the REST endpoint), e.g. {base!r}; the SDK adds the paths"
            )
    # Two parsers must read the same host, port and path, or the key could go elsewhere.
    other_host = (other.host or "").strip("[]").lower()
    if other_host != (parts.hostname or "").lower() or other.port != port:
        raise _fail(endpoint, "URL parsers disagree about its host")
    if (other.path or "").rstrip("/") != path:
        raise _fail(endpoint, "URL parsers disagree about its path")
    if scheme == "http" and not is_loopback(host):
        raise ConfigurationError(
            f"the Braze endpoint must use https (plain http only to localhost or a loopback "
            f"address, for tests): {endpoint!r}"
        )
    default = 443 if scheme == "https" else 80
    return Target(scheme, host, port or default, path)


def resolve_endpoint(endpoint: str) -> str:
    """The base URL for an instance name or REST endpoint URL (see :func:`parse_endpoint`)."""
    return parse_endpoint(endpoint).url
