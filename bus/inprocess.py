"""The in-process transport: live event fan-out and worker wake-ups in one process.

Default mode runs the API and the workers in one process on SQLite, so a
committed ``task.created`` wakes a worker through an ``asyncio.Event`` and
subscribers (SSE, webhooks) get events from bounded per-subscriber queues. A
slow subscriber loses its oldest events rather than holding everyone back;
the event log in the database stays complete.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Sequence

from flowyard.core.events import Event

log = logging.getLogger(__name__)

WAKE_TYPES = frozenset({"task.created", "task.requeued", "task.retried"})


class EventHub:
    """Fan-out to live subscribers. A subscriber's queue yields ``None`` once the hub closed."""

    def __init__(self, queue_size: int = 1000) -> None:
        self._subscribers: set[asyncio.Queue[Event | None]] = set()
        self._queue_size = queue_size
        self._closed = False

    def publish(self, events: Sequence[Event]) -> None:
        for queue in self._subscribers:
            for event in events:
                _put_dropping_oldest(queue, event)

    def close(self) -> None:
        """End every live stream now: a server that stops must not wait for its readers.

        uvicorn waits for open responses before the app's shutdown runs, so this is
        called when shutdown begins (``services/cli/serve.py``), and again on close.
        """
        self._closed = True
        for queue in self._subscribers:
            _put_dropping_oldest(queue, None)

    @contextlib.asynccontextmanager
    async def subscription(self) -> AsyncIterator[asyncio.Queue[Event | None]]:
        queue: asyncio.Queue[Event | None] = asyncio.Queue(self._queue_size)
        if self._closed:
            queue.put_nowait(None)
        self._subscribers.add(queue)
        try:
            yield queue
        finally:
            self._subscribers.discard(queue)

    async def subscribe(self, task_id: uuid.UUID | None = None) -> AsyncIterator[Event]:
        async with self.subscription() as queue:
            while (event := await queue.get()) is not None:
                if task_id is None or event.task_id == task_id:
                    yield event

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)


def _put_dropping_oldest(queue: asyncio.Queue[Event | None], item: Event | None) -> None:
    if queue.full():
        queue.get_nowait()
    queue.put_nowait(item)


class LocalWaker:
    """Wakes workers in this process when a committed event makes work claimable."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def on_commit(self, events: Sequence[Event]) -> None:
        if any(e.type in WAKE_TYPES for e in events):
            self._event.set()

    def kick(self) -> None:
        self._event.set()

    def clear(self) -> None:
        self._event.clear()

    async def wait(self, max_wait: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), max_wait)

    def found_work(self, found: bool) -> None:
        """Nothing to adapt: in-process wake-ups are exact."""

    async def close(self) -> None:
        self._event.set()
