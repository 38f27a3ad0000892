"""What every worker process shares, whatever its transport: its identity, flows,
options, start-up line and signal handling (built by ``services/composition/``)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import uuid

from flowyard.core.errors import ConfigError
from flowyard.core.ports import WorkerIdentity
from flowyard.core.settings import Settings
from flowyard.flows.device import detect_device, device_resources
from flowyard.flows.registry import FlowRegistry
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
