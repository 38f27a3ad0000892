"""Task operations in the SQL store, on SQLite, PostgreSQL and MariaDB: keys, chains, due work."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa

from flowyard.adapters.sql import pg_direct
from flowyard.adapters.sql.dispatch_records import DispatchRecords
from flowyard.adapters.sql.projection import SqlProjection
from flowyard.adapters.sql.retention import SqlRetention
from flowyard.adapters.sql.schema import webhook_deliveries
from flowyard.adapters.sql.task_store import SqlTaskStore
from flowyard.core.errors import Conflict
from flowyard.core.events import TaskClaimed, TaskCreated, TaskDone, utcnow
from flowyard.core.ports import Sizer
from tests.support.nats_processes import bulk_create
from tests.support.task_db import open_store

WINDOW = timedelta(hours=1)


@pytest.fixture
async def store(db_uri: str) -> AsyncIterator[SqlTaskStore]:
    async with open_store(db_uri) as opened:
        yield opened


def created(owner: str = "admin", **kw: object) -> TaskCreated:
    return TaskCreated(task_id=uuid.uuid4(), flow="debug.sleep", owner=owner, **kw)  # type: ignore[arg-type]


async def test_a_key_is_unique_per_owner_and_within_its_window(store: SqlTaskStore) -> None:
    first, fresh = await store.record_keyed(created(), "k1", "h", WINDOW)
    assert fresh
    same, fresh = await store.record_keyed(created(), "k1", "h", WINDOW)
    assert (same.id, fresh) == (first.id, False)
    with pytest.raises(Conflict, match="different request"):
        await store.record_keyed(created(), "k1", "other", WINDOW)
    theirs, fresh = await store.record_keyed(created(owner="alice"), "k1", "h", WINDOW)
    assert fresh
    assert theirs.id != first.id
    # past the window the key belongs to the next task
    later = created(at=utcnow() + 2 * WINDOW)
    renewed, fresh = await store.record_keyed(later, "k1", "other", WINDOW)
    assert fresh
    assert renewed.id == later.task_id
    # a deleted original frees its key at once
    await store.delete(renewed.id)
    replaced, fresh = await store.record_keyed(created(), "k1", "h", WINDOW)
    assert fresh
    assert replaced.id != renewed.id


async def test_chain_parents_and_children(store: SqlTaskStore) -> None:
    plain = await store.record(created())
    chained = await store.record(created(then=[{"flow": "debug.sleep"}]))
    for task in (plain, chained):
        await store.record(
            TaskClaimed(
                task_id=task.id, flow=task.flow, attempt=1, worker_id="w", lease_expires_at=utcnow()
            )
        )
        await store.record(
            TaskDone(task_id=task.id, flow=task.flow, attempt=1, status="succeeded", worker_id="w")
        )
    parents = await store.chain_parents(utcnow() - timedelta(minutes=1))
    assert [p.id for p in parents] == [chained.id]
    assert parents[0].then[0].flow == "debug.sleep"
    among = await store.chain_parents(among={plain.id, chained.id, uuid.uuid4()})
    assert [p.id for p in among] == [chained.id]  # what one commit finished: one read
    assert await store.chain_parents(among={plain.id}) == []
    child = await store.record(created(parent_id=chained.id))
    assert await store.children(chained.id) == [child.id]
    assert await store.children(plain.id) == []


async def test_due_work_for_the_nats_scheduler(store: SqlTaskStore) -> None:
    now = utcnow()
    sent = {"relayed_at": now}
    soon = await store.record(created(not_before=now + timedelta(seconds=30)), **sent)
    due = await store.record(created(not_before=now - timedelta(seconds=1), priority=5), **sent)
    plain = await store.record(created(), **sent)  # not scheduled: the relay sends its work
    projection = SqlProjection(store.db)
    assert [t.id for t in await projection.due(now, now - timedelta(minutes=10))] == [due.id]
    assert await projection.next_due(now) == soon.not_before
    waiting = {t.id for t in await projection.queued(now + timedelta(seconds=1))}
    assert waiting == {due.id, plain.id}  # the reconciler leaves not-yet-due work alone


async def test_priority_dispatch_takes_what_has_room_once(store: SqlTaskStore) -> None:
    """One read sizes a round, one transaction takes and marks the work; a second taker
    (another server) gets none of it, and work that did not go out is given back."""
    now = utcnow()
    sent = {"relayed_at": now}
    low = [await store.record(created(), **sent) for _ in range(3)]
    high = await store.record(created(priority=9), **sent)
    other = await store.record(created(owner="bob"), **sent)
    later = await store.record(created(not_before=now + timedelta(minutes=5)), **sent)
    # only work scheduled for later: a pair with nothing to send this round
    await store.record(created(owner="carol", not_before=now + timedelta(minutes=5)), **sent)
    projection = SqlProjection(store.db)
    seen: list[dict[tuple[str, str], int]] = []

    def room(n: int) -> Sizer:
        def size(in_use: dict[tuple[str, str], int]) -> dict[tuple[str, str], int]:
            seen.append(in_use)
            return {pair: n}

        return size

    pair = ("admin", "debug.sleep")
    taken = await projection.take_unsent(now, size=room(2))
    assert seen[-1] == {pair: 0, ("bob", "debug.sleep"): 0}  # in use, of pairs with work
    assert [t.id for t in taken] == [high.id, low[0].id]  # priority, then the oldest
    rest = await projection.take_unsent(now, size=room(5))
    assert seen[-1] == {pair: 2, ("bob", "debug.sleep"): 0}
    assert [t.id for t in rest] == [low[1].id, low[2].id]  # what was taken is not sent twice
    assert await projection.take_unsent(now, size=room(5)) == []
    assert seen[-1] == {("bob", "debug.sleep"): 0}  # no admin work waits any more
    await projection.unmark_sent([taken[1]])
    again = await projection.take_unsent(now)
    assert {t.id for t in again} == {low[0].id, other.id}
    assert later.id not in {t.id for t in taken + again}  # not due: never sent early
    many = {(await store.record(created(), **sent)).id for _ in range(6)}
    first, second = await asyncio.gather(
        projection.take_unsent(now, size=room(6)), projection.take_unsent(now, size=room(6))
    )
    assert {t.id for t in first} | {t.id for t in second} == many
    assert not {t.id for t in first} & {t.id for t in second}  # two servers: each task once


@pytest.mark.postgres
async def test_a_dispatch_round_reads_the_pairs_and_the_work_sent_ahead_not_the_backlog(
    pg_uri: str,
) -> None:
    """The round's slot count walks ``ix_tasks_unsent`` pair by pair and reads the work sent
    ahead from ``ix_tasks_sent``: the GROUP BY over every queued task (4.9 ms per round
    with 15,000 queued, against 0.26) is gone."""
    async with open_store(pg_uri) as store:
        now = utcnow()
        for owner in ("admin", "bob", "carol"):
            for _ in range(20):
                await store.record(created(owner=owner), relayed_at=now)
        projection = SqlProjection(store.db)
        await projection.take_unsent(now, size=lambda in_use: dict.fromkeys(in_use, 2))
        statement = "EXPLAIN " + pg_direct._ROOM_COUNTS
        async with store.db.engine.connect() as conn:
            await conn.execute(sa.text("SET enable_seqscan = off"))  # a tiny table: seq wins
            params = {"now": now, "keeper": "nats"}
            rows = (await conn.exec_driver_sql(statement, params)).all()
        plan = " ".join(str(cell) for row in rows for cell in row)
        assert "ix_tasks_unsent" in plan, plan
        assert "ix_tasks_sent" in plan, plan
        assert "Seq Scan" not in plan, plan


@pytest.mark.postgres
async def test_a_dispatch_round_takes_its_few_tasks_without_sorting_the_backlog(
    pg_uri: str,
) -> None:
    """Right after a large batch of creates the statistics still describe the table as it
    was (here: a few finished tasks). The take of a pair's next tasks then walks
    ``ix_tasks_unsent`` in the claim's order and stops at its limit, and the next due
    time comes from ``ix_tasks_scheduled``: before migration 0014 both read and sorted
    every queued task (10-17 and 24 ms a round with 20,000 queued)."""
    async with open_store(pg_uri) as store:
        now = utcnow()
        for _ in range(20):
            await finished_at(store, now)
        async with store.db.engine.connect() as conn:
            await conn.execute(sa.text("ANALYZE tasks"))
        await bulk_create(store, 3000)
        take = pg_direct._TAKE_UNSENT_OF_PAIR
        params = {"now": now, "owner": "admin", "flow": "debug.sleep", "n": 4}
        async with store.db.engine.connect() as conn:
            rows = (await conn.exec_driver_sql("EXPLAIN " + take, params)).all()
            taken = " ".join(str(cell) for row in rows for cell in row)
            due = DispatchRecords.next_due_query(now)
            compiled = due.compile(conn.engine, compile_kwargs={"literal_binds": True})
            rows = (await conn.exec_driver_sql(f"EXPLAIN {compiled}")).all()
            scheduled = " ".join(str(cell) for row in rows for cell in row)
        assert "ix_tasks_unsent" in taken, taken
        assert "Sort" not in taken, taken
        assert "ix_tasks_scheduled" in scheduled, scheduled


@pytest.mark.postgres
async def test_a_large_batch_create_commits_statistics_that_count_its_tasks(pg_uri: str) -> None:
    """The planner learns of a batch of 1,000 queued tasks at its commit, not at
    autovacuum's next round; a small batch leaves the statistics to autovacuum."""
    query = "EXPLAIN SELECT id FROM tasks WHERE state = 'queued'"
    async with open_store(pg_uri) as store:
        await store.record_all([created() for _ in range(10)])
        async with store.db.engine.connect() as conn:
            never = (await conn.exec_driver_sql(_RELTUPLES)).scalar()
        await store.record_all([created() for _ in range(pg_direct.BULK_ROWS)])
        async with store.db.engine.connect() as conn:
            counted = (await conn.exec_driver_sql(_RELTUPLES)).scalar()
            plan = str((await conn.exec_driver_sql(query)).scalar())
    assert never == -1, never  # never analyzed
    assert counted == pg_direct.BULK_ROWS + 10, counted
    estimate = int(plan.split("rows=")[1].split()[0])
    assert estimate >= pg_direct.BULK_ROWS, plan


_RELTUPLES = "SELECT reltuples FROM pg_class WHERE oid = 'tasks'::regclass"


async def finished_at(store: SqlTaskStore, when: datetime, state: str = "succeeded") -> uuid.UUID:
    task = await store.record(created(at=when))
    await store.record(
        TaskClaimed(
            task_id=task.id,
            flow=task.flow,
            attempt=1,
            worker_id="w",
            lease_expires_at=when,
            at=when,
        )
    )
    await store.record(
        TaskDone(task_id=task.id, flow=task.flow, attempt=1, status=state, at=when, worker_id="w")  # type: ignore[arg-type]
    )
    async with store.db.write() as tx:
        await tx.conn.execute(
            sa.insert(webhook_deliveries).values(
                webhook_id=uuid.uuid4(),
                event_id=uuid.uuid4(),
                event_type="task.done",
                task_id=task.id,
                body="{}",
                status="delivered",
                attempts=1,
                next_attempt_at=when,
                created_at=when,
            )
        )
    return task.id


async def test_retention_removes_old_finished_tasks_in_batches(store: SqlTaskStore) -> None:
    now = utcnow()
    old = [await finished_at(store, now - timedelta(days=40)) for _ in range(5)]
    old.append(await finished_at(store, now - timedelta(days=40), "failed"))
    recent = await finished_at(store, now - timedelta(days=1))
    waiting = await store.record(created(at=now - timedelta(days=90)))  # queued: never pruned
    retention = SqlRetention(store.db)
    before = now - timedelta(days=30)
    dry = await retention.prune_tasks(before, batch=100, dry_run=True)
    assert (sorted(dry.tasks), dry.deliveries) == (sorted(old), 6)
    assert len(await store.list(limit=100)) == 8  # a dry run removes nothing
    first, second = await asyncio.gather(
        retention.prune_tasks(before, batch=4), retention.prune_tasks(before, batch=4)
    )
    rest = await retention.prune_tasks(before, batch=4)
    removed = first.tasks + second.tasks + rest.tasks
    assert sorted(removed) == sorted(old)  # each exactly once, whoever took it
    assert first.deliveries + second.deliveries + rest.deliveries == 6
    left = {t.id for t in await store.list(limit=100)}
    assert left == {recent, waiting.id}
    async with store.db.read() as conn:
        rows = await conn.scalar(sa.select(sa.func.count()).select_from(webhook_deliveries))
    assert rows == 1
    # events: only those of removed tasks, and only with their own cutoff
    assert (await retention.prune_events(now - timedelta(days=50))).events == 0
    pruned = await retention.prune_events(before)
    assert pruned.events == 6 * 3
    assert await store.events(old[0]) == []
    assert len(await store.events(waiting.id)) == 1  # a live task keeps its log
