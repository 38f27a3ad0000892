"""Cheap counts for ``/metrics``: never a scan of finished tasks.

Finished tasks pile up for ever, so they are counted from events as they
happen (``services/metrics.py``); here only the unfinished rows are read, and
only through the ``ix_tasks_claim`` index whose leading columns are
``(state, flow)``, and at most ``cap`` of them.
"""

from __future__ import annotations

import sqlalchemy as sa

from flowyard.adapters.sql.database import Database
from flowyard.adapters.sql.schema import tasks

UNFINISHED = ("queued", "running")


async def queue_depth(db: Database, cap: int) -> list[tuple[str, str, int]]:
    """``(state, flow, count)`` of queued and running tasks, at most ``cap`` rows counted."""
    unfinished = (
        sa.select(tasks.c.state, tasks.c.flow)
        .where(tasks.c.state.in_(UNFINISHED))
        .limit(cap)
        .subquery()
    )
    query = sa.select(unfinished.c.state, unfinished.c.flow, sa.func.count()).group_by(
        unfinished.c.state, unfinished.c.flow
    )
    async with db.read() as conn:
        rows = (await conn.execute(query)).all()
    return sorted((str(state), str(flow), int(count)) for state, flow, count in rows)
