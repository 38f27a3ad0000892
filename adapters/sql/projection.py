"""The server's side of NATS workers: their events into the task table, leases, recovery.

NATS workers cannot reach the database; the server folds what they publish.
``record_batch`` applies a batch of worker events in one transaction (the
consumer acks the batch only after it committed). Each event is checked before
it is applied: it must name its task's owner and flow (a worker's NATS account
can only publish under its own owner), and a result or progress report must
come from the worker that holds the attempt. Events the state machine refuses
are reported back, never raised: a duplicate, late or out-of-order event
changes nothing and must not be redelivered forever.

Events the server derives here (a requeue after JetStream redelivered, a failure
after the last delivery) are appended with ``relayed_at`` NULL, so the outbox
relay publishes them to the event stream like any other server event.
"""

from __future__ import annotations

import itertools
import logging
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Literal

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError, IntegrityError

from flowyard.adapters.sql.database import Database, Tx
from flowyard.adapters.sql.rows import task_from_row, task_values
from flowyard.adapters.sql.schema import events, tasks, workers
from flowyard.adapters.sql.task_store import (
    append_event,
    append_events,
    forget_work_sent,
    load_for_update,
    needs_new_work,
    write_task,
)
from flowyard.core.errors import Conflict
from flowyard.core.events import Event, TaskClaimed, TaskDone, TaskProgress, TaskRequeued, utcnow
from flowyard.core.redelivery import (
    NATS_WORKER_PREFIX,
    UNREPORTED_WORKER,
    LeaseAnswer,
    Outcome,
    WorkerEvent,
    catch_up,
    is_nats_worker,
)
from flowyard.core.task import Task, TaskState, apply, lease_expired

log = logging.getLogger(__name__)


class SqlProjection:
    def __init__(self, db: Database, *, gated: bool = False) -> None:
        """``gated``: the server sends work by priority as NATS workers have room
        (``bus/nats/scheduler.py``); a queued task without ``work_sent_at`` is held
        back on purpose, not lost, so the reconciler leaves it alone."""
        self.db = db
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
        current = await _lock_tasks(tx, {item.event.task_id for item in items})
        before = dict(current)
        seen = await _known_events(tx, [item.event.id for item in items])
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
        await _write_tasks(tx, changed)
        # one insert per run of rows with the same relayed_at, in order: the log keeps
        # each task's order (a derived requeue sits between the claims it separates)
        for from_bus, run in itertools.groupby(log_rows, key=lambda row: row[1]):
            await append_events(tx, [e for e, _ in run], relayed_at=now if from_bus else None)
        await forget_work_sent(tx, [e.task_id for e, _ in log_rows if needs_new_work(e)])
        await _register_claimers(tx, claimers, now)
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
        steps = catch_up(task, event, now)
        for step in steps:
            task = apply(task, step)
            log.info("task %s: %s (before %s)", task.id, _describe(step), event.type)
        current[event.task_id] = task
        refusal = _holder_refusal(task, item)
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
        """Refresh the DB lease of a NATS worker's attempt and tell it what the server knows.

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
            if task.worker_id not in (worker_id, UNREPORTED_WORKER):
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

    # ---------------------------------------------------------------------- recovery

    async def fail_undelivered(
        self, task_id: uuid.UUID, deliveries: int, error: str, now: datetime | None = None
    ) -> TaskDone | None:
        """The work message hit JetStream's MaxDeliver: end the task unless it already ended.

        ``deliveries`` is the last attempt the message ran (its base plus MaxDeliver). A
        message whose attempts all lie behind the task's (a leftover from before a
        retry, or a message the reconciler replaced) ends nothing, and neither does one
        whose task has attempts left by the database's count: the database counts
        recorded claims, not deliveries (the reconciler dispatches it again).
        """
        now = now or utcnow()
        async with self.db.write() as tx:
            task = await load_for_update(tx, task_id)
            if task is None or task.state.finished or deliveries < task.attempt:
                return None
            if task.attempt < task.max_attempts:
                # some deliveries never became recorded attempts (their claims were lost, e.g.
                # while FLOWYARD_EVENTS was missing): the reconciler sends the work again
                return None
            status: Literal["failed", "cancelled"] = (
                "cancelled" if task.cancel_requested else "failed"
            )
            done = TaskDone(
                task_id=task.id,
                flow=task.flow,
                owner=task.owner,
                attempt=task.attempt,
                at=now,
                status=status,
                error=error,
            )
            await write_task(tx, task, apply(task, done))
            await append_event(tx, done)
        return done

    async def fail_stuck(
        self, task_id: uuid.UUID, attempt: int, error: str, now: datetime | None = None
    ) -> TaskDone | None:
        """Fail a task still queued at ``attempt`` whose work no worker ever claimed."""
        now = now or utcnow()
        async with self.db.write() as tx:
            task = await load_for_update(tx, task_id)
            if task is None or task.state is not TaskState.queued or task.attempt != attempt:
                return None
            done = TaskDone(
                task_id=task.id,
                flow=task.flow,
                owner=task.owner,
                attempt=task.attempt,
                at=now,
                status="cancelled" if task.cancel_requested else "failed",
                error=error,
            )
            await write_task(tx, task, apply(task, done))
            await append_event(tx, done)
        return done

    async def stale_running(self, before: datetime, limit: int = 100) -> list[Task]:
        """Tasks held by NATS workers whose lease nobody refreshed since ``before``."""
        query = (
            sa.select(tasks)
            .where(
                (tasks.c.state == TaskState.running.value)
                & tasks.c.worker_id.startswith(NATS_WORKER_PREFIX)
                & (tasks.c.lease_expires_at < before)
            )
            .order_by(tasks.c.lease_expires_at)
            .limit(limit)
        )
        async with self.db.read() as conn:
            rows = (await conn.execute(query)).all()
        return [task_from_row(r) for r in rows]

    async def expire(
        self, task_id: uuid.UUID, before: datetime, reason: str, now: datetime | None = None
    ) -> tuple[Event, Task] | None:
        """Requeue (or fail) a stale NATS task, re-checked under its row lock."""
        now = now or utcnow()
        async with self.db.write() as tx:
            task = await load_for_update(tx, task_id)
            if (
                task is None
                or task.state is not TaskState.running
                or task.lease_expires_at is None
                or task.lease_expires_at >= before
            ):
                return None
            event = lease_expired(task, now, reason)
            updated = apply(task, event)
            await write_task(tx, task, updated)
            await append_event(tx, event)
        return event, updated

    async def queued(
        self,
        updated_before: datetime,
        limit: int = 1000,
        after: tuple[datetime, uuid.UUID] | None = None,
    ) -> list[Task]:
        """Queued tasks, oldest first, whose events have all been relayed (work was sent).

        ``after`` is the ``(updated_at, id)`` of the last task of the previous page.
        """
        unrelayed = (
            sa.select(events.c.seq)
            .where((events.c.task_id == tasks.c.id) & events.c.relayed_at.is_(None))
            .exists()
        )
        where = (
            (tasks.c.state == TaskState.queued.value)
            & (tasks.c.updated_at < updated_before)
            # a task scheduled for later has no work message until the scheduler sends it
            & (tasks.c.not_before.is_(None) | (tasks.c.not_before < updated_before))
            & ~unrelayed
        )
        if self.gated:
            where &= tasks.c.work_sent_at.is_not(None)
        if after is not None:
            where &= (tasks.c.updated_at > after[0]) | (
                (tasks.c.updated_at == after[0]) & (tasks.c.id > after[1])
            )
        query = sa.select(tasks).where(where).order_by(tasks.c.updated_at, tasks.c.id).limit(limit)
        async with self.db.read() as conn:
            rows = (await conn.execute(query)).all()
        return [task_from_row(r) for r in rows]

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
        if isinstance(value, datetime) and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value

    # ------------------------------------------------------------- priority dispatch

    async def nats_slots(self, seen_since: datetime) -> list[tuple[str | None, set[str], int]]:
        """``(owner, flows, concurrency)`` of every NATS worker seen since ``seen_since``."""
        query = sa.select(workers.c.owner, workers.c.flows, workers.c.concurrency).where(
            (workers.c.transport == "nats") & (workers.c.last_seen_at >= seen_since)
        )
        async with self.db.read() as conn:
            rows = (await conn.execute(query)).all()
        return [(r.owner, set(r.flows or ()), int(r.concurrency or 0)) for r in rows]

    async def slots_in_use(self) -> dict[tuple[str, str], int]:
        """Per ``(owner, flow)``: attempts NATS workers run, plus work sent but not claimed."""
        busy = (
            (tasks.c.state == TaskState.running.value)
            & tasks.c.worker_id.startswith(NATS_WORKER_PREFIX)
        ) | ((tasks.c.state == TaskState.queued.value) & tasks.c.work_sent_at.is_not(None))
        query = (
            sa.select(tasks.c.owner, tasks.c.flow, sa.func.count())
            .where(busy)
            .group_by(tasks.c.owner, tasks.c.flow)
        )
        async with self.db.read() as conn:
            rows = (await conn.execute(query)).all()
        return {(r[0], r[1]): int(r[2]) for r in rows}

    async def unsent(self, now: datetime, limit: int = 1000) -> list[Task]:
        """Due queued tasks without a work message: highest priority first, then oldest."""
        query = (
            sa.select(tasks)
            .where(
                (tasks.c.state == TaskState.queued.value)
                & tasks.c.work_sent_at.is_(None)
                & (tasks.c.not_before.is_(None) | (tasks.c.not_before <= now))
            )
            .order_by(tasks.c.priority.desc(), tasks.c.created_at, tasks.c.id)
            .limit(limit)
        )
        async with self.db.read() as conn:
            rows = (await conn.execute(query)).all()
        return [task_from_row(r) for r in rows]

    async def mark_sent(self, task: Task, at: datetime | None) -> bool:
        """Claim the sending of ``task``'s work (None: undo); False when another server did."""
        where = (
            (tasks.c.id == task.id)
            & (tasks.c.state == TaskState.queued.value)
            & (tasks.c.attempt == task.attempt)
        )
        where &= tasks.c.work_sent_at.is_(None) if at is not None else sa.true()
        async with self.db.write() as tx:
            result = await tx.conn.execute(sa.update(tasks).where(where).values(work_sent_at=at))
        return bool(result.rowcount)

    async def states(self, task_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, tuple[str, int]]:
        """``(state, attempt)`` of each task that still exists."""
        if not task_ids:
            return {}
        query = sa.select(tasks.c.id, tasks.c.state, tasks.c.attempt).where(
            tasks.c.id.in_(list(task_ids))
        )
        async with self.db.read() as conn:
            rows = (await conn.execute(query)).all()
        return {r.id: (r.state, r.attempt) for r in rows}


async def _lock_tasks(tx: Tx, task_ids: set[uuid.UUID]) -> dict[uuid.UUID, Task]:
    """The tasks, row-locked in id order (two batches never wait on each other in a cycle)."""
    query = sa.select(tasks).where(tasks.c.id.in_(sorted(task_ids))).order_by(tasks.c.id)
    rows = (await tx.conn.execute(query.with_for_update())).all()
    return {row.id: task_from_row(row) for row in rows}


async def _known_events(tx: Tx, event_ids: list[uuid.UUID]) -> set[uuid.UUID]:
    query = sa.select(events.c.id).where(events.c.id.in_(event_ids))
    return set((await tx.conn.execute(query)).scalars())


async def _write_tasks(tx: Tx, changed: list[Task]) -> None:
    """One executemany UPDATE for every row the batch changed (each written once, final)."""
    if not changed:
        return
    rows = []
    for task in changed:
        values = task_values(task)
        values["b_id"] = values.pop("id")
        rows.append(values)
    columns = {name: sa.bindparam(name) for name in rows[0] if name != "b_id"}
    statement = sa.update(tasks).where(tasks.c.id == sa.bindparam("b_id")).values(columns)
    await tx.conn.execute(statement, rows)


async def _register_claimers(tx: Tx, claims: dict[str, TaskClaimed], now: datetime) -> None:
    """List a NATS worker from its first claim, in the claim's transaction.

    Its presence announcement may have gone out before this server listened (it is
    core NATS, not stored), so without this a new worker runs tasks unlisted until
    its next announcement. What a claim does not say (concurrency, other flows) is
    filled in by that announcement; a known worker is only marked seen.
    """
    claims = {
        wid: c for wid, c in claims.items() if is_nats_worker(wid) and wid != UNREPORTED_WORKER
    }
    if not claims:
        return
    ids = sorted(claims)
    query = sa.select(workers.c.id).where(workers.c.id.in_(ids))
    known = set((await tx.conn.execute(query)).scalars())
    if known:
        await tx.conn.execute(
            sa.update(workers).where(workers.c.id.in_(sorted(known))).values(last_seen_at=now)
        )
    for worker_id in ids:
        if worker_id in known:
            continue
        claim = claims[worker_id]
        host, _, name = worker_id.removeprefix(NATS_WORKER_PREFIX).partition("/")
        row = {
            "id": worker_id,
            "name": name or host,
            "host": host,
            "flows": [claim.flow],
            "concurrency": 0,
            "owner": claim.owner,
            "transport": "nats",
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


def _holder_refusal(task: Task, item: WorkerEvent) -> str:
    """A result or progress must come from the worker holding the attempt (not a duplicate)."""
    if item.worker_id is None or not isinstance(item.event, TaskDone | TaskProgress | TaskRequeued):
        return ""
    if task.state is not TaskState.running or task.attempt != item.event.attempt:
        return ""  # apply() decides
    if task.worker_id in (item.worker_id, UNREPORTED_WORKER):
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
