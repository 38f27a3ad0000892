"""Webhook subscriptions: create, list, enable, remove, and their deliveries' history.

``SqlWebhookStore`` is the ``WebhookStore`` port and, through ``SqlDeliveryQueue``
(``delivery_queue.py``), the dispatcher's ``DeliveryQueue`` on the same tables.
Delivery rows are written with their events by ``DeliveryRecorder``
(``delivery_recorder.py``); row conversions live in ``webhook_rows.py``.
"""

from __future__ import annotations

import builtins
import uuid

import sqlalchemy as sa

from flowyard.adapters.sql.delivery_queue import SqlDeliveryQueue
from flowyard.adapters.sql.delivery_recorder import CACHE_SECONDS, DeliveryRecorder
from flowyard.adapters.sql.schema import webhook_attempts, webhook_deliveries, webhooks
from flowyard.adapters.sql.webhook_rows import (
    attempt_from_row,
    delete_deliveries,
    delivery_from_row,
    not_found,
    require_subscription,
    subscription_from_row,
    subscription_values,
)
from flowyard.core.events import utcnow
from flowyard.core.webhook import AttemptRecord, Delivery, DeliveryStatus, Subscription

__all__ = ["CACHE_SECONDS", "DeliveryRecorder", "SqlDeliveryQueue", "SqlWebhookStore"]


class SqlWebhookStore(SqlDeliveryQueue):
    """Subscriptions (``WebhookStore``); the delivery queue methods come from the base."""

    async def create(self, sub: Subscription) -> Subscription:
        created = Subscription(
            id=sub.id,
            url=sub.url,
            events=sub.events,
            flows=sub.flows,
            secret=sub.secret,
            created_at=sub.created_at or utcnow(),
            owner=sub.owner,
            all_owners=sub.all_owners,
        )
        async with self.db.write() as tx:
            await tx.conn.execute(sa.insert(webhooks).values(**subscription_values(created)))
        return created

    async def list(self, owner: str | None = None) -> list[Subscription]:
        """Every subscription, or those ``owner`` made."""
        query = sa.select(webhooks).order_by(webhooks.c.created_at, webhooks.c.id)
        if owner is not None:
            query = query.where(webhooks.c.owner == owner)
        async with self.db.read() as conn:
            return [subscription_from_row(r) for r in (await conn.execute(query)).all()]

    async def get(self, webhook_id: uuid.UUID) -> Subscription:
        async with self.db.read() as conn:
            row = (
                await conn.execute(sa.select(webhooks).where(webhooks.c.id == webhook_id))
            ).first()
        if row is None:
            raise not_found(webhook_id)
        return subscription_from_row(row)

    async def delete(self, webhook_id: uuid.UUID) -> None:
        """Remove the subscription with its deliveries and their attempts."""
        async with self.db.write() as tx:
            result = await tx.conn.execute(sa.delete(webhooks).where(webhooks.c.id == webhook_id))
            if result.rowcount == 0:
                raise not_found(webhook_id)
            await delete_deliveries(tx.conn, webhook_deliveries.c.webhook_id == webhook_id)

    async def enable(self, webhook_id: uuid.UUID) -> Subscription:
        """Turn a disabled subscription back on; its pending deliveries are sent again."""
        async with self.db.write() as tx:
            result = await tx.conn.execute(
                sa.update(webhooks)
                .where(webhooks.c.id == webhook_id)
                .values(
                    enabled=True, disabled_reason=None, consecutive_failures=0, failing_since=None
                )
            )
            if result.rowcount == 0:
                raise not_found(webhook_id)
        return await self.get(webhook_id)

    async def deliveries(
        self, webhook_id: uuid.UUID, *, limit: int = 50, status: DeliveryStatus | None = None
    ) -> builtins.list[tuple[Delivery, builtins.list[AttemptRecord]]]:
        """The newest deliveries of a subscription, each with its attempts (oldest first)."""
        query = (
            sa.select(webhook_deliveries)
            .where(webhook_deliveries.c.webhook_id == webhook_id)
            .order_by(webhook_deliveries.c.id.desc())
            .limit(limit)
        )
        if status is not None:
            query = query.where(webhook_deliveries.c.status == status.value)
        async with self.db.read() as conn:
            await require_subscription(conn, webhook_id)
            rows = [delivery_from_row(r) for r in (await conn.execute(query)).all()]
            attempts: dict[int, list[AttemptRecord]] = {d.id: [] for d in rows}
            if rows:
                result = await conn.execute(
                    sa.select(webhook_attempts)
                    .where(webhook_attempts.c.delivery_id.in_(list(attempts)))
                    .order_by(webhook_attempts.c.id)
                )
                for record in map(attempt_from_row, result.all()):
                    attempts[record.delivery_id].append(record)
        return [(d, attempts[d.id]) for d in rows]
