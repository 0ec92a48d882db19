"""Test helpers: :class:`FakeBraze`, a real HTTP server that behaves like Braze's REST API.

Use it in your own tests::

    from antavo_braze.testing import FakeBraze

    with FakeBraze(api_key="test-key") as fake:
        client = fake.client()
        ...
        assert fake.profiles["member-1"]["loyalty_points"] == 120

``sample_members(n)`` and ``sample_events(n)`` generate Antavo-shaped data for
``DEMO_MAPPING`` (the demo's mapping of every Braze type). ``redis_server()`` starts a
throwaway ``redis-server`` for tests of :class:`~antavo_braze.RedisPacer` and
:class:`~antavo_braze.RedisStateStore`.
"""

from .._demo import DEMO_MAPPING, sample_events, sample_members
from ._fake import FakeBraze, Fault, RecordedRequest
from ._redis_server import RedisServerMissingError, redis_server

__all__ = [
    "DEMO_MAPPING",
    "FakeBraze",
    "Fault",
    "RecordedRequest",
    "RedisServerMissingError",
    "redis_server",
    "sample_events",
    "sample_members",
]
