"""Reading the database event log and the task table for replay and rebuild (admin use).

Reads stop at a horizon (the highest ``seq`` when the replay started), so a
replay is a fixed range even while the server keeps writing. Autoincrement ids
commit out of order on PostgreSQL and MariaDB: an event still being committed
at that moment with a lower ``seq`` can be missed; run a replay again to catch it.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import sqlalchemy as sa

from flowyard.adapters.sql.database import Database
from flowyard.adapters.sql.rows import event_from_row, task_from_row
from flowyard.adapters.sql.schema import events, tasks
from flowyard.core.events import Event
from flowyard.core.replay import EventFilter
from flowyard.core.task import Task

BATCH = 500


def _where(f: EventFilter) -> list[Any]:
    clauses: list[Any] = []
    if f.since_seq is not None:
        clauses.append(events.c.seq >= f.since_seq)
    if f.until_seq is not None:
        clauses.append(events.c.seq < f.until_seq)
    if f.since_time is not None:
        clauses.append(events.c.at >= f.since_time)
    if f.until_time is not None:
        clauses.append(events.c.at < f.until_time)
    if f.task_id is not None:
        clauses.append(events.c.task_id == f.task_id)
    if f.flow is not None:
        clauses.append(events.c.flow == f.flow)
    if f.types:
        clauses.append(events.c.type.in_(f.types))
    return clauses


async def bounds(db: Database) -> tuple[int, int]:
    """(first seq, last seq) of the log; (0, 0) when it is empty."""
    async with db.read() as conn:
        row = (
            await conn.execute(sa.select(sa.func.min(events.c.seq), sa.func.max(events.c.seq)))
        ).one()
    return int(row[0] or 0), int(row[1] or 0)


async def count(db: Database, f: EventFilter, horizon: int) -> int:
    query = (
        sa.select(sa.func.count()).select_from(events).where(events.c.seq <= horizon, *_where(f))
    )
    async with db.read() as conn:
        return int((await conn.execute(query)).scalar() or 0)


async def read(db: Database, f: EventFilter, horizon: int) -> AsyncIterator[tuple[int, Event]]:
    """Matching entries up to ``horizon`` in ``seq`` order, read in short batches."""
    after = 0
    while True:
        query = (
            sa.select(events.c.seq, events.c.body)
            .where(events.c.seq > after, events.c.seq <= horizon, *_where(f))
            .order_by(events.c.seq)
            .limit(BATCH)
        )
        async with db.read() as conn:
            rows = (await conn.execute(query)).all()
        for row in rows:
            yield int(row.seq), event_from_row(row)
        if len(rows) < BATCH:
            return
        after = int(rows[-1].seq)


async def live_tasks(
    db: Database, *, task_id: uuid.UUID | None = None, flow: str | None = None
) -> AsyncIterator[Task]:
    """Rows of the task table (optionally one task or one flow), in id order, in batches."""
    after: uuid.UUID | None = None
    while True:
        query = sa.select(tasks).order_by(tasks.c.id).limit(BATCH)
        if task_id is not None:
            query = query.where(tasks.c.id == task_id)
        if flow is not None:
            query = query.where(tasks.c.flow == flow)
        if after is not None:
            query = query.where(tasks.c.id > after)
        async with db.read() as conn:
            rows = (await conn.execute(query)).all()
        for row in rows:
            yield task_from_row(row)
        if len(rows) < BATCH:
            return
        after = rows[-1].id
