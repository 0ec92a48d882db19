"""Test helpers: :class:`FakeBraze`, a real HTTP server that behaves like Braze's REST API.

Use it in your own tests::

    from antavo_braze.testing import FakeBraze

    with FakeBraze(api_key="test-key") as fake:
        client = fake.client()
        ...
        assert fake.profiles["member-1"]["loyalty_points"] == 120
"""

from ._fake import FakeBraze, Fault, RecordedRequest

__all__ = ["FakeBraze", "Fault", "RecordedRequest"]
