"""The database work queue: claims with ``FOR UPDATE SKIP LOCKED``, leases, reaping.

A claim is one short transaction: the claim statement of the dialect family
(``claims.py``) and one multi-row insert of the ``task.claimed`` events. A busy
worker's claims ride the writes of its results (``report_many`` with a
``Refill``): the slots those results free are filled in the same transaction.

No transaction stays open while a flow runs: a lease (a deadline column) marks
ownership, heartbeats extend it, and ``reap`` turns expired leases into
``task.requeued`` (or ``task.done`` failed when attempts are used up).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from flowyard.adapters.sql.claims import claim_rows
from flowyard.adapters.sql.database import Database, Tx
from flowyard.adapters.sql.held_results import NotAllHeld, is_held_result, write_held_results
from flowyard.adapters.sql.rows import task_from_row
from flowyard.adapters.sql.schema import tasks
from flowyard.adapters.sql.task_store import SqlTaskStore, append_events, record_in, write_task
from flowyard.core.errors import (
    IllegalTransition,
    LeaseLost,
    StaleAttempt,
    TaskFinished,
    Unavailable,
)
from flowyard.core.events import TaskClaimed, TaskDone, TaskProgress, TaskRequeued, utcnow
from flowyard.core.ports import Heartbeat, Refill, Reported, Waker, WorkerIdentity
from flowyard.core.task import Task, TaskState, apply, event_for, lease_expired

log = logging.getLogger(__name__)


class SqlWorkQueue:
    def __init__(
        self,
        store: SqlTaskStore,
        waker: Waker,
        *,
        lease_seconds: float,
    ) -> None:
        self.store = store
        self.db: Database = store.db
        self.waker = waker
        self.lease = timedelta(seconds=lease_seconds)
        self._next_due: datetime | None = None
        self._came_up_short: tuple[WorkerIdentity, datetime] | None = None

    async def register(self, worker: WorkerIdentity) -> None:
        await self.store.register_worker(worker, utcnow())

    async def claim(self, worker: WorkerIdentity, limit: int) -> Sequence[Task]:
        if limit <= 0 or not worker.flows:
            return []
        self.waker.clear()
        now = utcnow()
        async with self.db.write(pipelined=True) as tx:
            claimed, events = await self._claim_in(tx, Refill(worker, limit), now)
            await append_events(tx, events)
        self.waker.found_work(bool(claimed))
        self._came_up_short = (worker, now) if len(claimed) < limit else None
        return claimed

    async def _claim_in(
        self, tx: Tx, refill: Refill | None, now: datetime
    ) -> tuple[list[Task], list[TaskClaimed]]:
        """The claim statement in ``tx``, and the ``task.claimed`` events it makes, for the
        caller to append (with the events of its results: one insert for all)."""
        if refill is None or refill.limit <= 0 or not refill.worker.flows:
            return [], []
        worker, deadline = refill.worker, now + self.lease
        claimed = await claim_rows(tx, self.db.dialect, worker, refill.limit, now, deadline)
        events = [
            event_for(t, TaskClaimed, at=now, worker_id=worker.id, lease_expires_at=deadline)
            for t in claimed
        ]
        return claimed, events

    async def _next_scheduled(self, worker: WorkerIdentity, now: datetime) -> datetime | None:
        """When the earliest scheduled task of these flows becomes claimable (None: none)."""
        query = sa.select(sa.func.min(tasks.c.not_before)).where(
            (tasks.c.state == TaskState.queued.value)
            & tasks.c.flow.in_(worker.flows)
            & (tasks.c.not_before > now)
        )
        if worker.owner is not None:
            query = query.where(tasks.c.owner == worker.owner)
        async with self.db.read() as conn:
            value: datetime | None = (await conn.execute(query)).scalar()
        if isinstance(value, datetime) and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)  # MIN() of a column loses its type on some drivers
        return value

    async def wait_for_work(self, max_wait: float) -> None:
        """Until woken, ``max_wait``, or the next scheduled task is due, whichever first.

        When the last claim came up short, the earliest scheduled task is read here
        rather than in the claim, so the tasks it did claim start without waiting for
        that read (it cost an idle task about 6 ms between its claim and its flow)."""
        if self._came_up_short is not None:
            (worker, claimed_at), self._came_up_short = self._came_up_short, None
            try:
                self._next_due = await self._next_scheduled(worker, claimed_at)
            except Unavailable as exc:  # the next claim meets the outage and backs off
                log.debug("no next scheduled time: %s", exc.message)
                self._next_due = None
        if self._next_due is not None:
            due_in = (self._next_due - utcnow()).total_seconds()
            max_wait = max(0.0, min(max_wait, due_in + 0.01))
        await self.waker.wait(max_wait)

    async def heartbeat(
        self, worker: WorkerIdentity, running: Sequence[Task]
    ) -> list[Heartbeat | LeaseLost]:
        """One ``UPDATE`` for all the attempts (fenced by id, attempt and worker), then one
        read of their cancel flags, in one transaction."""
        if not running:
            return []
        deadline = utcnow() + self.lease
        attempts = sa.or_(*((tasks.c.id == t.id) & (tasks.c.attempt == t.attempt) for t in running))
        held = (
            attempts & (tasks.c.state == TaskState.running.value) & (tasks.c.worker_id == worker.id)
        )
        async with self.db.write() as tx:
            await tx.conn.execute(sa.update(tasks).where(held).values(lease_expires_at=deadline))
            query = sa.select(tasks.c.id, tasks.c.cancel_requested).where(held)
            cancels = {row.id: bool(row.cancel_requested) for row in await tx.conn.execute(query)}
        return [
            Heartbeat(cancel_requested=cancels[t.id])
            if t.id in cancels
            else LeaseLost(f"task {t.id} attempt {t.attempt} is no longer ours")
            for t in running
        ]

    async def report(
        self, worker: WorkerIdentity, event: TaskProgress | TaskDone | TaskRequeued
    ) -> None:
        try:
            async with self.db.write() as tx:
                await record_in(tx, event)
        except (StaleAttempt, IllegalTransition, TaskFinished) as exc:
            raise LeaseLost(f"result of task {event.task_id} refused: {exc.message}") from exc

    async def report_many(
        self,
        worker: WorkerIdentity,
        events: Sequence[TaskDone | TaskRequeued],
        refill: Refill | None = None,
    ) -> Reported:
        """One transaction for all, rows locked in task-id order (no deadlock between two
        workers' batches), and the claim of ``refill`` after them. The worker's own
        results are written under their fence without reading the rows
        (``held_results.py``), and their events go in one insert with those of the
        claim; if any fence fails, the batch is rolled back and recorded
        event by event, which refuses exactly the stale ones. On PostgreSQL the write
        is pipelined: BEGIN, the update and the claim go out together, then the events'
        insert and the COMMIT (``Database.write``)."""
        ordered = sorted(events, key=lambda e: e.task_id)
        held = [e for e in ordered if is_held_result(e)]
        try:
            # a retry's requeue is folded by record_in, through SQLAlchemy: not pipelined
            async with self.db.write(pipelined=len(held) == len(ordered)) as tx:
                fence = await write_held_results(tx, held)
                for event in ordered:
                    if not is_held_result(event):
                        await record_in(tx, event)  # rare, one by one
                claimed, claims = await self._claim_in(tx, refill, utcnow())
                await fence.check(tx)
                await append_events(tx, [*held, *claims])
            return Reported([None] * len(events), claimed)
        except (NotAllHeld, StaleAttempt, IllegalTransition, TaskFinished):
            return await self._report_each(ordered, events, refill)

    async def _report_each(
        self,
        ordered: Sequence[TaskDone | TaskRequeued],
        events: Sequence[TaskDone | TaskRequeued],
        refill: Refill | None,
    ) -> Reported:
        """Event by event, in one transaction: a refusal is raised by ``apply`` before
        anything of its event is written, so the others still commit."""
        outcomes: dict[uuid.UUID, LeaseLost | None] = {}
        async with self.db.write() as tx:
            for event in ordered:
                try:
                    await record_in(tx, event)
                    outcomes[event.id] = None
                except (StaleAttempt, IllegalTransition, TaskFinished) as exc:
                    refused = f"result of task {event.task_id} refused: {exc.message}"
                    outcomes[event.id] = LeaseLost(refused)
            claimed, claims = await self._claim_in(tx, refill, utcnow())
            await append_events(tx, claims)
        return Reported([outcomes[event.id] for event in events], claimed)

    async def release(self, worker: WorkerIdentity, task: Task, reason: str) -> None:
        event = event_for(task, TaskRequeued, reason=reason)
        try:
            async with self.db.write() as tx:
                await record_in(tx, event)
        except (StaleAttempt, IllegalTransition, TaskFinished):
            log.info("task %s was no longer ours to release", task.id)

    async def close(self) -> None:
        await self.waker.close()

    async def reap(self, now: datetime | None = None, batch: int = 100) -> int:
        """Requeue (or fail) running tasks whose lease expired; safe to run anywhere, any time.

        Tasks held by NATS workers are skipped: JetStream's ack wait is their lease, and
        the server's NATS reconciler (``bus/nats/reconcile.py``) owns their recovery.
        """
        if self._recovering():
            return 0
        now = now or utcnow()
        expired = (
            (tasks.c.state == TaskState.running.value)
            & (tasks.c.lease_expires_at < now)
            & tasks.c.lease_keeper.is_(None)  # a transport keeps the lease: not ours
        )
        return await self._expire(expired, now, "lease expired", batch)

    def _recovering(self) -> bool:
        """True within one lease of this process's last database outage.

        Workers could not heartbeat while the database was down, so their leases ran
        out through no fault of theirs; give them one lease to renew before taking
        their tasks away (otherwise a short outage re-runs every task in flight).
        """
        since = self.db.unavailable_at
        if since is None or time.monotonic() - since >= self.lease.total_seconds():
            return False
        log.info(
            "not reaping yet: the database was unreachable %.1fs ago", time.monotonic() - since
        )
        return True

    async def release_worker(self, worker_id: str, reason: str) -> int:
        """Treat every task held by ``worker_id`` as abandoned (a restarted in-process worker)."""
        held = (tasks.c.state == TaskState.running.value) & (tasks.c.worker_id == worker_id)
        return await self._expire(held, utcnow(), reason, 1000)

    async def _expire(self, where: Any, now: datetime, reason: str, batch: int) -> int:
        async with self.db.write() as tx:
            query = (
                sa.select(tasks)
                .where(where)
                .order_by(tasks.c.lease_expires_at)
                .limit(batch)
                .with_for_update(skip_locked=True)
            )
            rows = (await tx.conn.execute(query)).all()
            for row in rows:
                task = task_from_row(row)
                event = lease_expired(task, now, reason)
                await write_task(tx, task, apply(task, event))
                await append_events(tx, [event])
                log.warning("task %s: %s", task.id, getattr(event, "reason", None) or event.error)
        return len(rows)
