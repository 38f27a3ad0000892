"""The outbox relay: events the server wrote with its tasks, published to JetStream.

Each pending event goes to ``FLOWYARD_EVENTS`` with ``Nats-Msg-Id`` = its id, and
only after the PubAck is it marked relayed; a crash in between publishes it
again, and JetStream drops the duplicate. A ``task.created`` whose task is still
queued also sends the task's work (inputs uploaded first), and so does a
``task.retried`` whose attempt the task still waits for (its work message has
the retry's attempt base, so attempts of a leftover message of an earlier
attempt are all stale, see ``core.task.retry_event``). A task scheduled for
later (``not_before``) gets its work from the scheduler when due. A NATS outage stops
the relay, which backs off and retries: events wait in the database, none is
lost.

Order: the events of one task are published one after the other, each awaited,
and a task's chain stops at its first failure (the rest wait for the next
round); chains of different tasks run concurrently, which is where the
throughput comes from.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from faststream.nats import NatsBroker

from flowyard.bus.nats.broker import PUBLISH_TIMEOUT, nats_errors
from flowyard.bus.nats.dispatch import WorkDispatcher, created_of
from flowyard.bus.nats.streams import EVENTS_STREAM, MSG_ID, ORIGIN
from flowyard.bus.nats.subjects import event_subject
from flowyard.core.backoff import Backoff
from flowyard.core.errors import FlowyardError, Unavailable
from flowyard.core.events import Event, TaskCreated, TaskRetried, utcnow
from flowyard.core.task import Task, TaskState

log = logging.getLogger(__name__)


class Pending(Protocol):
    """An outbox row: published as stored, parsed only when work must be sent."""

    @property
    def seq(self) -> int: ...

    @property
    def event_id(self) -> uuid.UUID: ...

    @property
    def type(self) -> str: ...

    @property
    def task_id(self) -> uuid.UUID: ...

    @property
    def owner(self) -> str: ...

    @property
    def flow(self) -> str: ...

    @property
    def body(self) -> str: ...

    @property
    def task_state(self) -> str | None: ...

    def event(self) -> Event: ...


class Outbox(Protocol):
    async def pending(self, limit: int) -> Sequence[Pending]: ...

    async def mark_relayed(self, seqs: Sequence[int], at: datetime | None = None) -> None: ...

    async def task(self, task_id: uuid.UUID) -> Task | None: ...


async def publish_event(broker: NatsBroker, item: Pending) -> None:
    """One stored event on FLOWYARD_EVENTS, deduplicated by its id; raises ``Unavailable``."""
    with nats_errors(f"publish of {item.type} {item.event_id}"):
        await broker.publish(
            item.body.encode(),
            event_subject(item.type, item.owner, item.flow),
            headers={
                MSG_ID: str(item.event_id),
                ORIGIN: "server",
                "content-type": "application/json",
            },
            stream=EVENTS_STREAM,
            timeout=PUBLISH_TIMEOUT,
        )


class OutboxRelay:
    def __init__(
        self,
        outbox: Outbox,
        broker: NatsBroker,
        dispatcher: WorkDispatcher,
        *,
        batch: int = 500,
        poll_interval: float = 1.0,
        concurrency: int = 64,
        send_work: bool = True,
    ) -> None:
        """``send_work`` False: events only; work goes out by priority from
        ``bus/nats/scheduler.py`` (``nats_dispatch: priority``)."""
        self.send_work = send_work
        self.outbox = outbox
        self.broker = broker
        self.dispatcher = dispatcher
        self.batch = batch
        self.poll_interval = poll_interval
        self._limit = asyncio.Semaphore(concurrency)
        self._kick = asyncio.Event()
        self.last_error: str | None = None
        self.last_relayed_at: datetime | None = None
        self.relayed = 0

    def kick(self, _events: object = None) -> None:
        """Commit listener: new events may be pending (no I/O here)."""
        self._kick.set()

    async def run(self) -> None:
        backoff = Backoff()
        while True:
            self._kick.clear()
            try:
                moved = await self.relay_once()
            except Unavailable as exc:
                pause = backoff.failed()
                if self.last_error != exc.message:  # one line per outage, not per retry
                    log.warning("relay paused, retrying in %.1fs: %s", pause, exc.message)
                self.last_error = exc.message
                await asyncio.sleep(pause)
                continue
            backoff.succeeded()
            if self.last_error is not None:
                log.info("relay resumed")
                self.last_error = None
            if moved < self.batch:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._kick.wait(), self.poll_interval)

    async def relay_once(self) -> int:
        """Relay one batch; raise ``Unavailable`` (after marking what went out) on an outage."""
        pending = await self.outbox.pending(self.batch)
        if not pending:
            return 0
        chains: dict[uuid.UUID, list[Pending]] = {}
        for item in pending:
            chains.setdefault(item.task_id, []).append(item)
        results = await asyncio.gather(*(self._chain(chain) for chain in chains.values()))
        relayed = [seq for seqs, _ in results for seq in seqs]
        await self.outbox.mark_relayed(relayed)
        if relayed:
            self.relayed += len(relayed)
            self.last_relayed_at = utcnow()
        woken = {pair for _, pairs in results for pair in pairs}
        for owner, flow in sorted(woken):
            await self.dispatcher.wake(owner, flow)
        if len(relayed) < len(pending):
            raise Unavailable(self.last_error or "some events could not be published")
        return len(pending)

    async def _chain(self, chain: list[Pending]) -> tuple[list[int], set[tuple[str, str]]]:
        relayed: list[int] = []
        woken: set[tuple[str, str]] = set()
        async with self._limit:
            for item in chain:
                try:
                    await publish_event(self.broker, item)
                    if not self.send_work:
                        pass  # work goes out by priority from bus/nats/scheduler.py
                    elif item.type == "task.created" and item.task_state == "queued":
                        created = item.event()
                        assert isinstance(created, TaskCreated)
                        if created.not_before is None:  # scheduled: bus/nats/scheduler.py
                            await self._send_work(created)
                            woken.add((item.owner, item.flow))
                    elif (
                        item.type == "task.retried"
                        and item.task_state == "queued"
                        and await self._send_retry(item)
                    ):
                        woken.add((item.owner, item.flow))
                except Unavailable as exc:
                    self.last_error = exc.message
                    break
                relayed.append(item.seq)
        return relayed, woken

    async def _send_work(self, created: TaskCreated, base: int = 0) -> None:
        try:
            await self.dispatcher.send(created, base=base, msg_id=f"work:{created.task_id}:{base}")
        except Unavailable:
            raise
        except FlowyardError as exc:
            # not transient (a stream that cannot be fixed in place): the reconciler retries
            log.error("work for task %s not sent: %s", created.task_id, exc.message)

    async def _send_retry(self, item: Pending) -> bool:
        """Work for a retried task that still waits for that retry's first attempt."""
        retried = item.event()
        assert isinstance(retried, TaskRetried)
        task = await self.outbox.task(item.task_id)  # raises Unavailable when the db is down
        base = retried.next_attempt - 1
        if task is None or task.state is not TaskState.queued or task.attempt != base:
            return False  # claimed, finished or retried again meanwhile: nothing to send
        await self._send_work(created_of(task), base=base)
        return True
