"""What moves as a stream: output files to disk, and the server-sent event stream.

Neither is held in memory whole: a download goes to a temporary name and is renamed
once complete (no half file under the real name), and events are decoded one by one.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncGenerator
from contextlib import suppress
from pathlib import Path

import aiofiles
import aiofiles.os
import httpx
from httpx_sse import EventSource
from pydantic import ValidationError

from flowyard.core.errors import FlowyardError, UnsafeFileName
from flowyard.core.events import Event, parse_event
from flowyard.services.client.errors import raise_for_error

CHUNK_SIZE = 1 << 16
log = logging.getLogger(__name__)


def safe_output_name(name: str) -> str:
    """Refuse output names that would write outside the target folder."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise UnsafeFileName(f"the server sent an unsafe output file name: {name!r}", field="name")
    return name


async def download(http: httpx.AsyncClient, url: str, target: Path) -> Path:
    """Stream ``url`` into ``target`` under a temp name, renamed once complete."""
    partial = target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}.part"
    try:
        async with http.stream("GET", url) as response:
            await raise_for_error(response)
            async with aiofiles.open(partial, "wb") as sink:
                async for chunk in response.aiter_bytes(CHUNK_SIZE):
                    await sink.write(chunk)
        await aiofiles.os.replace(partial, target)
    finally:
        with suppress(FileNotFoundError):
            await aiofiles.os.remove(partial)
    return target


def check_event_stream(source: EventSource, server: str) -> None:
    content_type = source.response.headers.get("content-type", "")
    if "text/event-stream" not in content_type:
        raise FlowyardError(
            f"{server}/api/events/stream answered with "
            f"{content_type or 'no content type'}, not an event stream"
        )


async def decode_events(source: EventSource) -> AsyncGenerator[Event, None]:
    """Typed events; keep-alive comments (and id-only messages) carry no data.

    An event this client cannot read (a type or schema version of a newer server) is
    skipped with a warning: the stream goes on.
    """
    async for message in source.aiter_sse():
        if not message.data:
            continue
        try:
            event = parse_event(message.data)
        except (ValidationError, ValueError):
            log.warning("skipped an event this client cannot read: %.80s", message.data)
            continue
        yield event
