"""Authentication of Antavo's webhook calls, as Antavo's Trusted sites send it: HTTP Basic, a JWT
(HS256 with a shared secret, RS256 with Antavo's public key) in the ``Authorization`` header, or
an Escher / AWS Signature V4-style request signature (verified with ``escherauth``).

Constant-time comparisons; headers are length-checked before any parsing. An authenticator is
a callable on the request's headers (lower-case names); one that signs the body too (Escher)
says so with ``signs_body`` and is asked again with the whole request by :meth:`verify`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import math
import os
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from ..exceptions import ConfigurationError

__all__ = ["Authenticator", "BasicAuth", "EscherAuth", "JWTAuth", "auth_from_env"]

BASIC_ENV = "ANTAVO_BRAZE_WEBHOOK_BASIC"
JWT_ENV = "ANTAVO_BRAZE_WEBHOOK_JWT_SECRET"
JWT_PUBLIC_KEY_ENV = "ANTAVO_BRAZE_WEBHOOK_JWT_PUBLIC_KEY"
JWT_AUDIENCE_ENV = "ANTAVO_BRAZE_WEBHOOK_JWT_AUDIENCE"
JWT_ISSUER_ENV = "ANTAVO_BRAZE_WEBHOOK_JWT_ISSUER"
ESCHER_ENV = "ANTAVO_BRAZE_WEBHOOK_ESCHER_"  # KEY, SECRET, SCOPE, ALGO_PREFIX, VENDOR_KEY
AUTH_ENVS = (BASIC_ENV, JWT_ENV, JWT_PUBLIC_KEY_ENV, ESCHER_ENV + "KEY")

MIN_SECRET_LENGTH = 16  # characters of a shared secret or password
JWT_MAX_AGE = 300.0  # seconds a token may be valid for (exp - iat, and exp - now)
ESCHER_CLOCK_SKEW = 300  # seconds between the signer's clock and ours
_MAX_HEADER = 8192  # characters of an Authorization header we look at
_MAX_ESCHER_HEADER = 1024  # a real Escher Authorization header is ~250 characters
_LEEWAY = 30.0  # seconds of clock difference allowed for exp / nbf / iat
_B64URL = re.compile(r"[A-Za-z0-9_-]*")

log = logging.getLogger("antavo_braze.serve")


class Authenticator(Protocol):
    """Decides whether a request's headers (lower-case names) are authenticated."""

    def __call__(self, headers: Mapping[str, str]) -> bool: ...


def _bearer(headers: Mapping[str, str], scheme: str) -> str | None:
    value = headers.get("authorization", "")
    if len(value) > _MAX_HEADER:
        return None
    given, _, token = value.partition(" ")
    return token.strip() if given.lower() == scheme else None


class BasicAuth:
    """``Authorization: Basic base64(user:password)`` with the configured ``user:password``."""

    def __init__(self, credentials: str) -> None:
        user, sep, password = credentials.partition(":")
        if not sep or not user or not password:
            raise ConfigurationError(f"{BASIC_ENV} must be user:password (both non-empty)")
        if len(password) < MIN_SECRET_LENGTH:
            # Not refused (Antavo's Trusted sites take what they are given, and a receiver
            # behind a private network may not need more), but never silently accepted.
            log.warning(
                "%s: the password is %d characters; whoever reaches the receiver can guess a "
                "short one: use %d or more random characters",
                BASIC_ENV,
                len(password),
                MIN_SECRET_LENGTH,
            )
        self._expected = credentials.encode()

    def __repr__(self) -> str:
        return "BasicAuth(***)"

    def __call__(self, headers: Mapping[str, str]) -> bool:
        token = _bearer(headers, "basic")
        if token is None:
            return False
        try:
            given = base64.b64decode(token, validate=True)
        except (binascii.Error, ValueError):
            return False
        return hmac.compare_digest(given, self._expected)


def _b64url(part: str) -> bytes:
    """One base64url segment, in its one canonical spelling (no padding, no other
    characters, no stray bits): anything else is not the segment that was signed."""
    if not _B64URL.fullmatch(part) or len(part) % 4 == 1:
        raise ValueError("not base64url")
    data = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    if base64.urlsafe_b64encode(data).rstrip(b"=").decode() != part:
        raise ValueError("not the canonical base64url spelling")
    return data


def _number(value: Any) -> float | None:
    """A finite JSON number (not a bool, string, NaN or infinity), else ``None``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _claims_ok(
    claims: dict[str, Any], now: float, max_age: float, audience: str | None, issuer: str | None
) -> bool:
    """``exp`` required and finite; valid now and for at most ``max_age`` seconds; ``nbf`` /
    ``iat`` honoured; ``aud`` / ``iss`` checked when configured."""
    exp = _number(claims.get("exp"))
    if exp is None or now > exp + _LEEWAY or exp - now > max_age + _LEEWAY:
        return False
    for name in ("nbf", "iat"):
        if name in claims:
            moment = _number(claims[name])
            if moment is None or moment > now + _LEEWAY:
                return False
            if name == "iat" and exp - moment > max_age + _LEEWAY:
                return False
    if issuer is not None and claims.get("iss") != issuer:
        return False
    if audience is not None:
        aud = claims.get("aud")
        audiences = aud if isinstance(aud, list) else [aud]
        if audience not in audiences:
            return False
    return True


class JWTAuth:
    """``Authorization: Bearer <JWT>`` signed HS256 with the shared ``secret``, or RS256 with
    Antavo's RSA ``public_key`` (PEM; needs ``cryptography``, in the ``serve`` extra).

    ``exp`` is required, and a token may be valid for at most ``max_age`` seconds (from
    ``iat``, and from now); ``nbf`` is honoured; ``audience`` / ``issuer`` are checked when
    given. 30 s of clock difference is allowed. Any other algorithm is refused."""

    def __init__(
        self,
        secret: str | bytes | None = None,
        *,
        public_key: str | bytes | None = None,
        max_age: float = JWT_MAX_AGE,
        audience: str | None = None,
        issuer: str | None = None,
    ) -> None:
        if (secret is None) == (public_key is None):
            raise ConfigurationError("JWTAuth needs a secret (HS256) or a public_key (RS256)")
        if not math.isfinite(max_age) or max_age <= 0:
            raise ConfigurationError(f"JWT max age must be a positive number, not {max_age!r}")
        self.max_age = max_age
        self.audience = audience
        self.issuer = issuer
        self._key = b""
        self._rsa: Any = None
        if secret is not None:
            self._key = secret.encode() if isinstance(secret, str) else secret
            if len(self._key) < 16:
                raise ConfigurationError(f"{JWT_ENV} must be at least 16 bytes long")
            self.algorithm = "HS256"
        else:
            assert public_key is not None
            self._rsa = _rsa_public_key(public_key)
            self.algorithm = "RS256"

    def __repr__(self) -> str:
        return f"JWTAuth({self.algorithm}, ***)"

    def _signed(self, message: bytes, signature: bytes) -> bool:
        if self.algorithm == "HS256":
            expected = hmac.new(self._key, message, hashlib.sha256).digest()
            return hmac.compare_digest(signature, expected)
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        try:
            self._rsa.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            return False
        return True

    def __call__(self, headers: Mapping[str, str]) -> bool:
        token = _bearer(headers, "bearer")
        if token is None or token.count(".") != 2:
            return False
        head, body, signature = token.split(".")
        try:
            header = json.loads(_b64url(head))
            given = _b64url(signature)
        except (binascii.Error, ValueError, UnicodeDecodeError, RecursionError):
            return False
        if not isinstance(header, dict) or header.get("alg") != self.algorithm:
            return False
        if "crit" in header:  # extensions the token says must be understood: we know none
            return False
        if not self._signed(f"{head}.{body}".encode(), given):
            return False
        try:  # the claims are parsed only once their signature holds
            claims = json.loads(_b64url(body))
        except (binascii.Error, ValueError, UnicodeDecodeError, RecursionError):
            return False
        if not isinstance(claims, dict):
            return False
        return _claims_ok(claims, time.time(), self.max_age, self.audience, self.issuer)


def _rsa_public_key(pem: str | bytes) -> Any:
    try:
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.hazmat.primitives.serialization import load_pem_public_key
    except ModuleNotFoundError:
        raise ConfigurationError(
            "RS256 tokens need the 'cryptography' package: pip install cryptography "
            "(or the serve extra: pip install '.[serve]' in a checkout)"
        ) from None
    try:
        key = load_pem_public_key(pem.encode() if isinstance(pem, str) else pem)
    except ValueError as exc:
        raise ConfigurationError(f"{JWT_PUBLIC_KEY_ENV}: not a PEM public key ({exc})") from None
    if not isinstance(key, rsa.RSAPublicKey) or key.key_size < 2048:
        raise ConfigurationError(f"{JWT_PUBLIC_KEY_ENV}: expected an RSA key of 2048 bits or more")
    return key


class EscherAuth:
    """A request signature in the AWS Signature V4 style Antavo's Trusted sites offer
    (Escher), verified with ``escherauth``: ``Authorization: <PREFIX>-HMAC-SHA256
    Credential=<key>/<date>/<scope>, SignedHeaders=..., Signature=...`` and the
    ``X-<Vendor>-Date`` header; method, path, query, the signed headers and the body are
    signed. ``algo_prefix`` / ``vendor_key`` default to ``AWS4`` / ``Amz``."""

    signs_body = True

    def __init__(
        self,
        key: str,
        secret: str,
        scope: str,
        *,
        algo_prefix: str = "AWS4",
        vendor_key: str = "Amz",
        clock_skew: int = ESCHER_CLOCK_SKEW,
    ) -> None:
        if not re.fullmatch(r"[A-Za-z0-9/\-_ ]+", key or ""):
            raise ConfigurationError(f"{ESCHER_ENV}KEY must be letters, digits, '/', '-', '_'")
        if len(secret or "") < MIN_SECRET_LENGTH:
            raise ConfigurationError(
                f"{ESCHER_ENV}SECRET must be at least {MIN_SECRET_LENGTH} characters long"
            )
        if not re.fullmatch(r"[A-Za-z0-9_\-]+(/[A-Za-z0-9_\-]+)*", scope or ""):
            raise ConfigurationError(
                f"{ESCHER_ENV}SCOPE must look like eu-west-1/execute-api/aws4_request"
            )
        for name, value in (("ALGO_PREFIX", algo_prefix), ("VENDOR_KEY", vendor_key)):
            if not re.fullmatch(r"[A-Za-z0-9]+", value):
                raise ConfigurationError(f"{ESCHER_ENV}{name} must be letters and digits")
        self._key = key
        self._secret = secret
        self.scope = scope
        self.date_header = f"X-{vendor_key}-Date"
        self._options = {
            "algo_prefix": algo_prefix,
            "vendor_key": vendor_key,
            "auth_header_name": "Authorization",
            "date_header_name": self.date_header,
            "clock_skew": clock_skew,
        }
        # Our own strict, linear-time reading of the header before escherauth's regex (whose
        # repeated ".*" backtracks on crafted input): one spelling, our key and scope only.
        self._shape = re.compile(
            rf"{re.escape(algo_prefix)}-HMAC-SHA256 Credential={re.escape(key)}/\d{{8}}/"
            rf"{re.escape(scope)}, ?SignedHeaders=[a-z0-9\-;]+, ?Signature=[0-9a-f]{{64,128}}"
        )

    def __repr__(self) -> str:
        return f"EscherAuth({self.scope!r}, ***)"

    def __call__(self, headers: Mapping[str, str]) -> bool:
        """Never enough on headers alone (the body is signed): see :meth:`plausible`."""
        return False

    def plausible(self, headers: Mapping[str, str]) -> bool:
        """Whether the headers carry a signature for our key and scope (cheap; decides
        whether the body is worth reading)."""
        value = headers.get("authorization", "")
        return len(value) <= _MAX_ESCHER_HEADER and self._shape.fullmatch(value) is not None

    def verify(
        self, method: str, target: str, headers: Sequence[tuple[str, str]], body: bytes
    ) -> bool:
        """Whether the whole request (``target``: the raw path and query) is signed by us."""
        import escherauth

        if not self.plausible({k.lower(): v for k, v in headers if k.lower() == "authorization"}):
            return False
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            return False
        request = {"method": method, "url": target, "headers": [list(h) for h in headers]}
        request["body"] = text
        escher = escherauth.Escher(self._key, self._secret, self.scope, dict(self._options))
        try:
            # escherauth compares signatures with ``!=``: ours is compared in constant time
            # first, so a near-miss never reaches that comparison.
            params = escherauth.AuthParams.from_headers(
                request["headers"], escher.algo_prefix, self.date_header, "Authorization"
            )
            expected = escher.generate_signature(
                self._secret,
                escherauth.EscherRequest(request),
                params.get_signed_headers(),
                params.get_request_date(),
            )
            if not hmac.compare_digest(expected, params.get("signature")):
                return False
            escher.authenticate(request, {self._key: self._secret})
        except (escherauth.EscherException, ValueError, TypeError):
            return False
        return True


class _AnyOf:
    def __init__(self, *methods: Authenticator) -> None:
        self._methods = methods
        self.signs_body = any(getattr(m, "signs_body", False) for m in methods)

    def __repr__(self) -> str:
        return f"AnyOf{self._methods!r}"

    def __call__(self, headers: Mapping[str, str]) -> bool:
        return any(method(headers) for method in self._methods)

    def plausible(self, headers: Mapping[str, str]) -> bool:
        return any(signature_plausible(m, headers) for m in self._methods)

    def verify(
        self, method: str, target: str, headers: Sequence[tuple[str, str]], body: bytes
    ) -> bool:
        return any(signature_verified(m, method, target, headers, body) for m in self._methods)


def signature_plausible(auth: Authenticator, headers: Mapping[str, str]) -> bool:
    """Whether ``auth`` signs bodies and these headers carry a signature worth checking."""
    check = getattr(auth, "plausible", None)
    return bool(getattr(auth, "signs_body", False) and callable(check) and check(headers))


def signature_verified(
    auth: Authenticator, method: str, target: str, headers: Sequence[tuple[str, str]], body: bytes
) -> bool:
    """Whether ``auth`` signs bodies and the whole request carries its valid signature."""
    verify = getattr(auth, "verify", None)
    return bool(
        getattr(auth, "signs_body", False)
        and callable(verify)
        and verify(method, target, headers, body)
    )


def auth_from_env(
    environ: Mapping[str, str] | None = None, *, jwt_max_age: float = JWT_MAX_AGE
) -> Authenticator | None:
    """Every method the environment configures (a request passing any one is accepted);
    ``None`` when none is:

    - ``ANTAVO_BRAZE_WEBHOOK_BASIC``: ``user:password``;
    - ``ANTAVO_BRAZE_WEBHOOK_JWT_SECRET`` (HS256) and/or ``..._JWT_PUBLIC_KEY`` (RS256: the
      path of a PEM file), with ``..._JWT_AUDIENCE`` / ``..._JWT_ISSUER`` when set;
    - ``ANTAVO_BRAZE_WEBHOOK_ESCHER_KEY``, ``..._SECRET``, ``..._SCOPE``, and optionally
      ``..._ALGO_PREFIX`` (``AWS4``) and ``..._VENDOR_KEY`` (``Amz``).
    """
    env = os.environ if environ is None else environ
    methods: list[Authenticator] = []
    if env.get(BASIC_ENV):
        methods.append(BasicAuth(env[BASIC_ENV]))
    audience, issuer = env.get(JWT_AUDIENCE_ENV) or None, env.get(JWT_ISSUER_ENV) or None
    if env.get(JWT_ENV):
        methods.append(JWTAuth(env[JWT_ENV], max_age=jwt_max_age, audience=audience, issuer=issuer))
    if env.get(JWT_PUBLIC_KEY_ENV):
        path = Path(env[JWT_PUBLIC_KEY_ENV])
        try:
            pem = path.read_bytes()[:65536]
        except OSError as exc:
            raise ConfigurationError(
                f"{JWT_PUBLIC_KEY_ENV}: cannot read {path}: {exc.strerror}"
            ) from None
        methods.append(
            JWTAuth(public_key=pem, max_age=jwt_max_age, audience=audience, issuer=issuer)
        )
    if env.get(ESCHER_ENV + "KEY") or env.get(ESCHER_ENV + "SECRET"):
        missing = [n for n in ("KEY", "SECRET", "SCOPE") if not env.get(ESCHER_ENV + n)]
        if missing:
            raise ConfigurationError(
                "Escher signatures need " + ", ".join(ESCHER_ENV + n for n in missing)
            )
        methods.append(
            EscherAuth(
                env[ESCHER_ENV + "KEY"],
                env[ESCHER_ENV + "SECRET"],
                env[ESCHER_ENV + "SCOPE"],
                algo_prefix=env.get(ESCHER_ENV + "ALGO_PREFIX") or "AWS4",
                vendor_key=env.get(ESCHER_ENV + "VENDOR_KEY") or "Amz",
            )
        )
    if not methods:
        return None
    return methods[0] if len(methods) == 1 else _AnyOf(*methods)
