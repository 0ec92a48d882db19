"""Antavo's merges and erasures, carried to Braze: ``/users/merge`` and guarded ``/users/delete``.

Events whose mapping entry says ``"as": "merge"`` or ``"as": "delete"`` are collected while a
run sends its ``/users/track`` requests and applied after them, so that a run's updates
never land on a profile it has already merged away or deleted. Deleting is guarded
(:func:`delete_guard`): it needs ``allow_deletes``, and a run that would delete more than
``max_delete_ratio`` of at least 100 records deletes nothing and says so. Braze only queues
deletions; each is verified (the profile gone from ``/users/export/ids``) before it counts.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable, Sequence

from ._braze.limits import IDS_PER_REQUEST
from ._build.records import Identity
from ._client import BrazeClient
from ._run.report import Stage
from ._run.tally import Tally
from ._telemetry import log_fields
from .exceptions import AntavoBrazeError, TransportError

__all__ = [
    "GUARD_MIN_RECORDS",
    "Identity",
    "apply_identities",
    "delete_guard",
    "settle_dry_run",
    "settle_identities",
]

log = logging.getLogger("antavo_braze.sync")

GUARD_MIN_RECORDS = 100  # the mass-delete guard looks at runs of at least this many records
_FIRST_CHECK = 0.2  # seconds before the first verification read; then doubling
_MAX_CHECK_INTERVAL = 15.0


def delete_guard(
    deletes: int, records: int, *, allow_deletes: bool, max_delete_ratio: float
) -> str | None:
    """Why a run must not delete (``None``: it may). Pure."""
    if deletes == 0:
        return None
    if not allow_deletes:
        return "not deleted: deleting Braze profiles needs allow_deletes=True (--allow-deletes)"
    if records >= GUARD_MIN_RECORDS and deletes > max_delete_ratio * records:
        return (
            f"not deleted: mass-delete guard: {deletes} of {records} records would delete a "
            f"profile, more than max_delete_ratio={max_delete_ratio:g}; check the input, then "
            "raise max_delete_ratio (--max-delete-ratio) to proceed"
        )
    return None


def _stage_of(exc: AntavoBrazeError) -> tuple[Stage, bool]:
    """``(stage, retryable)`` of an error that failed a merge or delete request."""
    # Retryable is the retry policy's one answer, carried on the error (a 408 may pass; a
    # 401/403 passes once the key is fixed, as for /users/track).
    stage: Stage = "transport" if isinstance(exc, TransportError) else "braze"
    return stage, bool(exc.retryable)


def apply_identities(
    client: BrazeClient,
    run: Tally,
    identities: Sequence[Identity],
    *,
    allow_deletes: bool,
    max_delete_ratio: float,
    verify_within: float,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Send the run's merges, then its deletes (guarded, then verified); settle each record.
    Return the requests made."""
    requests = 0
    merges = [i for i in identities if i.action == "merge"]
    deletes = [i for i in identities if i.action == "delete"]
    for start in range(0, len(merges), IDS_PER_REQUEST):
        chunk = merges[start : start + IDS_PER_REQUEST]
        requests += 1
        try:
            client.merge_users([(i.external_id, i.into or "") for i in chunk])
        except AntavoBrazeError as exc:
            _fail_all(run, chunk, exc)
            continue
        run.succeeded += len(chunk)
        run.merged += len(chunk)
    if not deletes:
        return requests
    refusal = delete_guard(
        len(deletes), run.total, allow_deletes=allow_deletes, max_delete_ratio=max_delete_ratio
    )
    if refusal is not None:
        log.warning("%s", refusal, extra=log_fields("sync", kind="event", reason=refusal))
        for identity in deletes:
            run.fail(
                identity.position, identity.record, identity.external_id, "validation", refusal
            )
        return requests
    queued: list[Identity] = []
    for start in range(0, len(deletes), IDS_PER_REQUEST):
        chunk = deletes[start : start + IDS_PER_REQUEST]
        requests += 1
        try:
            client.delete_users(list(dict.fromkeys(i.external_id for i in chunk)))
        except AntavoBrazeError as exc:
            _fail_all(run, chunk, exc)
            continue
        queued.extend(chunk)
    return requests + _verify(client, run, queued, verify_within, sleep)


def settle_identities(
    client: BrazeClient,
    run: Tally,
    signum: int | None,
    *,
    allow_deletes: bool,
    max_delete_ratio: float,
    verify_within: float,
) -> int:
    """Merges and deletes collected by the run: applied now, or failed as not sent when the
    run was stopped by ``signum``. Return the requests made."""
    identities, run.identities = run.identities, []
    if signum is None:
        return apply_identities(
            client,
            run,
            identities,
            allow_deletes=allow_deletes,
            max_delete_ratio=max_delete_ratio,
            verify_within=verify_within,
        )
    name = signal.Signals(signum).name
    for identity in identities:
        run.fail(
            identity.position,
            identity.record,
            identity.external_id,
            "interrupted",
            f"interrupted ({name}) before the {identity.action} was sent",
            retryable=True,
            outcome="not_sent",
        )
    return 0


def settle_dry_run(run: Tally, *, allow_deletes: bool, max_delete_ratio: float) -> None:
    """A dry run's merges and deletes: those the guards allow count as would-succeed; the
    rest fail with the guard's reason, as the real run would."""
    identities, run.identities = run.identities, []
    deletes = [i for i in identities if i.action == "delete"]
    refusal = delete_guard(
        len(deletes), run.total, allow_deletes=allow_deletes, max_delete_ratio=max_delete_ratio
    )
    for identity in identities:
        if identity.action == "delete" and refusal is not None:
            run.fail(
                identity.position, identity.record, identity.external_id, "validation", refusal
            )
        else:
            run.succeeded += 1


def _fail_all(run: Tally, chunk: Sequence[Identity], exc: AntavoBrazeError) -> None:
    stage, retryable = _stage_of(exc)
    for identity in chunk:
        run.fail(
            identity.position,
            identity.record,
            identity.external_id,
            stage,
            f"{identity.action} failed: {exc}"[:300],
            retryable=retryable,
        )


def _verify(
    client: BrazeClient,
    run: Tally,
    queued: Sequence[Identity],
    within: float,
    sleep: Callable[[float], None],
) -> int:
    """Wait until Braze no longer exports the deleted profiles (at most ``within`` seconds);
    return the requests made."""
    if not queued:
        return 0
    requests = 0
    remaining = set(dict.fromkeys(i.external_id for i in queued))
    deadline = time.monotonic() + within
    wait = _FIRST_CHECK
    problem: str | None = None
    while remaining:
        sleep(min(wait, max(0.0, deadline - time.monotonic())))
        requests += -(-len(remaining) // IDS_PER_REQUEST)
        try:
            held = client.export_users(sorted(remaining), ["external_id"])
        except AntavoBrazeError as exc:
            problem = f"deleted (queued) but not verified: {exc}"[:300]
            break
        remaining &= {str(user.get("external_id")) for user in held}
        if not remaining or time.monotonic() >= deadline:
            break
        wait = min(wait * 2, _MAX_CHECK_INTERVAL)
    for identity in queued:
        if identity.external_id not in remaining:
            run.succeeded += 1
            run.deleted += 1
            continue
        reason = problem or (
            f"deleted (queued) but Braze still holds the profile {within:g} s later "
            "(not verified; Braze's caches can take up to five minutes)"
        )
        run.fail(
            identity.position,
            identity.record,
            identity.external_id,
            "braze",
            reason,
            retryable=problem is not None,
        )
    return requests
