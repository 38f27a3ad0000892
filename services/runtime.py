"""The composition root: settings in, wired components out.

This is the only place that picks implementations from configuration (the
database URI decides the store and the queue's wake-ups; the mode decides
whether workers run in this process). Everything else receives its
collaborators ready-made.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from flowyard.adapters.files.local import LocalFileStore, LocalTaskFiles
from flowyard.adapters.files.lock import DataDirLock
from flowyard.adapters.sql.database import Database
from flowyard.adapters.sql.engine import make_engine, upgrade
from flowyard.adapters.sql.retention import SqlRetention
from flowyard.adapters.sql.task_store import SqlTaskStore
from flowyard.adapters.sql.user_store import SqlUserStore
from flowyard.adapters.sql.wakeup import PgNotifier, install_pg_notifier
from flowyard.adapters.sql.webhook_store import SqlWebhookStore
from flowyard.adapters.sql.work_queue import SqlWorkQueue
from flowyard.bus.inprocess import EventHub, LocalWaker
from flowyard.core.errors import Unavailable
from flowyard.core.events import Event, TaskCancelRequested
from flowyard.core.ports import WorkerIdentity
from flowyard.core.settings import Settings
from flowyard.flows.device import detect_device, device_resources
from flowyard.flows.registry import FlowRegistry, installed_flows
from flowyard.services.auth_service import Authenticator
from flowyard.services.chains import Chainer
from flowyard.services.event_tailer import run_event_tailer
from flowyard.services.metrics import ServerMetrics
from flowyard.services.retention import Pruner
from flowyard.services.task_service import TaskService
from flowyard.services.webhook_dispatcher import WebhookDispatcher
from flowyard.services.webhook_service import WebhookService, install_webhooks
from flowyard.services.worker import Worker, WorkerOptions

if TYPE_CHECKING:
    from flowyard.services.nats_server import NatsBridge

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    db: Database
    hub: EventHub
    store: SqlTaskStore
    files: LocalFileStore
    flows: FlowRegistry
    tasks: TaskService
    queue: SqlWorkQueue
    worker: Worker | None = None
    notifier: PgNotifier | None = None
    nats: NatsBridge | None = None
    auth: Authenticator = field(init=False)
    webhooks: WebhookService = field(init=False)
    dispatcher: WebhookDispatcher = field(init=False)
    _background: list[asyncio.Task[None]] = field(default_factory=list)
    lock: DataDirLock | None = None
    metrics: ServerMetrics = field(default_factory=ServerMetrics)
    chains: Chainer = field(init=False)
    pruner: Pruner = field(init=False)

    @classmethod
    async def open(cls, settings: Settings) -> Runtime:
        """Wire everything; in default mode first lock the data folder (one server per folder)."""
        settings.check_mode()
        lock = None
        if settings.mode == "default":
            # before the database: a second server must not requeue the first one's tasks
            scheme = "https" if settings.tls_enabled else "http"
            url = f"{scheme}://{settings.host}:{settings.port}"
            lock = DataDirLock.acquire(settings.data_dir, url)
        try:
            runtime = await cls._wire(settings)
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        runtime.lock = lock
        return runtime

    @classmethod
    async def _wire(cls, settings: Settings) -> Runtime:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        settings.tasks_dir.mkdir(parents=True, exist_ok=True)
        engine = make_engine(settings.db_uri)
        await upgrade(engine)
        db = Database(engine)
        hub = EventHub()
        if settings.mode != "server":
            # server mode: workers elsewhere write events too; the tailer feeds the hub alone
            db.on_commit(hub.publish)
        notifier = install_pg_notifier(db)  # NOTIFY database workers of new work (PostgreSQL)
        waker = LocalWaker()
        db.on_commit(waker.on_commit)
        store = SqlTaskStore(db)
        files = LocalFileStore(settings.tasks_dir)
        flows = installed_flows()
        for name, reason in flows.broken.items():
            log.warning("flow %s is not available: %s", name, reason)
        tasks = TaskService(
            store,
            files,
            flows,
            max_upload_bytes=settings.max_upload_bytes,
            max_attempts=settings.max_attempts,
            # server mode may have NATS workers: a leftover work message of an earlier
            # attempt gets at most max_attempts deliveries; a retry skips past all of them
            retry_skip=settings.max_attempts + 1 if settings.mode == "server" else 0,
            schedule_tolerance=settings.schedule_tolerance_seconds,
            idempotency_window=settings.idempotency_window_hours * 3600,
        )
        queue = SqlWorkQueue(store, waker, lease_seconds=settings.lease_seconds)
        runtime = cls(settings, db, hub, store, files, flows, tasks, queue, notifier=notifier)
        runtime.chains = Chainer(
            store,
            files,
            flows,
            max_attempts=settings.max_attempts,
            max_upload_bytes=settings.max_upload_bytes,
        )
        if settings.mode != "server":  # server mode: the tailer sees every result (``_tailed``)
            db.on_commit(runtime.chains.notice)
        runtime.pruner = Pruner(SqlRetention(db), files, settings)
        if settings.mode != "server":  # server mode: the tailer observes (``_tailed``)
            db.on_commit(runtime.metrics.tasks.observe)
        runtime.auth = Authenticator(SqlUserStore(db), settings)
        try:
            await runtime.auth.bootstrap(settings)  # refuses a server nobody can administer
        except BaseException:
            await runtime.close()
            raise
        recorder = install_webhooks(db, settings)  # delivery rows commit with their events
        runtime.webhooks = WebhookService(SqlWebhookStore(db), recorder, settings)
        runtime.dispatcher = WebhookDispatcher(runtime.webhooks.store, recorder, settings)
        runtime.dispatcher.on_attempt = runtime.metrics.webhooks.attempt
        db.on_commit(runtime.dispatcher.on_commit)
        if settings.mode == "default" and settings.workers > 0:
            runtime.worker = runtime._local_worker()
            db.on_commit(runtime._forward_cancels)
        if settings.nats_url:
            runtime.nats = _nats_bridge(settings, db, store)
        return runtime

    def _local_worker(self) -> Worker:
        s = self.settings
        identity = WorkerIdentity(
            id=f"{socket.gethostname()}/inprocess",
            name="in-process",
            host=socket.gethostname(),
            flows=self.flows.runnable(),
            concurrency=s.workers,
            transport="inprocess",
            resources=device_resources(s.device),
        )
        options = WorkerOptions(
            heartbeat_seconds=s.heartbeat_seconds,
            progress_interval=s.progress_interval,
            poll_interval=s.poll_interval,
            grace_seconds=min(10.0, s.lease_seconds),
            # 'auto' stays unresolved until a flow asks (RunContext.device): the server at rest
            # does not import torch; 'cuda' is checked now, so a missing GPU stops the start
            device=s.device if s.device == "auto" else detect_device(s.device),
            batch_limit=s.batch_limit,
        )
        return Worker(identity, self.queue, LocalTaskFiles(s.tasks_dir), self.flows, options)

    def _forward_cancels(self, events: Sequence[Event]) -> None:
        if self.worker is None:
            return
        for event in events:
            if isinstance(event, TaskCancelRequested):
                self.worker.cancel(event.task_id)

    async def start(self) -> None:
        if self.worker is not None:
            # Our own worker died with the previous process: whatever it held runs again.
            released = await self.queue.release_worker(
                self.worker.identity.id, "server restarted while the task ran"
            )
            if released:
                log.warning("requeued %d tasks interrupted by the last shutdown", released)
            self._background.append(asyncio.create_task(self.worker.run(), name="worker"))
        self._background.append(asyncio.create_task(self._reaper(), name="reaper"))
        self._background.append(asyncio.create_task(self._sweep_chains(), name="chains"))
        if self.settings.task_retention_days or self.settings.events_retention_days:
            self._background.append(asyncio.create_task(self.pruner.run(), name="pruner"))
        self._background.append(asyncio.create_task(self.dispatcher.run(), name="webhooks"))
        if self.settings.mode == "server":
            tailer = run_event_tailer(
                self.store, self._tailed, poll_interval=self.settings.poll_interval
            )
            self._background.append(asyncio.create_task(tailer, name="event-tailer"))
        if self.nats is not None:
            self._background.append(asyncio.create_task(self.nats.run(), name="nats"))

    def _tailed(self, events: Sequence[Event]) -> None:
        """Events other processes wrote: to the live hub, and a nudge for the NATS relay."""
        self.hub.publish(events)
        self.metrics.tasks.observe(events)
        self.chains.notice(events)
        if self.nats is not None:
            self.nats.kick()

    async def _sweep_chains(self) -> None:
        """Follow-ups a stopped server did not create (its listener never saw the success)."""
        try:
            made = await self.chains.sweep()
        except Unavailable as exc:
            log.warning("chain sweep skipped: %s", exc.message)
            return
        if made:
            log.info("created %d follow-up tasks missed while stopped", made)

    async def _reaper(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_seconds)
            try:
                await self.queue.reap()
            except Unavailable as exc:
                log.warning("reaper skipped: %s", exc.message)
            except Exception:  # one bad round must not stop reaping for good
                log.exception("reaper round failed")

    async def close(self) -> None:
        self.hub.close()
        if self.worker is not None:
            self.worker.stop()
        for job in reversed(self._background):
            if job.get_name() == "worker":
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait_for(job, self.settings.lease_seconds + 5)
            else:
                job.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await job
        await self.chains.close()
        if self.nats is not None:
            await self.nats.close()
        if self.notifier is not None:
            await self.notifier.close()
        await self.db.close()
        if self.lock is not None:
            self.lock.release()
            self.lock = None


def _nats_bridge(settings: Settings, db: Database, store: SqlTaskStore) -> NatsBridge:
    """Server mode with --nats: outbox relay and worker-event consumer (docs/nats.md)."""
    from flowyard.core.errors import ConfigError
    from flowyard.services.nats_server import NatsBridge

    if settings.mode != "server":
        raise ConfigError("--nats needs --mode server (NATS workers serve a server's database)")
    return NatsBridge(settings, db, store)
