"""The task table and its event log: the system of record.

``record`` is the one way an event changes a task: lock the row, fold the event
with ``core.task.apply`` (which refuses illegal transitions and stale attempts),
write the row and append the event, all in one transaction. An event id that is
already in the log changes nothing, so redelivered events are harmless.
"""

from __future__ import annotations

import builtins
import uuid
from collections.abc import Collection, Sequence
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from flowyard.adapters.sql import pg_direct
from flowyard.adapters.sql.database import Database, Tx
from flowyard.adapters.sql.rows import event_from_row, event_values, task_from_row, task_values
from flowyard.adapters.sql.schema import events, idempotency_keys, tasks, workers
from flowyard.core.errors import Conflict, TaskNotFound
from flowyard.core.events import Event, TaskCreated, TaskRequeued, TaskRetried
from flowyard.core.ports import WorkerIdentity
from flowyard.core.task import Task, TaskState, apply


class SqlTaskStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def record(self, event: Event, *, relayed_at: datetime | None = None) -> Task:
        if isinstance(event, TaskCreated) and relayed_at is None:
            return (await self.record_all([event]))[0]
        async with self.db.write() as tx:
            return await record_in(tx, event, relayed_at=relayed_at)

    async def record_all(self, batch: Sequence[Event]) -> list[Task]:
        """Several events in one transaction: all are recorded, or none (a batch create).

        New tasks (only ``task.created``) take two inserts for the whole batch, without
        looking anything up first; a known id among them (a create sent again) makes the
        batch roll back and go event by event, where a known event changes nothing.
        """
        created = [event for event in batch if isinstance(event, TaskCreated)]
        if created and len(created) == len(batch):
            try:
                async with self.db.write(pipelined=True) as tx:
                    return await insert_new(tx, created)
            except IntegrityError:
                pass
        async with self.db.write() as tx:
            return [await record_in(tx, event) for event in batch]

    async def record_keyed(
        self, event: TaskCreated, key: str, request_hash: str, window: timedelta
    ) -> tuple[Task, bool]:
        """Create under an idempotency key of the event's owner, in one transaction.

        ``(task, True)``: created now. ``(original, False)``: the key was used within
        ``window`` for the same request. The same key for another request is a
        ``Conflict``; a key older than the window is given to the new task.
        """
        for _ in range(3):  # a concurrent create with the same key: read what it made
            existing = await self._key(event.owner, key)
            if existing is not None:
                task_id, digest, created_at = existing
                original = await self._task_or_none(task_id)  # deleted: the key is free
                if original is not None and created_at >= event.at - window:
                    if digest != request_hash:
                        raise Conflict(
                            f"Idempotency-Key: {key!r} was used for a different request "
                            "(other flow or parameters) within the idempotency window"
                        )
                    return original, False
            try:
                async with self.db.write() as tx:
                    where = (idempotency_keys.c.owner == event.owner) & (
                        idempotency_keys.c.key == key
                    )
                    await tx.conn.execute(sa.delete(idempotency_keys).where(where))
                    await tx.conn.execute(
                        sa.insert(idempotency_keys).values(
                            owner=event.owner,
                            key=key,
                            task_id=event.task_id,
                            request_hash=request_hash,
                            created_at=event.at,
                        )
                    )
                    return await record_in(tx, event), True
            except IntegrityError:
                continue
        raise Conflict(f"Idempotency-Key: {key!r} is being used by a concurrent request")

    async def _task_or_none(self, task_id: uuid.UUID) -> Task | None:
        try:
            return await self.get(task_id)
        except TaskNotFound:
            return None

    async def _key(self, owner: str, key: str) -> tuple[uuid.UUID, str, datetime] | None:
        query = sa.select(
            idempotency_keys.c.task_id,
            idempotency_keys.c.request_hash,
            idempotency_keys.c.created_at,
        ).where((idempotency_keys.c.owner == owner) & (idempotency_keys.c.key == key))
        async with self.db.read() as conn:
            row = (await conn.execute(query)).first()
        return None if row is None else (row.task_id, row.request_hash, row.created_at)

    async def get(self, task_id: uuid.UUID) -> Task:
        async with self.db.read() as conn:
            row = (await conn.execute(sa.select(tasks).where(tasks.c.id == task_id))).first()
        if row is None:
            raise TaskNotFound(f"no task has id {task_id}")
        return task_from_row(row)

    async def list(
        self,
        *,
        state: TaskState | None = None,
        flow: str | None = None,
        owner: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> Sequence[Task]:
        query = sa.select(tasks).order_by(tasks.c.created_at.desc(), tasks.c.id.desc())
        if state is not None:
            query = query.where(tasks.c.state == state.value)
        if flow is not None:
            query = query.where(tasks.c.flow == flow)
        if owner is not None:
            query = query.where(tasks.c.owner == owner)
        async with self.db.read() as conn:
            rows = (await conn.execute(query.limit(limit).offset(offset))).all()
        return [task_from_row(r) for r in rows]

    async def children(self, task_id: uuid.UUID) -> builtins.list[uuid.UUID]:
        """The follow-ups a task's success created (chains), oldest first."""
        query = (
            sa.select(tasks.c.id)
            .where(tasks.c.parent_id == task_id)
            .order_by(tasks.c.created_at, tasks.c.id)
        )
        async with self.db.read() as conn:
            return list((await conn.execute(query)).scalars())

    async def chain_parents(
        self,
        since: datetime | None = None,
        limit: int = 500,
        *,
        among: Collection[uuid.UUID] | None = None,
    ) -> builtins.list[Task]:
        """Succeeded tasks with follow-ups, finished since ``since`` (the chainer's sweep),
        or among the ids one commit finished (its listener).

        Among ids, the state is checked here rather than in the query: with both, the
        planner may walk every succeeded task in an index led by ``state`` (26 ms with
        20,000 of them) instead of looking the ids up by key."""
        query = sa.select(tasks).where(tasks.c.then.is_not(None))
        if since is not None:
            query = query.where(tasks.c.finished_at >= since)
        if among is not None:
            query = query.where(tasks.c.id.in_(sorted(among)))
        else:
            query = query.where(tasks.c.state == TaskState.succeeded.value)
        query = query.order_by(tasks.c.finished_at).limit(limit)
        async with self.db.read() as conn:
            rows = (await conn.execute(query)).all()
        found = [task_from_row(r) for r in rows]
        return [t for t in found if t.state is TaskState.succeeded]

    async def delete(self, task_id: uuid.UUID) -> None:
        """Remove the task row; its events stay in the log (replay still sees them)."""
        async with self.db.write() as tx:
            result = await tx.conn.execute(sa.delete(tasks).where(tasks.c.id == task_id))
        if result.rowcount == 0:
            raise TaskNotFound(f"no task has id {task_id}")

    async def events(self, task_id: uuid.UUID) -> Sequence[Event]:
        query = sa.select(events.c.body).where(events.c.task_id == task_id).order_by(events.c.seq)
        async with self.db.read() as conn:
            rows = (await conn.execute(query)).all()
        return [event_from_row(r) for r in rows]

    async def events_after(self, seq: int, limit: int = 500) -> builtins.list[tuple[int, Event]]:
        """Log entries after ``seq`` in commit-safe order, for tailers and replay."""
        query = (
            sa.select(events.c.seq, events.c.body)
            .where(events.c.seq > seq)
            .order_by(events.c.seq)
            .limit(limit)
        )
        async with self.db.read() as conn:
            rows = (await conn.execute(query)).all()
        return [(r.seq, event_from_row(r)) for r in rows]

    async def last_seq(self) -> int:
        async with self.db.read() as conn:
            value = (await conn.execute(sa.select(sa.func.max(events.c.seq)))).scalar()
        return int(value or 0)

    async def workers(self) -> builtins.list[dict[str, object]]:
        async with self.db.read() as conn:
            rows = (await conn.execute(sa.select(workers).order_by(workers.c.name))).all()
        return [dict(r._mapping) for r in rows]

    async def register_worker(self, worker: WorkerIdentity, now: datetime) -> None:
        values = {
            "name": worker.name,
            "host": worker.host,
            "flows": list(worker.flows),
            "concurrency": worker.concurrency,
            "owner": worker.owner,
            "transport": worker.transport,
            "resources": dict(worker.resources) or None,
            "last_seen_at": now,
        }
        async with self.db.write() as tx:
            result = await tx.conn.execute(
                sa.update(workers).where(workers.c.id == worker.id).values(**values)
            )
            if result.rowcount == 0:
                await tx.conn.execute(
                    sa.insert(workers).values(id=worker.id, started_at=now, **values)
                )

    async def touch_worker(self, worker_id: str, now: datetime) -> None:
        async with self.db.write() as tx:
            await tx.conn.execute(
                sa.update(workers).where(workers.c.id == worker_id).values(last_seen_at=now)
            )


# Built once: constructing Core statements on every call dominated a worker's CPU profile.
_LOCK_TASK = sa.select(tasks).where(tasks.c.id == sa.bindparam("_task_id")).with_for_update()
_EVENT_SEEN = sa.select(events.c.seq).where(events.c.id == sa.bindparam("_event_id"))
_INSERT_TASK = sa.insert(tasks)
_UPDATE_TASK = sa.update(tasks).where(tasks.c.id == sa.bindparam("_task_id"))


async def insert_new(tx: Tx, created: Sequence[TaskCreated]) -> list[Task]:
    """New tasks and their ``task.created`` events in ``tx``: one multi-row insert each.
    An id already stored raises ``IntegrityError`` (``tx`` must then roll back)."""
    new = [apply(None, event) for event in created]
    rows = [task_values(task) for task in new]
    pg = await pg_direct.connection(tx)
    if pg is not None:
        await pg_direct.insert_tasks(pg, rows)
        await pg_direct.refresh_statistics_after(pg, len(rows))
    else:
        await tx.conn.execute(_INSERT_TASK, rows)
    await append_events(tx, created)
    return new


async def load_for_update(tx: Tx, task_id: uuid.UUID) -> Task | None:
    row = (await tx.conn.execute(_LOCK_TASK, {"_task_id": task_id})).first()
    return None if row is None else task_from_row(row)


async def record_in(tx: Tx, event: Event, *, relayed_at: datetime | None = None) -> Task:
    """Fold one event into its task inside ``tx``; a known event id is a no-op."""
    current = await load_for_update(tx, event.task_id)
    seen = await tx.conn.execute(_EVENT_SEEN, {"_event_id": event.id})
    if seen.first() is not None:
        if current is None:
            raise TaskNotFound(f"no task has id {event.task_id}")
        return current
    updated = apply(current, event)
    if updated is current:  # already reflected (a duplicate under another id): log nothing
        return updated
    await write_task(tx, current, updated)
    await append_event(tx, event, relayed_at=relayed_at)
    if needs_new_work(event):
        await forget_work_sent(tx, [event.task_id])
    return updated


def needs_new_work(event: Event) -> bool:
    """A retry, or a backoff whose worker acked the failed attempt's message: over NATS the
    next attempt needs a work message of its own (``bus/nats/scheduler.py`` sends it)."""
    return isinstance(event, TaskRetried) or (
        isinstance(event, TaskRequeued) and event.not_before is not None
    )


async def forget_work_sent(tx: Tx, task_ids: Sequence[uuid.UUID]) -> None:
    if not task_ids:
        return
    pg = await pg_direct.connection(tx)
    if pg is not None:
        await pg_direct.forget_work_sent(pg, task_ids)
        return
    await tx.conn.execute(
        sa.update(tasks).where(tasks.c.id.in_(list(task_ids))).values(work_sent_at=None)
    )


async def write_task(tx: Tx, before: Task | None, after: Task) -> None:
    values = task_values(after)
    if before is None:
        await tx.conn.execute(_INSERT_TASK, values)
    else:
        values["_task_id"] = values.pop("id")
        await tx.conn.execute(_UPDATE_TASK, values)


async def append_event(tx: Tx, event: Event, *, relayed_at: datetime | None = None) -> None:
    await append_events(tx, [event], relayed_at=relayed_at)


async def append_events(
    tx: Tx, batch: Sequence[Event], *, relayed_at: datetime | None = None
) -> None:
    """Append to the log; ``relayed_at`` marks events that are already on the bus."""
    if batch:
        await store_events(tx, batch, relayed_at=relayed_at)
        await run_hooks(tx, batch)


async def store_events(
    tx: Tx, batch: Sequence[Event], *, relayed_at: datetime | None = None
) -> None:
    """The log's rows of ``batch``, without the transaction's hooks (``run_hooks``): a
    caller that pipelines its writes runs the hooks once, after them."""
    pg = await pg_direct.connection(tx)
    if pg is not None:
        await pg_direct.insert_events(pg, [event_values(e) for e in batch], relayed_at)
    else:
        rows = [event_values(e) | {"relayed_at": relayed_at} for e in batch]
        await tx.conn.execute(sa.insert(events), rows)
    tx.events.extend(batch)


async def run_hooks(tx: Tx, batch: Sequence[Event]) -> None:
    """The transaction's in-transaction hooks for events just stored (delivery rows, NOTIFY)."""
    for hook in tx.hooks:
        await hook(tx, batch)
