"""A durable subscriber of the event stream, for components that run on their own.

The webhook intake is one: any number of ``flowyard webhooks dispatch`` processes
share the durable consumer ``flowyard_webhooks`` on FLOWYARD_EVENTS, so each
event reaches one of them, at least once. A batch is handed to ``take``, which
returns the ids it handled; those messages are acked after it returns (its
transaction committed). An id it could not handle yet (the server has not folded
that worker's event) is offered again a little later, and dropped once it is
older than ``give_up_after``: the server refused it, and the record never had it.

Created with deliver policy "new": a subscriber added to a running system starts
from now, not from the stream's history (which earlier deliveries came from). The
server creates the webhook consumer when it connects, whoever dispatches, so the
events wait in it for dispatchers that start later.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from pydantic import ValidationError

from flowyard.bus.nats.broker import best_effort, nats_errors
from flowyard.bus.nats.pull import Puller
from flowyard.bus.nats.streams import EVENTS_STREAM, ensure_consumer
from flowyard.bus.nats.subjects import EVENTS_SUBJECTS
from flowyard.core.backoff import retry_forever
from flowyard.core.errors import Unavailable
from flowyard.core.events import parse_event, utcnow

log = logging.getLogger(__name__)

WEBHOOK_CONSUMER = "flowyard_webhooks"
FIRST_RETRY = 0.05
"""Seconds before an event the record does not hold yet is offered again (doubling, up to
``LAST_RETRY``): a worker's event is usually folded by the server within milliseconds."""
LAST_RETRY = 5.0

Take = Callable[[Sequence[uuid.UUID]], Awaitable[set[uuid.UUID]]]


def subscriber_config(name: str, description: str, ack_wait: float = 30.0) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=name,
        description=description,
        filter_subject=EVENTS_SUBJECTS,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ack_wait,
        max_deliver=-1,
        max_ack_pending=20_000,
        deliver_policy=DeliverPolicy.NEW,
    )


async def ensure_subscriber(js: JetStreamContext, config: ConsumerConfig) -> None:
    with nats_errors(f"creating consumer {config.durable_name}"):
        await ensure_consumer(js, EVENTS_STREAM, config)


class EventSubscriber:
    def __init__(
        self,
        client: Client,
        js: JetStreamContext,
        config: ConsumerConfig,
        take: Take,
        *,
        batch: int = 256,
        wait: float = 1.0,
        give_up_after: float = 120.0,
    ) -> None:
        assert config.durable_name is not None
        self.js = js
        self.config = config
        self.take = take
        self.batch = batch
        self.wait = wait
        self.give_up_after = dt.timedelta(seconds=give_up_after)
        self.puller = Puller(client, EVENTS_STREAM, config.durable_name)
        self.taken = 0
        self.dropped = 0
        self._ready = False

    async def run(self) -> None:
        await retry_forever(self.once, what=f"event subscriber {self.config.durable_name}", log=log)

    async def once(self) -> None:
        if not self._ready:
            await ensure_subscriber(self.js, self.config)
            self._ready = True
        msgs = await self.puller.pull(self.batch, wait=self.wait)
        if msgs:
            await self.handle(msgs)
        elif self.puller.missing:
            self._ready = False  # the store lost it: create it again
            self.puller.gone()

    async def handle(self, msgs: list[Msg]) -> None:
        ids: dict[uuid.UUID, list[Msg]] = {}
        for msg in msgs:
            event_id = _event_id(msg)
            if event_id is None:
                with best_effort():
                    await msg.ack()
            else:
                ids.setdefault(event_id, []).append(msg)
        try:
            taken = await self.take(list(ids))
        except Unavailable:
            for msg in msgs:
                with best_effort():
                    await msg.nak(delay=1)
            raise
        for event_id, copies in ids.items():
            for msg in copies:
                with best_effort():
                    if event_id in taken:
                        await msg.ack()
                    elif self._too_old(msg):
                        log.info("event %s never reached the record: not delivered", event_id)
                        self.dropped += 1
                        await msg.ack()
                    else:
                        await msg.nak(delay=_retry_delay(msg))
        self.taken += len(taken)

    def _too_old(self, msg: Msg) -> bool:
        published = msg.metadata.timestamp
        return published is not None and utcnow() - published > self.give_up_after

    async def close(self) -> None:
        await self.puller.close()


def _retry_delay(msg: Msg) -> float:
    tries = max(1, msg.metadata.num_delivered or 1)
    return float(min(LAST_RETRY, FIRST_RETRY * 2 ** min(tries - 1, 16)))


def _event_id(msg: Msg) -> uuid.UUID | None:
    try:
        return parse_event(msg.data).id
    except (ValidationError, ValueError) as exc:
        log.warning("skipping an undecodable event on %s: %s", msg.subject, exc)
        return None
