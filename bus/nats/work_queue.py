"""``NatsWorkQueue``: the worker's ``WorkQueue`` over JetStream, for machines that see only NATS.

- claim: pull at most ``limit`` messages (free slots, never more) from the
  durable consumers of the worker's owner and flows, then publish
  ``task.claimed`` with attempt = base + delivery count and a lease of one ack
  wait. The message stays unacked while the flow runs.
- heartbeat: ``+WPI`` (in-progress ack) restarts the ack wait, so a long flow is
  not redelivered; then a request to the server refreshes the database lease and
  answers "cancel requested?" and "still yours?". No answer (server down) is
  not an error: JetStream still holds the lease.
- report: progress is published; a result is published, its PubAck awaited, and
  only then the message acked (a batch of results is published together). A
  worker that dies before that is redelivered after the ack wait, up to
  MaxDeliver times.
- release (graceful stop): ``task.requeued`` then ``-NAK`` for prompt redelivery.
- wait_for_work: pull requests left open for the free slots (JetStream hands work
  over the moment it is stored), a wake-up the relay sends after storing work, or
  the poll interval.

Cancellation arrives twice: as the ``task.cancel_requested`` event itself (core
NATS, immediate) and in every heartbeat's answer (from the database, so a
missed message is caught within a third of the lease).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Any

from faststream.nats import NatsBroker
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from pydantic import ValidationError

from flowyard.bus.nats.broker import PUBLISH_TIMEOUT, TRANSIENT, best_effort, nats_errors
from flowyard.bus.nats.streams import ATTEMPT_BASE, EVENTS_STREAM, MSG_ID, WORKER
from flowyard.bus.nats.subjects import (
    cancel_subject,
    lease_subject,
    owner_filter,
    split_work_subject,
    subject_for,
    token,
    wake_subject,
    workers_subject,
)
from flowyard.bus.nats.work_bindings import WorkBindings
from flowyard.bus.nats.worker_protocol import LeaseReply, LeaseRequest, WorkerPresence
from flowyard.core.errors import LeaseLost, Unavailable
from flowyard.core.events import (
    Event,
    TaskCancelRequested,
    TaskClaimed,
    TaskCreated,
    TaskDone,
    TaskProgress,
    TaskRequeued,
    utcnow,
)
from flowyard.core.ports import Heartbeat, Refill, Reported, WorkerIdentity
from flowyard.core.task import Task, TaskState, event_for

log = logging.getLogger(__name__)

CancelHook = Callable[[uuid.UUID], None]
NO_ANSWER: tuple[type[BaseException], ...] = (*TRANSIENT, ValidationError)
"""A heartbeat the server did not (or could not) answer: JetStream still holds the lease."""


@dataclass
class _Held:
    msg: Msg
    task: Task
    worker: WorkerIdentity
    beat_at: float = field(default_factory=time.monotonic)
    lost: LeaseReply | None = None
    cancel: bool = False


@dataclass
class _Cancels:
    """Recent cancel requests (bounded): one may arrive just before its claim."""

    limit: int = 10_000
    ids: OrderedDict[uuid.UUID, None] = field(default_factory=OrderedDict)

    def add(self, task_id: uuid.UUID) -> None:
        self.ids[task_id] = None
        while len(self.ids) > self.limit:
            self.ids.popitem(last=False)

    def __contains__(self, task_id: object) -> bool:
        return task_id in self.ids


class NatsWorkQueue:
    def __init__(
        self,
        broker: NatsBroker,
        identity: WorkerIdentity,
        *,
        lease_seconds: float,
        rpc_timeout: float = 2.0,
        discover_every: float = 10.0,
    ) -> None:
        self.broker = broker
        self.identity = identity
        self.lease_seconds = lease_seconds
        self.rpc_timeout = rpc_timeout
        self.bindings = WorkBindings(identity, discover_every=discover_every)
        self._held: dict[uuid.UUID, _Held] = {}
        self._cancels = _Cancels()
        self._wake = asyncio.Event()
        self._idle: tuple[tuple[str, ...], int] | None = None  # the last claim found nothing
        self._keeper: asyncio.Task[None] | None = None
        self.on_cancel: CancelHook | None = None
        self._client: Client | None = None
        self._js: JetStreamContext | None = None

    # ------------------------------------------------------------------------ setup

    async def start(self, client: Client, js: JetStreamContext) -> None:
        """Called once connected: listen for cancels and wake-ups, bind the consumers we
        know of.

        Cancels and wake-ups are core-NATS subscriptions of the client itself, not
        FastStream subscribers: a wake-up comes after every round of the server's
        scheduler, and FastStream's middleware, decoding and a trip to a thread for
        each cost more CPU than the rest of its handling (py-spy on a worker). The
        client subscribes again after a reconnection."""
        self._client, self._js = client, js
        owner = self.identity.owner
        with nats_errors("subscribing to cancels and wake-ups"):
            for flow in self.identity.flows:
                await client.subscribe(cancel_subject(owner, flow), cb=self._on_cancel)
                await client.subscribe(
                    wake_subject(owner_filter(owner), token(flow)), cb=self._on_wake
                )
        self._keeper = asyncio.create_task(self._keep_alive(), name="nats-keepalive")
        await self.bindings.start(client, js)

    async def _on_cancel(self, msg: Msg) -> None:
        try:
            event = TaskCancelRequested.model_validate_json(msg.data)
        except ValidationError as exc:
            log.warning("ignoring an undecodable cancel on %s: %s", msg.subject, exc)
            return
        self._cancels.add(event.task_id)
        if event.task_id in self._held and self.on_cancel is not None:
            self.on_cancel(event.task_id)

    async def _on_wake(self, msg: Msg) -> None:
        pair = split_work_subject(msg.subject)
        if pair is not None and self.bindings.started:
            self.bindings.bind(*pair).maybe_work = True
        self._wake.set()

    # ------------------------------------------------------------------------- port

    async def register(self, worker: WorkerIdentity) -> None:
        presence = WorkerPresence(**{k: v for k, v in asdict(worker).items() if k != "transport"})
        with nats_errors("worker announcement"):
            await self.broker.publish(
                presence.model_dump_json().encode(), workers_subject(worker.owner)
            )

    async def claim(self, worker: WorkerIdentity, limit: int) -> Sequence[Task]:
        if limit <= 0 or not worker.flows:
            return []
        self._wake.clear()
        fetched = await self._fetch(worker.flows, limit)
        self._idle = None if fetched else (worker.flows, limit)
        for extra in fetched[limit:]:  # late deliveries on top of what we asked: give back
            with best_effort():
                await extra.nak()
        # claims are published concurrently: one PubAck round trip for the whole batch
        accepted = await asyncio.gather(
            *(self._accept(msg, worker) for msg in fetched[:limit]), return_exceptions=True
        )
        claimed = [task for task in accepted if isinstance(task, Task)]
        failures = [err for err in accepted if isinstance(err, BaseException)]
        if failures and not claimed:
            raise failures[0]
        return claimed

    async def _fetch(self, flows: tuple[str, ...], limit: int) -> list[Msg]:
        """Up to ``limit`` messages: those delivered while listening, then pulls.

        What the open requests of an idle wait may still deliver counts against
        ``limit``, so that work never waits in this process for a free slot."""
        bound = self.bindings.of(flows)
        fetched: list[Msg] = []
        room = limit - sum(b.puller.outstanding() for b in bound)
        for binding in bound:
            fetched += binding.puller.take_delivered()
        try:
            for binding in await self.bindings.candidates(flows):
                want = room - len(fetched)
                if want <= 0:
                    break
                msgs = await binding.puller.pull(want)
                binding.maybe_work = len(msgs) >= want
                fetched += msgs
        except Unavailable:
            if not fetched:
                raise
        return fetched

    async def _accept(self, msg: Msg, worker: WorkerIdentity) -> Task | None:
        try:
            created = TaskCreated.model_validate_json(msg.data)
        except ValidationError as exc:
            log.error("dropping a work message that is not a task: %s", exc)
            with best_effort():
                await msg.term()
            return None
        headers = msg.headers or {}
        attempt = int(headers.get(ATTEMPT_BASE, "0")) + msg.metadata.num_delivered
        now = utcnow()
        lease = now + timedelta(seconds=self.lease_seconds)
        task = Task(
            id=created.task_id,
            flow=created.flow,
            owner=created.owner,
            params=created.params,
            inputs=created.inputs,
            priority=created.priority,
            state=TaskState.running,
            attempt=attempt,
            max_attempts=created.max_attempts,
            timeout_seconds=created.timeout_seconds,
            worker_id=worker.id,
            lease_expires_at=lease,
            created_at=created.at,
            claimed_at=now,
            updated_at=now,
        )
        claim = event_for(task, TaskClaimed, at=now, worker_id=worker.id, lease_expires_at=lease)
        try:
            await self._publish(claim, worker)
        except Unavailable:
            with best_effort():
                await msg.nak()
            raise
        self._held[task.id] = _Held(msg, task, worker)
        if task.id in self._cancels and self.on_cancel is not None:
            self.on_cancel(task.id)
        return task

    async def wait_for_work(self, max_wait: float) -> None:
        """Until a wake-up, or work delivered to a request left open on the consumers.

        After a claim that found nothing, the free slots are shared out as open pull
        requests over the worker's consumers (when there are no more consumers than
        slots): JetStream hands new work to the longest-waiting request the moment it
        is stored. The wake-ups still end the wait (new owners, redeliveries)."""
        waits: list[asyncio.Future[bool]] = [asyncio.ensure_future(self._wake.wait())]
        if self._idle is not None:
            flows, limit = self._idle
            bound = self.bindings.of(flows)
            if 0 < len(bound) <= limit:
                shares = [limit // len(bound) + (i < limit % len(bound)) for i in range(len(bound))]
                waits += [
                    asyncio.ensure_future(b.puller.listen(n, max_wait))
                    for b, n in zip(bound, shares, strict=True)
                ]
        woken = False
        deadline = time.monotonic() + max_wait
        pending = set(waits)
        try:
            while pending and not woken:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                done, pending = await asyncio.wait(pending, timeout=left, return_when=FIRST)
                # a listen that ended empty (or failed: the next claim says why) waits on
                woken = any(_woke(finished) for finished in done)
        finally:
            for waiting in waits:
                waiting.cancel()
        if not woken:
            self.bindings.sweep()

    async def heartbeat(
        self, worker: WorkerIdentity, tasks: Sequence[Task]
    ) -> list[Heartbeat | LeaseLost]:
        """Each attempt is its own message and lease question to the server, asked together."""
        answers = await asyncio.gather(
            *(self._heartbeat_one(task) for task in tasks), return_exceptions=True
        )
        for answer in answers:
            if isinstance(answer, BaseException) and not isinstance(answer, LeaseLost):
                raise answer  # Unavailable: the worker tries again at its next heartbeat
        return [a for a in answers if isinstance(a, Heartbeat | LeaseLost)]

    async def _heartbeat_one(self, task: Task) -> Heartbeat:
        held = self._held.get(task.id)
        if held is None:
            raise LeaseLost(f"task {task.id} attempt {task.attempt} is not held here")
        await self._beat(held)
        if held.lost is not None:
            self._held.pop(task.id, None)
            if held.lost.drop:
                with best_effort():
                    await held.msg.ack()
            raise LeaseLost(held.lost.reason or f"task {task.id} attempt {task.attempt} is lost")
        return Heartbeat(cancel_requested=held.cancel or task.id in self._cancels)

    async def _beat(self, held: _Held) -> None:
        """+WPI (JetStream's lease), then ask the server (the database's lease, cancel, lost)."""
        held.beat_at = time.monotonic()
        with nats_errors(f"in-progress ack of task {held.task.id}"):
            await held.msg.in_progress()
        reply = await self._ask_lease(held.worker, held.task)
        if reply is None:
            return  # the server is away: JetStream still holds the lease
        if reply.lost:
            held.lost = reply
        if reply.cancel and not held.cancel:
            held.cancel = True
            if self.on_cancel is not None:
                self.on_cancel(held.task.id)

    async def _keep_alive(self) -> None:
        """Beat for every held message the worker has not beaten lately.

        The worker's own heartbeats start a third of a lease after a flow starts;
        downloading inputs, uploading outputs and reporting come before or after.
        This keeps each message's ack wait (and its database lease) fresh throughout.
        """
        period = self.lease_seconds / 3
        while True:
            await asyncio.sleep(period / 2)
            due = [h for h in self._held.values() if time.monotonic() - h.beat_at >= period]
            if due:
                await asyncio.gather(*(self._beat(h) for h in due), return_exceptions=True)

    async def _ask_lease(self, worker: WorkerIdentity, task: Task) -> LeaseReply | None:
        request = LeaseRequest(
            task_id=task.id,
            flow=task.flow,
            owner=task.owner,
            attempt=task.attempt,
            worker_id=worker.id,
            lease_seconds=self.lease_seconds,
        )
        try:
            answer = await self.broker.request(
                request.model_dump_json().encode(),
                lease_subject(task.owner, task.flow),
                timeout=self.rpc_timeout,
            )
            return LeaseReply.model_validate_json(answer.body)
        except NO_ANSWER as exc:  # no answer is not an error: see above
            log.debug("no lease answer for %s: %s", task.id, exc)
            return None

    async def report(
        self, worker: WorkerIdentity, event: TaskProgress | TaskDone | TaskRequeued
    ) -> None:
        """A result or a retry's requeue is published, then its message acked: a retry's
        next attempt is new work the server sends when its backoff is over."""
        if isinstance(event, TaskProgress):
            await self._publish(event, worker, wait=False)  # best effort, like its throttling
            return
        await self._publish(event, worker)
        if isinstance(event, TaskDone | TaskRequeued):
            held = self._held.pop(event.task_id, None)
            if held is not None:
                # redelivered later if this fails, and refused then: the task is done
                with best_effort(f"ack of task {event.task_id}", log_to=log, level=logging.WARNING):
                    await held.msg.ack()

    async def report_many(
        self,
        worker: WorkerIdentity,
        events: Sequence[TaskDone | TaskRequeued],
        refill: Refill | None = None,
    ) -> Reported:
        """Published together, as claims are: one PubAck round trip for the batch, each
        message acked after its own PubAck (the server folds them). A batch holds one
        result per task, so their order does not matter. A failed publish fails the
        batch once the others settled; the completer writes it again, and JetStream
        drops the repeats by id.

        Claims nothing for ``refill``: a pull belongs to the claim loop (one request
        open per consumer), which takes the freed slots."""
        outcomes = await asyncio.gather(
            *(self.report(worker, event) for event in events), return_exceptions=True
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException) and not isinstance(outcome, LeaseLost):
                raise outcome
        return Reported([o if isinstance(o, LeaseLost) else None for o in outcomes])

    async def release(self, worker: WorkerIdentity, task: Task, reason: str) -> None:
        held = self._held.pop(task.id, None)
        if held is None:
            return
        with contextlib.suppress(Unavailable):
            await self._publish(event_for(task, TaskRequeued, reason=reason), worker)
        with best_effort():
            await held.msg.nak()

    async def abandon(self, task: Task, reason: str) -> None:
        """Give back an attempt that could not start (inputs unreachable): redeliver it."""
        log.warning("task %s: %s; giving it back", task.id, reason)
        await self.release(self.identity, task, reason)

    async def close(self) -> None:
        self._wake.set()
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
        await self.bindings.close()

    async def _publish(self, event: Event, worker: WorkerIdentity, *, wait: bool = True) -> None:
        """On FLOWYARD_EVENTS; ``wait=False`` skips the PubAck (the stream still stores it,
        in order with this connection's other events, deduplicated by id).

        Straight through nats-py (``start`` gave the client): FastStream's publish adds
        its middleware and encoding to the two or three publishes of every task."""
        assert self._client is not None, "start() first"
        assert self._js is not None
        headers = {MSG_ID: str(event.id), WORKER: worker.id, "content-type": "application/json"}
        body, subject = event.to_json().encode(), subject_for(event)
        with nats_errors(f"publish of {event.type} for task {event.task_id}"):
            if wait:
                await self._js.publish(
                    subject, body, timeout=PUBLISH_TIMEOUT, stream=EVENTS_STREAM, headers=headers
                )
            else:
                await self._client.publish(subject, body, headers=headers)

    @property
    def held(self) -> int:
        return len(self._held)


FIRST = asyncio.FIRST_COMPLETED


def _woke(finished: asyncio.Future[Any]) -> bool:
    """The wake-up fired, or a listen saw work delivered (a failed listen did not)."""
    return not finished.cancelled() and finished.exception() is None and bool(finished.result())
