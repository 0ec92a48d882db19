# wsgi_app.py: gunicorn -c gunicorn.conf.py wsgi_app:app  (sync or gthread workers)
import json

import antavo_braze as ab

client = ab.BrazeClient.from_env()
syncer = ab.Syncer(
    client,
    "mapping.json",
    handle_signals=False,
    dead_letter=ab.JsonlDeadLetter("failed.jsonl", append=True),
)
sender = ab.BackgroundSender(syncer, spool="spool.db")


def app(environ, start_response):
    size = int(environ.get("CONTENT_LENGTH") or 0)
    member = json.loads(environ["wsgi.input"].read(size))
    try:
        sender.submit_member(member, timeout=0.5)
    except ab.QueueFull:
        start_response("503 Service Unavailable", [("Retry-After", "10")])
        return [b""]
    start_response("202 Accepted", [("Content-Type", "text/plain")])
    return [b""]
