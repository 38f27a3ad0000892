"""Due webhook deliveries: claims, attempts and re-queues (the dispatcher's side).

The dispatcher claims due rows with ``FOR UPDATE SKIP LOCKED`` (ignored on
SQLite, which has one writer) and pushes ``next_attempt_at`` forward by a lease
in the same short transaction: a dispatcher that dies mid-send leaves the row to
be retried when the lease runs out.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from flowyard.adapters.sql.database import Database
from flowyard.adapters.sql.schema import webhook_attempts, webhook_deliveries, webhooks
from flowyard.adapters.sql.webhook_rows import (
    CHUNK,
    aware,
    delete_deliveries,
    delivery_from_row,
    delivery_values,
    require_subscription,
    subscription_from_row,
)
from flowyard.core.events import Event, utcnow
from flowyard.core.webhook import (
    AttemptResult,
    Delivery,
    DeliveryStatus,
    Outcome,
    OutputUrl,
    RetryPolicy,
    Subscription,
    delivery_body,
    next_attempt_at,
    should_disable,
)


class SqlDeliveryQueue:
    """The ``DeliveryQueue`` port on the webhook tables."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def enabled(self) -> list[Subscription]:
        async with self.db.read() as conn:
            rows = (await conn.execute(sa.select(webhooks).where(webhooks.c.enabled))).all()
        return [subscription_from_row(r) for r in rows]

    async def sweep_orphans(self) -> int:
        """Delete deliveries of removed subscriptions (written by a stale cached list)."""
        known = sa.select(webhooks.c.id)
        async with self.db.write() as tx:
            return await delete_deliveries(
                tx.conn, webhook_deliveries.c.webhook_id.not_in(known.scalar_subquery())
            )

    async def claim(
        self, slots: Mapping[uuid.UUID, int], now: datetime, lease: timedelta
    ) -> list[Delivery]:
        """Take up to ``slots[webhook]`` due deliveries per subscription, leased until now+lease.

        One query per subscription, so a subscriber with a backlog cannot fill the
        batch and starve the others.
        """
        wanted = {wid: n for wid, n in slots.items() if n > 0}
        if not wanted:
            return []
        async with self.db.write() as tx:
            ids: list[int] = []
            for webhook_id, n in wanted.items():
                query = (
                    sa.select(webhook_deliveries.c.id)
                    .where(
                        (webhook_deliveries.c.webhook_id == webhook_id)
                        & (webhook_deliveries.c.status == DeliveryStatus.pending.value)
                        & (webhook_deliveries.c.next_attempt_at <= now)
                    )
                    .order_by(webhook_deliveries.c.next_attempt_at, webhook_deliveries.c.id)
                    .limit(n)
                    .with_for_update(skip_locked=True)
                )
                ids.extend((await tx.conn.execute(query)).scalars())
            if not ids:
                return []
            await tx.conn.execute(
                sa.update(webhook_deliveries)
                .where(webhook_deliveries.c.id.in_(ids))
                .values(next_attempt_at=now + lease)
            )
            rows = (
                await tx.conn.execute(
                    sa.select(webhook_deliveries)
                    .where(webhook_deliveries.c.id.in_(ids))
                    .order_by(webhook_deliveries.c.id)
                )
            ).all()
        return [delivery_from_row(r) for r in rows]

    async def next_due(self, webhook_ids: Sequence[uuid.UUID]) -> datetime | None:
        """The earliest ``next_attempt_at`` of a pending delivery of these subscriptions."""
        if not webhook_ids:
            return None
        query = sa.select(sa.func.min(webhook_deliveries.c.next_attempt_at)).where(
            (webhook_deliveries.c.status == DeliveryStatus.pending.value)
            & webhook_deliveries.c.webhook_id.in_(list(webhook_ids))
        )
        async with self.db.read() as conn:
            value = (await conn.execute(query)).scalar()
        return aware(value)

    async def record_attempt(
        self,
        delivery: Delivery,
        *,
        at: datetime,
        status_code: int | None,
        error: str | None,
        duration_ms: int,
        outcome: Outcome,
        policy: RetryPolicy,
    ) -> AttemptResult:
        """Record one attempt and move the delivery (and the subscription's health) on."""
        async with self.db.write() as tx:
            conn = tx.conn
            await conn.execute(
                sa.insert(webhook_attempts).values(
                    delivery_id=delivery.id,
                    at=at,
                    status_code=status_code,
                    error=error,
                    duration_ms=duration_ms,
                )
            )
            sub_row = (
                await conn.execute(
                    sa.select(webhooks)
                    .where(webhooks.c.id == delivery.webhook_id)
                    .with_for_update()
                )
            ).first()
            sub = None if sub_row is None else subscription_from_row(sub_row)
            change = _after_attempt(delivery, sub, at, status_code, error, outcome, policy)
            await conn.execute(
                sa.update(webhook_deliveries)
                .where(webhook_deliveries.c.id == delivery.id)
                .values(**change.delivery)
            )
            if change.health and sub is not None:
                await conn.execute(
                    sa.update(webhooks)
                    .where(webhooks.c.id == delivery.webhook_id)
                    .values(**change.health)
                )
        return AttemptResult(DeliveryStatus(change.delivery["status"]), change.disabled)

    async def requeue(
        self, webhook_id: uuid.UUID, events: Sequence[Event], output_url: OutputUrl | None = None
    ) -> int:
        """Queue these events for the subscription again, under their own ids (a replay).

        A (webhook, event) pair that was already delivered or failed is reset to
        pending with a fresh retry period, rather than inserted twice.
        """
        async with self.db.read() as conn:
            await require_subscription(conn, webhook_id)
        now = utcnow()
        count = 0
        for start in range(0, len(events), CHUNK):
            chunk = events[start : start + CHUNK]
            async with self.db.write() as tx:
                existing = set(
                    (
                        await tx.conn.execute(
                            sa.select(webhook_deliveries.c.event_id).where(
                                (webhook_deliveries.c.webhook_id == webhook_id)
                                & webhook_deliveries.c.event_id.in_([e.id for e in chunk])
                            )
                        )
                    ).scalars()
                )
                fresh: list[dict[str, Any]] = []
                for event in chunk:
                    values = delivery_values(
                        webhook_id, event, delivery_body(event, output_url), now
                    )
                    if event.id in existing:
                        key = values.pop("webhook_id"), values.pop("event_id")
                        await tx.conn.execute(
                            sa.update(webhook_deliveries)
                            .where(
                                (webhook_deliveries.c.webhook_id == key[0])
                                & (webhook_deliveries.c.event_id == key[1])
                            )
                            .values(**values)
                        )
                    else:
                        fresh.append(values)
                if fresh:
                    await tx.conn.execute(sa.insert(webhook_deliveries), fresh)
            count += len(chunk)
        return count


@dataclass
class _Change:
    """The column values one attempt changes on its delivery and its subscription."""

    delivery: dict[str, Any]
    health: dict[str, Any] = field(default_factory=dict)
    disabled: str | None = None


def _after_attempt(
    delivery: Delivery,
    sub: Subscription | None,
    at: datetime,
    status_code: int | None,
    error: str | None,
    outcome: Outcome,
    policy: RetryPolicy,
) -> _Change:
    """Delivered, gone (disable now) or failed (retry later or give up; maybe disable)."""
    attempts = delivery.attempts + 1
    change = _Change({"attempts": attempts, "last_status_code": status_code, "last_error": error})
    if outcome is Outcome.delivered:
        change.delivery |= {"status": DeliveryStatus.delivered.value, "delivered_at": at}
        change.health = {"consecutive_failures": 0, "failing_since": None}
    elif outcome is Outcome.gone:
        change.delivery |= {"status": DeliveryStatus.failed.value}
        change.disabled = f"the receiver answered 410 Gone at {at:%Y-%m-%d %H:%M:%S} UTC"
    else:
        due = next_attempt_at(at, delivery.created_at, attempts, policy)
        change.delivery |= (
            {"status": DeliveryStatus.failed.value}
            if due is None
            else {"status": DeliveryStatus.pending.value, "next_attempt_at": due}
        )
        if sub is not None:
            failures = sub.consecutive_failures + 1
            since = sub.failing_since or at
            change.health = {"consecutive_failures": failures, "failing_since": since}
            gave_up = due is None
            if sub.enabled and should_disable(failures, since, at, policy, gave_up=gave_up):
                change.disabled = (
                    f"{failures} consecutive failed attempts since "
                    f"{since:%Y-%m-%d %H:%M:%S} UTC; last: {error or status_code}"
                )
    if change.disabled is not None:
        change.health |= {"enabled": False, "disabled_reason": change.disabled[:500]}
    return change
