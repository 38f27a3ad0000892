"""Sessions the server ends (PostgreSQL and MariaDB): a pooled connection that died while
idle is replaced before use, and a busy one is not tested again before every transaction;
a session that froze inside a write is ended, so its locks cannot hide a task from the
reaper."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError

from flowyard.adapters.sql import engine as engine_module
from flowyard.adapters.sql.database import Database
from flowyard.adapters.sql.engine import make_engine, upgrade
from flowyard.adapters.sql.schema import tasks
from flowyard.adapters.sql.task_store import SqlTaskStore
from flowyard.adapters.sql.wakeup import PollWaker
from flowyard.adapters.sql.work_queue import SqlWorkQueue
from flowyard.core.events import TaskCreated, utcnow
from flowyard.core.ports import WorkerIdentity
from flowyard.core.task import TaskState

BACKEND = {
    "postgresql": sa.text("SELECT pg_backend_pid()"),
    "mysql": sa.text("SELECT CONNECTION_ID()"),
}
KILL = {
    "postgresql": "SELECT pg_terminate_backend({})",
    "mysql": "KILL {}",
}


@pytest.fixture(params=["postgresql", "mysql"])
def server_uri(request: pytest.FixtureRequest) -> str:
    if request.param == "postgresql":
        return str(request.getfixturevalue("pg_uri"))
    return str(request.getfixturevalue("mariadb_uri"))


async def test_an_idle_connection_killed_by_the_server_is_replaced(
    server_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine_module, "PING_IDLE_SECONDS", 0.05)
    engine = make_engine(server_uri, pool_size=1)
    other = make_engine(server_uri, pool_size=1, pre_ping=False)
    dialect = engine.dialect.name
    pings: list[object] = []
    ping = engine.dialect.do_ping

    def counted(dbapi_connection: object) -> bool:
        pings.append(dbapi_connection)
        return ping(dbapi_connection)

    monkeypatch.setattr(engine.dialect, "do_ping", counted)
    try:
        async with engine.connect() as conn:
            pid = (await conn.execute(BACKEND[dialect])).scalar()
        async with other.connect() as conn:  # the server drops the pooled connection
            await conn.execute(sa.text(KILL[dialect].format(int(pid))))
            await conn.commit()
        await asyncio.sleep(0.1)  # idle past the threshold: tested at checkout, replaced
        async with engine.connect() as conn:
            assert (await conn.execute(BACKEND[dialect])).scalar() != pid
            used = (await conn.execute(BACKEND[dialect])).scalar()
        assert len(pings) == 1
        async with engine.connect() as conn:  # used a moment ago: the same one, untested
            assert (await conn.execute(BACKEND[dialect])).scalar() == used
        assert len(pings) == 1
    finally:
        await engine.dispose()
        await other.dispose()


async def test_a_session_frozen_inside_a_write_is_ended_and_its_task_reaped(
    server_uri: str,
) -> None:
    """A worker that froze (or lost its link) holding its task's row lock, as a
    heartbeat or a progress report does for a moment: without the server's idle
    timeout, ``SKIP LOCKED`` passes over that task until TCP gives up, for hours."""
    engine = make_engine(server_uri, idle_in_transaction_seconds=1)
    db = Database(engine)
    try:
        await upgrade(engine)
        queue = SqlWorkQueue(SqlTaskStore(db), PollWaker(0.1), lease_seconds=30)
        created = TaskCreated(task_id=uuid.uuid4(), flow="debug.sleep", params={"seconds": 0})
        await queue.store.record(created)
        worker = WorkerIdentity(id="h/w1", name="w1", host="h", flows=("debug.sleep",))
        [claimed] = await queue.claim(worker, 1)
        frozen = await engine.connect()
        row = sa.select(tasks.c.id).where(tasks.c.id == claimed.id).with_for_update()
        await frozen.execute(row)  # and nothing more: the lock stays, the session idles
        lease_over = utcnow() + timedelta(seconds=60)
        assert await queue.reap(lease_over) == 0  # locked: skipped, not waited for
        deadline, reaped = time.monotonic() + 15, 0
        for _ in range(150):  # the timeout is 1 s; allow a loaded host 15
            reaped = await queue.reap(lease_over)
            if reaped or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        assert reaped == 1, "the frozen session's lock still hides the task from the reaper"
        task = await queue.store.get(claimed.id)
        assert (task.state, task.attempt) == (TaskState.queued, 1)
        with pytest.raises(DBAPIError):  # the server ended that session
            await frozen.execute(sa.text("SELECT 1"))
        await frozen.invalidate()
    finally:
        await db.close()


async def test_postgresql_reads_open_no_transaction_and_keep_prepared_statements(
    pg_uri: str,
) -> None:
    """A read is autocommit: no BEGIN and no ROLLBACK round trip, and psycopg's cache of
    prepared statements, which every ROLLBACK empties, survives it."""
    db = Database(make_engine(pg_uri, pool_size=1))
    await upgrade(db.engine)
    statement = sa.select(sa.func.count()).select_from(tasks)
    try:
        async with db.read() as conn:
            first = (await conn.execute(sa.text("SELECT now()"))).scalar()
            await asyncio.sleep(0.01)
            second = (await conn.execute(sa.text("SELECT now()"))).scalar()
            assert first != second  # each statement was its own transaction
            for _ in range(6):  # psycopg prepares a statement from its fifth use
                await conn.execute(statement)
            raw = await conn.get_raw_connection()
            pg = raw.driver_connection
            assert pg is not None
            prepared = dict(pg._prepared._names)
        assert prepared
        async with db.read() as conn:
            await conn.execute(statement)
        async with db.write() as tx:  # a write still is one transaction
            first = (await tx.conn.execute(sa.text("SELECT now()"))).scalar()
            await asyncio.sleep(0.01)
            assert (await tx.conn.execute(sa.text("SELECT now()"))).scalar() == first
        assert dict(pg._prepared._names).keys() >= prepared.keys()
    finally:
        await db.close()
