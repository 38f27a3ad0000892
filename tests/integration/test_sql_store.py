"""One contract suite for the SQL store and queue, run on SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from flowyard.adapters.sql import pg_direct
from flowyard.adapters.sql.claims import _pick
from flowyard.adapters.sql.database import Database
from flowyard.adapters.sql.engine import check_schema, make_engine, upgrade
from flowyard.adapters.sql.schema import tasks
from flowyard.adapters.sql.task_store import SqlTaskStore, append_events
from flowyard.adapters.sql.wakeup import PollWaker
from flowyard.adapters.sql.work_queue import SqlWorkQueue
from flowyard.core.errors import Conflict, LeaseLost, SchemaMissing, TaskNotFound
from flowyard.core.events import (
    ChainStep,
    FileRef,
    TaskCreated,
    TaskDone,
    TaskProgress,
    utcnow,
)
from flowyard.core.ports import Heartbeat, WorkerIdentity
from flowyard.core.task import TaskState, rebuild

WORKER = WorkerIdentity(id="h/w1", name="w1", host="h", flows=("debug.sleep", "image.blur"))


@pytest.fixture
async def queue(db_uri: str) -> AsyncIterator[SqlWorkQueue]:
    engine = make_engine(db_uri)
    await upgrade(engine)
    db = Database(engine)
    yield SqlWorkQueue(SqlTaskStore(db), PollWaker(0.1), lease_seconds=30)
    await db.close()


def new_task(flow: str = "debug.sleep", priority: int = 0, owner: str = "admin") -> TaskCreated:
    return TaskCreated(
        task_id=uuid.uuid4(),
        flow=flow,
        owner=owner,
        priority=priority,
        params={"seconds": 0},
        inputs=(FileRef(name="a.png", path="inputs/a.png", size=3, input="image"),),
    )


async def test_migrations_are_idempotent_and_checked(db_uri: str) -> None:
    engine = make_engine(db_uri)
    try:
        with pytest.raises(SchemaMissing, match="no flowyard schema"):
            await check_schema(engine)
        await upgrade(engine)
        await upgrade(engine)
        await check_schema(engine)
    finally:
        await engine.dispose()


async def test_task_round_trip(queue: SqlWorkQueue) -> None:
    store = queue.store
    event = new_task(priority=3)
    task = await store.record(event)
    again = await store.get(task.id)
    assert again == task
    assert again.inputs == event.inputs
    assert again.created_at == event.at  # microseconds and UTC survive every dialect
    assert again.params == {"seconds": 0}
    assert [e.id for e in await store.events(task.id)] == [event.id]
    assert await store.record(event) == task  # same event again: nothing changes
    assert len(await store.events(task.id)) == 1
    with pytest.raises(TaskNotFound):
        await store.get(uuid.uuid4())


async def test_claim_order_filters_and_batch(queue: SqlWorkQueue) -> None:
    store = queue.store
    low = await store.record(new_task(priority=0))
    high = await store.record(new_task(priority=9))
    await store.record(new_task(flow="image.edges"))  # a flow this worker lacks
    theirs = await store.record(new_task(owner="bob"))
    mine_only = WorkerIdentity(id="h/w2", name="w2", host="h", flows=("debug.sleep",), owner="ann")
    assert await queue.claim(mine_only, 10) == []
    claimed = await queue.claim(WORKER, 2)
    assert [t.id for t in claimed] == [high.id, low.id]
    assert all(t.state is TaskState.running and t.attempt == 1 for t in claimed)
    rest = await queue.claim(WORKER, 10)
    assert [t.id for t in rest] == [theirs.id]
    assert await queue.claim(WORKER, 10) == []


async def test_concurrent_claims_never_share_a_task(queue: SqlWorkQueue) -> None:
    ids = {(await queue.store.record(new_task())).id for _ in range(40)}
    workers = [
        WorkerIdentity(id=f"h/w{i}", name=f"w{i}", host="h", flows=("debug.sleep",))
        for i in range(4)
    ]

    async def drain(worker: WorkerIdentity) -> list[uuid.UUID]:
        got: list[uuid.UUID] = []
        while batch := await queue.claim(worker, 3):
            got.extend(t.id for t in batch)
        return got

    results = await asyncio.gather(*(drain(w) for w in workers))
    claimed = [task_id for result in results for task_id in result]
    assert sorted(claimed) == sorted(ids)


async def test_lease_fencing_and_reaping(queue: SqlWorkQueue) -> None:
    store = queue.store
    task = await store.record(new_task())
    [first] = await queue.claim(WORKER, 1)
    (beat,) = await queue.heartbeat(WORKER, [first])
    assert isinstance(beat, Heartbeat)
    assert beat.cancel_requested is False
    assert await queue.reap(utcnow() + timedelta(seconds=60)) == 1
    (beat,) = await queue.heartbeat(WORKER, [first])
    assert isinstance(beat, LeaseLost)
    other = WorkerIdentity(id="h/w9", name="w9", host="h", flows=("debug.sleep",))
    [second] = await queue.claim(other, 1)
    assert second.attempt == 2
    late = TaskDone(task_id=task.id, flow=task.flow, attempt=1, status="succeeded")
    with pytest.raises(LeaseLost):
        await queue.report(WORKER, late)
    await queue.report(
        other, TaskProgress(task_id=task.id, flow=task.flow, attempt=2, progress=0.5)
    )
    await queue.report(
        other, TaskDone(task_id=task.id, flow=task.flow, attempt=2, status="succeeded")
    )
    final = await store.get(task.id)
    assert final.state is TaskState.succeeded
    assert final.attempt == 2
    events = await store.events(task.id)
    assert [e.type for e in events].count("task.done") == 1
    rebuilt = rebuild(list(events))
    assert rebuilt is not None
    assert rebuilt.model_dump(exclude={"lease_expires_at"}) == final.model_dump(
        exclude={"lease_expires_at"}
    )
    with pytest.raises(Conflict):  # finished: a stale result cannot reopen it
        await store.record(TaskDone(task_id=task.id, flow=task.flow, attempt=1, status="failed"))


async def test_attempts_run_out(queue: SqlWorkQueue) -> None:
    store = queue.store
    event = new_task()
    await store.record(event.model_copy(update={"max_attempts": 2}))
    for _ in range(2):
        assert len(await queue.claim(WORKER, 1)) == 1
        await queue.reap(utcnow() + timedelta(seconds=60))
    task = await store.get(event.task_id)
    assert task.state is TaskState.failed
    assert "no attempts left" in (task.error or "")


async def test_release_and_worker_registry(queue: SqlWorkQueue) -> None:
    await queue.register(WORKER)
    await queue.register(WORKER)
    rows = await queue.store.workers()
    assert [(r["id"], r["flows"]) for r in rows] == [("h/w1", ["debug.sleep", "image.blur"])]
    task = await queue.store.record(new_task())
    [claimed] = await queue.claim(WORKER, 1)
    await queue.release(WORKER, claimed, "shutting down")
    assert (await queue.store.get(task.id)).state is TaskState.queued
    [again] = await queue.claim(WORKER, 1)
    assert again.attempt == 2


async def test_event_log_sequence(queue: SqlWorkQueue) -> None:
    store = queue.store
    start = await store.last_seq()
    task = await store.record(new_task())
    await queue.claim(WORKER, 1)
    entries = await store.events_after(start)
    assert [e.type for _, e in entries] == ["task.created", "task.claimed"]
    assert entries[0][0] < entries[1][0]
    assert all(e.task_id == task.id for _, e in entries)
    async with store.db.read() as conn:
        pending = await conn.scalar(sa.text("SELECT COUNT(*) FROM events WHERE relayed_at IS NULL"))
    assert pending == 2


async def test_a_write_keeps_its_events_in_order_and_their_text_as_written(
    queue: SqlWorkQueue,
) -> None:
    """The events' insert (one statement for the batch on every database) keeps the
    batch's order in ``seq``, every character of each body, and ``relayed_at``."""
    store = queue.store
    task = await store.record(new_task())
    [claimed] = await queue.claim(WORKER, 1)
    awkward = 'say "hi" \\ back\\slash {braces} ,comma, ünïcødé 雪 \u2028 end'
    progress = [
        TaskProgress(
            task_id=task.id, flow=task.flow, owner=task.owner, attempt=1, progress=0.5, message=m
        )
        for m in (awkward, "second", "{", '"')
    ]
    start = await store.last_seq()
    relayed = utcnow()
    async with store.db.write() as tx:
        await append_events(tx, progress[:2])
        await append_events(tx, progress[2:], relayed_at=relayed)
    entries = await store.events_after(start)
    assert [e for _, e in entries] == progress
    assert [seq for seq, _ in entries] == sorted(seq for seq, _ in entries)
    async with store.db.read() as conn:
        marks = (await conn.execute(sa.text("SELECT relayed_at FROM events ORDER BY seq"))).all()
    assert [m[0] is None for m in marks[-4:]] == [True, True, False, False]
    assert claimed.id == task.id


async def test_an_event_stored_twice_is_refused_and_nothing_of_its_write_stays(
    queue: SqlWorkQueue,
) -> None:
    store = queue.store
    task = await store.record(new_task())
    again = (await store.events(task.id))[0]
    start = await store.last_seq()
    fresh = TaskProgress(task_id=task.id, flow=task.flow, owner=task.owner, attempt=0, progress=0.1)
    with pytest.raises(IntegrityError):
        async with store.db.write() as tx:
            await append_events(tx, [fresh, again])
    assert await store.events_after(start) == []
    assert await store.record_all([TaskCreated.model_validate(again.model_dump())]) == [
        await store.get(task.id)
    ]


async def test_claimed_tasks_read_their_times_in_utc_whatever_the_session_time_zone(
    db_uri: str,
) -> None:
    if db_uri.startswith("postgresql"):
        setup = make_engine(db_uri)
        async with setup.begin() as conn:
            name = await conn.scalar(sa.text("SELECT current_database()"))
            await conn.execute(sa.text(f"ALTER DATABASE \"{name}\" SET timezone = 'Asia/Kolkata'"))
        await setup.dispose()
    engine = make_engine(db_uri)
    await upgrade(engine)
    db = Database(engine)
    queue = SqlWorkQueue(SqlTaskStore(db), PollWaker(0.1), lease_seconds=30)
    try:
        created = await queue.store.record(new_task())
        [claimed] = await queue.claim(WORKER, 1)
        for value in (claimed.created_at, claimed.claimed_at, claimed.lease_expires_at):
            assert value is not None
            assert value.utcoffset() == timedelta(0)
        assert claimed.created_at == created.created_at
        stored = await queue.store.get(claimed.id)
        assert stored.claimed_at == claimed.claimed_at
    finally:
        await db.close()


async def test_a_claim_walks_the_queue_in_index_order_instead_of_sorting_it(
    queue: SqlWorkQueue,
) -> None:
    """The claim's order has an index of its own (``ix_tasks_next``): the database stops
    after the rows it takes. Without it every claim read and sorted every queued task."""
    store = queue.store
    for _ in range(30):
        await store.record(new_task())
    now = utcnow()
    dialect = store.db.dialect
    if dialect == "postgresql":
        statement = "EXPLAIN " + pg_direct._CLAIM_ANY_OWNER
        params: dict[str, object] = {
            "_flows": list(WORKER.flows), "_now": now, "_limit": 4,
            "_worker": WORKER.id, "_deadline": now,
        }  # fmt: skip
    else:
        pick = _pick(False).params(_flows=list(WORKER.flows), _now=now, _limit=4)
        sql = str(pick.compile(store.db.engine, compile_kwargs={"literal_binds": True}))
        statement = ("EXPLAIN QUERY PLAN " if dialect == "sqlite" else "EXPLAIN ") + sql
        params = {}
    async with store.db.engine.connect() as conn:
        if dialect == "postgresql":
            await conn.execute(sa.text("SET enable_seqscan = off"))  # a tiny table: seq wins
        rows = (await conn.exec_driver_sql(statement, params or None)).all()
    plan = " ".join(str(cell) for row in rows for cell in row)
    assert "ix_tasks_next" in plan, plan
    assert "Sort" not in plan, plan
    assert "TEMP B-TREE" not in plan, plan
    assert "filesort" not in plan, plan


async def test_new_tasks_keep_their_json_columns_as_given(queue: SqlWorkQueue) -> None:
    """Params, inputs and a chain survive the insert of new tasks on every database, and a
    task without a chain stores none."""
    store = queue.store
    params = {"text": 'a "quoted" \\ back ü 雪', "nested": {"list": [1, 2.5, None, True]}}
    chained = TaskCreated(
        task_id=uuid.uuid4(),
        flow="debug.sleep",
        params=params,
        then=(ChainStep(flow="image.blur", params={"radius": 2}),),
    )
    plain = new_task()
    created = await store.record_all([chained, plain])
    assert [await store.get(t.id) for t in created] == created
    again = await store.get(chained.task_id)
    assert again.params == params
    assert again.then == chained.then
    assert (await store.get(plain.task_id)).then == ()
    async with store.db.read() as conn:
        query = sa.select(sa.func.count()).where(tasks.c.then.is_(None))
        assert await conn.scalar(query) == 1
