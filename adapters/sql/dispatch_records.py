"""Priority dispatch and scheduled work: the NATS scheduler's SQL side.

``bus/nats/scheduler.py`` sends queued tasks' work highest priority first, as the
transport's workers have free slots, and work scheduled for later when it is
due; these are its reads, and the compare-and-set of ``tasks.work_sent_at``
that keeps two servers from sending the same work.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

import sqlalchemy as sa

from flowyard.adapters.sql.database import Database
from flowyard.adapters.sql.rows import task_from_row
from flowyard.adapters.sql.schema import tasks, workers
from flowyard.core.redelivery import KeptLeases
from flowyard.core.task import Task, TaskState


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
                (tasks.c.state == TaskState.queued.value)
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
        query = sa.select(sa.func.min(tasks.c.not_before)).where(
            (tasks.c.state == TaskState.queued.value) & (tasks.c.not_before > now)
        )
        async with self.db.read() as conn:
            value = (await conn.execute(query)).scalar()
        if not isinstance(value, datetime):
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value

    async def nats_slots(self, seen_since: datetime) -> list[tuple[str | None, set[str], int]]:
        """``(owner, flows, concurrency)`` of every transport worker seen since ``seen_since``."""
        query = sa.select(workers.c.owner, workers.c.flows, workers.c.concurrency).where(
            (workers.c.transport == self.kept.transport) & (workers.c.last_seen_at >= seen_since)
        )
        async with self.db.read() as conn:
            rows = (await conn.execute(query)).all()
        return [(r.owner, set(r.flows or ()), int(r.concurrency or 0)) for r in rows]

    async def slots_in_use(self) -> dict[tuple[str, str], int]:
        """Per ``(owner, flow)``: attempts transport workers run, plus work sent but not claimed."""
        busy = (
            (tasks.c.state == TaskState.running.value)
            & (tasks.c.lease_keeper == self.kept.transport)
        ) | ((tasks.c.state == TaskState.queued.value) & tasks.c.work_sent_at.is_not(None))
        query = (
            sa.select(tasks.c.owner, tasks.c.flow, sa.func.count())
            .where(busy)
            .group_by(tasks.c.owner, tasks.c.flow)
        )
        async with self.db.read() as conn:
            rows = (await conn.execute(query)).all()
        return {(r[0], r[1]): int(r[2]) for r in rows}

    async def unsent(
        self,
        now: datetime,
        limit: int = 1000,
        *,
        room: Mapping[tuple[str, str], int] | None = None,
    ) -> list[Task]:
        """Due queued tasks without a work message: highest priority first, then oldest.

        ``room``: at most that many per ``(owner, flow)``, and none of other pairs (a
        round reads what it can send, not the whole backlog).
        """
        waiting = _unsent_due(now)
        order = (tasks.c.priority.desc(), tasks.c.created_at, tasks.c.id)
        if room is None:
            queries = [sa.select(tasks).where(waiting).order_by(*order).limit(limit)]
        else:
            queries = [
                sa.select(tasks)
                .where(waiting & (tasks.c.owner == owner) & (tasks.c.flow == flow))
                .order_by(*order)
                .limit(min(n, limit))
                for (owner, flow), n in sorted(room.items())
                if n > 0
            ]
        found: list[Task] = []
        async with self.db.read() as conn:
            for query in queries:
                found += [task_from_row(r) for r in (await conn.execute(query)).all()]
        return sorted(found, key=lambda t: (-t.priority, t.created_at, t.id))

    async def unsent_pairs(self, now: datetime) -> set[tuple[str, str]]:
        """The ``(owner, flow)`` pairs with due work not sent yet."""
        query = sa.select(tasks.c.owner, tasks.c.flow).where(_unsent_due(now)).distinct()
        async with self.db.read() as conn:
            return {(r[0], r[1]) for r in (await conn.execute(query)).all()}

    async def mark_sent(self, batch: Sequence[Task], at: datetime | None) -> list[bool]:
        """Claim the sending of each task's work, in one transaction (``at`` None: undo);
        False for a task another server claimed, or that moved on meanwhile."""
        marked = []
        async with self.db.write() as tx:
            for task in batch:
                where = (
                    (tasks.c.id == task.id)
                    & (tasks.c.state == TaskState.queued.value)
                    & (tasks.c.attempt == task.attempt)
                )
                where &= tasks.c.work_sent_at.is_(None) if at is not None else sa.true()
                update = sa.update(tasks).where(where).values(work_sent_at=at)
                marked.append(bool((await tx.conn.execute(update)).rowcount))
        return marked


def _unsent_due(now: datetime) -> sa.ColumnElement[bool]:
    """Queued, due by ``now``, and no work message out for it yet."""
    return (
        (tasks.c.state == TaskState.queued.value)
        & tasks.c.work_sent_at.is_(None)
        & (tasks.c.not_before.is_(None) | (tasks.c.not_before <= now))
    )
