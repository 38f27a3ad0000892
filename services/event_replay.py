"""Replaying the event log: one small interface, two logs (the database, JetStream).

``EventLog.prepare`` fixes the range (refusing ranges past the end of the log,
unknown tasks) and returns how many entries it may yield, for a progress bar;
``read`` yields ``(position, event)`` in log order. With NATS configured the
server mirrors every event to the JetStream stream ``FLOWYARD_EVENTS``
(subjects ``flowyard.events.<kind>.<owner>.<flow>``); the reader uses an ordered,
ephemeral consumer that starts at the requested sequence or time, so reading
creates nothing durable on the server.

What a replay does with the events lives here as well: re-queue them for a
webhook subscription (same event ids, so receivers can dedupe), or rebuild the
tasks and compare them with the live table.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from pydantic import ValidationError

from flowyard.adapters.sql import event_log
from flowyard.adapters.sql.database import Database
from flowyard.adapters.sql.webhook_store import SqlWebhookStore
from flowyard.bus.nats.subjects import token
from flowyard.core.errors import InvalidInput, NotFound, TaskNotFound, Unavailable
from flowyard.core.events import Event, parse_event
from flowyard.core.replay import EventFilter, Rebuilder, differences
from flowyard.core.task import Task
from flowyard.services.api.urls import output_urls

STREAM = "FLOWYARD_EVENTS"
SUBJECT_PREFIX = "flowyard.events"
CONNECT_SECONDS = 5
IDLE_SECONDS = 5.0
"""Longest wait for the next JetStream message before the stream is taken as stalled."""
REQUEUE_BATCH = 500

Advance = Callable[[int], None]
"""Progress callback: the position just read."""


async def _quiet(_exc: Exception) -> None:
    """Connection errors surface as exceptions from ``connect``, not as log noise."""


class EventLog(Protocol):
    """An ordered, filterable event log."""

    description: str

    async def prepare(self, f: EventFilter) -> int:
        """Fix the range now and check it; return an upper bound of the entries it yields."""
        ...

    def read(self, f: EventFilter) -> AsyncIterator[tuple[int, Event]]:
        """``(position, event)`` in log order, up to the range fixed by ``prepare``."""
        ...

    async def close(self) -> None: ...


def _check_range(f: EventFilter, first: int, last: int, what: str) -> None:
    if f.since_seq is not None and f.since_seq > last:
        raise InvalidInput(
            f"--since {f.since_seq} is past the end of {what} (last sequence {last})",
            field="--since",
        )
    if f.until_seq is not None and f.until_seq <= first:
        raise InvalidInput(
            f"--until {f.until_seq} is before the start of {what} (first sequence {first})",
            field="--until",
        )


class SqlEventLog:
    """The ``events`` table, read by ``seq`` up to the last entry when the replay started."""

    def __init__(self, db: Database, description: str) -> None:
        self.db = db
        self.description = description
        self.horizon = 0

    async def prepare(self, f: EventFilter) -> int:
        first, last = await event_log.bounds(self.db)
        self.horizon = last
        _check_range(f, first, last, self.description)
        total = await event_log.count(self.db, f, last)
        if f.task_id is not None and total == 0:
            raise TaskNotFound(f"no events of task {f.task_id} in {self.description}")
        return total

    async def read(self, f: EventFilter) -> AsyncIterator[tuple[int, Event]]:
        async for seq, event in event_log.read(self.db, f, self.horizon):
            yield seq, event

    async def close(self) -> None:
        """The database belongs to the caller, which may still use it (rebuild, webhooks)."""


class JetStreamEventLog:
    """The JetStream event stream, read with an ordered consumer from a sequence or a time."""

    def __init__(self, url: str, stream: str = STREAM) -> None:
        self.url = url
        self.stream = stream
        self.description = f"JetStream stream {stream} at {url}"
        self._nc: NatsClient | None = None
        self.first = 0
        self.horizon = 0

    async def _connect(self) -> NatsClient:
        if self._nc is None:
            # Client() then connect(): nats.connect() leaks its transport when it fails
            nc = NatsClient()
            try:
                async with asyncio.timeout(CONNECT_SECONDS * 3):
                    # max_reconnect_attempts=0 would mean "forever" in nats-py, even here
                    await nc.connect(
                        self.url,
                        connect_timeout=CONNECT_SECONDS,
                        allow_reconnect=False,
                        max_reconnect_attempts=1,
                        reconnect_time_wait=0.2,  # type: ignore[arg-type]  # slept as a float
                        error_cb=_quiet,
                    )
            except (OSError, nats.errors.Error, TimeoutError) as exc:
                with contextlib.suppress(nats.errors.Error):
                    await nc.close()
                reason = str(exc) or type(exc).__name__
                raise Unavailable(f"cannot reach NATS at {self.url}: {reason}") from exc
            self._nc = nc
        return self._nc

    async def prepare(self, f: EventFilter) -> int:
        js = (await self._connect()).jetstream()
        try:
            info = await js.stream_info(self.stream)
        except nats.js.errors.NotFoundError:
            raise NotFound(
                f"NATS at {self.url} has no stream {self.stream}: events go to JetStream only "
                "when the server runs with --nats; leave out --nats to read the database log"
            ) from None
        except (nats.errors.Error, TimeoutError) as exc:
            raise Unavailable(f"cannot read stream {self.stream} at {self.url}: {exc}") from exc
        self.first, self.horizon = info.state.first_seq, info.state.last_seq
        if info.state.messages == 0:
            self.horizon = 0
            return 0
        _check_range(f, self.first, self.horizon, self.description)
        start = max(f.since_seq or self.first, self.first)
        end = min(self.horizon, (f.until_seq or self.horizon + 1) - 1)
        return max(0, end - start + 1)

    def _subject(self, f: EventFilter) -> str:
        kind = f.types[0].split(".", 1)[1] if len(f.types) == 1 else "*"
        flow = token(f.flow) if f.flow is not None else "*"
        return f"{SUBJECT_PREFIX}.{kind}.*.{flow}"

    def _config(self, f: EventFilter) -> ConsumerConfig:
        config = ConsumerConfig(ack_policy=AckPolicy.NONE, inactive_threshold=60.0)
        if f.since_seq is not None:
            config.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
            config.opt_start_seq = max(f.since_seq, self.first)
        elif f.since_time is not None:
            # the stream time is the publish time, never earlier than the event's own time
            config.deliver_policy = DeliverPolicy.BY_START_TIME
            config.opt_start_time = f.since_time
        else:
            config.deliver_policy = DeliverPolicy.ALL
        return config

    async def read(self, f: EventFilter) -> AsyncIterator[tuple[int, Event]]:
        if self.horizon == 0:
            return
        js = (await self._connect()).jetstream()
        sub = await js.subscribe(
            self._subject(f), stream=self.stream, ordered_consumer=True, config=self._config(f)
        )
        try:
            info = await sub.consumer_info()
            if info.num_pending == 0 and not (info.delivered and info.delivered.consumer_seq):
                return  # nothing matches (with messages already pushed, num_pending is 0 too)
            while True:
                try:
                    msg = await sub.next_msg(timeout=IDLE_SECONDS)
                except nats.errors.TimeoutError:
                    return  # nothing (more) matches: the consumer has no pending messages
                meta = msg.metadata
                seq = meta.sequence.stream
                if seq > self.horizon:
                    return
                if f.until_seq is not None and seq >= f.until_seq:
                    return
                try:
                    event = parse_event(msg.data)
                except ValidationError as exc:
                    raise InvalidInput(
                        f"{self.description}: message {seq} is not a flowyard event: "
                        f"{exc.errors()[0]['msg']}"
                    ) from None
                if f.matches(seq, event):
                    yield seq, event
                if seq >= self.horizon or meta.num_pending == 0:
                    return
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    async def close(self) -> None:
        if self._nc is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._nc.close()
            self._nc = None


async def replay_to_webhook(
    log: EventLog,
    f: EventFilter,
    store: SqlWebhookStore,
    webhook_id: uuid.UUID,
    *,
    public_url: str | None = None,
    advance: Advance | None = None,
) -> int:
    """Queue the selected events for the subscription again; the server's dispatcher sends them."""
    await store.get(webhook_id)
    output_url = output_urls(public_url)
    batch: list[Event] = []
    queued = 0
    async for seq, event in log.read(f):
        batch.append(event)
        if advance is not None:
            advance(seq)
        if len(batch) >= REQUEUE_BATCH:
            queued += await store.requeue(webhook_id, batch, output_url)
            batch = []
    if batch:
        queued += await store.requeue(webhook_id, batch, output_url)
    return queued


@dataclass
class RebuildReport:
    """The outcome of ``--rebuild``: per-task differences and what was only noted."""

    rebuilt: int = 0
    compared: int = 0
    differences: dict[uuid.UUID, list[str]] = field(default_factory=dict)
    only_in_log: list[uuid.UUID] = field(default_factory=list)
    changed_during: list[uuid.UUID] = field(default_factory=list)
    skipped_events: int = 0

    @property
    def clean(self) -> bool:
        return not self.differences


async def rebuild_and_compare(
    log: EventLog,
    f: EventFilter,
    db: Database,
    *,
    started_at: datetime,
    advance: Advance | None = None,
) -> RebuildReport:
    """Fold every selected task from its events and compare it with the live table.

    A task in the log but not in the table was deleted (deleting keeps the events):
    noted, not a difference. A live row updated after the replay started changed
    while we read; it is noted instead of reported.
    """
    folder = Rebuilder()
    async for seq, event in log.read(f):
        folder.add(event)
        if advance is not None:
            advance(seq)
    report = RebuildReport(rebuilt=len(folder.tasks), skipped_events=folder.skipped)
    seen: set[uuid.UUID] = set()
    async for live in event_log.live_tasks(db, task_id=f.task_id, flow=f.flow):
        seen.add(live.id)
        report.compared += 1
        rebuilt: Task | None = folder.tasks.get(live.id)
        if rebuilt is None:
            report.differences[live.id] = ["in the table but no task.created in the log"]
            continue
        found = differences(rebuilt, live)
        if found and live.updated_at >= started_at:
            report.changed_during.append(live.id)
        elif found:
            report.differences[live.id] = found
    report.only_in_log = sorted(set(folder.tasks) - seen, key=str)
    return report
