"""The Antavo side: reading customers and events from Antavo's REST API (Escher-signed).

``_shapes`` holds the pure rules (times, envelopes, paging continuity), ``_client`` the one
place that talks to Antavo, ``_pull`` the incremental pulls into a :class:`Syncer`. None of
them knows Braze's wire objects.
"""
