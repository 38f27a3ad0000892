"""The transactional outbox: events written with their task, waiting to be relayed to NATS.

Every event appended to the ``events`` log with ``relayed_at`` NULL is pending.
The relay reads them in ``seq`` order and marks them once JetStream acknowledged
them. Reading "NULL in seq order" rather than "after the last seq" matters: an
autoincrement id commits out of order on PostgreSQL and MariaDB, and a row
committed late with a smaller seq is simply picked up by the next read. Per task
the order holds anyway: a task's events are appended under its row lock.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa

from flowyard.adapters.sql.database import Database
from flowyard.adapters.sql.rows import task_from_row
from flowyard.adapters.sql.schema import events, tasks
from flowyard.core.events import Event, parse_event, utcnow
from flowyard.core.task import Task

LAG_COUNT_CAP = 10_000
"""The health check counts at most this many pending events (never a full COUNT(*))."""


@dataclass(frozen=True)
class PendingEvent:
    """An event waiting in the outbox, as stored: the relay publishes ``body`` unchanged."""

    seq: int
    event_id: uuid.UUID
    type: str
    task_id: uuid.UUID
    owner: str
    flow: str
    body: str
    task_state: str | None
    """The task's state now (None when the task was deleted): work is sent only if queued."""

    def event(self) -> Event:
        return parse_event(self.body)


@dataclass(frozen=True)
class OutboxLag:
    pending: int
    """Pending events, counted up to ``LAG_COUNT_CAP``."""
    oldest_seconds: float | None
    """Age of the oldest pending event."""


class SqlOutbox:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def pending(self, limit: int) -> list[PendingEvent]:
        """The oldest ``limit`` pending events, with their task's state now.

        The events are picked before the join, so a backlog of pending events costs one
        walk of ``ix_events_relay`` in its own order (``relayed_at`` is NULL for all of
        them, so ordering by it too changes nothing but lets the index give the order):
        joined first, 12,000 pending events were all joined and sorted for each read of
        500 (50 ms)."""
        picked = (
            sa.select(events)
            .where(events.c.relayed_at.is_(None))
            .order_by(events.c.relayed_at, events.c.seq)
            .limit(limit)
            .subquery()
        )
        e = picked.c
        query = (
            sa.select(e.seq, e.id, e.type, e.task_id, e.owner, e.flow, e.body, tasks.c.state)
            .select_from(picked.outerjoin(tasks, tasks.c.id == e.task_id))
            .order_by(e.seq)
        )
        async with self.db.read() as conn:
            rows = (await conn.execute(query)).all()
        return [
            PendingEvent(r.seq, r.id, r.type, r.task_id, r.owner, r.flow, r.body, r.state)
            for r in rows
        ]

    async def mark_relayed(self, seqs: Sequence[int], at: datetime | None = None) -> None:
        if not seqs:
            return
        when = at or utcnow()
        async with self.db.write() as tx:
            await tx.conn.execute(
                sa.update(events).where(events.c.seq.in_(list(seqs))).values(relayed_at=when)
            )

    async def task(self, task_id: uuid.UUID) -> Task | None:
        """The task row as it is now: the work body of a retried task comes from it."""
        async with self.db.read() as conn:
            row = (await conn.execute(sa.select(tasks).where(tasks.c.id == task_id))).first()
        return None if row is None else task_from_row(row)

    async def lag(self, now: datetime | None = None) -> OutboxLag:
        pending = (
            sa.select(events.c.at)
            .where(events.c.relayed_at.is_(None))
            .order_by(events.c.relayed_at, events.c.seq)
            .limit(LAG_COUNT_CAP)
            .subquery()
        )
        query = sa.select(sa.func.count(), sa.func.min(pending.c.at))
        async with self.db.read() as conn:
            count, oldest = (await conn.execute(query)).one()
        if oldest is None:
            return OutboxLag(int(count or 0), None)
        if oldest.tzinfo is None:  # min() may lose the column type on some dialects
            oldest = oldest.replace(tzinfo=UTC)
        age = ((now or utcnow()) - oldest).total_seconds()
        return OutboxLag(int(count), max(0.0, age))
