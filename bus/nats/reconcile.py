"""The database is the system of record; JetStream can lose what it acknowledged.

Jepsen found acknowledged JetStream messages lost after crashes (fsync runs every
two minutes by default), a nats-server can lose its whole store, and a work
message can also vanish legitimately (a stale worker acked a message another
worker was running). So the server reconciles, at start, when kicked (the store
was lost) and then every ``interval``:

- queued tasks: a task the database says is queued, all of whose events were
  relayed, must have a live work message in its owner's stream. The stream is
  read (bounded) for the task ids it holds. A task without a message is sent
  again, after re-checking that the database still says queued. So is a task
  whose message was delivered (the consumer is past it) but whose claim never
  reached the database for ``dead_after`` seconds: its deliveries were used up
  while claims could not be published (MaxDeliver, e.g. while FLOWYARD_EVENTS
  was missing); that message is deleted first. A task sent again
  ``max_resends`` times at the same attempt without any claim arriving is
  failed with an error that says so, instead of being sent forever.
- running tasks held by NATS workers: their database lease is refreshed by every
  heartbeat (a third of the lease). One not refreshed for three leases while the
  server was connected to NATS and its consumer had caught up means the worker
  is gone and JetStream did not redeliver: the attempt is requeued (or failed,
  when it was the last) and its work sent again.

A round that fails (NATS or the database away, or a bug) is logged and the next
one runs as planned: the reconciler never stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

import nats.js.errors
from nats.js import JetStreamContext
from pydantic import ValidationError

from flowyard.bus.nats.broker import best_effort, nats_errors
from flowyard.bus.nats.dispatch import WorkDispatcher, created_of
from flowyard.bus.nats.streams import EVENTS_STREAM, SERVER_CONSUMER, work_consumer, work_stream
from flowyard.bus.nats.subjects import work_subject
from flowyard.core.errors import FlowyardError, Unavailable
from flowyard.core.events import Event, TaskCreated, TaskDone, TaskRequeued, utcnow
from flowyard.core.task import Task

log = logging.getLogger(__name__)

SCAN_CAP = 10_000
"""Most messages read from one subject per round; a longer backlog is checked later."""
PAGE = 1000
MAX_PAGES = 20
"""Queued tasks looked at per round: ``PAGE`` at a time, at most ``PAGE * MAX_PAGES``."""
MAX_RESENDS = 5
"""Re-sends of one attempt, with no claim arriving in between, before the task is failed."""
LOGGED_PER_ROUND = 10
_RESENDS_KEPT = 100_000

Cursor = tuple[datetime, uuid.UUID]


class Records(Protocol):
    async def queued(
        self, updated_before: datetime, limit: int = 1000, after: Cursor | None = None
    ) -> list[Task]: ...

    async def stale_running(self, before: datetime, limit: int = 100) -> list[Task]: ...

    async def expire(
        self, task_id: uuid.UUID, before: datetime, reason: str, now: datetime | None = None
    ) -> tuple[Event, Task] | None: ...

    async def states(self, task_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, tuple[str, int]]: ...

    async def fail_stuck(
        self, task_id: uuid.UUID, attempt: int, error: str, now: datetime | None = None
    ) -> TaskDone | None: ...


@dataclass(frozen=True)
class _Subject:
    """What one work subject holds: each task's newest message, and how far delivery got."""

    stream: str
    seqs: dict[uuid.UUID, int]
    delivered: int | None
    """The consumer's last delivered stream sequence; None when there is no consumer."""


class Reconciler:
    def __init__(
        self,
        records: Records,
        dispatcher: WorkDispatcher,
        js: JetStreamContext,
        *,
        lease_seconds: float,
        connected_for: Callable[[], float],
        interval: float = 60.0,
        queued_grace: float = 30.0,
        dead_after: float | None = None,
        max_resends: int = MAX_RESENDS,
    ) -> None:
        self.records = records
        self.dispatcher = dispatcher
        self.js = js
        self.lease_seconds = lease_seconds
        self.connected_for = connected_for
        self.interval = interval
        self.queued_grace = queued_grace
        self.dead_after = dead_after if dead_after is not None else max(30.0, 5 * lease_seconds)
        self.max_resends = max_resends
        self.redispatched = 0
        self.expired = 0
        self.failed = 0
        self._kick = asyncio.Event()
        self._no_grace = False
        self._suspects: dict[tuple[uuid.UUID, int], float] = {}
        self._resends: OrderedDict[uuid.UUID, tuple[int, int]] = OrderedDict()

    def kick(self, *, store_lost: bool = False) -> None:
        """Run a round now; after a store loss without the grace for recently queued tasks.

        The grace only keeps the reconciler from racing work that is being sent; once
        the store is gone, every queued task whose events were relayed lost its work.
        """
        self._no_grace = self._no_grace or store_lost
        self._kick.set()

    async def run(self) -> None:
        while True:
            self._kick.clear()
            await self.once()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), self.interval)

    async def once(self) -> None:
        """One round of both checks; a failing one is logged and the other still runs."""
        for name, check in (("queued", self.lost_queued), ("running", self.stale_running)):
            try:
                await check()
            except Unavailable as exc:
                log.warning("reconciling %s tasks skipped: %s", name, exc.message)
            except Exception:  # the last line of defence must outlive any one bad round
                log.exception(
                    "reconciling %s tasks failed; next round in %.0fs", name, self.interval
                )

    # -------------------------------------------------------------------------- queued

    async def lost_queued(self) -> int:
        grace, self._no_grace = (0.0 if self._no_grace else self.queued_grace), False
        cutoff = utcnow() - timedelta(seconds=grace)
        now = time.monotonic()
        subjects: dict[tuple[str, str], _Subject | None] = {}
        suspects: dict[tuple[uuid.UUID, int], float] = {}
        caught_up: bool | None = None
        lost: list[tuple[Task, _Subject | None, int | None]] = []
        after: Cursor | None = None
        for _ in range(MAX_PAGES):
            page = await self.records.queued(cutoff, PAGE, after=after)
            for task in page:
                key = (task.owner, task.flow)
                if key not in subjects:
                    subjects[key] = await self._scan(task.owner, task.flow)
                scan = subjects[key]
                if scan is None:
                    continue
                seq = scan.seqs.get(task.id)
                if seq is None:
                    lost.append((task, scan, None))
                    continue
                if scan.delivered is None or seq > scan.delivered:
                    continue  # not delivered yet: it waits its turn
                # delivered, but no claim in the database: on its way, or its deliveries are spent
                if caught_up is None:
                    caught_up = await self._caught_up()
                if not caught_up:
                    continue
                first = suspects[(task.id, seq)] = self._suspects.get((task.id, seq), now)
                if now - first >= self.dead_after:
                    lost.append((task, scan, seq))
            if len(page) < PAGE:
                break
            after = (page[-1].updated_at, page[-1].id)
        self._suspects = suspects
        return await self._send_again(lost) if lost else 0

    async def _send_again(self, lost: list[tuple[Task, _Subject | None, int | None]]) -> int:
        states = await self.records.states([task.id for task, _, _ in lost])
        sent = 0
        woken: set[tuple[str, str]] = set()
        for task, scan, dead in lost:
            if states.get(task.id) != ("queued", task.attempt):
                continue  # claimed, finished or requeued meanwhile
            if scan is not None and dead is not None:
                await self._delete(scan.stream, dead)
            if sent < LOGGED_PER_ROUND:
                why = (
                    "its work message is gone"
                    if dead is None
                    else f"its work was delivered but no claim arrived for {self.dead_after:g}s"
                )
                log.warning("task %s is queued but %s; sending it again", task.id, why)
            count = self._count_resend(task)
            if count > self.max_resends:
                await self._give_up(task, count - 1)
                continue
            await self.dispatcher.send(
                created_of(task), base=task.attempt, msg_id=_resend_id(task.id, task.attempt)
            )
            woken.add((task.owner, task.flow))
            sent += 1
        if sent > LOGGED_PER_ROUND:
            log.warning("sent the work of %d queued tasks again", sent)
        for owner, flow in sorted(woken):
            await self.dispatcher.wake(owner, flow)
        self.redispatched += sent
        return sent

    def _count_resend(self, task: Task) -> int:
        """Re-sends of this task's current attempt so far, this one included."""
        attempt, count = self._resends.pop(task.id, (task.attempt, 0))
        count = count + 1 if attempt == task.attempt else 1
        self._resends[task.id] = (task.attempt, count)
        while len(self._resends) > _RESENDS_KEPT:
            self._resends.popitem(last=False)
        return count

    async def _give_up(self, task: Task, sends: int) -> None:
        error = (
            f"its work was sent {sends} times but no worker's claim of attempt "
            f"{task.attempt + 1} ever reached the server (each delivery was lost, or its "
            f"claim could not be published to {EVENTS_STREAM}); retry it once the workers "
            f"of {task.flow!r} can reach NATS"
        )
        done = await self.records.fail_stuck(task.id, task.attempt, error)
        if done is not None:
            self.failed += 1
            self._resends.pop(task.id, None)
            log.error("task %s failed: %s", task.id, error)

    async def _delete(self, stream: str, seq: int) -> None:
        gone = contextlib.suppress(nats.js.errors.NotFoundError)  # taken, or already deleted
        with nats_errors(f"deleting work message {stream}/{seq}"), gone:
            await self.js.delete_msg(stream, seq)

    async def _scan(self, owner: str, flow: str) -> _Subject | None:
        """The subject's messages and delivery state; None when it cannot be read this round."""
        stream, subject = work_stream(owner), work_subject(owner, flow)
        try:
            await self.dispatcher.ensure(owner, flow)  # a consumer gone since start: set up
        except Unavailable:
            raise
        except FlowyardError as exc:
            log.error("work stream of %s/%s: %s", owner, flow, exc.message)
            return None
        delivered = None
        gone = contextlib.suppress(nats.js.errors.NotFoundError)
        with nats_errors(f"consumer info of {stream}"), gone:
            info = await self.js.consumer_info(stream, work_consumer(flow))
            delivered = info.delivered.stream_seq if info.delivered is not None else None
        seqs = await self._task_ids_in(stream, subject)
        return None if seqs is None else _Subject(stream, seqs, delivered)

    async def _task_ids_in(self, stream: str, subject: str) -> dict[uuid.UUID, int] | None:
        """Task id to stream sequence of the work messages on ``subject``; None if too many."""
        with nats_errors(f"stream info of {stream}"):
            try:
                info = await self.js.stream_info(stream, subjects_filter=subject)
            except nats.js.errors.NotFoundError:
                return {}
        count = (info.state.subjects or {}).get(subject, 0)
        if count > SCAN_CAP:
            log.info("%s holds %d messages; not scanned this round", subject, count)
            return None
        found: dict[uuid.UUID, int] = {}
        seq = 1
        for _ in range(count):
            with nats_errors(f"reading {stream}"):
                try:
                    raw = await self.js.get_msg(stream, seq=seq, subject=subject, next=True)
                except nats.js.errors.NotFoundError:
                    break
            seq = raw.seq or seq
            with contextlib.suppress(ValidationError):
                found[TaskCreated.model_validate_json(raw.data or b"").task_id] = seq
            seq += 1
        return found

    # ------------------------------------------------------------------------- running

    async def stale_running(self) -> int:
        horizon = 3 * self.lease_seconds
        if self.connected_for() < horizon or not await self._caught_up():
            return 0  # heartbeats could not reach us: a stale lease proves nothing yet
        before = utcnow() - timedelta(seconds=2 * self.lease_seconds)
        expired = 0
        woken: set[tuple[str, str]] = set()
        for task in await self.records.stale_running(before):
            reason = f"no heartbeat from worker {task.worker_id} for {horizon:g}s"
            result = await self.records.expire(task.id, before, reason)
            if result is None:
                continue
            event, updated = result
            expired += 1
            log.warning("task %s: %s", task.id, getattr(event, "reason", None) or event.type)
            if isinstance(event, TaskRequeued):
                await self.dispatcher.send(
                    created_of(updated),
                    base=updated.attempt,
                    msg_id=_resend_id(updated.id, updated.attempt),
                )
                woken.add((updated.owner, updated.flow))
        for owner, flow in sorted(woken):
            await self.dispatcher.wake(owner, flow)
        self.expired += expired
        return expired

    async def _caught_up(self) -> bool:
        info = None
        with best_effort():  # not knowing is not caught up
            info = await self.js.consumer_info(EVENTS_STREAM, SERVER_CONSUMER)
        if info is None:
            return False
        return (info.num_pending or 0) == 0 and (info.num_ack_pending or 0) < 1000


def _resend_id(task_id: uuid.UUID, attempt: int) -> str:
    """Unique per re-send: the stream was checked, a duplicate id would drop real work."""
    return f"work:{task_id}:{attempt}:resend:{time.time_ns()}"
