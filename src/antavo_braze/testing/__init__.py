"""Test helpers: :class:`FakeBraze`, a real HTTP server that behaves like Braze's REST API.

Use it in your own tests::

    from antavo_braze.testing import FakeBraze

    with FakeBraze(api_key="test-key") as fake:
        client = fake.client()
        ...
        assert fake.profiles["member-1"]["loyalty_points"] == 120

``sample_members(n)`` and ``sample_events(n)`` generate Antavo-shaped data for
``DEMO_MAPPING`` (the demo's mapping of every Braze type).
"""

from .._demo import DEMO_MAPPING, sample_events, sample_members
from ._fake import FakeBraze, Fault, RecordedRequest

__all__ = [
    "DEMO_MAPPING",
    "FakeBraze",
    "Fault",
    "RecordedRequest",
    "sample_events",
    "sample_members",
]
