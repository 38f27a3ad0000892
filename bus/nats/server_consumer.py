"""The server's consumers: worker events into the task table, heartbeats, MaxDeliver advisories.

``WorkerEventConsumer`` reads ``claimed``, ``progress``, ``done`` and ``requeued``
events from FLOWYARD_EVENTS through the durable ``flowyard_server`` consumer,
a batch at a time: the batch is folded in one database transaction and acked
only after the commit. Nothing it refuses is redelivered: a duplicate, a late
event or an illegal transition is logged and acked. It uses nats-py rather
than a FastStream subscriber because it needs exactly that shape (one
transaction per fetched batch, acks after commit, the subject and headers of
every message for its checks), and because FastStream's batch subscriber waits
to fill a batch (see docs/nats.md).

Before a worker's successful result is recorded, its outputs are streamed from
the object store into the server's tasks folder, so downloads work as in every
other mode.

The request-reply handlers (heartbeats, worker presence, and whoami when the
server has a users table to answer from) are FastStream subscribers: typed
in, typed out, and in the AsyncAPI document.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from typing import Protocol

import nats.js.errors
from faststream.nats import NatsBroker
from faststream.nats.annotations import NatsMessage
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from pydantic import ValidationError

from flowyard.bus.nats.auth_config import WHOAMI_SUBJECTS, WhoAmIReply, whoami_login
from flowyard.bus.nats.broker import TRANSIENT, unavailable
from flowyard.bus.nats.pull import Puller
from flowyard.bus.nats.streams import (
    ADVISORY_STREAM,
    ATTEMPT_BASE,
    EVENTS_STREAM,
    ORIGIN,
    PREFIX,
    SERVER_CONSUMER,
    WORK_STREAM_PREFIX,
    WORKER,
)
from flowyard.bus.nats.work_queue import LeaseReply, LeaseRequest, WorkerPresence
from flowyard.core.errors import FlowyardError, Unavailable
from flowyard.core.events import Event, TaskCreated, TaskDone, parse_event, token, utcnow
from flowyard.core.ports import WorkerIdentity
from flowyard.core.redelivery import NATS_WORKER_PREFIX, LeaseAnswer, Outcome, WorkerEvent

log = logging.getLogger(__name__)


class Projection(Protocol):
    async def record_batch(
        self, items: Sequence[WorkerEvent], now: datetime | None = None
    ) -> list[Outcome]: ...

    async def heartbeat(
        self, task_id: uuid.UUID, attempt: int, worker_id: str, owner: str, deadline: datetime
    ) -> LeaseAnswer: ...

    async def fail_undelivered(
        self, task_id: uuid.UUID, deliveries: int, error: str, now: datetime | None = None
    ) -> TaskDone | None: ...

    async def finished(self, task_id: uuid.UUID) -> bool: ...


class Outputs(Protocol):
    async def download_outputs(self, done: TaskDone) -> None: ...

    async def delete_objects(self, owner: str, task_id: uuid.UUID, paths: list[str]) -> None: ...


RegisterWorker = Callable[[WorkerIdentity, datetime], Awaitable[None]]
WhoAmI = Callable[[str], Awaitable[WhoAmIReply]]
"""Whose tasks a NATS user (its subject token) may take, from the users table."""


def check_subject(subject: str, event: Event) -> str:
    """Why a message's subject does not match its event (forged or misrouted); '' if it does."""
    parts = subject.split(".")
    kind = event.type.split(".", 1)[1]
    expected = [PREFIX, "events", kind, token(event.owner), token(event.flow)]
    if parts != expected:
        return f"subject {subject!r} does not match {event.type} of {event.owner}/{event.flow}"
    return ""


class WorkerEventConsumer:
    def __init__(
        self,
        client: Client,
        projection: Projection,
        outputs: Outputs,
        *,
        batch: int = 256,
        wait: float = 1.0,
        on_missing: Callable[[], None] | None = None,
    ) -> None:
        self.projection = projection
        self.outputs = outputs
        self.batch = batch
        self.wait = wait
        self.on_missing = on_missing
        self.puller = Puller(client, EVENTS_STREAM, SERVER_CONSUMER)
        self.recorded = 0
        self.refused = 0
        self._cleanup: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        backoff = 0.2
        while True:
            try:
                msgs = await self.puller.pull(self.batch, wait=self.wait)
                if msgs:
                    await self.handle(msgs)
                elif self.puller.missing:
                    _missing(self.puller, self.on_missing)
                backoff = 0.2
            except Unavailable as exc:
                log.warning("worker events: %s; retrying in %.1fs", exc.message, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def handle(self, msgs: list[Msg]) -> None:
        items: list[WorkerEvent] = []
        for msg in msgs:
            item = self._decode(msg)
            if item is not None:
                items.append(item)
        try:
            if any(_has_outputs(item.event) for item in items):
                async with _in_progress(msgs):  # large outputs take longer than the ack wait
                    items = [await self._fetch_outputs(item) for item in items]
            outcomes = await self.projection.record_batch(items)
        except Unavailable:
            for msg in msgs:  # nothing was recorded: all of them again, a little later
                with contextlib.suppress(*TRANSIENT):
                    await msg.nak(delay=1)
            raise
        for msg in msgs:
            with contextlib.suppress(*TRANSIENT):
                await msg.ack()
        for outcome in outcomes:
            self._log(outcome)

    def _decode(self, msg: Msg) -> WorkerEvent | None:
        headers = msg.headers or {}
        if headers.get(ORIGIN) == "server":
            return None  # the server's own event, relayed: already in the database
        try:
            event = parse_event(msg.data)
        except (ValidationError, ValueError) as exc:
            log.warning("dropping an undecodable event on %s: %s", msg.subject, exc)
            return None
        problem = check_subject(msg.subject, event)
        if problem:
            log.warning("refused %s %s: %s", event.type, event.id, problem)
            self.refused += 1
            return None
        return WorkerEvent(event, headers.get(WORKER))

    async def _fetch_outputs(self, item: WorkerEvent) -> WorkerEvent:
        """Bring a result's outputs into the tasks folder; a bad result becomes a failure."""
        event = item.event
        if not isinstance(event, TaskDone) or not _has_outputs(event):
            return item
        if await self.projection.finished(event.task_id):
            return item  # a duplicate or a late result: refused anyway, nothing to fetch
        try:
            await self.outputs.download_outputs(event)
        except Unavailable:
            raise
        except FlowyardError as exc:
            log.warning("task %s: result refused: %s", event.task_id, exc.message)
            failed = TaskDone(
                task_id=event.task_id,
                flow=event.flow,
                owner=event.owner,
                attempt=event.attempt,
                status="failed",
                error=f"the worker's outputs could not be stored: {exc.message}",
                worker_id=event.worker_id,
            )
            return WorkerEvent(failed, item.worker_id)
        return item

    def _log(self, outcome: Outcome) -> None:
        event = outcome.event
        if outcome.status == "refused":
            self.refused += 1
            log.info(
                "refused %s %s of task %s: %s", event.type, event.id, event.task_id, outcome.reason
            )
            return
        if outcome.status != "recorded":
            return
        self.recorded += 1
        if isinstance(event, TaskDone) and outcome.task is not None:
            paths = [ref.path for ref in outcome.task.inputs] + [r.path for r in event.outputs]
            cleanup = self.outputs.delete_objects(event.owner, event.task_id, paths)
            job = asyncio.create_task(cleanup)
            self._cleanup.add(job)
            job.add_done_callback(self._cleanup.discard)

    async def close(self) -> None:
        await self.puller.close()


def _missing(puller: Puller, on_missing: Callable[[], None] | None) -> None:
    """The consumer is gone (JetStream lost it): have it set up again, and back off meanwhile."""
    if on_missing is not None:
        on_missing()
    raise Unavailable(f"NATS: consumer {puller.consumer} on {puller.stream} is missing")


def _has_outputs(event: Event) -> bool:
    return isinstance(event, TaskDone) and event.status == "succeeded" and bool(event.outputs)


@contextlib.asynccontextmanager
async def _in_progress(msgs: list[Msg], every: float = 10.0) -> AsyncIterator[None]:
    """Keep the batch's messages from being redelivered while their outputs download."""

    async def beat() -> None:
        while True:
            await asyncio.sleep(every)
            for msg in msgs:
                with contextlib.suppress(*TRANSIENT):
                    await msg.in_progress()

    keeper = asyncio.create_task(beat())
    try:
        yield
    finally:
        keeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await keeper


# -------------------------------------------------------------------- request-reply


def register_server_handlers(
    broker: NatsBroker,
    projection: Projection,
    register_worker: RegisterWorker,
    *,
    whoami: WhoAmI | None = None,
    queue: str = "flowyard_server",
) -> None:
    """Heartbeats, worker presence and whoami, answered by one server of the queue group."""

    @broker.subscriber(
        f"{PREFIX}.rpc.lease.*.*",
        queue=queue,
        title="lease",
        description="A NATS worker's heartbeat: refresh the lease, answer cancel / lost.",
    )
    async def on_lease(request: LeaseRequest, message: NatsMessage) -> LeaseReply:
        owner_token = message.raw_message.subject.split(".")[3]
        if owner_token != token(request.owner) or not request.worker_id.startswith(
            NATS_WORKER_PREFIX
        ):
            return LeaseReply(lost=True, reason="heartbeat refused: owner or worker id mismatch")
        deadline = utcnow() + timedelta(seconds=request.lease_seconds)
        try:
            answer = await projection.heartbeat(
                request.task_id, request.attempt, request.worker_id, request.owner, deadline
            )
        except Unavailable as exc:
            log.warning("heartbeat of %s not recorded: %s", request.task_id, exc.message)
            return LeaseReply()
        return LeaseReply(
            lost=answer.lost, drop=answer.drop, cancel=answer.cancel, reason=answer.reason
        )

    @broker.subscriber(
        f"{PREFIX}.workers.*",
        queue=queue,
        title="workers",
        description="NATS worker presence, shown by GET /api/workers.",
    )
    async def on_worker(presence: WorkerPresence, message: NatsMessage) -> None:
        owner_token = message.raw_message.subject.split(".")[2]
        expected = "_all" if presence.owner is None else token(presence.owner)
        if owner_token != expected or not presence.id.startswith(NATS_WORKER_PREFIX):
            log.warning("ignored worker announcement of %s on %s", presence.id, owner_token)
            return
        identity = WorkerIdentity(
            id=presence.id,
            name=presence.name,
            host=presence.host,
            flows=presence.flows,
            concurrency=presence.concurrency,
            owner=presence.owner,
            transport="nats",
            resources=presence.resources,
        )
        with contextlib.suppress(Unavailable):
            await register_worker(identity, utcnow())

    if whoami is None:
        return

    @broker.subscriber(
        WHOAMI_SUBJECTS,
        queue=queue,
        title="whoami",
        description=(
            "A worker asks whose tasks its NATS user may take; only that user may publish "
            "on its subject, so the subject says who asks."
        ),
    )
    async def on_whoami(body: bytes, message: NatsMessage) -> WhoAmIReply:
        login = whoami_login(message.raw_message.subject)
        if login is None:
            return WhoAmIReply(error="not a whoami subject")
        return await whoami(login)


# ------------------------------------------------------------------------ advisories


class AdvisoryWatcher:
    """Ends tasks whose work hit MaxDeliver, then deletes the message (JetStream keeps it).

    The advisories are stored in FLOWYARD_ADVISORIES, so one sent while the
    server was down is still handled when it comes back.
    """

    def __init__(
        self,
        client: Client,
        js: JetStreamContext,
        projection: Projection,
        *,
        lease_seconds: float,
        wait: float = 2.0,
        on_missing: Callable[[], None] | None = None,
    ) -> None:
        self.js = js
        self.projection = projection
        self.lease_seconds = lease_seconds
        self.wait = wait
        self.on_missing = on_missing
        self.puller = Puller(client, ADVISORY_STREAM, SERVER_CONSUMER)
        self.failed = 0

    async def run(self) -> None:
        backoff = 0.2
        while True:
            try:
                msgs = await self.puller.pull(16, wait=self.wait)
                for msg in msgs:
                    await self.handle(msg)
                if not msgs and self.puller.missing:
                    _missing(self.puller, self.on_missing)
                backoff = 0.2
            except Unavailable as exc:
                log.warning("advisories: %s; retrying in %.1fs", exc.message, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def handle(self, msg: Msg) -> None:
        try:
            advisory = json.loads(msg.data)
            stream, seq = str(advisory["stream"]), int(advisory["stream_seq"])
            deliveries = int(advisory.get("deliveries", 0))
        except (ValueError, KeyError, TypeError):
            await self._ack(msg)
            return
        if stream.startswith(WORK_STREAM_PREFIX):
            await self._undeliverable(stream, seq, deliveries)
        await self._ack(msg)

    async def _undeliverable(self, stream: str, seq: int, deliveries: int) -> None:
        try:
            raw = await self.js.get_msg(stream, seq)
        except nats.js.errors.NotFoundError:
            return  # already deleted (handled before a restart)
        except TRANSIENT as exc:
            raise unavailable(f"reading work message {stream}/{seq}", exc) from exc
        try:
            created = TaskCreated.model_validate_json(raw.data or b"")
        except ValidationError:
            created = None
        if created is not None:
            base = int((raw.headers or {}).get(ATTEMPT_BASE, "0"))
            attempts = base + deliveries
            error = (
                f"no worker finished it in {attempts} attempts: each worker that took it "
                f"stopped responding, and NATS redelivered it after every ack wait of "
                f"{self.lease_seconds:g}s"
            )
            done = await self.projection.fail_undelivered(created.task_id, attempts, error)
            if done is not None:
                self.failed += 1
                log.warning("task %s %s: %s", created.task_id, done.status, error)
        try:
            await self.js.delete_msg(stream, seq)
        except nats.js.errors.NotFoundError:
            pass
        except TRANSIENT as exc:
            raise unavailable(f"deleting work message {stream}/{seq}", exc) from exc

    async def _ack(self, msg: Msg) -> None:
        with contextlib.suppress(*TRANSIENT):
            await msg.ack()

    async def close(self) -> None:
        await self.puller.close()
