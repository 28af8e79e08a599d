"""Server-sent events: a value sent whenever it changes, polled every `every_s` seconds, with a comment line now and
then to keep the connection open; a run that is deleted while watched ends its stream with an `event: gone`."""
from __future__ import annotations

import asyncio
import json

from fastapi import Request
from fastapi.responses import StreamingResponse

from .runs import NotFound


def sse(request: Request, make, once: bool, every_s: float, keepalive_s: float = 15.0) -> StreamingResponse:
    """`make()` (called in a worker thread) serialised as JSON and sent when it differs from the last one sent."""
    ticks = max(1, round(keepalive_s / every_s))

    async def stream():
        last, quiet = None, 0
        while not await request.is_disconnected():
            try:
                text = json.dumps(await asyncio.to_thread(make))
            except NotFound:  # the run was deleted
                yield "event: gone\ndata: {}\n\n"
                return
            if text != last:
                yield f"data: {text}\n\n"
                last, quiet = text, 0
            elif (quiet := quiet + 1) % ticks == 0:
                yield ": keep-alive\n\n"
            if once:
                return
            await asyncio.sleep(every_s)

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
