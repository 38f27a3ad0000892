"""The durable work consumers a NATS worker pulls from, and finding them.

A worker of one owner binds to ``FLOWYARD_WORK_<owner>`` / ``<flow>`` for each of
its flows at start. An admin's worker serves every owner: it discovers the work
streams (every ``discover_every`` seconds, and when a wake-up names a new owner).
Each binding remembers whether it may hold work, so a claim pulls only from
consumers that had messages last time (or were woken since), in rotation.
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass

from nats.aio.client import Client
from nats.js import JetStreamContext

from flowyard.bus.nats.broker import best_effort
from flowyard.bus.nats.pull import Puller
from flowyard.bus.nats.streams import WORK_STREAM_PREFIX
from flowyard.bus.nats.subjects import PREFIX, name_token, subject_tokens, token
from flowyard.core.ports import WorkerIdentity

log = logging.getLogger(__name__)


@dataclass
class Binding:
    """One durable consumer this worker pulls from."""

    stream: str
    consumer: str
    puller: Puller
    maybe_work: bool = True


class WorkBindings:
    def __init__(self, identity: WorkerIdentity, *, discover_every: float = 10.0) -> None:
        self.identity = identity
        self.discover_every = discover_every
        self._client: Client | None = None
        self._js: JetStreamContext | None = None
        self._bindings: dict[tuple[str, str], Binding] = {}
        self._rotation = itertools.count()
        self._discovered_at = 0.0

    @property
    def started(self) -> bool:
        return self._client is not None

    async def start(self, client: Client, js: JetStreamContext) -> None:
        """Bind the consumers we know of (an admin's worker: discover them)."""
        self._client, self._js = client, js
        if self.identity.owner is not None:
            for flow in self.identity.flows:
                self.bind(token(self.identity.owner), token(flow))
        else:
            await self.discover()

    def bind(self, owner_token: str, flow_token: str) -> Binding:
        key = (owner_token, flow_token)
        binding = self._bindings.get(key)
        if binding is None:
            assert self._client is not None, "start() first"
            stream = f"{WORK_STREAM_PREFIX}{name_token(owner_token)}"
            consumer = name_token(flow_token)
            binding = Binding(stream, consumer, Puller(self._client, stream, consumer))
            self._bindings[key] = binding
        return binding

    async def discover(self) -> None:
        """An admin's worker: find every owner's work stream that holds messages."""
        if self._js is None:
            return
        self._discovered_at = time.monotonic()
        flows = {token(f) for f in self.identity.flows}
        infos = None
        with best_effort("stream discovery", log_to=log):
            infos = await self._js.streams_info()
        for info in infos or ():
            if not (info.config.name or "").startswith(WORK_STREAM_PREFIX):
                continue
            for subject in info.config.subjects or ():
                parts = subject_tokens(subject)
                if len(parts) != 4 or parts[:2] != [PREFIX, "work"]:
                    continue
                for flow in flows:
                    binding = self.bind(parts[2], flow)
                    binding.maybe_work = binding.maybe_work or info.state.messages > 0

    def of(self, flows: tuple[str, ...]) -> list[Binding]:
        """Every binding of ``flows``, whether it may hold work or not."""
        wanted = {token(flow) for flow in flows}
        return [b for (_, flow), b in self._bindings.items() if flow in wanted]

    async def candidates(self, flows: tuple[str, ...]) -> list[Binding]:
        """The bindings of ``flows`` that may hold work, starting one further each call."""
        stale = time.monotonic() - self._discovered_at > self.discover_every
        if self.identity.owner is None and stale:
            await self.discover()
        bindings = [b for b in self.of(flows) if b.maybe_work]  # a batch top-up: one flow
        if bindings:
            start = next(self._rotation) % len(bindings)
            bindings = bindings[start:] + bindings[:start]
        return bindings

    def sweep(self) -> None:
        """Redeliveries send no wake-up: look at every consumer again."""
        for binding in self._bindings.values():
            binding.maybe_work = True

    async def close(self) -> None:
        for binding in self._bindings.values():
            await binding.puller.close()
