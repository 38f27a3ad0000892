"""Servers: default mode and server mode, with the NATS bridge when configured."""

from __future__ import annotations

import logging
import socket
from typing import TYPE_CHECKING

from flowyard.adapters.files.local import LocalFileStore, LocalTaskFiles
from flowyard.adapters.files.lock import DataDirLock
from flowyard.adapters.sql.database import Database
from flowyard.adapters.sql.engine import make_engine, upgrade
from flowyard.adapters.sql.retention import SqlRetention
from flowyard.adapters.sql.task_store import SqlTaskStore
from flowyard.adapters.sql.user_store import SqlUserStore
from flowyard.adapters.sql.wakeup import (
    PgNotifier,
)
from flowyard.adapters.sql.webhook_store import DeliveryRecorder, SqlWebhookStore
from flowyard.adapters.sql.work_queue import SqlWorkQueue
from flowyard.bus.inprocess import EventHub, LocalWaker
from flowyard.core.errors import ConfigError
from flowyard.core.ports import WorkerIdentity
from flowyard.core.settings import Settings
from flowyard.flows.device import detect_device, device_resources
from flowyard.flows.registry import installed_flows
from flowyard.services.api.urls import output_urls
from flowyard.services.auth_service import Authenticator
from flowyard.services.chains import Chainer
from flowyard.services.composition.webhooks import webhook_intake
from flowyard.services.hooks import AfterCommit, Hook, InTransaction, register
from flowyard.services.retention import Pruner
from flowyard.services.runtime import Runtime
from flowyard.services.task_service import TaskService
from flowyard.services.webhook_dispatcher import WebhookDispatcher
from flowyard.services.webhook_service import WebhookService
from flowyard.services.worker import Worker, WorkerOptions

if TYPE_CHECKING:
    from flowyard.services.nats_server import NatsBridge

log = logging.getLogger(__name__)


async def open_server(settings: Settings) -> Runtime:
    """Wire a server; in default mode first lock the data folder (one server per folder)."""
    settings.check_mode()
    lock = None
    if settings.mode == "default":
        # before the database: a second server must not requeue the first one's tasks
        scheme = "https" if settings.tls_enabled else "http"
        lock = DataDirLock.acquire(settings.data_dir, f"{scheme}://{settings.host}:{settings.port}")
    try:
        runtime = await _wire_server(settings)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    runtime.lock = lock
    return runtime


async def _wire_server(settings: Settings) -> Runtime:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.db_uri)
    await upgrade(engine)
    db = Database(engine)
    store = SqlTaskStore(db)
    files = LocalFileStore(settings.tasks_dir)
    files.mark_root()
    flows = installed_flows()
    for name, reason in flows.broken.items():
        log.warning("flow %s is not available: %s", name, reason)
    waker = LocalWaker()
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
    rt = Runtime(settings, db, EventHub(), store, files, flows, tasks, queue)
    rt.notifier = PgNotifier(engine) if db.dialect == "postgresql" else None
    rt.chains = Chainer(
        store,
        files,
        flows,
        max_attempts=settings.max_attempts,
        max_upload_bytes=settings.max_upload_bytes,
    )
    rt.pruner = Pruner(SqlRetention(db), files, settings)
    rt.users = SqlUserStore(db)
    rt.auth = Authenticator(rt.users, settings)
    try:
        await rt.auth.bootstrap(settings)  # refuses a server nobody can administer
    except BaseException:
        await db.close()
        raise
    recorder = DeliveryRecorder(db.dialect, output_urls(settings.public_url))
    rt.webhooks = WebhookService(SqlWebhookStore(db), recorder, settings)
    rt.dispatcher = WebhookDispatcher(SqlWebhookStore(db), recorder, settings)
    rt.dispatcher.on_attempt = rt.metrics.webhooks.attempt
    if settings.mode == "default" and settings.workers > 0:
        rt.worker = _in_process_worker(rt)
    if settings.nats_url:
        rt.nats = nats_bridge(settings, db, store)
        if settings.webhook_dispatch == "server":
            rt.nats.webhook_intake = webhook_intake(db, recorder, rt.dispatcher)
    rt.hooks = register(db, server_hooks(rt, recorder, waker))
    return rt


def server_hooks(rt: Runtime, recorder: DeliveryRecorder, waker: LocalWaker) -> list[Hook | None]:
    """Everything a server runs inside and after its writes, in order.

    In server mode other processes (workers) write events too: the event tailer
    reads them from the log and hands every event, this process's included, to
    ``tailed_listeners`` instead of the listeners marked "default mode" here.
    """
    only_here = rt.settings.mode != "server"  # this process writes every event
    notifier = rt.notifier
    return [
        # with NATS the webhook intake makes them from the event stream (``webhook_intake``)
        InTransaction("webhook delivery rows, one per matching subscription", recorder)
        if rt.nats is None
        else None,
        InTransaction("NOTIFY database workers of new work", notifier) if notifier else None,
        AfterCommit("the trailing NOTIFY a debounced write owes", notifier.on_commit)
        if notifier
        else None,
        AfterCommit("live stream (default mode)", rt.hub.publish) if only_here else None,
        AfterCommit("wake the in-process worker", waker.on_commit),
        AfterCommit("chain follow-ups (default mode)", rt.chains.notice) if only_here else None,
        AfterCommit("task metrics (default mode)", rt.metrics.tasks.observe) if only_here else None,
        AfterCommit("wake the webhook dispatcher", rt.dispatcher.on_commit),
        AfterCommit("forward cancels to the in-process worker", rt.forward_cancels)
        if rt.worker is not None
        else None,
        AfterCommit("wake the NATS relay and scheduler", rt.nats.kick) if rt.nats else None,
    ]


def tailed_listeners(rt: Runtime) -> list[AfterCommit]:
    """Server mode: what sees the events that any process wrote, read back from the log."""
    listeners = [
        AfterCommit("live stream", rt.hub.publish),
        AfterCommit("task metrics", rt.metrics.tasks.observe),
        AfterCommit("chain follow-ups", rt.chains.notice),
    ]
    if rt.nats is not None:
        listeners.append(AfterCommit("wake the NATS relay and scheduler", rt.nats.kick))
    return listeners


def _in_process_worker(rt: Runtime) -> Worker:
    s = rt.settings
    identity = WorkerIdentity(
        id=f"{socket.gethostname()}/inprocess",
        name="in-process",
        host=socket.gethostname(),
        flows=rt.flows.runnable(),
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
    return Worker(identity, rt.queue, LocalTaskFiles(s.tasks_dir), rt.flows, options)


def nats_bridge(settings: Settings, db: Database, store: SqlTaskStore) -> NatsBridge:
    """Server mode with --nats: outbox relay and worker-event consumer (docs/nats.md)."""
    from flowyard.services.nats_server import NatsBridge

    if settings.mode != "server":
        raise ConfigError("--nats needs --mode server (NATS workers serve a server's database)")
    return NatsBridge(settings, db, store)
