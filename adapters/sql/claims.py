"""The claim statements, built once with bind parameters.

Building a Core statement per claim (and SQLAlchemy deriving its cache key from
the new object) cost more than running it. The statements differ only by whether
the worker serves one owner, so a handful of objects serve every claim:

- PostgreSQL and SQLite: ``WITH picked AS (SELECT … FOR UPDATE SKIP LOCKED)
  UPDATE … FROM picked RETURNING …`` (SQLite ignores the lock clause; it has a
  single writer anyway);
- MariaDB/MySQL: ``SELECT … FOR UPDATE SKIP LOCKED`` then ``UPDATE`` then
  ``SELECT`` in the same transaction (MariaDB has no ``UPDATE … RETURNING``).

On PostgreSQL the same claim, written as SQL, goes to psycopg directly
(``pg_direct.py``); SQLite runs the Core statement.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from flowyard.adapters.sql import pg_direct
from flowyard.adapters.sql.database import Tx
from flowyard.adapters.sql.rows import task_from_row
from flowyard.adapters.sql.schema import tasks
from flowyard.core.ports import WorkerIdentity
from flowyard.core.task import Task, TaskState

_NOW = sa.bindparam("_now", type_=tasks.c.claimed_at.type)


@functools.cache
def _pick(one_owner: bool) -> sa.Select[Any]:
    due = tasks.c.not_before.is_(None) | (tasks.c.not_before <= _NOW)
    query = sa.select(tasks.c.id).where(
        (tasks.c.state == TaskState.queued.value)
        & tasks.c.flow.in_(sa.bindparam("_flows", expanding=True))
        & due
    )
    if one_owner:
        query = query.where(tasks.c.owner == sa.bindparam("_owner"))
    return (
        query.order_by(tasks.c.priority.desc(), tasks.c.created_at, tasks.c.id)
        .limit(sa.bindparam("_limit", type_=sa.Integer))
        .with_for_update(skip_locked=True)
    )


_CLAIM_VALUES: dict[str, Any] = {
    "state": TaskState.running.value,
    "attempt": tasks.c.attempt + 1,
    "worker_id": sa.bindparam("_worker"),
    "lease_expires_at": sa.bindparam("_deadline", type_=tasks.c.lease_expires_at.type),
    "claimed_at": _NOW,
    "progress": 0.0,
    "message": "",
    "not_before": None,
    "updated_at": _NOW,
}


@functools.cache
def _update_returning(one_owner: bool) -> sa.Update:
    picked = _pick(one_owner).cte("picked")
    return (
        sa.update(tasks).where(tasks.c.id == picked.c.id).values(_CLAIM_VALUES).returning(*tasks.c)
    )


_UPDATE_PICKED = (
    sa.update(tasks)
    .where(tasks.c.id.in_(sa.bindparam("_ids", expanding=True)))
    .values(_CLAIM_VALUES)
)
_SELECT_PICKED = sa.select(tasks).where(tasks.c.id.in_(sa.bindparam("_ids", expanding=True)))


def _params(
    worker: WorkerIdentity, limit: int, now: datetime, deadline: datetime
) -> dict[str, Any]:
    params: dict[str, Any] = {
        "_now": now,
        "_flows": list(worker.flows),
        "_limit": limit,
        "_worker": worker.id,
        "_deadline": deadline,
    }
    if worker.owner is not None:
        params["_owner"] = worker.owner
    return params


async def claim_rows(
    tx: Tx, dialect: str, worker: WorkerIdentity, limit: int, now: datetime, deadline: datetime
) -> list[Task]:
    """Up to ``limit`` claimable tasks of the worker's flows (and owner), now running for it,
    in claim order: highest priority first, then the oldest."""
    params = _params(worker, limit, now, deadline)
    one_owner = worker.owner is not None
    pg = await pg_direct.connection(tx)
    if pg is not None:
        rows: Sequence[Any] = await pg_direct.claim(pg, params)
    elif dialect == "mysql":
        ids = list((await tx.conn.execute(_pick(one_owner), params)).scalars())
        if not ids:
            return []
        await tx.conn.execute(_UPDATE_PICKED, params | {"_ids": ids})
        rows = (await tx.conn.execute(_SELECT_PICKED, {"_ids": ids})).all()
    else:
        rows = (await tx.conn.execute(_update_returning(one_owner), params)).all()
    claimed = [task_from_row(row) for row in rows]
    return sorted(claimed, key=lambda t: (-t.priority, t.created_at))
