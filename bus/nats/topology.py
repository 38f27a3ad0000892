"""The server's streams and consumers, kept in place for as long as the server runs.

A nats-server that lost its store (a wiped disk, a new volume, a JetStream
reset) comes back empty: FLOWYARD_EVENTS, FLOWYARD_ADVISORIES, every work
stream and every durable consumer are gone, and publishes to them answer "no
response from stream". Creating them once at start is not enough, so
``Topology`` checks them after every reconnect (``kick``) and every ``every``
seconds, re-creates what is missing, and, when the events stream itself had to
be re-created, tells the others (``on_lost``): cached work streams and buckets
are set up again, and the reconciler runs at once to dispatch the queued work
that went down with the store. The database is the record; nothing here is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence

from nats.js import JetStreamContext
from nats.js.api import StreamConfig

from flowyard.bus.nats.broker import nats_errors
from flowyard.bus.nats.dispatch import WorkDispatcher
from flowyard.bus.nats.streams import (
    ADVISORY_STREAM,
    EVENTS_STREAM,
    advisory_consumer_config,
    advisory_stream_config,
    ensure_consumer,
    ensure_stream,
    server_consumer_config,
)
from flowyard.core.errors import FlowyardError

log = logging.getLogger(__name__)

CHECK_SECONDS = 5.0
"""How often the streams are looked at between reconnects: a few requests per round."""


class Topology:
    def __init__(
        self,
        js: JetStreamContext,
        events: StreamConfig,
        *,
        dispatcher: WorkDispatcher | None = None,
        on_lost: Sequence[Callable[[], None]] = (),
        every: float = CHECK_SECONDS,
    ) -> None:
        self.js = js
        self.events = events
        self.dispatcher = dispatcher
        self.on_lost = list(on_lost)
        self.every = every
        self.losses = 0
        """How many times the events stream had to be re-created (a store lost)."""
        self._kick = asyncio.Event()
        self._set_up = False
        self._last_error: str | None = None

    def kick(self) -> None:
        """Check now (a reconnect, or a part that found a stream or consumer missing)."""
        self._kick.set()

    async def ensure(self) -> bool:
        """Create what is missing; True when the events stream was lost and re-created."""
        with nats_errors("setting up streams"):
            created = await ensure_stream(self.js, self.events)
            created |= await ensure_stream(self.js, advisory_stream_config())
            await ensure_consumer(self.js, EVENTS_STREAM, server_consumer_config())
            await ensure_consumer(self.js, ADVISORY_STREAM, advisory_consumer_config())
        lost = created and self._set_up
        self._set_up = True
        if lost:
            self.losses += 1
            log.warning(
                "JetStream lost its store (the events stream was gone): streams and consumers "
                "re-created; queued tasks are dispatched again from the database"
            )
            for callback in self.on_lost:
                callback()
        if self.dispatcher is not None:
            await self.dispatcher.verify()
        return lost

    async def run(self) -> None:
        """Check after every kick and every ``every`` seconds; never stops."""
        while True:
            self._kick.clear()
            try:
                await self.ensure()
                if self._last_error is not None:
                    log.info("streams and consumers are in place again")
                self._last_error = None
            except FlowyardError as exc:  # NATS away, or a stream that cannot be fixed in place
                if exc.message != self._last_error:
                    log.warning("checking streams: %s; retrying", exc.message)
                self._last_error = exc.message
            except Exception:  # what brings the streams back must outlive any one bad round
                log.exception("checking streams failed; retrying in %.0fs", self.every)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), self.every)
