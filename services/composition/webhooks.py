"""``flowyard webhooks dispatch`` and the webhook intake of the event stream."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import TYPE_CHECKING

from flowyard.adapters.sql.database import Database
from flowyard.adapters.sql.delivery_intake import SqlDeliveryIntake
from flowyard.adapters.sql.engine import check_schema, make_engine
from flowyard.adapters.sql.webhook_store import DeliveryRecorder, SqlWebhookStore
from flowyard.core.errors import ConfigError
from flowyard.core.settings import Settings
from flowyard.services.api.urls import output_urls
from flowyard.services.components import Components, Loop, Resource
from flowyard.services.webhook_dispatcher import WebhookDispatcher

if TYPE_CHECKING:
    from flowyard.bus.nats.event_subscriber import Take

log = logging.getLogger(__name__)


def webhook_intake(db: Database, recorder: DeliveryRecorder, dispatcher: WebhookDispatcher) -> Take:
    """What the event stream's webhook subscriber calls: rows from the record, then send."""
    return SqlDeliveryIntake(db, recorder, on_rows=dispatcher.wake).take


async def run_webhook_dispatcher(settings: Settings) -> None:
    """``flowyard webhooks dispatch``: send deliveries beside the server, as many as wanted.

    Deliveries are claimed with SKIP LOCKED, so processes share them. With NATS the
    processes also share the event stream's webhook consumer and make the delivery
    rows; without it the server's and workers' writes make them.
    """
    if settings.database_uri is None or settings.db_uri.startswith("sqlite"):
        raise ConfigError(
            "a webhook dispatcher needs --db with the server's PostgreSQL or MariaDB database"
        )
    engine = make_engine(settings.db_uri, pool_size=4, pre_ping=False)
    await check_schema(engine)
    db = Database(engine)
    recorder = DeliveryRecorder(db.dialect, output_urls(settings.public_url))
    dispatcher = WebhookDispatcher(SqlWebhookStore(db), recorder, settings)
    parts = Components()
    parts.adopt(Resource("database", db.close))
    loops: list[Loop] = [Loop("webhooks", dispatcher.run)]
    if settings.nats_url:
        from flowyard.bus.nats.broker import NatsAuth, connection, make_broker
        from flowyard.bus.nats.event_subscriber import (
            WEBHOOK_CONSUMER,
            EventSubscriber,
            subscriber_config,
        )

        broker = make_broker(
            settings.nats_url, NatsAuth.from_settings(settings), name="flowyard-webhooks"
        )
        client, js = await connection(broker)
        parts.adopt(Resource("NATS", broker.stop))
        config = subscriber_config(WEBHOOK_CONSUMER, "flowyard webhook intake")
        subscriber = EventSubscriber(client, js, config, webhook_intake(db, recorder, dispatcher))
        loops.append(Loop("webhook intake", subscriber.run))
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopped.set)
    log.info(
        "webhook dispatcher on %s%s",
        engine.url.render_as_string(hide_password=True),
        f", events from {settings.nats_url}" if settings.nats_url else "",
    )
    try:
        await parts.start(loops)
        await stopped.wait()
    finally:
        await parts.stop()
