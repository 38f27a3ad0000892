"""The database is the system of record; JetStream can lose what it acknowledged.

Jepsen found acknowledged JetStream messages lost after crashes (fsync runs every
two minutes by default), and a work message can also vanish legitimately (a
stale worker acked a message another worker was running). So the server
reconciles, at start and then every ``interval``:

- queued tasks: a task the database says is queued, all of whose events were
  relayed, must have its work message in its owner's stream. The stream is read
  (bounded) for the task ids it holds; a task without a message is sent again,
  after re-checking that the database still says queued.
- running tasks held by NATS workers: their database lease is refreshed by every
  heartbeat (a third of the lease). One not refreshed for three leases while the
  server was connected to NATS and its consumer had caught up means the worker
  is gone and JetStream did not redeliver: the attempt is requeued (or failed,
  when it was the last) and its work sent again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Protocol

import nats.js.errors
from nats.js import JetStreamContext
from pydantic import ValidationError

from bus.nats.broker import TRANSIENT, unavailable
from bus.nats.dispatch import WorkDispatcher, created_of
from bus.nats.streams import EVENTS_STREAM, SERVER_CONSUMER, work_stream, work_subject
from core.errors import Unavailable
from core.events import Event, TaskCreated, TaskRequeued, utcnow
from core.task import Task

log = logging.getLogger(__name__)

SCAN_CAP = 10_000
"""Most messages read from one subject per round; a longer backlog is checked later."""


class Records(Protocol):
    async def queued(self, updated_before: datetime, limit: int = 1000) -> list[Task]: ...

    async def stale_running(self, before: datetime, limit: int = 100) -> list[Task]: ...

    async def expire(
        self, task_id: uuid.UUID, before: datetime, reason: str, now: datetime | None = None
    ) -> tuple[Event, Task] | None: ...

    async def states(self, task_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, tuple[str, int]]: ...


class Reconciler:
    def __init__(
        self,
        records: Records,
        dispatcher: WorkDispatcher,
        js: JetStreamContext,
        *,
        lease_seconds: float,
        connected_for: Callable[[], float],
        interval: float = 60.0,
        queued_grace: float = 30.0,
    ) -> None:
        self.records = records
        self.dispatcher = dispatcher
        self.js = js
        self.lease_seconds = lease_seconds
        self.connected_for = connected_for
        self.interval = interval
        self.queued_grace = queued_grace
        self.redispatched = 0
        self.expired = 0

    async def run(self) -> None:
        while True:
            try:
                await self.once()
            except Unavailable as exc:
                log.warning("reconciliation skipped: %s", exc.message)
            await asyncio.sleep(self.interval)

    async def once(self) -> None:
        await self.lost_queued()
        await self.stale_running()

    # -------------------------------------------------------------------------- queued

    async def lost_queued(self) -> int:
        cutoff = utcnow() - timedelta(seconds=self.queued_grace)
        candidates = await self.records.queued(cutoff)
        groups: dict[tuple[str, str], list[Task]] = {}
        for task in candidates:
            groups.setdefault((task.owner, task.flow), []).append(task)
        missing: list[Task] = []
        for (owner, flow), tasks in groups.items():
            present = await self._task_ids_in(work_stream(owner), work_subject(owner, flow))
            if present is None:
                continue
            missing += [t for t in tasks if t.id not in present]
        if not missing:
            return 0
        states = await self.records.states([t.id for t in missing])
        sent = 0
        for task in missing:
            if states.get(task.id) != ("queued", task.attempt):
                continue  # claimed, finished or requeued meanwhile
            log.warning("task %s is queued but its work message is gone; sending it again", task.id)
            await self.dispatcher.send(
                created_of(task), base=task.attempt, msg_id=_resend_id(task.id, task.attempt)
            )
            await self.dispatcher.wake(task.owner, task.flow)
            sent += 1
        self.redispatched += sent
        return sent

    async def _task_ids_in(self, stream: str, subject: str) -> set[uuid.UUID] | None:
        """Task ids of the work messages on ``subject``; None when there are too many."""
        try:
            info = await self.js.stream_info(stream, subjects_filter=subject)
        except nats.js.errors.NotFoundError:
            return set()
        except TRANSIENT as exc:
            raise unavailable(f"stream info of {stream}", exc) from exc
        count = (info.state.subjects or {}).get(subject, 0)
        if count > SCAN_CAP:
            log.info("%s holds %d messages; not scanned this round", subject, count)
            return None
        found: set[uuid.UUID] = set()
        seq = 1
        for _ in range(count):
            try:
                raw = await self.js.get_msg(stream, seq=seq, subject=subject, next=True)
            except nats.js.errors.NotFoundError:
                break
            except TRANSIENT as exc:
                raise unavailable(f"reading {stream}", exc) from exc
            with contextlib.suppress(ValidationError):
                found.add(TaskCreated.model_validate_json(raw.data or b"").task_id)
            seq = (raw.seq or seq) + 1
        return found

    # ------------------------------------------------------------------------- running

    async def stale_running(self) -> int:
        horizon = 3 * self.lease_seconds
        if self.connected_for() < horizon or not await self._caught_up():
            return 0  # heartbeats could not reach us: a stale lease proves nothing yet
        before = utcnow() - timedelta(seconds=2 * self.lease_seconds)
        expired = 0
        for task in await self.records.stale_running(before):
            reason = f"no heartbeat from worker {task.worker_id} for {horizon:g}s"
            result = await self.records.expire(task.id, before, reason)
            if result is None:
                continue
            event, updated = result
            expired += 1
            log.warning("task %s: %s", task.id, getattr(event, "reason", None) or event.type)
            if isinstance(event, TaskRequeued):
                await self.dispatcher.send(
                    created_of(updated),
                    base=updated.attempt,
                    msg_id=_resend_id(updated.id, updated.attempt),
                )
                await self.dispatcher.wake(updated.owner, updated.flow)
        self.expired += expired
        return expired

    async def _caught_up(self) -> bool:
        try:
            info = await self.js.consumer_info(EVENTS_STREAM, SERVER_CONSUMER)
        except TRANSIENT:
            return False
        return (info.num_pending or 0) == 0 and (info.num_ack_pending or 0) < 1000


def _resend_id(task_id: uuid.UUID, attempt: int) -> str:
    """Unique per re-send: the stream was checked, a duplicate id would drop real work."""
    return f"work:{task_id}:{attempt}:resend:{time.time_ns()}"
