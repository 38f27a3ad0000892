"""The webhook ports' contract: subscriptions, delivery rows made with their events,
leased claims per subscription, and what an attempt does to a delivery."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest

from flowyard.core.errors import WebhookNotFound
from flowyard.core.events import utcnow
from flowyard.core.webhook import DeliveryStatus, Outcome, RetryPolicy, Subscription
from tests.contract.conftest import Ports

pytestmark = pytest.mark.timeout(60)

POLICY = RetryPolicy(base=1.0, retry_for=timedelta(hours=1), disable_after=50)
LEASE = timedelta(seconds=30)


async def subscribe(
    ports: Ports, *, owner: str = "alice", flows: tuple[str, ...] | None = None
) -> Subscription:
    sub = Subscription(
        id=uuid.uuid4(),
        url="http://127.0.0.1:9/hook",
        events=("task.created",),
        flows=flows,
        secret="whsec_" + "A" * 32,
        owner=owner,
        all_owners=False,
    )
    created: Subscription = await ports.webhooks.create(sub)
    ports.invalidate()
    return created


async def test_subscriptions_are_created_listed_and_removed(ports: Ports) -> None:
    mine = await subscribe(ports, owner="alice")
    theirs = await subscribe(ports, owner="bob")
    assert (await ports.webhooks.get(mine.id)).url == mine.url
    assert [s.id for s in await ports.webhooks.list("alice")] == [mine.id]
    assert {s.id for s in await ports.webhooks.list()} == {mine.id, theirs.id}
    await ports.webhooks.delete(mine.id)
    with pytest.raises(WebhookNotFound):
        await ports.webhooks.get(mine.id)
    assert [s.id for s in await ports.webhooks.enabled()] == [theirs.id]


async def test_an_event_makes_one_delivery_per_matching_subscription(ports: Ports) -> None:
    sub = await subscribe(ports, flows=("debug.sleep",))
    task = await ports.create(owner="alice")
    await ports.create(owner="bob")  # not visible to alice's subscription
    await ports.create(owner="alice", flow="image.blur")  # filtered out
    ((delivery, attempts),) = await ports.webhooks.deliveries(sub.id)
    assert delivery.task_id == task.id
    assert delivery.event_type == "task.created"
    assert delivery.status is DeliveryStatus.pending
    assert attempts == []


async def test_a_claim_hides_a_delivery_until_its_lease_ends(ports: Ports) -> None:
    sub = await subscribe(ports)
    for _ in range(3):
        await ports.create()
    now = utcnow() + timedelta(seconds=1)
    claimed = await ports.webhooks.claim({sub.id: 2}, now, LEASE)
    assert len(claimed) == 2
    assert len(await ports.webhooks.claim({sub.id: 5}, now, LEASE)) == 1
    assert await ports.webhooks.claim({sub.id: 5}, now, LEASE) == []
    due = await ports.webhooks.next_due([sub.id])
    assert due is not None
    assert abs((due - (now + LEASE)).total_seconds()) < 1
    assert len(await ports.webhooks.claim({sub.id: 5}, now + LEASE * 2, LEASE)) == 3


async def test_attempts_move_a_delivery_on(ports: Ports) -> None:
    sub = await subscribe(ports)
    await ports.create()
    await ports.create()
    now = utcnow() + timedelta(seconds=1)
    failing, ok = await ports.webhooks.claim({sub.id: 2}, now, LEASE)
    retry = await ports.webhooks.record_attempt(
        failing,
        at=now,
        status_code=500,
        error=None,
        duration_ms=3,
        outcome=Outcome.retry,
        policy=POLICY,
    )
    sent = await ports.webhooks.record_attempt(
        ok,
        at=now,
        status_code=200,
        error=None,
        duration_ms=2,
        outcome=Outcome.delivered,
        policy=POLICY,
    )
    assert retry.status is DeliveryStatus.pending
    assert sent.status is DeliveryStatus.delivered
    rows = {d.id: (d, a) for d, a in await ports.webhooks.deliveries(sub.id)}
    assert rows[failing.id][0].attempts == 1
    assert rows[failing.id][0].next_attempt_at > now
    assert [a.status_code for a in rows[failing.id][1]] == [500]
    assert rows[ok.id][0].delivered_at is not None
    assert (await ports.webhooks.get(sub.id)).consecutive_failures == 0


async def test_gone_disables_the_subscription_until_enabled(ports: Ports) -> None:
    sub = await subscribe(ports)
    await ports.create()
    now = utcnow() + timedelta(seconds=1)
    (delivery,) = await ports.webhooks.claim({sub.id: 1}, now, LEASE)
    result = await ports.webhooks.record_attempt(
        delivery,
        at=now,
        status_code=410,
        error=None,
        duration_ms=1,
        outcome=Outcome.gone,
        policy=POLICY,
    )
    assert result.status is DeliveryStatus.failed
    assert result.disabled_reason
    assert await ports.webhooks.enabled() == []
    assert (await ports.webhooks.enable(sub.id)).enabled
