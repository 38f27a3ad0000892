"""Server mode over NATS: the pieces that connect the database to JetStream, wired and run.

``NatsBridge`` starts with the server and never stops it: while NATS is down it
keeps reconnecting, events wait in the outbox, and ``GET /api/health`` shows the
lag. Once connected it makes sure the streams and consumers exist, then runs

- the topology keeper (streams and consumers re-created after every reconnect
  and every few seconds: a nats-server can come back without its store),
- the outbox relay (events out, work out),
- the worker-event consumer (events in, outputs into the tasks folder),
- the heartbeat, worker-presence and whoami handlers (FastStream request-reply),
- the MaxDeliver advisory watcher, and
- the reconciler (the database is the record; JetStream can lose work).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from nats.aio.client import Client
from nats.js import JetStreamContext

from flowyard.adapters.sql.database import Database
from flowyard.adapters.sql.outbox import SqlOutbox
from flowyard.adapters.sql.projection import SqlProjection
from flowyard.adapters.sql.task_store import SqlTaskStore
from flowyard.adapters.sql.user_store import SqlUserStore
from flowyard.bus.nats.advisories import AdvisoryWatcher
from flowyard.bus.nats.auth_config import WhoAmIReply
from flowyard.bus.nats.broker import TRANSIENT, NatsAuth, connection, make_broker
from flowyard.bus.nats.dispatch import WorkDispatcher
from flowyard.bus.nats.event_subscriber import (
    WEBHOOK_CONSUMER,
    EventSubscriber,
    Take,
    ensure_subscriber,
    subscriber_config,
)
from flowyard.bus.nats.object_store import NatsFileTransfer
from flowyard.bus.nats.reconcile import Reconciler
from flowyard.bus.nats.relay import OutboxRelay
from flowyard.bus.nats.scheduler import Scheduler
from flowyard.bus.nats.server_handlers import register_server_handlers
from flowyard.bus.nats.streams import events_stream_config
from flowyard.bus.nats.subjects import token
from flowyard.bus.nats.topology import Topology
from flowyard.bus.nats.worker_events import WorkerEventConsumer
from flowyard.bus.nats.worker_protocol import NATS_LEASES
from flowyard.core.backoff import Backoff
from flowyard.core.errors import ConfigError, Unavailable
from flowyard.core.events import Event, TaskCreated
from flowyard.core.identity import Role
from flowyard.core.settings import Settings

log = logging.getLogger(__name__)


MAY_ADD_WORK = frozenset(
    {"task.created", "task.done", "task.requeued", "task.retried", "task.reprioritized"}
)
"""Events after which the scheduler may have work to send: new work, or a freed slot."""


class NatsBridge:
    def __init__(self, settings: Settings, db: Database, store: SqlTaskStore) -> None:
        if settings.nats_url is None:
            raise ConfigError("NATS is not configured: pass --nats nats://HOST:4222")
        self.settings = settings
        self.outbox = SqlOutbox(db)
        self.projection = SqlProjection(
            db, kept=NATS_LEASES, gated=settings.nats_dispatch == "priority"
        )
        self.broker = make_broker(
            settings.nats_url,
            NatsAuth.from_settings(settings),
            name="flowyard-server",
            disconnected_cb=self._disconnected,
            reconnected_cb=self._reconnected,
        )
        self.users = SqlUserStore(db)
        register_server_handlers(
            self.broker, self.projection, store.register_worker, whoami=self.whoami
        )
        self._connected_at: float | None = None
        self._kick = asyncio.Event()
        self.relay: OutboxRelay | None = None
        self.consumer: WorkerEventConsumer | None = None
        self.advisories: AdvisoryWatcher | None = None
        self.reconciler: Reconciler | None = None
        self.scheduler: Scheduler | None = None
        self.relay_after_rounds = False
        """The scheduler sends the work (priority dispatch) and wakes the relay after."""
        self.topology: Topology | None = None
        self._jobs: list[asyncio.Task[None]] = []
        self.webhook_intake: Take | None = None
        """Set when this server makes webhook deliveries from the event stream."""

    def kick(self, events: Sequence[Event] | None = None) -> None:
        """Commit listener: wake the relay, and the scheduler when the commit may have
        made work sendable (no I/O here). A claim or a progress report changes no room:
        a scheduler round for each of them was most of priority dispatch's cost. When
        the scheduler sends the work, the relay (events only) waits for the end of its
        round instead of contending with it for the loop and the database."""
        self._kick.set()
        scheduling = self.scheduler is not None and (
            events is None or any(event.type in MAY_ADD_WORK for event in events)
        )
        if scheduling and self.scheduler is not None:
            self.scheduler.kick(events)
        if self.relay is not None and not (scheduling and self.relay_after_rounds):
            self.relay.kick()

    async def _disconnected(self) -> None:
        self._connected_at = None
        log.warning("lost the connection to NATS; reconnecting")

    async def _reconnected(self) -> None:
        self._connected_at = time.monotonic()
        log.info("reconnected to NATS")
        if self.topology is not None:
            self.topology.kick()  # the server may have come back without its store

    def _reconcile_now(self) -> None:
        if self.reconciler is not None:
            self.reconciler.kick(store_lost=True)

    async def whoami(self, login: str) -> WhoAmIReply:
        """Whose tasks a NATS user may take: the same rows ``flowyard nats auth-config`` reads.

        A login missing here (disabled, revoked or expired since the config was
        generated) is told so, and its worker stops: NATS keeps accepting it only
        until the next reload.
        """
        try:
            accounts = await self.users.nats_accounts()
        except Unavailable as exc:
            return WhoAmIReply(error=exc.message, retry=True)
        for account in accounts:
            if token(account.nats_user) == login:
                admin = account.role is Role.admin
                return WhoAmIReply(owner=None if admin else account.owner, role=account.role)
        return WhoAmIReply(
            error=f"NATS user {login!r} is not an enabled flowyard user or a usable API token "
            "(disabled, removed, revoked or expired?)"
        )

    def connected_for(self) -> float:
        return 0.0 if self._connected_at is None else time.monotonic() - self._connected_at

    @property
    def connected(self) -> bool:
        return self._connected_at is not None

    async def run(self) -> None:
        s = self.settings
        log.info("connecting to NATS at %s", s.nats_url)
        client, js = await self._connect()
        self._connected_at = time.monotonic()
        transfer = NatsFileTransfer(js, s.tasks_dir)

        async def prepare(created: TaskCreated) -> None:
            await transfer.ensure_bucket(created.owner)
            if created.inputs:
                await transfer.upload_inputs(created)

        dispatcher = WorkDispatcher(
            self.broker,
            js,
            lease_seconds=s.lease_seconds,
            max_attempts=s.max_attempts,
            prepare=prepare,
        )
        self.topology = Topology(
            js,
            events_stream_config(s.events_stream_max_age_hours, s.events_max_bytes),
            dispatcher=dispatcher,
            on_lost=[dispatcher.forget, transfer.forget, self._reconcile_now],
        )
        await self._retry(self.topology.ensure, "setting up streams")
        webhooks = subscriber_config(WEBHOOK_CONSUMER, "flowyard webhook intake")
        # made here whoever dispatches: events wait in it for dispatchers started later
        await self._retry(
            lambda: ensure_subscriber(js, webhooks), "setting up the webhook consumer"
        )
        await self.broker.start()
        gated = s.nats_dispatch == "priority"
        self.relay = OutboxRelay(
            self.outbox,
            self.broker,
            dispatcher,
            poll_interval=min(1.0, s.poll_interval),
            send_work=not gated,
        )
        self.consumer = WorkerEventConsumer(
            client, self.projection, transfer, on_missing=self.topology.kick
        )
        self.advisories = AdvisoryWatcher(
            client,
            js,
            self.projection,
            lease_seconds=s.lease_seconds,
            on_missing=self.topology.kick,
        )
        self.reconciler = Reconciler(
            self.projection,
            dispatcher,
            js,
            lease_seconds=s.lease_seconds,
            connected_for=self.connected_for,
            interval=max(5.0, min(60.0, 5 * s.lease_seconds)),
            queued_grace=min(30.0, 5 * s.lease_seconds),
        )
        self.scheduler = Scheduler(
            self.projection,
            dispatcher,
            interval=min(1.0, s.poll_interval),
            gated=gated,
            offline_after=s.worker_offline_seconds,
            prefetch=s.nats_prefetch,
            after_round=self.relay.kick if gated else None,
        )
        self.relay_after_rounds = gated
        loops: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("topology", self.topology.run),
            ("relay", self.relay.run),
            ("worker-events", self.consumer.run),
            ("advisories", self.advisories.run),
            ("reconciler", self.reconciler.run),
            ("scheduler", self.scheduler.run),
        ]
        if self.webhook_intake is not None:
            intake = EventSubscriber(client, js, webhooks, self.webhook_intake)
            loops.append(("webhook-intake", intake.run))
        log.info("NATS ready: relaying the outbox, consuming worker events")
        for name, loop in loops:
            self._jobs.append(asyncio.create_task(_supervised(name, loop), name=f"nats-{name}"))
        await asyncio.gather(*self._jobs)

    async def _connect(self) -> tuple[Client, JetStreamContext]:
        """Retry until connected: HTTP keeps serving, and the outbox keeps the events."""
        while True:
            try:
                return await connection(self.broker)
            except (ConfigError, Unavailable) as exc:
                log.error("%s; retrying in 10s", exc.message)
                await asyncio.sleep(10)

    async def _retry(self, call: Callable[[], Awaitable[object]], what: str) -> None:
        backoff = Backoff(first=0.5)
        while True:
            try:
                await call()
                return
            except Unavailable as exc:
                pause = backoff.failed()
                log.warning("%s: %s; retrying in %.1fs", what, exc.message, pause)
                await asyncio.sleep(pause)

    async def health(self) -> dict[str, Any]:
        """For GET /api/health: connection, and the relay's lag (bounded count, oldest age)."""
        lag = await self.outbox.lag()
        relay = self.relay
        return {
            "connected": self.connected,
            "relay": {
                "pending": lag.pending,
                "oldest_pending_seconds": lag.oldest_seconds,
                "relayed": relay.relayed if relay else 0,
                "last_relayed_at": relay.last_relayed_at.isoformat()
                if relay and relay.last_relayed_at
                else None,
                "last_error": relay.last_error if relay else "not connected yet",
            },
            "dispatch": {
                "mode": self.settings.nats_dispatch,
                "prefetch": self.settings.nats_prefetch,
                "sent": self.scheduler.sent if self.scheduler else 0,
            },
            "worker_events": {
                "recorded": self.consumer.recorded if self.consumer else 0,
                "refused": self.consumer.refused if self.consumer else 0,
            },
            "recovery": {
                "store_losses": self.topology.losses if self.topology else 0,
                "redispatched": self.reconciler.redispatched if self.reconciler else 0,
                "expired": self.reconciler.expired if self.reconciler else 0,
                "failed_unclaimed": self.reconciler.failed if self.reconciler else 0,
            },
        }

    async def close(self) -> None:
        for job in self._jobs:
            job.cancel()
        for job in self._jobs:
            with contextlib.suppress(asyncio.CancelledError):
                await job
        for part in (self.consumer, self.advisories):
            if part is not None:
                with contextlib.suppress(*TRANSIENT, Unavailable):
                    await part.close()
        # a broker whose connection is already gone fails to unsubscribe: nothing to undo
        with contextlib.suppress(*TRANSIENT, ExceptionGroup):
            await asyncio.wait_for(self.broker.stop(), 5.0)


async def _supervised(name: str, loop: Callable[[], Awaitable[None]]) -> None:
    """Keep a loop alive: a bug in one must not silently stop the others."""
    while True:
        try:
            await loop()
            return
        except asyncio.CancelledError:
            raise
        except Exception:  # logged with its traceback, then restarted
            log.exception("NATS %s loop failed; restarting it in 1s", name)
            await asyncio.sleep(1.0)
