"""Rows of the webhook tables and their Python values, and the statements several
webhook modules share (subscription check, delivery insert and delete)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from flowyard.adapters.sql.schema import webhook_attempts, webhook_deliveries, webhooks
from flowyard.core.errors import WebhookNotFound
from flowyard.core.events import Event
from flowyard.core.webhook import AttemptRecord, Delivery, DeliveryStatus, Subscription

CHUNK = 500
"""Rows per statement when deleting or re-queueing many deliveries."""


def subscription_from_row(row: sa.Row[Any]) -> Subscription:
    m = row._mapping
    return Subscription(
        id=m["id"],
        url=m["url"],
        events=tuple(m["events"] or ()),
        flows=None if m["flows"] is None else tuple(m["flows"]),
        secret=m["secret"],
        enabled=bool(m["enabled"]),
        disabled_reason=m["disabled_reason"],
        created_at=m["created_at"],
        consecutive_failures=int(m["consecutive_failures"]),
        failing_since=m["failing_since"],
        owner=m["owner"],
        all_owners=bool(m["all_owners"]),
    )


def subscription_values(sub: Subscription) -> dict[str, Any]:
    """A new, enabled and healthy subscription row."""
    return {
        "id": sub.id,
        "url": sub.url,
        "events": list(sub.events),
        "flows": None if sub.flows is None else list(sub.flows),
        "secret": sub.secret,
        "enabled": True,
        "disabled_reason": None,
        "created_at": sub.created_at,
        "consecutive_failures": 0,
        "failing_since": None,
        "owner": sub.owner,
        "all_owners": sub.all_owners,
    }


def delivery_from_row(row: sa.Row[Any]) -> Delivery:
    m = dict(row._mapping)
    m["status"] = DeliveryStatus(m["status"])
    return Delivery(**m)


def attempt_from_row(row: sa.Row[Any]) -> AttemptRecord:
    m = row._mapping
    return AttemptRecord(m["delivery_id"], m["at"], m["status_code"], m["error"], m["duration_ms"])


def delivery_values(sub_id: uuid.UUID, event: Event, body: str, now: datetime) -> dict[str, Any]:
    """A pending delivery row of ``event`` to one subscription, due at once."""
    return {
        "webhook_id": sub_id,
        "event_id": event.id,
        "event_type": event.type,
        "task_id": event.task_id,
        "body": body,
        "status": DeliveryStatus.pending.value,
        "attempts": 0,
        "next_attempt_at": now,
        "created_at": now,
        "delivered_at": None,
        "last_status_code": None,
        "last_error": None,
    }


def insert_ignoring_duplicates(dialect: str) -> Any:
    """An INSERT of delivery rows that skips (webhook_id, event_id) pairs already present."""
    if dialect == "postgresql":
        return postgresql.insert(webhook_deliveries).on_conflict_do_nothing(
            index_elements=["webhook_id", "event_id"]
        )
    if dialect == "sqlite":
        return sqlite.insert(webhook_deliveries).on_conflict_do_nothing()
    return sa.insert(webhook_deliveries).prefix_with("IGNORE")


def not_found(webhook_id: uuid.UUID) -> WebhookNotFound:
    return WebhookNotFound(f"no webhook subscription has id {webhook_id}")


async def require_subscription(conn: AsyncConnection, webhook_id: uuid.UUID) -> None:
    """Raise ``WebhookNotFound`` unless the subscription exists."""
    found = await conn.execute(sa.select(webhooks.c.id).where(webhooks.c.id == webhook_id))
    if found.first() is None:
        raise not_found(webhook_id)


async def delete_deliveries(conn: AsyncConnection, where: Any) -> int:
    """Delete the deliveries ``where`` selects, with their attempts, in chunks."""
    ids = list((await conn.execute(sa.select(webhook_deliveries.c.id).where(where))).scalars())
    for start in range(0, len(ids), CHUNK):
        chunk = ids[start : start + CHUNK]
        await conn.execute(
            sa.delete(webhook_attempts).where(webhook_attempts.c.delivery_id.in_(chunk))
        )
        await conn.execute(sa.delete(webhook_deliveries).where(webhook_deliveries.c.id.in_(chunk)))
    return len(ids)


def aware(value: datetime | str | None) -> datetime | None:
    """Aggregates bypass the column type: restore UTC awareness (SQLite returns a string)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
