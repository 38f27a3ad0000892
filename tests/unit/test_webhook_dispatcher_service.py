"""``WebhookDispatcher`` on the in-memory webhook store, sending to a real receiver on
127.0.0.1 (``tests/support/webhook_receiver.py``): no database, no subprocess."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest

from flowyard.adapters.memory import MemoryTaskStore, MemoryWebhookStore
from flowyard.adapters.webhook_sender import generate_secret
from flowyard.core.events import TaskCreated
from flowyard.core.settings import Settings
from flowyard.core.webhook import DeliveryStatus, Subscription
from flowyard.services.webhook_dispatcher import WebhookDispatcher
from tests.support.webhook_receiver import WebhookReceiver

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    running = WebhookReceiver().start()
    try:
        yield running
    finally:
        running.stop()


async def subscribed(store: MemoryWebhookStore, url: str) -> Subscription:
    sub = Subscription(
        id=uuid.uuid4(), url=url, events=("task.created",), flows=None, secret=generate_secret()
    )
    return await store.create(sub)


async def test_a_due_delivery_is_sent_and_marked_delivered(receiver: WebhookReceiver) -> None:
    webhooks = MemoryWebhookStore()
    tasks = MemoryTaskStore()
    tasks.on_commit(webhooks.record_events)
    settings = Settings(webhooks_allow_private=True, webhook_timeout=5)
    dispatcher = WebhookDispatcher(webhooks, webhooks, settings)
    sub = await subscribed(webhooks, receiver.url)
    created = TaskCreated(task_id=uuid.uuid4(), flow="debug.sleep", owner="alice", params={})
    await tasks.record(created)
    assert dispatcher.recorder.cached_wants([created])

    async with httpx.AsyncClient(trust_env=False) as client:
        await dispatcher.dispatch_once(client)
        await dispatcher.drain()

    (got,) = receiver.received
    assert got.webhook_id == str(created.id)
    assert got.json()["type"] == "task.created"
    ((delivery, attempts),) = await webhooks.deliveries(sub.id)
    assert delivery.status is DeliveryStatus.delivered
    assert [a.status_code for a in attempts] == [200]


async def test_a_failing_receiver_is_retried_later(receiver: WebhookReceiver) -> None:
    receiver.responder = lambda _request: (503, 0.0)
    webhooks = MemoryWebhookStore()
    settings = Settings(webhooks_allow_private=True, webhook_timeout=5)
    dispatcher = WebhookDispatcher(webhooks, webhooks, settings)
    sub = await subscribed(webhooks, receiver.url)
    created = TaskCreated(task_id=uuid.uuid4(), flow="debug.sleep", owner="alice", params={})
    webhooks.record_events([created])
    outcomes: list[str] = []
    dispatcher.on_attempt = outcomes.append

    async with httpx.AsyncClient(trust_env=False) as client:
        await dispatcher.dispatch_once(client)
        await dispatcher.drain()
        assert await dispatcher.dispatch_once(client) is not None  # the retry's wait

    assert len(receiver.received) == 1
    assert outcomes == ["retry"]
    ((delivery, _),) = await webhooks.deliveries(sub.id)
    assert delivery.status is DeliveryStatus.pending
    assert delivery.attempts == 1
    assert (await webhooks.get(sub.id)).consecutive_failures == 1
