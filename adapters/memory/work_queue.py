"""A work queue over ``MemoryTaskStore``: leased claims by priority, woken on record.

The same rules as ``SqlWorkQueue``: a claim takes queued, due tasks of the
worker's flows (and owner) by priority, then age, and records their
``task.claimed``; a heartbeat extends only the caller's current attempt; a stale
report is ``LeaseLost``; ``reap`` requeues or fails what outlived its lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from datetime import datetime, timedelta

from flowyard.adapters.memory.task_store import MemoryTaskStore
from flowyard.core.errors import (
    IllegalTransition,
    LeaseLost,
    StaleAttempt,
    TaskFinished,
    TaskNotFound,
)
from flowyard.core.events import (
    Event,
    TaskClaimed,
    TaskDone,
    TaskProgress,
    TaskRequeued,
    utcnow,
)
from flowyard.core.ports import Heartbeat, Refill, Reported, WorkerIdentity
from flowyard.core.results import each_reported
from flowyard.core.task import Task, TaskState, event_for, lease_expired

log = logging.getLogger(__name__)

WAKE_TYPES = frozenset({"task.created", "task.requeued", "task.retried"})
REFUSED = (StaleAttempt, IllegalTransition, TaskFinished)


class MemoryWorkQueue:
    def __init__(self, store: MemoryTaskStore, *, lease_seconds: float = 30.0) -> None:
        self.store = store
        self.lease = timedelta(seconds=lease_seconds)
        self._wake = asyncio.Event()
        self._next_due: datetime | None = None
        store.on_commit(self._on_commit)

    def _on_commit(self, events: Sequence[Event]) -> None:
        if any(e.type in WAKE_TYPES for e in events):
            self._wake.set()

    async def register(self, worker: WorkerIdentity) -> None:
        await self.store.register_worker(worker, utcnow())

    def _claimable(self, worker: WorkerIdentity, task: Task) -> bool:
        return (
            task.state is TaskState.queued
            and task.flow in worker.flows
            and (worker.owner is None or task.owner == worker.owner)
        )

    async def claim(self, worker: WorkerIdentity, limit: int) -> Sequence[Task]:
        self._wake.clear()
        if limit <= 0:
            return []
        now = utcnow()
        due = [
            t
            for t in self.store.tasks()
            if self._claimable(worker, t) and (t.not_before is None or t.not_before <= now)
        ]
        due.sort(key=lambda t: (-t.priority, t.created_at, t.id))
        claims = [
            event_for(
                t,
                TaskClaimed,
                attempt=t.attempt + 1,
                at=now,
                worker_id=worker.id,
                lease_expires_at=now + self.lease,
            )
            for t in due[:limit]
        ]
        claimed = self.store.commit(claims)
        if len(claimed) < limit:
            self._next_due = self.next_due(worker)
        return claimed

    def next_due(self, worker: WorkerIdentity) -> datetime | None:
        """When the earliest scheduled task of the worker's becomes claimable."""
        now = utcnow()
        times = [
            t.not_before
            for t in self.store.tasks()
            if self._claimable(worker, t) and t.not_before is not None and t.not_before > now
        ]
        return min(times, default=None)

    async def wait_for_work(self, max_wait: float) -> None:
        """Until a task is created or requeued, ``max_wait``, or the next scheduled one is due."""
        if self._next_due is not None:
            due_in = (self._next_due - utcnow()).total_seconds()
            max_wait = max(0.0, min(max_wait, due_in + 0.01))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), max_wait)

    async def heartbeat(
        self, worker: WorkerIdentity, tasks: Sequence[Task]
    ) -> list[Heartbeat | LeaseLost]:
        answers: list[Heartbeat | LeaseLost] = []
        for task in tasks:
            try:
                answers.append(await self._beat(worker, task))
            except LeaseLost as lost:
                answers.append(lost)
        return answers

    async def _beat(self, worker: WorkerIdentity, task: Task) -> Heartbeat:
        try:
            current = await self.store.get(task.id)
        except TaskNotFound as exc:  # deleted meanwhile
            raise LeaseLost(f"task {task.id} attempt {task.attempt} is no longer ours") from exc
        if (
            current.state is not TaskState.running
            or current.attempt != task.attempt
            or current.worker_id != worker.id
        ):
            raise LeaseLost(f"task {task.id} attempt {task.attempt} is no longer ours")
        extended = current.model_copy(update={"lease_expires_at": utcnow() + self.lease})
        self.store.replace(extended)
        return Heartbeat(cancel_requested=current.cancel_requested)

    async def report(
        self, worker: WorkerIdentity, event: TaskProgress | TaskDone | TaskRequeued
    ) -> None:
        try:
            await self.store.record(event)
        except REFUSED as exc:
            raise LeaseLost(f"result of task {event.task_id} refused: {exc.message}") from exc

    async def report_many(
        self,
        worker: WorkerIdentity,
        events: Sequence[TaskDone | TaskRequeued],
        refill: Refill | None = None,
    ) -> Reported:
        refused = await each_reported(lambda event: self.report(worker, event), events)
        claimed = await self.claim(refill.worker, refill.limit) if refill is not None else ()
        return Reported(refused, claimed)

    async def release(self, worker: WorkerIdentity, task: Task, reason: str) -> None:
        try:
            await self.store.record(event_for(task, TaskRequeued, reason=reason))
        except REFUSED:
            log.info("task %s was no longer ours to release", task.id)

    async def close(self) -> None:
        self._wake.set()

    async def reap(self, now: datetime | None = None) -> int:
        """Requeue (or fail) running tasks whose lease expired."""
        now = now or utcnow()
        expired = [
            t
            for t in self.store.tasks()
            if t.state is TaskState.running
            and t.lease_expires_at is not None
            and t.lease_expires_at < now
        ]
        for task in expired:
            await self.store.record(lease_expired(task, now))
        return len(expired)
