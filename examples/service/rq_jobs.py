# rq_jobs.py: queue.enqueue("rq_jobs.member_changed", member); rq worker
# RQ runs each job in a forked child that exits without exit hooks: sync_mode sends the
# change before the job returns (and RQ retries the job if it raises).
import antavo_braze as ab

client = ab.BrazeClient.from_env()
syncer = ab.Syncer(client, "mapping.json", handle_signals=False)
sender = ab.BackgroundSender(syncer, sync_mode=True)


def member_changed(member: dict) -> str:
    outcome = sender.submit_member(member).result()
    if not outcome.ok:
        raise RuntimeError(f"{outcome.record_id}: {outcome.reason}")
    return outcome.status
