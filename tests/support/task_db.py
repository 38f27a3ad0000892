"""The flowyard database seen from a test: create many tasks fast, read the event log back.

Tasks made here go through the project's own store (``record_in``: the task row
and its ``task.created`` event in one transaction, NOTIFY included on
PostgreSQL), many per transaction, and get the folder that database workers
expect on the shared tasks folder.
"""

from __future__ import annotations

import contextlib
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from flowyard.adapters.files.local import LocalFileStore
from flowyard.adapters.sql.database import Database
from flowyard.adapters.sql.engine import make_engine, upgrade
from flowyard.adapters.sql.rows import event_from_row
from flowyard.adapters.sql.schema import events, tasks
from flowyard.adapters.sql.task_store import SqlTaskStore, record_in
from flowyard.adapters.sql.wakeup import install_pg_notifier
from flowyard.core.events import Event, TaskClaimed, TaskCreated


@contextlib.asynccontextmanager
async def open_store(uri: str, *, migrate: bool = True) -> AsyncIterator[SqlTaskStore]:
    """A store on ``uri`` (schema brought up to date), with NOTIFY wired as in the server."""
    engine = make_engine(uri, pool_size=4)
    if migrate:
        await upgrade(engine)
    db = Database(engine)
    notifier = install_pg_notifier(db)
    try:
        yield SqlTaskStore(db)
    finally:
        if notifier is not None:
            await notifier.close()
        await db.close()


async def create_tasks(
    store: SqlTaskStore,
    files_dir: Path,
    count: int,
    *,
    owners: Sequence[str] = ("admin",),
    flow: str = "debug.sleep",
    params: dict[str, Any] | None = None,
    batch: int = 250,
    max_attempts: int = 3,
) -> list[uuid.UUID]:
    """``count`` queued tasks, owners taken in turn, ``batch`` per transaction."""
    created: list[TaskCreated] = [
        TaskCreated(
            task_id=uuid.uuid4(),
            flow=flow,
            owner=owners[i % len(owners)],
            params=params if params is not None else {"seconds": 0.0},
            max_attempts=max_attempts,
        )
        for i in range(count)
    ]
    LocalFileStore(files_dir).mark_root()  # as the server does: no folder per task
    for start in range(0, count, batch):
        async with store.db.write() as tx:
            for event in created[start : start + batch]:
                await record_in(tx, event)
    return [e.task_id for e in created]


@dataclass(frozen=True)
class EventLog:
    """Every event of the database, in ``seq`` order."""

    events: list[Event]

    def count(self, kind: str) -> Counter[uuid.UUID]:
        """How many events of type ``kind`` each task has."""
        return Counter(e.task_id for e in self.events if e.type == kind)

    def claims(self) -> list[TaskClaimed]:
        return [e for e in self.events if isinstance(e, TaskClaimed)]

    def of(self, task_id: uuid.UUID) -> list[Event]:
        return [e for e in self.events if e.task_id == task_id]


async def read_log(store: SqlTaskStore) -> EventLog:
    async with store.db.read() as conn:
        rows = (await conn.execute(sa.select(events.c.body).order_by(events.c.seq))).all()
    return EventLog([event_from_row(r) for r in rows])


async def task_states(store: SqlTaskStore) -> Counter[str]:
    async with store.db.read() as conn:
        rows = (
            await conn.execute(sa.select(tasks.c.state, sa.func.count()).group_by(tasks.c.state))
        ).all()
    return Counter({str(state): int(n) for state, n in rows})
