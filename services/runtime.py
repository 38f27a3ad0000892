"""A running server: the parts the HTTP routes use, and the loops that run beside them.

``services/composition/`` builds it from settings (``Runtime.open``); this module
only holds the parts and starts and stops them in order (``services/components.py``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from flowyard.adapters.files.local import LocalFileStore
from flowyard.adapters.files.lock import DataDirLock
from flowyard.adapters.sql.database import Database
from flowyard.adapters.sql.task_store import SqlTaskStore
from flowyard.adapters.sql.user_store import SqlUserStore
from flowyard.adapters.sql.wakeup import PgNotifier
from flowyard.adapters.sql.work_queue import SqlWorkQueue
from flowyard.bus.inprocess import EventHub
from flowyard.core.errors import Unavailable
from flowyard.core.events import Event, TaskCancelRequested
from flowyard.core.settings import Settings
from flowyard.flows.registry import FlowRegistry
from flowyard.services.auth_service import Authenticator
from flowyard.services.chains import Chainer
from flowyard.services.components import Component, Components, Loop, Resource
from flowyard.services.event_tailer import run_event_tailer
from flowyard.services.hooks import Hook
from flowyard.services.metrics import ServerMetrics
from flowyard.services.retention import Pruner
from flowyard.services.task_service import TaskService
from flowyard.services.webhook_dispatcher import WebhookDispatcher
from flowyard.services.webhook_service import WebhookService
from flowyard.services.worker import Worker

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
    users: SqlUserStore = field(init=False)
    webhooks: WebhookService = field(init=False)
    dispatcher: WebhookDispatcher = field(init=False)
    lock: DataDirLock | None = None
    metrics: ServerMetrics = field(default_factory=ServerMetrics)
    chains: Chainer = field(init=False)
    pruner: Pruner = field(init=False)
    hooks: tuple[Hook, ...] = ()
    """What runs inside and after each write (``composition.server_hooks``)."""
    _parts: Components = field(default_factory=Components)

    @classmethod
    async def open(cls, settings: Settings) -> Runtime:
        from flowyard.services.composition.server import open_server

        return await open_server(settings)

    def components(self) -> list[Component]:
        """The server's parts in start order (stopped in reverse)."""
        s = self.settings
        parts: list[Component] = [Resource("database", self.db.close)]
        if self.lock is not None:
            parts.insert(0, Resource("data folder lock", self._release_lock))
        if self.notifier is not None:
            parts.append(Resource("NOTIFY sender", self.notifier.close))
        if self.nats is not None:
            parts.append(Resource("NATS bridge", self.nats.close))
        parts.append(Resource("chain creator", self.chains.close))
        if self.worker is not None:
            parts.append(Resource("requeue of a stopped run", noop, self._requeue_interrupted))
        parts.append(Loop("reaper", self._reaper))
        parts.append(Loop("chains", self._sweep_chains))
        if s.task_retention_days or s.events_retention_days:
            parts.append(Loop("pruner", self.pruner.run))
        if s.webhook_dispatch == "server":  # else: 'flowyard webhooks dispatch' processes
            parts.append(Loop("webhooks", self.dispatcher.run))
        if s.mode == "server":
            parts.append(Loop("event-tailer", self._tail))
        if self.nats is not None:
            parts.append(Loop("nats", self.nats.run))
        if self.worker is not None:
            # last to start, first to stop: running flows get the grace period
            parts.append(
                Loop("worker", self.worker.run, self.worker.stop, grace=s.lease_seconds + 5)
            )
        parts.append(Resource("live streams", self._end_streams))
        return parts

    async def start(self) -> None:
        await self._parts.start(self.components())

    async def close(self) -> None:
        if not self._parts.started:  # opened but never started: close what was opened
            for part in self.components():
                if isinstance(part, Resource) and part.open is None:
                    self._parts.adopt(part)
        await self._parts.stop()

    async def _end_streams(self) -> None:
        self.hub.close()

    async def _release_lock(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    async def _requeue_interrupted(self) -> None:
        """Our own worker died with the previous process: whatever it held runs again."""
        assert self.worker is not None
        released = await self.queue.release_worker(
            self.worker.identity.id, "server restarted while the task ran"
        )
        if released:
            log.warning("requeued %d tasks interrupted by the last shutdown", released)

    def forward_cancels(self, events: Sequence[Event]) -> None:
        if self.worker is None:
            return
        for event in events:
            if isinstance(event, TaskCancelRequested):
                self.worker.cancel(event.task_id)

    async def _tail(self) -> None:
        from flowyard.services.composition.server import tailed_listeners

        listeners = [listener.listener for listener in tailed_listeners(self)]

        def tailed(events: Sequence[Event]) -> None:
            for listener in listeners:
                listener(events)

        await run_event_tailer(self.store, tailed, poll_interval=self.settings.poll_interval)

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


async def noop() -> None:
    """Nothing to do at this end of a part's life."""
