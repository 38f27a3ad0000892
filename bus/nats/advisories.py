"""MaxDeliver advisories: tasks whose work JetStream gave up delivering.

JetStream sends an advisory when a work message reached MaxDeliver (every worker
that took it stopped responding) and then keeps the message; ``AdvisoryWatcher``
ends its task (unless the database says it has attempts left, or it already
ended) and deletes the message.
"""

from __future__ import annotations

import contextlib
import json
import logging
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Protocol

import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from pydantic import ValidationError

from flowyard.bus.nats.broker import best_effort, nats_errors
from flowyard.bus.nats.pull import Puller
from flowyard.bus.nats.streams import (
    ADVISORY_STREAM,
    ATTEMPT_BASE,
    SERVER_CONSUMER,
    WORK_STREAM_PREFIX,
)
from flowyard.core.backoff import retry_forever
from flowyard.core.events import TaskCreated, TaskDone

log = logging.getLogger(__name__)


class UndeliveredRecords(Protocol):
    async def fail_undelivered(
        self, task_id: uuid.UUID, deliveries: int, error: str, now: datetime | None = None
    ) -> TaskDone | None: ...


class AdvisoryWatcher:
    """Ends tasks whose work hit MaxDeliver, then deletes the message (JetStream keeps it).

    The advisories are stored in FLOWYARD_ADVISORIES, so one sent while the
    server was down is still handled when it comes back.
    """

    def __init__(
        self,
        client: Client,
        js: JetStreamContext,
        projection: UndeliveredRecords,
        *,
        lease_seconds: float,
        wait: float = 2.0,
        on_missing: Callable[[], None] | None = None,
    ) -> None:
        self.js = js
        self.projection = projection
        self.lease_seconds = lease_seconds
        self.wait = wait
        self.on_missing = on_missing
        self.puller = Puller(client, ADVISORY_STREAM, SERVER_CONSUMER)
        self.failed = 0

    async def run(self) -> None:
        await retry_forever(self.once, what="advisories", log=log)

    async def once(self) -> None:
        msgs = await self.puller.pull(16, wait=self.wait)
        for msg in msgs:
            await self.handle(msg)
        if not msgs and self.puller.missing:
            self.puller.gone(self.on_missing)

    async def handle(self, msg: Msg) -> None:
        try:
            advisory = json.loads(msg.data)
            stream, seq = str(advisory["stream"]), int(advisory["stream_seq"])
            deliveries = int(advisory.get("deliveries", 0))
        except (ValueError, KeyError, TypeError):
            await self._ack(msg)
            return
        if stream.startswith(WORK_STREAM_PREFIX):
            await self._undeliverable(stream, seq, deliveries)
        await self._ack(msg)

    async def _undeliverable(self, stream: str, seq: int, deliveries: int) -> None:
        with nats_errors(f"reading work message {stream}/{seq}"):
            try:
                raw = await self.js.get_msg(stream, seq)
            except nats.js.errors.NotFoundError:
                return  # already deleted (handled before a restart)
        try:
            created = TaskCreated.model_validate_json(raw.data or b"")
        except ValidationError:
            created = None
        if created is not None:
            base = int((raw.headers or {}).get(ATTEMPT_BASE, "0"))
            attempts = base + deliveries
            error = (
                f"no worker finished it in {attempts} attempts: each worker that took it "
                f"stopped responding, and NATS redelivered it after every ack wait of "
                f"{self.lease_seconds:g}s"
            )
            done = await self.projection.fail_undelivered(created.task_id, attempts, error)
            if done is not None:
                self.failed += 1
                log.warning("task %s %s: %s", created.task_id, done.status, error)
        gone = contextlib.suppress(nats.js.errors.NotFoundError)
        with nats_errors(f"deleting work message {stream}/{seq}"), gone:
            await self.js.delete_msg(stream, seq)

    async def _ack(self, msg: Msg) -> None:
        with best_effort():
            await msg.ack()

    async def close(self) -> None:
        await self.puller.close()
