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
  only then the message acked. A worker that dies before that is redelivered
  after the ack wait, up to MaxDeliver times.
- release (graceful stop): ``task.requeued`` then ``-NAK`` for prompt redelivery.
- wait_for_work: a wake-up the relay sends after storing work, or the poll interval.

Cancellation arrives twice: as the ``task.cancel_requested`` event itself (core
NATS, immediate) and in every heartbeat's answer (from the database, so a
missed message is caught within a third of the lease).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Any

from faststream.nats import NatsBroker
from faststream.nats.annotations import NatsMessage
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from pydantic import BaseModel, Field, ValidationError

from flowyard.bus.nats.broker import PUBLISH_TIMEOUT, TRANSIENT, unavailable
from flowyard.bus.nats.pull import Puller
from flowyard.bus.nats.streams import (
    ATTEMPT_BASE,
    EVENTS_STREAM,
    MSG_ID,
    PREFIX,
    WORK_STREAM_PREFIX,
    WORKER,
    cancel_subject,
    lease_subject,
    owner_filter,
    split_work_subject,
    workers_subject,
)
from flowyard.core.errors import LeaseLost, Unavailable
from flowyard.core.events import (
    Event,
    TaskCancelRequested,
    TaskClaimed,
    TaskCreated,
    TaskDone,
    TaskProgress,
    TaskRequeued,
    name_token,
    subject_for,
    token,
    utcnow,
)
from flowyard.core.ports import Heartbeat, WorkerIdentity
from flowyard.core.task import Task, TaskState

log = logging.getLogger(__name__)

CancelHook = Callable[[uuid.UUID], None]


class LeaseRequest(BaseModel):
    """A NATS worker's heartbeat, asked of the server on ``flowyard.rpc.lease.<owner>.<flow>``."""

    task_id: uuid.UUID
    flow: str
    owner: str
    attempt: int
    worker_id: str
    lease_seconds: float


class LeaseReply(BaseModel):
    lost: bool = False
    drop: bool = False
    cancel: bool = False
    reason: str = ""


class WorkerPresence(BaseModel):
    """Sent on ``flowyard.workers.<owner>`` at start and every heartbeat period."""

    id: str
    name: str
    host: str
    flows: tuple[str, ...]
    concurrency: int
    owner: str | None = None
    transport: str = "nats"
    resources: dict[str, str | int | None] = Field(default_factory=dict)


@dataclass
class _Binding:
    """One durable consumer this worker pulls from."""

    stream: str
    consumer: str
    puller: Puller
    maybe_work: bool = True


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
        self.discover_every = discover_every
        self._client: Client | None = None
        self._js: JetStreamContext | None = None
        self._bindings: dict[tuple[str, str], _Binding] = {}
        self._rotation = itertools.count()
        self._held: dict[uuid.UUID, _Held] = {}
        self._cancels = _Cancels()
        self._wake = asyncio.Event()
        self._discovered_at = 0.0
        self._keeper: asyncio.Task[None] | None = None
        self.on_cancel: CancelHook | None = None
        self._subscribe()

    # ------------------------------------------------------------------------ setup

    def _subscribe(self) -> None:
        """Core-NATS subscriptions, registered before the broker starts."""
        owner = self.identity.owner
        for flow in self.identity.flows:
            self.broker.subscriber(
                cancel_subject(owner, flow), title=f"cancel:{flow}", include_in_schema=False
            )(self._on_cancel)
            self.broker.subscriber(
                f"{PREFIX}.wake.{owner_filter(owner)}.{token(flow)}",
                title=f"wake:{flow}",
                include_in_schema=False,
            )(self._on_wake)

    async def _on_cancel(self, event: TaskCancelRequested) -> None:
        self._cancels.add(event.task_id)
        if event.task_id in self._held and self.on_cancel is not None:
            self.on_cancel(event.task_id)

    async def _on_wake(self, message: NatsMessage) -> None:
        pair = split_work_subject(message.raw_message.subject)
        if pair is not None and self._client is not None:
            self._bind(*pair).maybe_work = True
        self._wake.set()

    async def start(self, client: Client, js: JetStreamContext) -> None:
        """Called once connected: bind the consumers we know of."""
        self._client, self._js = client, js
        self._keeper = asyncio.create_task(self._keep_alive(), name="nats-keepalive")
        if self.identity.owner is not None:
            for flow in self.identity.flows:
                self._bind(token(self.identity.owner), token(flow))
        else:
            await self._discover()

    def _bind(self, owner_token: str, flow_token: str) -> _Binding:
        key = (owner_token, flow_token)
        binding = self._bindings.get(key)
        if binding is None:
            assert self._client is not None, "start() first"
            stream = f"{WORK_STREAM_PREFIX}{name_token(owner_token)}"
            consumer = name_token(flow_token)
            binding = _Binding(stream, consumer, Puller(self._client, stream, consumer))
            self._bindings[key] = binding
        return binding

    async def _discover(self) -> None:
        """An admin's worker: find every owner's work stream that holds messages."""
        if self._js is None:
            return
        self._discovered_at = time.monotonic()
        flows = {token(f) for f in self.identity.flows}
        try:
            infos = await self._js.streams_info()
        except TRANSIENT as exc:
            log.debug("stream discovery failed: %s", exc)
            return
        for info in infos:
            if not (info.config.name or "").startswith(WORK_STREAM_PREFIX):
                continue
            for subject in info.config.subjects or ():
                parts = subject.split(".")
                if len(parts) != 4 or parts[:2] != [PREFIX, "work"]:
                    continue
                for flow in flows:
                    binding = self._bind(parts[2], flow)
                    binding.maybe_work = binding.maybe_work or info.state.messages > 0

    # ------------------------------------------------------------------------- port

    async def register(self, worker: WorkerIdentity) -> None:
        presence = WorkerPresence(**{k: v for k, v in asdict(worker).items() if k != "transport"})
        try:
            await self.broker.publish(
                presence.model_dump_json().encode(), workers_subject(worker.owner)
            )
        except TRANSIENT as exc:
            raise unavailable("worker announcement", exc) from exc

    async def claim(self, worker: WorkerIdentity, limit: int) -> Sequence[Task]:
        if limit <= 0 or not worker.flows:
            return []
        self._wake.clear()
        stale = time.monotonic() - self._discovered_at > self.discover_every
        if self.identity.owner is None and stale:
            await self._discover()
        wanted = {token(flow) for flow in worker.flows}  # a batch top-up asks for one flow
        bindings = [b for (_, flow), b in self._bindings.items() if b.maybe_work and flow in wanted]
        if bindings:
            start = next(self._rotation) % len(bindings)
            bindings = bindings[start:] + bindings[:start]
        fetched: list[Msg] = []
        try:
            for binding in bindings:
                want = limit - len(fetched)
                if want <= 0:
                    break
                msgs = await binding.puller.pull(want)
                binding.maybe_work = len(msgs) >= want
                fetched += msgs
        except Unavailable:
            if not fetched:
                raise
        for extra in fetched[limit:]:  # late deliveries on top of what we asked: give back
            with contextlib.suppress(*TRANSIENT):
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

    async def _accept(self, msg: Msg, worker: WorkerIdentity) -> Task | None:
        try:
            created = TaskCreated.model_validate_json(msg.data)
        except ValidationError as exc:
            log.error("dropping a work message that is not a task: %s", exc)
            with contextlib.suppress(*TRANSIENT):
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
        claim = TaskClaimed(
            task_id=task.id,
            flow=task.flow,
            owner=task.owner,
            attempt=attempt,
            at=now,
            worker_id=worker.id,
            lease_expires_at=lease,
        )
        try:
            await self._publish(claim, worker)
        except Unavailable:
            with contextlib.suppress(*TRANSIENT):
                await msg.nak()
            raise
        self._held[task.id] = _Held(msg, task, worker)
        if task.id in self._cancels and self.on_cancel is not None:
            self.on_cancel(task.id)
        return task

    async def wait_for_work(self, max_wait: float) -> None:
        try:
            await asyncio.wait_for(self._wake.wait(), max_wait)
        except TimeoutError:
            for binding in self._bindings.values():  # redeliveries send no wake-up: sweep
                binding.maybe_work = True

    async def heartbeat(self, worker: WorkerIdentity, task: Task) -> Heartbeat:
        held = self._held.get(task.id)
        if held is None:
            raise LeaseLost(f"task {task.id} attempt {task.attempt} is not held here")
        await self._beat(held)
        if held.lost is not None:
            self._held.pop(task.id, None)
            if held.lost.drop:
                with contextlib.suppress(*TRANSIENT):
                    await held.msg.ack()
            raise LeaseLost(held.lost.reason or f"task {task.id} attempt {task.attempt} is lost")
        return Heartbeat(cancel_requested=held.cancel or task.id in self._cancels)

    async def _beat(self, held: _Held) -> None:
        """+WPI (JetStream's lease), then ask the server (the database's lease, cancel, lost)."""
        held.beat_at = time.monotonic()
        try:
            await held.msg.in_progress()
        except TRANSIENT as exc:
            raise unavailable(f"in-progress ack of task {held.task.id}", exc) from exc
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
        except (*TRANSIENT, ValidationError) as exc:
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
                try:
                    await held.msg.ack()
                except TRANSIENT as exc:  # redelivered later, and refused: the task is done
                    log.warning("ack of task %s failed: %s", event.task_id, exc)

    async def release(self, worker: WorkerIdentity, task: Task, reason: str) -> None:
        held = self._held.pop(task.id, None)
        if held is None:
            return
        event = TaskRequeued(
            task_id=task.id, flow=task.flow, owner=task.owner, attempt=task.attempt, reason=reason
        )
        with contextlib.suppress(Unavailable):
            await self._publish(event, worker)
        with contextlib.suppress(*TRANSIENT):
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
        for binding in self._bindings.values():
            await binding.puller.close()

    async def _publish(self, event: Event, worker: WorkerIdentity, *, wait: bool = True) -> None:
        """On FLOWYARD_EVENTS; ``wait=False`` skips the PubAck (the stream still stores it,
        in order with this connection's other events, deduplicated by id)."""
        headers: dict[str, Any] = {
            MSG_ID: str(event.id),
            WORKER: worker.id,
            "content-type": "application/json",
        }
        try:
            await self.broker.publish(
                event.to_json().encode(),
                subject_for(event),
                headers=headers,
                stream=EVENTS_STREAM if wait else None,
                timeout=PUBLISH_TIMEOUT,
            )
        except TRANSIENT as exc:
            raise unavailable(f"publish of {event.type} for task {event.task_id}", exc) from exc

    @property
    def held(self) -> int:
        return len(self._held)
