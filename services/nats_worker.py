"""A worker process that reaches only NATS: no database, no shared folder.

The same ``Worker`` as everywhere, given a ``NatsWorkQueue`` (work from
JetStream, events back to it) and ``NatsTaskFiles`` (inputs and outputs through
the owner's object store bucket, in a private temp folder that is removed after
each attempt). Its lease is JetStream's ack wait, so FLOWYARD_LEASE_SECONDS must
match the server's (it configures the consumers); a mismatch is logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal

from faststream.nats import NatsBroker
from nats.aio.client import Client
from nats.js import JetStreamContext

from adapters.nats_object_store import NatsTaskFiles
from bus.nats.broker import TRANSIENT, NatsAuth, connection, make_broker
from bus.nats.streams import work_consumer, work_stream
from bus.nats.work_queue import NatsWorkQueue
from core.errors import ConfigError
from core.events import name_token
from core.redelivery import NATS_WORKER_PREFIX
from core.settings import Settings
from flows.registry import installed_flows
from services.db_worker import (
    log_start,
    select_flows,
    stop_on_signals,
    worker_identity,
    worker_options,
)
from services.worker import Worker

log = logging.getLogger(__name__)


def inbox_prefix(owner: str | None) -> str:
    """A user's worker gets replies on its own inbox prefix, which its account may read."""
    return "_INBOX" if owner is None else f"_INBOX_{name_token(owner)}"


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
    local = worker_identity(
        name, select_flows(registry, flows), concurrency, owner, transport="nats"
    )
    identity = dataclasses.replace(local, id=f"{NATS_WORKER_PREFIX}{local.id}")
    broker = make_broker(
        settings.nats_url,
        NatsAuth.from_settings(settings),
        name=f"flowyard-worker {identity.name}",
        inbox_prefix=inbox_prefix(owner),
    )
    queue = NatsWorkQueue(broker, identity, lease_seconds=settings.lease_seconds)
    log.info("connecting to NATS at %s", settings.nats_url)
    connected = await _connect_or_stop(broker)
    if connected is None:
        log.info("stopped before NATS could be reached")
        return
    client, js = connected
    await broker.start()
    await queue.start(client, js)
    await _check_lease(js, owner, identity.flows, settings.lease_seconds)
    files = NatsTaskFiles(js, abandon=queue.abandon)
    worker = Worker(identity, queue, files, registry, worker_options(settings))
    queue.on_cancel = worker.cancel
    stop_on_signals(worker)
    log_start(identity, settings.nats_url)
    try:
        await worker.run()
    finally:
        await files.close()
        # a broker whose connection is already gone fails to unsubscribe: nothing to undo
        with contextlib.suppress(*TRANSIENT, ExceptionGroup):
            await asyncio.wait_for(broker.stop(), 5.0)


async def _connect_or_stop(broker: NatsBroker) -> tuple[Client, JetStreamContext] | None:
    """Connect (retrying while NATS is down); SIGTERM meanwhile ends the process quietly."""
    loop = asyncio.get_running_loop()
    attempt = asyncio.ensure_future(connection(broker))
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, attempt.cancel)
    try:
        return await attempt
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():  # we were cancelled, not the attempt
            raise
        return None
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


async def _check_lease(
    js: JetStreamContext, owner: str | None, flows: tuple[str, ...], lease_seconds: float
) -> None:
    """Warn when the server configured another ack wait than our heartbeats assume."""
    if owner is None or not flows:
        return
    try:
        info = await js.consumer_info(work_stream(owner), work_consumer(flows[0]))
    except TRANSIENT:  # no permission, or no consumer yet: nothing to compare
        return
    ack_wait = info.config.ack_wait or 0.0
    if abs(ack_wait - lease_seconds) > 0.01:
        log.warning(
            "the server's ack wait is %.1fs but FLOWYARD_LEASE_SECONDS here is %.1fs: "
            "heartbeats run every lease/3, so use the server's value",
            ack_wait,
            lease_seconds,
        )
