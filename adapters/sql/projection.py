"""The server's side of transport workers (NATS): their events into the task table, leases.

Such workers cannot reach the database; the server folds what they publish.
``record_batch`` applies a batch of worker events in one transaction (the
consumer acks the batch only after it committed). Each event is checked before
it is applied: it must name its task's owner and flow (a worker's NATS account
can only publish under its own owner), and a result or progress report must
come from the worker that holds the attempt. Events the state machine refuses
are reported back, never raised: a duplicate, late or out-of-order event
changes nothing and must not be redelivered forever.

Events the server derives here (a requeue after the transport redelivered, a
claim that was never reported) are appended with ``relayed_at`` NULL, so the
outbox relay publishes them to the event stream like any other server event.
Every row written here records the transport as the keeper of the lease of a
running attempt (``tasks.lease_keeper``). Recovery (``transport_recovery.py``)
and priority dispatch (``dispatch_records.py``) are the other parts of
``SqlProjection``.
"""

from __future__ import annotations

import itertools
import logging
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError, IntegrityError

from flowyard.adapters.sql import pg_direct
from flowyard.adapters.sql.database import Database, Tx
from flowyard.adapters.sql.dispatch_records import DispatchRecords
from flowyard.adapters.sql.rows import task_from_row, task_values
from flowyard.adapters.sql.schema import events, tasks, workers
from flowyard.adapters.sql.task_store import (
    forget_work_sent,
    load_for_update,
    needs_new_work,
    run_hooks,
    store_events,
)
from flowyard.adapters.sql.transport_recovery import TransportRecovery, lease_keeper
from flowyard.core.errors import Conflict
from flowyard.core.events import Event, TaskClaimed, TaskDone, TaskProgress, TaskRequeued, utcnow
from flowyard.core.redelivery import KeptLeases, LeaseAnswer, Outcome, WorkerEvent, catch_up
from flowyard.core.task import Task, TaskState, apply

log = logging.getLogger(__name__)


class SqlProjection(TransportRecovery, DispatchRecords):
    def __init__(
        self, db: Database, *, kept: KeptLeases | None = None, gated: bool = False
    ) -> None:
        """``kept``: the transport whose workers' events these are (``bus/nats``
        supplies NATS's). ``gated``: the server sends work by priority as those
        workers have room (``bus/nats/scheduler.py``); a queued task without
        ``work_sent_at`` is held back on purpose, not lost, so the reconciler
        leaves it alone."""
        self.db = db
        self.kept = kept or KeptLeases()
        self.gated = gated

    # ------------------------------------------------------------------ worker events

    async def record_batch(
        self, items: Sequence[WorkerEvent], now: datetime | None = None
    ) -> list[Outcome]:
        """Apply worker events in order, in one transaction (one per event after an SQL error).

        A batch costs a handful of statements whatever its size (lock the tasks,
        look up the event ids, write the rows, append the events): per-event round
        trips would bound the whole NATS path at a few hundred events a second.
        """
        if not items:
            return []
        now = now or utcnow()
        try:
            async with self.db.write() as tx:
                return await self._record(tx, items, now)
        except DBAPIError:
            # e.g. a unique-key race on an event id: isolate the culprit, keep the rest
            outcomes = []
            for item in items:
                try:
                    async with self.db.write() as tx:
                        outcomes += await self._record(tx, [item], now)
                except DBAPIError as exc:
                    log.warning("event %s not recorded: %s", item.event.id, exc)
                    outcomes.append(Outcome(item.event, "refused", f"database error: {exc}"))
            return outcomes

    async def _record(self, tx: Tx, items: Sequence[WorkerEvent], now: datetime) -> list[Outcome]:
        """Four round trips on PostgreSQL whatever the batch's size: the BEGIN, the two
        reads together, the writes pipelined, the COMMIT (and an insert for a worker
        first seen in its claim)."""
        pg = await pg_direct.connection(tx)
        current, seen = await _lock_tasks_and_known_events(
            tx, {item.event.task_id for item in items}, [item.event.id for item in items]
        )
        before = dict(current)
        log_rows: list[tuple[Event, bool]] = []  # (event, came from the bus), in order
        outcomes = []
        claimers: dict[str, TaskClaimed] = {}
        for item in items:
            outcome, steps = self._fold(current, seen, item, now)
            outcomes.append(outcome)
            log_rows += [(step, False) for step in steps]
            if outcome.status == "recorded":
                log_rows.append((item.event, True))
                seen.add(item.event.id)
                if isinstance(item.event, TaskClaimed):
                    claimers.setdefault(item.event.worker_id, item.event)
        changed = [task for task_id, task in current.items() if task is not before[task_id]]
        claims = _claims_to_register(claimers, self.kept)
        async with pg_direct.pipelined(pg):
            await _write_tasks(tx, changed, self.kept)
            # one insert per run of rows with the same relayed_at, in order: the log keeps
            # each task's order (a derived requeue sits between the claims it separates)
            for from_bus, run in itertools.groupby(log_rows, key=lambda row: row[1]):
                await store_events(tx, [e for e, _ in run], relayed_at=now if from_bus else None)
            await forget_work_sent(tx, [e.task_id for e, _ in log_rows if needs_new_work(e)])
            listed = await _mark_workers_seen(tx, sorted(claims), now)
        if log_rows:
            await run_hooks(tx, [e for e, _ in log_rows])
        await _list_new_workers(tx, claims, listed, now, self.kept)
        return outcomes

    def _fold(
        self, current: dict[uuid.UUID, Task], seen: set[uuid.UUID], item: WorkerEvent, now: datetime
    ) -> tuple[Outcome, list[Event]]:
        """Decide one event against the tasks as the batch has left them (no I/O)."""
        event = item.event
        if event.id in seen:
            return Outcome(event, "duplicate"), []
        task = current.get(event.task_id)
        if task is None:
            return Outcome(event, "refused", f"no task has id {event.task_id}"), []
        if task.owner != event.owner or task.flow != event.flow:
            reason = (
                f"event names owner {event.owner!r} and flow {event.flow!r}, but task "
                f"{task.id} belongs to {task.owner!r} and runs {task.flow!r}"
            )
            return Outcome(event, "refused", reason, task), []
        steps = catch_up(task, event, now, self.kept)
        for step in steps:
            task = apply(task, step)
            log.info("task %s: %s (before %s)", task.id, _describe(step), event.type)
        current[event.task_id] = task
        refusal = _holder_refusal(task, item, self.kept)
        if refusal:
            return Outcome(event, "refused", refusal, task), steps
        try:
            updated = apply(task, event)
        except Conflict as exc:
            return Outcome(event, "refused", exc.message, task), steps
        if updated is task:
            return Outcome(event, "unchanged", task=task), steps
        current[event.task_id] = updated
        return Outcome(event, "recorded", task=updated), steps

    async def finished(self, task_id: uuid.UUID) -> bool:
        """True when the task ended (or is gone): a result for it would be refused."""
        query = sa.select(tasks.c.state).where(tasks.c.id == task_id)
        async with self.db.read() as conn:
            state = (await conn.execute(query)).scalar()
        return state is None or TaskState(state).finished

    # ------------------------------------------------------------------------ leases

    async def heartbeat(
        self, task_id: uuid.UUID, attempt: int, worker_id: str, owner: str, deadline: datetime
    ) -> LeaseAnswer:
        """Refresh the DB lease of a transport worker's attempt; tell it what the server knows.

        A claim the server has not processed yet is not a lost lease: the answer is
        then only "keep going" (the consumer may lag behind the worker).
        """
        async with self.db.write() as tx:
            task = await load_for_update(tx, task_id)
            if task is None or task.owner != owner:
                return LeaseAnswer(lost=True, drop=True, reason=f"no task {task_id} of {owner}")
            cancel = task.cancel_requested
            if task.state.finished:
                return LeaseAnswer(lost=True, drop=True, reason=f"task {task_id} is {task.state}")
            if task.attempt > attempt:
                return LeaseAnswer(
                    lost=True, reason=f"task {task_id} moved on to attempt {task.attempt}"
                )
            if task.attempt < attempt:
                return LeaseAnswer(cancel=cancel)  # our claim is still on its way
            if task.state is TaskState.queued:
                return LeaseAnswer(
                    lost=True, drop=True, reason=f"attempt {attempt} of {task_id} was requeued"
                )
            if task.worker_id not in (worker_id, self.kept.unreported_worker):
                return LeaseAnswer(
                    lost=True,
                    drop=True,
                    reason=f"attempt {attempt} of {task_id} is held by {task.worker_id}",
                )
            await tx.conn.execute(
                sa.update(tasks)
                .where(tasks.c.id == task_id)
                .values(lease_expires_at=deadline, worker_id=worker_id)
            )
            return LeaseAnswer(cancel=cancel)


async def _lock_tasks_and_known_events(
    tx: Tx, task_ids: set[uuid.UUID], event_ids: list[uuid.UUID]
) -> tuple[dict[uuid.UUID, Task], set[uuid.UUID]]:
    """The tasks, row-locked in id order (two batches never wait on each other in a cycle),
    and the ids among ``event_ids`` that the log already holds."""
    pg = await pg_direct.connection(tx)
    if pg is not None:
        rows, known = await pg_direct.lock_tasks_and_known_events(pg, task_ids, event_ids)
        return {task.id: task for task in map(task_from_row, rows)}, known
    query = sa.select(tasks).where(tasks.c.id.in_(sorted(task_ids))).order_by(tasks.c.id)
    locked = (await tx.conn.execute(query.with_for_update())).all()
    known_query = sa.select(events.c.id).where(events.c.id.in_(event_ids))
    known = set((await tx.conn.execute(known_query)).scalars())
    return {row.id: task_from_row(row) for row in locked}, known


async def _write_tasks(tx: Tx, changed: list[Task], kept: KeptLeases) -> None:
    """One executemany UPDATE for every row the batch changed (each written once, final)."""
    if not changed:
        return
    rows = [task_values(task) | {"lease_keeper": lease_keeper(task, kept)} for task in changed]
    pg = await pg_direct.connection(tx)
    if pg is not None:
        await pg_direct.update_tasks(pg, rows)
        return
    for values in rows:
        values["b_id"] = values.pop("id")
    columns: dict[str, Any] = {name: sa.bindparam(name) for name in rows[0] if name != "b_id"}
    statement = sa.update(tasks).where(tasks.c.id == sa.bindparam("b_id")).values(columns)
    await tx.conn.execute(statement, rows)


def _claims_to_register(claims: dict[str, TaskClaimed], kept: KeptLeases) -> dict[str, TaskClaimed]:
    """The transport workers among the claimers (not the stand-in of unreported claims)."""
    return {
        wid: c for wid, c in claims.items() if kept.is_worker(wid) and wid != kept.unreported_worker
    }


async def _mark_workers_seen(tx: Tx, worker_ids: list[str], now: datetime) -> set[str]:
    """Mark the listed ones seen; return which are listed (one round trip where it can)."""
    if not worker_ids:
        return set()
    pg = await pg_direct.connection(tx)
    if pg is not None:
        return await pg_direct.mark_workers_seen(pg, worker_ids, now)
    seen = sa.update(workers).where(workers.c.id.in_(worker_ids)).values(last_seen_at=now)
    if tx.conn.dialect.update_returning:
        return set((await tx.conn.execute(seen.returning(workers.c.id))).scalars())
    query = sa.select(workers.c.id).where(workers.c.id.in_(worker_ids))
    known = set((await tx.conn.execute(query)).scalars())
    if known:
        await tx.conn.execute(seen)
    return known


async def _list_new_workers(
    tx: Tx, claims: dict[str, TaskClaimed], listed: set[str], now: datetime, kept: KeptLeases
) -> None:
    """List a transport worker from its first claim, in the claim's transaction.

    Its presence announcement may have gone out before this server listened (it is
    core NATS, not stored), so without this a new worker runs tasks unlisted until
    its next announcement. What a claim does not say (concurrency, other flows) is
    filled in by that announcement; a known worker is only marked seen.
    """
    for worker_id in sorted(claims):
        if worker_id in listed:
            continue
        claim = claims[worker_id]
        host, name = kept.host_and_name(worker_id)
        row = {
            "id": worker_id,
            "name": name or host,
            "host": host,
            "flows": [claim.flow],
            "concurrency": 0,
            "owner": claim.owner,
            "transport": kept.transport,
            "started_at": now,
            "last_seen_at": now,
        }
        try:
            async with tx.conn.begin_nested():  # its announcement may insert it concurrently
                await tx.conn.execute(sa.insert(workers).values(**row))
        except IntegrityError:
            log.debug("worker %s was registered meanwhile", worker_id)
        else:
            log.info("worker %s listed from its first claim", worker_id)


def _holder_refusal(task: Task, item: WorkerEvent, kept: KeptLeases) -> str:
    """A result or progress must come from the worker holding the attempt (not a duplicate)."""
    if item.worker_id is None or not isinstance(item.event, TaskDone | TaskProgress | TaskRequeued):
        return ""
    if task.state is not TaskState.running or task.attempt != item.event.attempt:
        return ""  # apply() decides
    if task.worker_id in (item.worker_id, kept.unreported_worker):
        return ""
    return f"attempt {task.attempt} of task {task.id} is held by {task.worker_id}"


def _describe(event: Event) -> str:
    if isinstance(event, TaskRequeued):
        return f"requeued attempt {event.attempt}: {event.reason}"
    if isinstance(event, TaskClaimed):
        return f"attempt {event.attempt} claimed by a worker that never reported it"
    if isinstance(event, TaskDone):
        return f"{event.status} on attempt {event.attempt}: {event.error}"
    return event.type
