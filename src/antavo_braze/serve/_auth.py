"""Authentication of Antavo's webhook calls: HTTP Basic or a JWT (HS256), as Antavo's Trusted
sites send them in the ``Authorization`` header. Constant-time comparisons; tokens and headers
are length-checked before any parsing."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import time
from collections.abc import Mapping
from typing import Protocol

from ..exceptions import ConfigurationError

__all__ = ["Authenticator", "BasicAuth", "JWTAuth", "auth_from_env"]

BASIC_ENV = "ANTAVO_BRAZE_WEBHOOK_BASIC"
JWT_ENV = "ANTAVO_BRAZE_WEBHOOK_JWT_SECRET"
_MAX_HEADER = 8192  # characters of an Authorization header we look at
_LEEWAY = 30.0  # seconds of clock difference allowed for exp / nbf


class Authenticator(Protocol):
    """Decides whether a request's headers (lower-case names) are authenticated."""

    def __call__(self, headers: Mapping[str, str]) -> bool: ...


class BasicAuth:
    """``Authorization: Basic base64(user:password)`` with the configured ``user:password``."""

    def __init__(self, credentials: str) -> None:
        user, sep, password = credentials.partition(":")
        if not sep or not user or not password:
            raise ConfigurationError(f"{BASIC_ENV} must be user:password (both non-empty)")
        self._expected = credentials.encode()

    def __repr__(self) -> str:
        return "BasicAuth(***)"

    def __call__(self, headers: Mapping[str, str]) -> bool:
        value = headers.get("authorization", "")[:_MAX_HEADER]
        scheme, _, token = value.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            given = base64.b64decode(token.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        return hmac.compare_digest(given, self._expected)


def _b64url(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


class JWTAuth:
    """``Authorization: Bearer <JWT>`` signed with HS256 and the shared secret; ``exp`` and
    ``nbf`` are honoured when present (30 s leeway). Any other algorithm is refused."""

    def __init__(self, secret: str | bytes) -> None:
        key = secret.encode() if isinstance(secret, str) else secret
        if len(key) < 16:
            raise ConfigurationError(f"{JWT_ENV} must be at least 16 bytes long")
        self._key = key

    def __repr__(self) -> str:
        return "JWTAuth(***)"

    def __call__(self, headers: Mapping[str, str]) -> bool:
        value = headers.get("authorization", "")[:_MAX_HEADER]
        scheme, _, token = value.partition(" ")
        if scheme.lower() != "bearer" or token.count(".") != 2:
            return False
        head, body, signature = token.strip().split(".")
        try:
            header = json.loads(_b64url(head))
            claims = json.loads(_b64url(body))
            given = _b64url(signature)
        except (binascii.Error, ValueError, UnicodeDecodeError, RecursionError):
            return False
        if not isinstance(header, dict) or header.get("alg") != "HS256":
            return False
        expected = hmac.new(self._key, f"{head}.{body}".encode(), hashlib.sha256).digest()
        if not hmac.compare_digest(given, expected) or not isinstance(claims, dict):
            return False
        now = time.time()
        exp, nbf = claims.get("exp"), claims.get("nbf")
        if isinstance(exp, (int, float)) and now > exp + _LEEWAY:
            return False
        return not (isinstance(nbf, (int, float)) and now < nbf - _LEEWAY)


class _AnyOf:
    def __init__(self, *methods: Authenticator) -> None:
        self._methods = methods

    def __repr__(self) -> str:
        return f"AnyOf{self._methods!r}"

    def __call__(self, headers: Mapping[str, str]) -> bool:
        return any(method(headers) for method in self._methods)


def auth_from_env(environ: Mapping[str, str] | None = None) -> Authenticator | None:
    """Basic and/or JWT from ``ANTAVO_BRAZE_WEBHOOK_BASIC`` / ``..._JWT_SECRET`` (either is
    accepted when both are set); ``None`` when neither is set."""
    env = os.environ if environ is None else environ
    methods: list[Authenticator] = []
    if env.get(BASIC_ENV):
        methods.append(BasicAuth(env[BASIC_ENV]))
    if env.get(JWT_ENV):
        methods.append(JWTAuth(env[JWT_ENV]))
    if not methods:
        return None
    return methods[0] if len(methods) == 1 else _AnyOf(*methods)
