# fastapi_app.py: uvicorn fastapi_app:app
import asyncio
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Response

import antavo_braze as ab

client = ab.BrazeClient.from_env()
syncer = ab.Syncer(
    client,
    "mapping.json",
    handle_signals=False,
    dead_letter=ab.JsonlDeadLetter("failed.jsonl", append=True),
)
sender = ab.BackgroundSender(syncer, spool="spool.db")


@asynccontextmanager
async def lifespan(app: FastAPI):
    yield
    # uvicorn re-raises SIGTERM after shutdown: no exit hook runs, so close here.
    await asyncio.to_thread(sender.close, 10)


app = FastAPI(lifespan=lifespan)


@app.post("/antavo/members", status_code=202)
async def member_changed(member: dict[str, Any]) -> Response:
    try:
        await sender.asubmit_member(member, timeout=0.5)
    except ab.QueueFull:
        return Response(status_code=503, headers={"Retry-After": "10"})
    return Response(status_code=202)
