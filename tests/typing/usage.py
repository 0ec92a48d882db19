"""Type-checked by mypy --strict: the public API used as a user would (not run by pytest)."""

from __future__ import annotations

from datetime import datetime, timezone

import antavo_braze as ab
from antavo_braze.testing import FakeBraze


def sync_one_member() -> ab.SyncReport:
    mapping: ab.Mapping = ab.Mapping.from_dict(
        {"fields": [{"loyalty_field": "score", "remote_field": "points", "type": "number"}]}
    )
    points: int | float | None = ab.coerce("10", ab.BrazeType.NUMBER)
    assert points == 10
    with FakeBraze() as fake, fake.client(max_in_flight=2) as client:
        syncer = ab.Syncer(
            client,
            mapping,
            dead_letter=ab.MemoryDeadLetter(),
            state=ab.MemoryStateStore(),
            send="changed",
        )
        report = syncer.sync_members([ab.LoyaltyMember(id="m-1", fields={"score": "5"})])
        event = ab.LoyaltyEvent(
            customer_id="m-1", action="opt_in", time=datetime(2026, 1, 1, tzinfo=timezone.utc)
        )
        events: ab.SyncReport = syncer.sync_events([event])
        failures: tuple[ab.RecordFailure, ...] = events.failures
        assert not failures
        result: ab.TrackResult = client.track(
            attributes=[ab.AttributesObject("m-1", {"vip": True})]
        )
        assert result.ok
        permissions: dict[str, bool] = client.check_permissions()
        assert all(permissions.values())
    return report


def handle_errors() -> str:
    try:
        ab.Mapping.from_dict({"fields": 1})
    except ab.MappingError as exc:
        return "\n".join(exc.problems)
    except ab.AntavoBrazeError:
        return "other"
    return ""


policy: ab.RetryPolicy = ab.RetryPolicy(attempts=3, max_rate_limit_wait=60.0)
pacer: ab.Pacer = ab.InProcessPacer()


def service_mode(syncer: ab.Syncer) -> ab.RecordOutcome:
    with ab.BackgroundSender(syncer, flush_at=50, on_full="raise") as sender:
        submission: ab.Submission = sender.submit_member({"id": "m-1", "score": 5}, timeout=0.5)
        sender.submit_event({"customer": "m-1", "action": "opt_in"})
        sender.submit_attributes("m-1", {"vip": True}, {"vip": ab.BrazeType.BOOLEAN})
        assert sender.flush(timeout=5.0)
        stats: ab.SenderStats = sender.stats()
        assert stats.failed == 0
        outcome = submission.result(timeout=1.0)
        stage: str | None = outcome.stage
        assert stage is None
        return outcome


def shared_budget(url: str) -> ab.BrazeClient:
    pacer: ab.NonBlockingPacer = ab.RedisPacer(url, key="antavo_braze:prod", hourly=250_000)
    state: ab.StateStore = ab.RedisStateStore(url)
    assert ab.shard_of("member-1", 4) in range(4)
    assert state.get("member-1") is None
    return ab.BrazeClient("https://rest.iad-03.braze.com", "key", pacer=pacer)
