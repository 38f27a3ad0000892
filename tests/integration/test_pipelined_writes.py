"""Pipelined writes on PostgreSQL: BEGIN, the driver's statements and COMMIT in one
psycopg pipeline on an autocommit connection (``Database.write(pipelined=True)``).

They must stay one transaction that commits or rolls back whole, leave the pooled
connection clean for the next user, and refuse SQLAlchemy while the pipeline is open."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from flowyard.adapters.sql import pg_direct
from flowyard.adapters.sql.database import Database, PipelineOpen
from flowyard.adapters.sql.engine import make_engine, upgrade
from flowyard.adapters.sql.rows import task_values
from flowyard.adapters.sql.schema import events, tasks
from flowyard.adapters.sql.task_store import SqlTaskStore, insert_new
from flowyard.core.events import TaskCreated
from flowyard.core.task import apply


class Boom(Exception):
    """Raised inside a write to make it roll back."""


@pytest.fixture
async def db(pg_uri: str) -> AsyncIterator[Database]:
    database = Database(make_engine(pg_uri, pool_size=1))  # one connection: reuse is tested
    await upgrade(database.engine)
    yield database
    await database.close()


def created(flow: str = "debug.sleep") -> TaskCreated:
    return TaskCreated(task_id=uuid.uuid4(), flow=flow, owner="alice", params={"seconds": 0})


async def count(db: Database, table: sa.Table, task_id: uuid.UUID) -> int:
    """Rows of ``table`` (tasks or events) of this task, as another session sees them."""
    column = tasks.c.id if table is tasks else events.c.task_id
    async with db.read() as conn:
        query = sa.select(sa.func.count()).select_from(table).where(column == task_id)
        return int((await conn.execute(query)).scalar_one())


async def test_the_pipeline_and_the_plain_part_are_one_transaction(db: Database) -> None:
    event = created()
    async with db.write(pipelined=True) as tx:
        await insert_new(tx, [event])  # queued: nothing has been read yet
        with pytest.raises(PipelineOpen):
            _ = tx.conn
        assert tx.driver is not None
        queued = await tx.driver.execute("SELECT txid_current()")
        (in_pipeline,) = await queued.fetchone()  # a read sends what is queued
        conn = await tx.plain()
        in_plain = (await conn.execute(sa.text("SELECT txid_current()"))).scalar_one()
        assert in_plain == in_pipeline
        assert await count(db, tasks, event.task_id) == 0  # not committed yet: not seen
    assert await count(db, tasks, event.task_id) == 1
    assert await count(db, events, event.task_id) == 1


async def insert_then_raise(db: Database, event: TaskCreated, *, plain: bool) -> None:
    async with db.write(pipelined=True) as tx:
        await insert_new(tx, [event])
        if plain:
            await (await tx.plain()).execute(sa.text("SELECT 1"))
        raise Boom


async def insert_twice(db: Database, new: TaskCreated, known: TaskCreated) -> None:
    async with db.write(pipelined=True) as tx:
        await insert_new(tx, [new])  # fine on its own
        assert tx.driver is not None
        await pg_direct.insert_tasks(tx.driver, [task_values(apply(None, known))])


async def test_a_write_that_raises_commits_nothing_and_the_connection_is_reused(
    db: Database,
) -> None:
    event = created()
    with pytest.raises(Boom):
        await insert_then_raise(db, event, plain=False)
    assert await count(db, tasks, event.task_id) == 0
    with pytest.raises(Boom):
        await insert_then_raise(db, event, plain=True)
    assert await count(db, tasks, event.task_id) == 0
    async with db.write(pipelined=True) as tx:  # the only pooled connection is clean
        await insert_new(tx, [event])
    assert await count(db, tasks, event.task_id) == 1


async def test_a_failed_statement_is_raised_at_the_end_and_undoes_the_others(
    db: Database,
) -> None:
    first, second = created(), created()
    store = SqlTaskStore(db)
    await store.record(first)
    with pytest.raises(IntegrityError):
        await insert_twice(db, second, first)
    assert await count(db, tasks, second.task_id) == 0
    assert await count(db, events, second.task_id) == 0
    # a batch create that repeats a known task goes event by event, as before
    await store.record_all([first, second])
    assert await count(db, tasks, second.task_id) == 1
    assert await count(db, events, first.task_id) == 1


async def test_other_databases_ignore_the_pipeline(tmp_path: Path) -> None:
    database = Database(make_engine(f"sqlite:///{tmp_path / 't.db'}"))
    await upgrade(database.engine)
    try:
        event = created()
        async with database.write(pipelined=True) as tx:
            assert tx.pipeline is None
            await insert_new(tx, [event])
            await tx.conn.execute(sa.text("SELECT 1"))
        assert await count(database, tasks, event.task_id) == 1
    finally:
        await database.close()
