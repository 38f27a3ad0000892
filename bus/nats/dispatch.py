"""Sending work: a task's message on its owner's work stream, and the wake-up after it.

The message body is the task's ``task.created`` event (everything a worker needs
to run it); the ``Flowyard-Attempt-Base`` header says how many attempts were
used before this message, so a worker's attempt is ``base + delivery count``.
The relay sends base 0 with ``Nats-Msg-Id`` ``work:<task>:0`` (a retried
publish is a duplicate, not a second message); the reconciler re-sends lost work
with the attempts the database has counted.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import nats.js.errors
from faststream.nats import NatsBroker
from nats.js import JetStreamContext
from nats.js.api import PubAck

from flowyard.bus.nats.broker import PUBLISH_TIMEOUT, best_effort, nats_errors, unavailable
from flowyard.bus.nats.streams import (
    ATTEMPT_BASE,
    MSG_ID,
    ensure_consumer,
    ensure_stream,
    work_consumer,
    work_consumer_config,
    work_stream,
    work_stream_config,
)
from flowyard.bus.nats.subjects import token, wake_subject, work_subject
from flowyard.core.errors import FlowyardError, Unavailable
from flowyard.core.events import TaskCreated
from flowyard.core.task import Task

log = logging.getLogger(__name__)

Prepare = Callable[[TaskCreated], Awaitable[None]]
"""Runs before a task's work is sent (the server uploads the task's inputs)."""


@dataclass(frozen=True)
class Work:
    """One work message: the task, the attempts used before it, its ``Nats-Msg-Id``."""

    created: TaskCreated
    base: int
    msg_id: str


def created_of(task: Task) -> TaskCreated:
    """The work body for a task known only from its row (re-dispatch by the reconciler)."""
    return TaskCreated(
        task_id=task.id,
        flow=task.flow,
        owner=task.owner,
        at=task.created_at,
        params=task.params,
        inputs=task.inputs,
        priority=task.priority,
        max_attempts=task.max_attempts,
        timeout_seconds=task.timeout_seconds,
    )


class WorkDispatcher:
    def __init__(
        self,
        broker: NatsBroker,
        js: JetStreamContext,
        *,
        lease_seconds: float,
        max_attempts: int,
        prepare: Prepare | None = None,
    ) -> None:
        self.broker = broker
        self.js = js
        self.lease_seconds = lease_seconds
        self.max_attempts = max_attempts
        self.prepare = prepare
        self._ready: set[tuple[str, str]] = set()
        self._setting_up = asyncio.Lock()

    async def ensure(self, owner: str, flow: str) -> None:
        """The owner's work stream and the flow's consumer, with today's settings (cached)."""
        if (owner, flow) in self._ready:
            return
        async with self._setting_up:  # many tasks of a new owner arrive in one relay batch
            if (owner, flow) in self._ready:
                return
            config = work_consumer_config(
                owner, flow, lease_seconds=self.lease_seconds, max_attempts=self.max_attempts
            )
            with nats_errors(f"setting up the work stream of {owner!r}"):
                await ensure_stream(self.js, work_stream_config(owner))
                await ensure_consumer(self.js, work_stream(owner), config)
            self._ready.add((owner, flow))

    def forget(self) -> None:
        """JetStream lost its store: set every work stream and consumer up again on next use."""
        self._ready.clear()

    async def verify(self, limit: int = 200) -> int:
        """Re-create the work streams and consumers in use that went missing; how many did.

        A work queue whose consumer is gone keeps its messages but delivers none,
        and nothing else would notice: the reconciler sees the messages there.
        """
        repaired = 0
        for owner, flow in sorted(self._ready)[:limit]:
            with nats_errors(f"checking the work consumer of {owner!r}"):
                try:
                    await self.js.consumer_info(work_stream(owner), work_consumer(flow))
                    continue
                except nats.js.errors.NotFoundError:
                    log.warning("work consumer of %s/%s is gone; setting it up again", owner, flow)
            self._ready.discard((owner, flow))
            await self.ensure(owner, flow)
            repaired += 1
        return repaired

    async def send(self, created: TaskCreated, *, base: int, msg_id: str) -> None:
        """Publish one task's work; raises what ``send_many`` reports for it."""
        (error,) = await self.send_many([Work(created, base, msg_id)])
        if error is not None:
            raise error

    async def send_many(self, batch: Sequence[Work]) -> list[FlowyardError | None]:
        """Publish work in the given order without waiting for each PubAck; each item's error.

        The messages go out one after the other on the connection (JetStream stores
        them in that order), then all PubAcks are awaited together: a round of many
        costs one round trip, not one each. A stream deleted under us is set up again
        and that publish retried.
        """
        errors: list[FlowyardError | None] = [None] * len(batch)
        acks: list[tuple[int, asyncio.Future[PubAck]]] = []
        for index, work in enumerate(batch):
            try:
                await self.ensure(work.created.owner, work.created.flow)
                if self.prepare is not None:
                    await self.prepare(work.created)
                with nats_errors(f"work for task {work.created.task_id}"):
                    acks.append((index, await self._publish(work)))
            except FlowyardError as exc:
                errors[index] = exc
        if acks:
            await asyncio.wait([ack for _, ack in acks], timeout=PUBLISH_TIMEOUT)
        for index, ack in acks:
            errors[index] = await self._settle(batch[index], ack)
        return errors

    async def _settle(self, work: Work, ack: asyncio.Future[PubAck]) -> FlowyardError | None:
        what = f"work for task {work.created.task_id}"
        if not ack.done():
            ack.cancel()
            return Unavailable(f"NATS: {what} failed: no PubAck within {PUBLISH_TIMEOUT:.0f}s")
        exc = ack.exception()
        if isinstance(exc, nats.js.errors.NoStreamResponseError):
            owner, flow = work.created.owner, work.created.flow
            self._ready.discard((owner, flow))  # deleted under us: set it up and send again
            try:
                await self.ensure(owner, flow)
                with nats_errors(what):
                    await asyncio.wait_for(await self._publish(work), PUBLISH_TIMEOUT)
            except FlowyardError as again:
                return again
            return None
        if exc is not None:
            return unavailable(what, exc)
        if ack.result().duplicate:
            log.debug("work %s was already sent", work.msg_id)
        return None

    async def _publish(self, work: Work) -> asyncio.Future[PubAck]:
        created = work.created
        return await self.js.publish_async(
            work_subject(created.owner, created.flow),
            created.to_json().encode(),
            stream=work_stream(created.owner),
            headers={
                MSG_ID: work.msg_id,
                ATTEMPT_BASE: str(work.base),
                "content-type": "application/json",
            },
        )

    async def wake(self, owner: str, flow: str) -> None:
        """Best effort: a missed wake-up costs a worker one poll interval."""
        with best_effort(f"wake-up for {owner}/{flow}", log_to=log):
            await self.broker.publish(b"", wake_subject(token(owner), token(flow)))
