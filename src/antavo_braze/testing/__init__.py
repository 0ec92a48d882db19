"""Test helpers: :class:`FakeBraze`, a real HTTP server that behaves like Braze's REST API.

``FakeAntavo`` does the same for Antavo's REST API (signed reads of customers and
events), so pulls can be tested end to end.

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
from ._fake_antavo import AntavoFault, FakeAntavo, RecordedAntavoRequest, verify_signature
from ._redis_server import RedisServerMissingError, redis_server

__all__ = [
    "DEMO_MAPPING",
    "AntavoFault",
    "FakeAntavo",
    "FakeBraze",
    "Fault",
    "RecordedAntavoRequest",
    "RecordedRequest",
    "RedisServerMissingError",
    "redis_server",
    "sample_events",
    "sample_members",
    "verify_signature",
]
