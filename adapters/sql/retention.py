"""Retention: finished tasks, their webhook deliveries and old events, removed in small batches.

Each batch is one short transaction that locks its rows with ``FOR UPDATE SKIP
LOCKED`` (SQLite has a single writer), so pruners in several servers share the
work without waiting on each other or deleting twice. A task's files are
removed by the caller after the batch committed (``services/retention.py``).

Events are pruned by their own cutoff, and only those of tasks no longer in the
table: a live task can always be rebuilt from its log (``flowyard events replay
--rebuild`` agrees), and an event still waiting for the NATS relay is kept.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa

from flowyard.adapters.sql.database import Database
from flowyard.adapters.sql.schema import (
    events,
    idempotency_keys,
    tasks,
    webhook_attempts,
    webhook_deliveries,
)
from flowyard.core.ports import Pruned
from flowyard.core.task import FINISHED

_FINISHED = sorted(state.value for state in FINISHED)


class SqlRetention:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def prune_tasks(
        self, before: datetime, *, batch: int = 100, dry_run: bool = False
    ) -> Pruned:
        """One batch of tasks finished before ``before``, with their webhook deliveries."""
        old = (tasks.c.state.in_(_FINISHED)) & (tasks.c.finished_at < before)
        query = (
            sa.select(tasks.c.id).where(old).order_by(tasks.c.finished_at, tasks.c.id).limit(batch)
        )
        if dry_run:
            async with self.db.read() as conn:
                ids = list((await conn.execute(query)).scalars())
                deliveries = await conn.scalar(
                    sa.select(sa.func.count())
                    .select_from(webhook_deliveries)
                    .where(webhook_deliveries.c.task_id.in_(ids))
                )
            return Pruned(tasks=ids, deliveries=int(deliveries or 0))
        async with self.db.write() as tx:
            ids = list((await tx.conn.execute(query.with_for_update(skip_locked=True))).scalars())
            if not ids:
                return Pruned()
            delivery_ids = sa.select(webhook_deliveries.c.id).where(
                webhook_deliveries.c.task_id.in_(ids)
            )
            await tx.conn.execute(
                sa.delete(webhook_attempts).where(webhook_attempts.c.delivery_id.in_(delivery_ids))
            )
            gone = await tx.conn.execute(
                sa.delete(webhook_deliveries).where(webhook_deliveries.c.task_id.in_(ids))
            )
            keys = await tx.conn.execute(
                sa.delete(idempotency_keys).where(idempotency_keys.c.task_id.in_(ids))
            )
            await tx.conn.execute(sa.delete(tasks).where(tasks.c.id.in_(ids)))
        return Pruned(tasks=ids, deliveries=gone.rowcount or 0, keys=keys.rowcount or 0)

    async def prune_events(
        self, before: datetime, *, batch: int = 1000, dry_run: bool = False
    ) -> Pruned:
        """One batch of events older than ``before`` whose task is gone from the table."""
        live = sa.select(tasks.c.id).where(tasks.c.id == events.c.task_id).exists()
        old = (events.c.at < before) & ~live
        if dry_run:
            async with self.db.read() as conn:
                count = await conn.scalar(sa.select(sa.func.count()).select_from(events).where(old))
            return Pruned(events=int(count or 0))
        # NATS mode: an event the relay has not published yet is kept (default mode relays
        # nothing, so there every event counts as published)
        relayed = events.c.relayed_at.is_not(None) | ~_relaying()
        query = sa.select(events.c.seq).where(old & relayed).order_by(events.c.seq).limit(batch)
        async with self.db.write() as tx:
            seqs = list((await tx.conn.execute(query.with_for_update(skip_locked=True))).scalars())
            if seqs:
                await tx.conn.execute(sa.delete(events).where(events.c.seq.in_(seqs)))
        return Pruned(events=len(seqs))

    async def prune_keys(self, before: datetime) -> int:
        """Idempotency keys past their window."""
        async with self.db.write() as tx:
            result = await tx.conn.execute(
                sa.delete(idempotency_keys).where(idempotency_keys.c.created_at < before)
            )
        return result.rowcount or 0


def _relaying() -> sa.ColumnElement[bool]:
    """True when some event was ever relayed (a server with NATS wrote this database)."""
    other = events.alias("relayed")
    return sa.select(other.c.seq).where(other.c.relayed_at.is_not(None)).limit(1).exists()
