"""The Antavo webhook receiver: ``antavo-braze serve``, or :func:`create_app` in your own ASGI
server.

``POST /antavo/events`` (one event envelope, a list, or ``{"events": [...]}``) and
``POST /antavo/members`` (one customer object, a list, or ``{"members": [...]}``) are answered
``202`` once the changes are queued (on disk, with a spool); ``GET /healthz``;
``GET /metrics`` (Prometheus text; authenticated like the webhooks). Running it needs an
ASGI server: ``pip install '.[serve]'`` in a checkout (uvicorn).
"""

from ._app import MAX_BODY_BYTES, create_app
from ._auth import Authenticator, BasicAuth, EscherAuth, JWTAuth, auth_from_env

__all__ = [
    "MAX_BODY_BYTES",
    "Authenticator",
    "BasicAuth",
    "EscherAuth",
    "JWTAuth",
    "auth_from_env",
    "create_app",
]
