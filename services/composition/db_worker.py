"""``flowyard worker --db``: a worker on the server's database and the shared folder."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from flowyard.adapters.files.local import LocalTaskFiles
from flowyard.adapters.sql.database import Database
from flowyard.adapters.sql.engine import check_schema, make_engine
from flowyard.adapters.sql.task_store import SqlTaskStore
from flowyard.adapters.sql.wakeup import (
    CANCEL_CHANNEL,
    PgNotifier,
    PgNotifyWaker,
    PollWaker,
    listen_uri,
)
from flowyard.adapters.sql.webhook_store import DeliveryRecorder
from flowyard.adapters.sql.work_queue import SqlWorkQueue
from flowyard.core.errors import ConfigError
from flowyard.core.ports import Waker
from flowyard.core.settings import Settings
from flowyard.flows.device import detect_device
from flowyard.flows.registry import installed_flows
from flowyard.services.api.urls import output_urls
from flowyard.services.hooks import AfterCommit, Hook, InTransaction, register
from flowyard.services.worker import Worker
from flowyard.services.worker_metrics import metered
from flowyard.services.worker_process import (
    cancel_from_notify,
    log_start,
    select_flows,
    stop_on_signals,
    worker_identity,
    worker_options,
)

log = logging.getLogger(__name__)


async def run_db_worker(
    settings: Settings,
    *,
    name: str | None,
    flows: list[str] | None,
    concurrency: int,
    owner: str | None,
) -> None:
    """``flowyard worker --db``: claim from the server's database until stopped."""
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
    running: list[Worker] = []  # the cancel listener starts before the worker exists
    waker: Waker
    notifier: PgNotifier | None = None
    if db.dialect == "postgresql":
        notifier = PgNotifier(engine)
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
    register(db, db_worker_hooks(db, settings, notifier))
    queue = SqlWorkQueue(SqlTaskStore(db), waker, lease_seconds=settings.lease_seconds)
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


def db_worker_hooks(
    db: Database, settings: Settings, notifier: PgNotifier | None
) -> Sequence[Hook | None]:
    """A database worker's writes: its events create their webhook deliveries, and on
    PostgreSQL requeues wake other workers and its events wake the server's tailer."""
    return [
        InTransaction(
            "webhook delivery rows, one per matching subscription",
            DeliveryRecorder(db.dialect, output_urls(settings.public_url)),
        ),
        InTransaction("NOTIFY workers and the server's tailer", notifier) if notifier else None,
        AfterCommit("the trailing NOTIFY a debounced write owes", notifier.on_commit)
        if notifier
        else None,
    ]
