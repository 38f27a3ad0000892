"""``flowyard worker --nats``: a worker that reaches only NATS, no database, no shared folder.

The same ``Worker`` as everywhere, given a ``NatsWorkQueue`` (work from
JetStream, events back to it) and ``NatsTaskFiles`` (inputs and outputs through
the owner's object store bucket, in a private temp folder that is removed after
each attempt). Its lease is JetStream's ack wait, so FLOWYARD_LEASE_SECONDS must
match the server's (it configures the consumers); a mismatch is logged. Its login
is ``services/nats_login.py``. Nothing here imports the SQL stack.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging

from flowyard.bus.nats.broker import TRANSIENT, NatsAuth, connection, make_broker
from flowyard.bus.nats.object_store import NatsTaskFiles
from flowyard.bus.nats.work_queue import NatsWorkQueue
from flowyard.bus.nats.worker_protocol import NATS_LEASES
from flowyard.core.errors import ConfigError
from flowyard.core.settings import Settings
from flowyard.flows.device import detect_device
from flowyard.flows.registry import installed_flows
from flowyard.services.nats_login import (
    check_lease,
    resolve_owner,
    stop_when_refused,
    unless_stopped,
)
from flowyard.services.worker import Worker
from flowyard.services.worker_metrics import metered
from flowyard.services.worker_process import (
    log_start,
    select_flows,
    stop_on_signals,
    worker_identity,
    worker_options,
)

log = logging.getLogger(__name__)


async def run_nats_worker(
    settings: Settings,
    *,
    name: str | None,
    flows: list[str] | None,
    concurrency: int,
    owner: str | None,
) -> None:
    if settings.nats_url is None:
        raise ConfigError("a NATS worker needs --nats nats://HOST:4222")
    registry = installed_flows()
    selected = select_flows(registry, flows)
    auth = NatsAuth.from_settings(settings)
    log.info("connecting to NATS at %s", settings.nats_url)
    resolved = await unless_stopped(resolve_owner(settings.nats_url, auth, owner, selected))
    if resolved is None:
        log.info("stopped before NATS could be reached")
        return
    owner, inbox = resolved
    local = worker_identity(
        name, selected, concurrency, owner, transport="nats", device=detect_device(settings.device)
    )
    identity = dataclasses.replace(local, id=NATS_LEASES.worker_id(local.id))
    broker = make_broker(
        settings.nats_url, auth, name=f"flowyard-worker {identity.name}", inbox_prefix=inbox
    )
    queue = NatsWorkQueue(broker, identity, lease_seconds=settings.lease_seconds)
    connected = await unless_stopped(connection(broker))
    if connected is None:
        log.info("stopped before NATS could be reached")
        return
    client, js = connected
    await broker.start()
    await queue.start(client, js)
    await check_lease(js, owner, identity.flows, settings.lease_seconds)
    files = NatsTaskFiles(js, abandon=queue.abandon)
    counted, serve_metrics = metered(queue, settings.metrics_port, settings.metrics_host)
    worker = Worker(identity, counted, files, registry, worker_options(settings))
    queue.on_cancel = worker.cancel
    stop_on_signals(worker)
    if serve_metrics is not None:
        serve_metrics()
    log_start(identity, settings.nats_url)
    refused: list[str] = []
    watch = asyncio.create_task(stop_when_refused(client, worker, refused), name="nats-login")
    try:
        await worker.run()
    finally:
        watch.cancel()
        await files.close()
        # a broker whose connection is already gone fails to unsubscribe: nothing to undo
        with contextlib.suppress(*TRANSIENT, ExceptionGroup):
            await asyncio.wait_for(broker.stop(), 5.0)
    if refused:
        raise ConfigError(
            f"NATS at {settings.nats_url} no longer accepts user {auth.user!r} ({refused[0]}): "
            "its token was revoked or its user disabled or changed, and nats-server reloaded"
        )
