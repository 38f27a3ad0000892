"""The server's consumer of worker events: ``claimed``, ``progress``, ``done``, ``requeued``.

``WorkerEventConsumer`` reads them from FLOWYARD_EVENTS through the durable
``flowyard_server`` consumer, a batch at a time: the batch is folded in one
database transaction and acked only after the commit. Nothing it refuses is
redelivered: a duplicate, a late event or an illegal transition is logged and
acked. It uses nats-py rather than a FastStream subscriber because it needs
exactly that shape (one transaction per fetched batch, acks after commit, the
subject and headers of every message for its checks), and because FastStream's
batch subscriber waits to fill a batch (see docs/nats.md).

Before a worker's successful result is recorded, its outputs are streamed from
the object store into the server's tasks folder, so downloads work as in every
other mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime
from typing import Protocol

from nats.aio.client import Client
from nats.aio.msg import Msg
from pydantic import ValidationError

from flowyard.bus.nats.broker import best_effort
from flowyard.bus.nats.pull import Puller
from flowyard.bus.nats.streams import EVENTS_STREAM, ORIGIN, SERVER_CONSUMER, WORKER
from flowyard.bus.nats.subjects import PREFIX, subject_tokens, token
from flowyard.core.backoff import retry_forever
from flowyard.core.errors import FlowyardError, Unavailable
from flowyard.core.events import Event, TaskDone, parse_event
from flowyard.core.redelivery import Outcome, WorkerEvent

log = logging.getLogger(__name__)


class EventRecords(Protocol):
    async def record_batch(
        self, items: Sequence[WorkerEvent], now: datetime | None = None
    ) -> list[Outcome]: ...

    async def finished(self, task_id: uuid.UUID) -> bool: ...


class Outputs(Protocol):
    async def download_outputs(self, done: TaskDone) -> None: ...

    async def delete_objects(self, owner: str, task_id: uuid.UUID, paths: list[str]) -> None: ...


def check_subject(subject: str, event: Event) -> str:
    """Why a message's subject does not match its event (forged or misrouted); '' if it does."""
    parts = subject_tokens(subject)
    kind = event.type.split(".", 1)[1]
    expected = [PREFIX, "events", kind, token(event.owner), token(event.flow)]
    if parts != expected:
        return f"subject {subject!r} does not match {event.type} of {event.owner}/{event.flow}"
    return ""


class WorkerEventConsumer:
    def __init__(
        self,
        client: Client,
        projection: EventRecords,
        outputs: Outputs,
        *,
        batch: int = 256,
        wait: float = 1.0,
        on_missing: Callable[[], None] | None = None,
    ) -> None:
        self.projection = projection
        self.outputs = outputs
        self.batch = batch
        self.wait = wait
        self.on_missing = on_missing
        self.puller = Puller(client, EVENTS_STREAM, SERVER_CONSUMER)
        self.recorded = 0
        self.refused = 0
        self._cleanup: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        await retry_forever(self.once, what="worker events", log=log)

    async def once(self) -> None:
        """One batch: pulled, folded in one transaction, acked after the commit."""
        msgs = await self.puller.pull(self.batch, wait=self.wait)
        if msgs:
            await self.handle(msgs)
        elif self.puller.missing:
            self.puller.gone(self.on_missing)

    async def handle(self, msgs: list[Msg]) -> None:
        items: list[WorkerEvent] = []
        for msg in msgs:
            item = self._decode(msg)
            if item is not None:
                items.append(item)
        try:
            if any(_has_outputs(item.event) for item in items):
                async with _in_progress(msgs):  # large outputs take longer than the ack wait
                    items = [await self._fetch_outputs(item) for item in items]
            outcomes = await self.projection.record_batch(items)
        except Unavailable:
            for msg in msgs:  # nothing was recorded: all of them again, a little later
                with best_effort():
                    await msg.nak(delay=1)
            raise
        for msg in msgs:
            with best_effort():
                await msg.ack()
        for outcome in outcomes:
            self._log(outcome)

    def _decode(self, msg: Msg) -> WorkerEvent | None:
        headers = msg.headers or {}
        if headers.get(ORIGIN) == "server":
            return None  # the server's own event, relayed: already in the database
        try:
            event = parse_event(msg.data)
        except (ValidationError, ValueError) as exc:
            log.warning("dropping an undecodable event on %s: %s", msg.subject, exc)
            return None
        problem = check_subject(msg.subject, event)
        if problem:
            log.warning("refused %s %s: %s", event.type, event.id, problem)
            self.refused += 1
            return None
        return WorkerEvent(event, headers.get(WORKER))

    async def _fetch_outputs(self, item: WorkerEvent) -> WorkerEvent:
        """Bring a result's outputs into the tasks folder; a bad result becomes a failure."""
        event = item.event
        if not isinstance(event, TaskDone) or not _has_outputs(event):
            return item
        if await self.projection.finished(event.task_id):
            return item  # a duplicate or a late result: refused anyway, nothing to fetch
        try:
            await self.outputs.download_outputs(event)
        except Unavailable:
            raise
        except FlowyardError as exc:
            log.warning("task %s: result refused: %s", event.task_id, exc.message)
            failed = TaskDone(
                task_id=event.task_id,
                flow=event.flow,
                owner=event.owner,
                attempt=event.attempt,
                status="failed",
                error=f"the worker's outputs could not be stored: {exc.message}",
                worker_id=event.worker_id,
            )
            return WorkerEvent(failed, item.worker_id)
        return item

    def _log(self, outcome: Outcome) -> None:
        event = outcome.event
        if outcome.status == "refused":
            self.refused += 1
            log.info(
                "refused %s %s of task %s: %s", event.type, event.id, event.task_id, outcome.reason
            )
            return
        if outcome.status != "recorded":
            return
        self.recorded += 1
        if isinstance(event, TaskDone) and outcome.task is not None:
            paths = [ref.path for ref in outcome.task.inputs] + [r.path for r in event.outputs]
            if not paths:
                return
            cleanup = self.outputs.delete_objects(event.owner, event.task_id, paths)
            job = asyncio.create_task(cleanup)
            self._cleanup.add(job)
            job.add_done_callback(self._cleanup.discard)

    async def close(self) -> None:
        await self.puller.close()


def _has_outputs(event: Event) -> bool:
    return isinstance(event, TaskDone) and event.status == "succeeded" and bool(event.outputs)


@contextlib.asynccontextmanager
async def _in_progress(msgs: list[Msg], every: float = 10.0) -> AsyncIterator[None]:
    """Keep the batch's messages from being redelivered while their outputs download."""

    async def beat() -> None:
        while True:
            await asyncio.sleep(every)
            for msg in msgs:
                with best_effort():
                    await msg.in_progress()

    keeper = asyncio.create_task(beat())
    try:
        yield
    finally:
        keeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await keeper
