# asgi_app.py: uvicorn asgi_app:app
#   or: gunicorn --preload --workers 4 -k uvicorn.workers.UvicornWorker asgi_app:app
import antavo_braze as ab
from antavo_braze.serve import create_app

client = ab.BrazeClient.from_env()
syncer = ab.Syncer(
    client,
    "mapping.json",
    handle_signals=False,
    dead_letter=ab.JsonlDeadLetter("failed.jsonl", append=True),
)
sender = ab.BackgroundSender(syncer, spool="spool.db")
app = create_app(sender)  # its lifespan shutdown closes the sender: SIGTERM loses nothing
