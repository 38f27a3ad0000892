"""``/api/events/stream``: live events as server-sent events."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import StreamingResponse

from flowyard.core.events import Event
from flowyard.core.identity import Principal
from flowyard.services.api.auth import Caller, principal
from flowyard.services.api.deps import runtime
from flowyard.services.api.openapi import EVENT_STREAM_RESPONSE
from flowyard.services.runtime import Runtime

router = APIRouter(prefix="/api/events", tags=["events"], dependencies=[Depends(principal)])
KEEPALIVE_SECONDS = 15.0


@router.get("/stream", response_class=StreamingResponse, responses=EVENT_STREAM_RESPONSE)
async def stream(
    rt: Annotated[Runtime, Depends(runtime)], caller: Caller, task: uuid.UUID | None = None
) -> StreamingResponse:
    """Live events; a user receives only the events of their own tasks."""
    return StreamingResponse(
        _sse(rt, task, caller),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _sse(rt: Runtime, task_id: uuid.UUID | None, caller: Principal) -> AsyncIterator[str]:
    async with rt.hub.subscription() as queue:
        # the subscription is live before the client sees this line: nothing after it is missed
        yield ": subscribed\n\n"
        while True:
            try:
                event = await asyncio.wait_for(queue.get(), KEEPALIVE_SECONDS)
            except TimeoutError:
                yield ": keep-alive\n\n"
                continue
            if event is None:  # the server is stopping: end the response, cleanly
                return
            if (task_id is None or event.task_id == task_id) and caller.sees(event.owner):
                yield format_sse(event)


def format_sse(event: Event) -> str:
    return f"event: {event.type}\nid: {event.id}\ndata: {event.to_json()}\n\n"
