"""Recovering attempts whose lease a transport keeps: the reconciler's and advisories' SQL side.

A transport such as NATS keeps its workers' leases itself (JetStream's ack wait)
and the database only mirrors them, refreshed by heartbeats. When a worker
vanishes and the transport does not hand its work on, or the transport gives up
delivering it, the server ends or requeues the attempt here, each re-checked
under its row lock. ``tasks.lease_keeper`` says which running attempts are the
transport's (``write_kept``); the database's own lease expiry skips them.

Events derived here are appended with ``relayed_at`` NULL, so the outbox relay
publishes them to the event stream like any other server event.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Literal

import sqlalchemy as sa

from flowyard.adapters.sql.database import Database, Tx
from flowyard.adapters.sql.rows import task_from_row
from flowyard.adapters.sql.schema import events, tasks
from flowyard.adapters.sql.task_store import append_event, load_for_update, write_task
from flowyard.core.events import Event, TaskDone, utcnow
from flowyard.core.redelivery import KeptLeases
from flowyard.core.task import Task, TaskState, apply, event_for, lease_expired


def lease_keeper(task: Task, kept: KeptLeases) -> str | None:
    """What ``tasks.lease_keeper`` says after the projection wrote ``task``."""
    return kept.transport if task.state is TaskState.running else None


async def write_kept(tx: Tx, before: Task, after: Task, kept: KeptLeases) -> None:
    """``write_task``, and who keeps the lease of the attempt it leaves running (if any)."""
    await write_task(tx, before, after)
    await tx.conn.execute(
        sa.update(tasks)
        .where(tasks.c.id == after.id)
        .values(lease_keeper=lease_keeper(after, kept))
    )


class TransportRecovery:
    db: Database
    kept: KeptLeases
    gated: bool

    async def fail_undelivered(
        self, task_id: uuid.UUID, deliveries: int, error: str, now: datetime | None = None
    ) -> TaskDone | None:
        """The work message hit JetStream's MaxDeliver: end the task unless it already ended.

        ``deliveries`` is the last attempt the message ran (its base plus MaxDeliver). A
        message whose attempts all lie behind the task's (a leftover from before a
        retry, or a message the reconciler replaced) ends nothing, and neither does one
        whose task has attempts left by the database's count: the database counts
        recorded claims, not deliveries (the reconciler dispatches it again).
        """
        now = now or utcnow()
        async with self.db.write() as tx:
            task = await load_for_update(tx, task_id)
            if task is None or task.state.finished or deliveries < task.attempt:
                return None
            if task.attempt < task.max_attempts:
                # some deliveries never became recorded attempts (their claims were lost, e.g.
                # while FLOWYARD_EVENTS was missing): the reconciler sends the work again
                return None
            status: Literal["failed", "cancelled"] = (
                "cancelled" if task.cancel_requested else "failed"
            )
            done = event_for(task, TaskDone, at=now, status=status, error=error)
            await write_kept(tx, task, apply(task, done), self.kept)
            await append_event(tx, done)
        return done

    async def fail_stuck(
        self, task_id: uuid.UUID, attempt: int, error: str, now: datetime | None = None
    ) -> TaskDone | None:
        """Fail a task still queued at ``attempt`` whose work no worker ever claimed."""
        now = now or utcnow()
        async with self.db.write() as tx:
            task = await load_for_update(tx, task_id)
            if task is None or task.state is not TaskState.queued or task.attempt != attempt:
                return None
            status = "cancelled" if task.cancel_requested else "failed"
            done = event_for(task, TaskDone, at=now, status=status, error=error)
            await write_kept(tx, task, apply(task, done), self.kept)
            await append_event(tx, done)
        return done

    async def stale_running(self, before: datetime, limit: int = 100) -> list[Task]:
        """Tasks whose lease the transport keeps and nobody refreshed since ``before``."""
        query = (
            sa.select(tasks)
            .where(
                (tasks.c.state == TaskState.running.value)
                & (tasks.c.lease_keeper == self.kept.transport)
                & (tasks.c.lease_expires_at < before)
            )
            .order_by(tasks.c.lease_expires_at)
            .limit(limit)
        )
        async with self.db.read() as conn:
            rows = (await conn.execute(query)).all()
        return [task_from_row(r) for r in rows]

    async def expire(
        self, task_id: uuid.UUID, before: datetime, reason: str, now: datetime | None = None
    ) -> tuple[Event, Task] | None:
        """Requeue (or fail) a stale task of the transport, re-checked under its row lock."""
        now = now or utcnow()
        async with self.db.write() as tx:
            task = await load_for_update(tx, task_id)
            if (
                task is None
                or task.state is not TaskState.running
                or task.lease_expires_at is None
                or task.lease_expires_at >= before
            ):
                return None
            event = lease_expired(task, now, reason)
            updated = apply(task, event)
            await write_kept(tx, task, updated, self.kept)
            await append_event(tx, event)
        return event, updated

    async def queued(
        self,
        updated_before: datetime,
        limit: int = 1000,
        after: tuple[datetime, uuid.UUID] | None = None,
    ) -> list[Task]:
        """Queued tasks, oldest first, whose events have all been relayed (work was sent).

        ``after`` is the ``(updated_at, id)`` of the last task of the previous page.
        """
        unrelayed = (
            sa.select(events.c.seq)
            .where((events.c.task_id == tasks.c.id) & events.c.relayed_at.is_(None))
            .exists()
        )
        where = (
            (tasks.c.state == TaskState.queued.value)
            & (tasks.c.updated_at < updated_before)
            # a task scheduled for later has no work message until the scheduler sends it
            & (tasks.c.not_before.is_(None) | (tasks.c.not_before < updated_before))
            & ~unrelayed
        )
        if self.gated:
            where &= tasks.c.work_sent_at.is_not(None)
        if after is not None:
            where &= (tasks.c.updated_at > after[0]) | (
                (tasks.c.updated_at == after[0]) & (tasks.c.id > after[1])
            )
        query = sa.select(tasks).where(where).order_by(tasks.c.updated_at, tasks.c.id).limit(limit)
        async with self.db.read() as conn:
            rows = (await conn.execute(query)).all()
        return [task_from_row(r) for r in rows]

    async def states(self, task_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, tuple[str, int]]:
        """``(state, attempt)`` of each task that still exists."""
        if not task_ids:
            return {}
        query = sa.select(tasks.c.id, tasks.c.state, tasks.c.attempt).where(
            tasks.c.id.in_(list(task_ids))
        )
        async with self.db.read() as conn:
            rows = (await conn.execute(query)).all()
        return {r.id: (r.state, r.attempt) for r in rows}
