"""Priority dispatch and scheduled work: the NATS scheduler's SQL side.

``bus/nats/scheduler.py`` sends queued tasks' work highest priority first, as the
transport's workers have free slots, and work scheduled for later when it is
due; these are its reads, and the compare-and-set of ``tasks.work_sent_at``
that keeps two servers from sending the same work.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from flowyard.adapters.sql import pg_direct
from flowyard.adapters.sql.database import Database, Tx
from flowyard.adapters.sql.rows import task_from_row
from flowyard.adapters.sql.schema import tasks, workers
from flowyard.core.ports import Sizer
from flowyard.core.redelivery import KeptLeases
from flowyard.core.task import Task, TaskState

QUEUED: sa.ColumnElement[str] = sa.literal_column(f"'{TaskState.queued.value}'")
"""The state as a literal, not a parameter, so PostgreSQL can use ``ix_tasks_scheduled``
(a partial index on queued tasks) in a prepared statement's generic plan too."""


class DispatchRecords:
    db: Database
    kept: KeptLeases

    async def due(self, now: datetime, since: datetime, limit: int = 500) -> list[Task]:
        """Queued tasks whose ``not_before`` fell in ``(since, now]``: their work is due.

        Highest priority first, then the earliest due, so a backlog goes out in claim order.
        """
        query = (
            sa.select(tasks)
            .where(
                (tasks.c.state == QUEUED)
                & (tasks.c.not_before > since)
                & (tasks.c.not_before <= now)
            )
            .order_by(tasks.c.priority.desc(), tasks.c.not_before, tasks.c.id)
            .limit(limit)
        )
        async with self.db.read() as conn:
            rows = (await conn.execute(query)).all()
        return [task_from_row(r) for r in rows]

    async def next_due(self, now: datetime) -> datetime | None:
        """The earliest ``not_before`` still ahead of ``now`` (None: nothing scheduled)."""
        async with self.db.read() as conn:
            value = (await conn.execute(self.next_due_query(now))).scalar()
        if not isinstance(value, datetime):
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value

    @staticmethod
    def next_due_query(now: datetime) -> sa.Select[tuple[Any]]:
        return sa.select(sa.func.min(tasks.c.not_before)).where(
            (tasks.c.state == QUEUED) & (tasks.c.not_before > now)
        )

    async def nats_slots(self, seen_since: datetime) -> list[tuple[str | None, set[str], int]]:
        """``(owner, flows, concurrency)`` of every transport worker seen since ``seen_since``."""
        query = sa.select(workers.c.owner, workers.c.flows, workers.c.concurrency).where(
            (workers.c.transport == self.kept.transport) & (workers.c.last_seen_at >= seen_since)
        )
        async with self.db.read() as conn:
            rows = (await conn.execute(query)).all()
        return [(r.owner, set(r.flows or ()), int(r.concurrency or 0)) for r in rows]

    async def take_unsent(
        self, now: datetime, limit: int = 1000, *, size: Sizer | None = None
    ) -> list[Task]:
        """Due queued tasks without a work message, marked sent (``work_sent_at``) in one
        transaction: highest priority first, then oldest.

        ``size``: told the work in use per ``(owner, flow)`` with work waiting (what
        transport workers run, plus work sent but not yet claimed), it answers
        how many of each pair to take, and none of other pairs (a round reads what it
        can send, not the whole backlog). The rows are read with ``FOR UPDATE SKIP
        LOCKED``, so two servers never take the same task; on PostgreSQL the read and the
        mark are one statement per pair (``pg_direct``), elsewhere one ``UPDATE`` marks all.
        """
        async with self.db.write() as tx:
            pg = await pg_direct.connection(tx)
            if pg is not None:
                if size is None:
                    rows = await pg_direct.take_any_unsent(pg, now, limit)
                else:
                    counts = await pg_direct.room_counts(pg, now, self.kept.transport)
                    room = size({(r["owner"], r["flow"]): r["busy"] for r in counts})
                    rows = await pg_direct.take_unsent(pg, now, _wanted(room, limit))
                found = [task_from_row(row) for row in rows]
            else:
                found = await self._take_unsent_core(tx, now, limit, size)
        return sorted(found, key=lambda t: (-t.priority, t.created_at, t.id))

    async def _take_unsent_core(
        self, tx: Tx, now: datetime, limit: int, size: Sizer | None
    ) -> list[Task]:
        waiting = _unsent_due(now)
        if size is None:
            wanted = [(waiting, limit)]
        else:
            room = size(await self._room_counts(tx, now))
            wanted = [
                (waiting & (tasks.c.owner == owner) & (tasks.c.flow == flow), n)
                for owner, flow, n in _wanted(room, limit)
            ]
        order = (tasks.c.priority.desc(), tasks.c.created_at, tasks.c.id)
        found: list[Task] = []
        for where, n in wanted:
            query = sa.select(tasks).where(where).order_by(*order).limit(n)
            rows = (await tx.conn.execute(query.with_for_update(skip_locked=True))).all()
            found += [task_from_row(r) for r in rows]
        if found:
            mark = sa.update(tasks).where(tasks.c.id.in_([t.id for t in found]))
            await tx.conn.execute(mark.values(work_sent_at=now))
        return found

    async def _room_counts(self, tx: Tx, now: datetime) -> dict[tuple[str, str], int]:
        waiting = _unsent_due(now)
        busy = (
            (tasks.c.state == TaskState.running.value)
            & (tasks.c.lease_keeper == self.kept.transport)
        ) | ((tasks.c.state == TaskState.queued.value) & tasks.c.work_sent_at.is_not(None))
        query = (
            sa.select(
                tasks.c.owner,
                tasks.c.flow,
                sa.func.sum(sa.case((busy, 1), else_=0)),
                sa.func.sum(sa.case((waiting, 1), else_=0)),
            )
            .where(busy | waiting)
            .group_by(tasks.c.owner, tasks.c.flow)
        )
        rows = (await tx.conn.execute(query)).all()
        return {(r[0], r[1]): int(r[2] or 0) for r in rows if r[3]}

    async def unmark_sent(self, batch: Sequence[Task]) -> None:
        """Work that did not go out after all: clear ``work_sent_at`` so a later round sends it
        (only while the task still waits for that attempt)."""
        async with self.db.write() as tx:
            for task in batch:
                where = (
                    (tasks.c.id == task.id)
                    & (tasks.c.state == TaskState.queued.value)
                    & (tasks.c.attempt == task.attempt)
                )
                await tx.conn.execute(sa.update(tasks).where(where).values(work_sent_at=None))


def _wanted(room: Mapping[tuple[str, str], int], limit: int) -> list[tuple[str, str, int]]:
    """``(owner, flow, n)`` for each pair the sizer gave room, at most ``limit`` each."""
    return [(owner, flow, min(n, limit)) for (owner, flow), n in sorted(room.items()) if n > 0]


def _unsent_due(now: datetime) -> sa.ColumnElement[bool]:
    """Queued, due by ``now``, and no work message out for it yet."""
    return (
        (tasks.c.state == TaskState.queued.value)
        & tasks.c.work_sent_at.is_(None)
        & (tasks.c.not_before.is_(None) | (tasks.c.not_before <= now))
    )
