"""A worker process on the database and the shared tasks folder (no NATS in the path)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import uuid

from flowyard.adapters.files.local import LocalTaskFiles
from flowyard.adapters.sql.database import Database
from flowyard.adapters.sql.engine import check_schema, make_engine
from flowyard.adapters.sql.task_store import SqlTaskStore
from flowyard.adapters.sql.wakeup import (
    CANCEL_CHANNEL,
    PgNotifyWaker,
    PollWaker,
    install_pg_notifier,
    listen_uri,
)
from flowyard.adapters.sql.work_queue import SqlWorkQueue
from flowyard.core.errors import ConfigError
from flowyard.core.ports import Waker, WorkerIdentity
from flowyard.core.settings import Settings
from flowyard.flows.device import detect_device, device_resources
from flowyard.flows.registry import FlowRegistry, installed_flows
from flowyard.services.metrics import metered
from flowyard.services.webhook_service import install_webhooks
from flowyard.services.worker import Worker, WorkerOptions

log = logging.getLogger(__name__)


def select_flows(registry: FlowRegistry, wanted: list[str] | None) -> tuple[str, ...]:
    """The flows this worker asks for: all installed ones, or the named subset."""
    if not wanted:
        return registry.runnable()
    missing = [name for name in wanted if name not in registry.runnable()]
    if missing:
        raise ConfigError(
            f"--flows names flows that cannot run here: {', '.join(missing)}; "
            f"runnable: {', '.join(registry.runnable())} (see 'flowyard flows list')"
        )
    return tuple(dict.fromkeys(wanted))


def worker_identity(
    name: str | None,
    flows: tuple[str, ...],
    concurrency: int,
    owner: str | None,
    transport: str,
    device: str = "cpu",
) -> WorkerIdentity:
    host = socket.gethostname()
    name = name or f"{host}-{os.getpid()}"
    return WorkerIdentity(
        id=f"{host}/{name}",
        name=name,
        host=host,
        flows=flows,
        concurrency=concurrency,
        owner=owner,
        transport=transport,
        resources=device_resources(device),
    )


def worker_options(settings: Settings) -> WorkerOptions:
    return WorkerOptions(
        heartbeat_seconds=settings.heartbeat_seconds,
        progress_interval=settings.progress_interval,
        poll_interval=settings.poll_interval,
        grace_seconds=settings.grace_seconds,
        device=detect_device(settings.device),
        batch_limit=settings.batch_limit,
    )


def log_start(identity: WorkerIdentity, where: str) -> None:
    log.info(
        "worker %s on %s: flows %s, concurrency %d, owner %s",
        identity.id,
        where,
        ",".join(identity.flows),
        identity.concurrency,
        identity.owner or "(all)",
    )


def stop_on_signals(worker: Worker) -> None:
    """SIGTERM/SIGINT: stop claiming, let running flows finish within the grace period."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.stop)


def cancel_from_notify(workers: list[Worker], payload: str) -> None:
    """``NOTIFY flowyard_cancel``: stop that task's flow now if it runs here.

    Without it a worker learns of a cancel at its next heartbeat (a third of the
    lease); the heartbeat still catches a NOTIFY lost while LISTEN was down.
    """
    try:
        task_id = uuid.UUID(payload)
    except ValueError:
        log.debug("ignored a cancel NOTIFY with payload %r", payload)
        return
    for worker in workers:
        worker.cancel(task_id)


async def run_db_worker(
    settings: Settings,
    *,
    name: str | None,
    flows: list[str] | None,
    concurrency: int,
    owner: str | None,
) -> None:
    if settings.database_uri is None:
        raise ConfigError("a database worker needs --db URI (the server's database)")
    if settings.db_uri.startswith("sqlite"):
        raise ConfigError(
            "database workers need PostgreSQL or MariaDB, not SQLite; with SQLite run "
            "'flowyard serve', which runs flows in its own process"
        )
    registry = installed_flows()
    identity = worker_identity(
        name,
        select_flows(registry, flows),
        concurrency,
        owner,
        transport="db",
        device=detect_device(settings.device),
    )
    # a connection per slot plus the claim loop, housekeeping and NOTIFY: a smaller pool
    # overflows, and overflow connections are closed after use (a reconnect per task).
    # No pre-ping: a worker retries every call, so a dead pooled connection costs one retry.
    engine = make_engine(settings.db_uri, pool_size=concurrency + 3, pre_ping=False)
    await check_schema(engine)
    db = Database(engine)
    install_webhooks(db, settings)  # this worker's events create their webhook deliveries
    # requeues by this worker's reaper wake other workers; its events wake the server's tailer
    notifier = install_pg_notifier(db)
    waker: Waker
    running: list[Worker] = []  # the listener starts before the worker exists
    if db.dialect == "postgresql":
        listener = PgNotifyWaker(
            listen_uri(engine),
            settings.poll_interval,
            payloads=identity.flows,
            also={CANCEL_CHANNEL: lambda payload: cancel_from_notify(running, payload)},
        )
        await listener.start()
        waker = listener
    else:
        waker = PollWaker(settings.poll_interval)
    store = SqlTaskStore(db)
    queue = SqlWorkQueue(store, waker, lease_seconds=settings.lease_seconds)
    counted, serve_metrics = metered(queue, settings.metrics_port, settings.metrics_host)
    worker = Worker(
        identity,
        counted,
        LocalTaskFiles(settings.tasks_dir),
        registry,
        worker_options(settings),
        maintenance=queue.reap,
    )
    running.append(worker)
    stop_on_signals(worker)
    if serve_metrics is not None:
        serve_metrics()
    log_start(identity, engine.url.render_as_string(hide_password=True))
    try:
        await worker.run()
    finally:
        if notifier is not None:
            await notifier.close()
        await db.close()
