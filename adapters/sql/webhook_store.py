"""Webhook subscriptions and their delivery rows: every statement the webhooks need.

Delivery rows are written by ``DeliveryRecorder``, a ``Database.in_transaction``
hook: inside the transaction that appends an event, one row per matching
subscription. So every process that records events (server, database workers)
creates deliveries atomically with the event, and nobody tails the log with a
cursor that could skip rows committed out of order. The unique key
(webhook_id, event_id) makes a delivery exist once per subscription and event.

The dispatcher claims due rows with ``FOR UPDATE SKIP LOCKED`` (ignored on
SQLite, which has one writer) and pushes ``next_attempt_at`` forward by a lease
in the same short transaction: a dispatcher that dies mid-send leaves the row to
be retried when the lease runs out.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from flowyard.adapters.sql.database import Database, Tx
from flowyard.adapters.sql.schema import webhook_attempts, webhook_deliveries, webhooks
from flowyard.core.errors import WebhookNotFound
from flowyard.core.events import Event, utcnow
from flowyard.core.webhook import (
    DeliveryStatus,
    Outcome,
    RetryPolicy,
    Subscription,
    delivery_body,
    next_attempt_at,
    should_disable,
)

CACHE_SECONDS = 3.0
"""How stale a process's list of subscriptions may be (progress events must not query it)."""
CHUNK = 500


@dataclass(frozen=True)
class Delivery:
    id: int
    webhook_id: uuid.UUID
    event_id: uuid.UUID
    event_type: str
    task_id: uuid.UUID
    body: str
    status: DeliveryStatus
    attempts: int
    next_attempt_at: datetime
    created_at: datetime
    delivered_at: datetime | None
    last_status_code: int | None
    last_error: str | None


@dataclass(frozen=True)
class AttemptRecord:
    delivery_id: int
    at: datetime
    status_code: int | None
    error: str | None
    duration_ms: int


@dataclass(frozen=True)
class AttemptResult:
    """What one attempt did to its delivery and subscription (for logs and tests)."""

    status: DeliveryStatus
    disabled_reason: str | None = None


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


def delivery_from_row(row: sa.Row[Any]) -> Delivery:
    m = dict(row._mapping)
    m["status"] = DeliveryStatus(m["status"])
    return Delivery(**m)


def _insert_ignoring_duplicates(dialect: str) -> Any:
    """An INSERT of delivery rows that skips (webhook_id, event_id) pairs already present."""
    if dialect == "postgresql":
        return postgresql.insert(webhook_deliveries).on_conflict_do_nothing(
            index_elements=["webhook_id", "event_id"]
        )
    if dialect == "sqlite":
        return sqlite.insert(webhook_deliveries).on_conflict_do_nothing()
    return sa.insert(webhook_deliveries).prefix_with("IGNORE")


def delivery_values(sub_id: uuid.UUID, event: Event, body: str, now: datetime) -> dict[str, Any]:
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


class DeliveryRecorder:
    """The in-transaction hook: one pending delivery per event and matching subscription.

    The enabled subscriptions are cached for ``ttl`` seconds per process, so a burst
    of progress events does not query the webhooks table each time; a new or
    removed subscription reaches other processes within that time (this process
    learns at once through ``invalidate``).
    """

    def __init__(
        self, dialect: str, public_url: str | None = None, ttl: float = CACHE_SECONDS
    ) -> None:
        self._insert = _insert_ignoring_duplicates(dialect)
        self._public_url = public_url
        self._ttl = ttl
        self._cached: tuple[Subscription, ...] | None = None
        self._loaded_at = 0.0

    def invalidate(self) -> None:
        self._cached = None

    def cached_wants(self, events: Iterable[Event]) -> bool:
        """Whether any event matches a cached subscription (no I/O: for commit listeners)."""
        subs = self._cached or ()
        return any(sub.wants(event) for event in events for sub in subs)

    async def subscriptions(self, conn: AsyncConnection) -> tuple[Subscription, ...]:
        if self._cached is None or time.monotonic() - self._loaded_at > self._ttl:
            rows = (await conn.execute(sa.select(webhooks).where(webhooks.c.enabled))).all()
            self._cached = tuple(subscription_from_row(r) for r in rows)
            self._loaded_at = time.monotonic()
        return self._cached

    async def __call__(self, tx: Tx, batch: Sequence[Event]) -> None:
        subs = await self.subscriptions(tx.conn)
        if not subs:
            return
        now = utcnow()
        rows: list[dict[str, Any]] = []
        for event in batch:
            wanting = [sub for sub in subs if sub.wants(event)]
            if wanting:
                body = delivery_body(event, self._public_url)
                rows.extend(delivery_values(sub.id, event, body, now) for sub in wanting)
        if rows:
            await tx.conn.execute(self._insert, rows)


class SqlWebhookStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- subscriptions ------------------------------------------------------

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
            await tx.conn.execute(
                sa.insert(webhooks).values(
                    id=created.id,
                    url=created.url,
                    events=list(created.events),
                    flows=None if created.flows is None else list(created.flows),
                    secret=created.secret,
                    enabled=True,
                    disabled_reason=None,
                    created_at=created.created_at,
                    consecutive_failures=0,
                    failing_since=None,
                    owner=created.owner,
                    all_owners=created.all_owners,
                )
            )
        return created

    async def list(self, owner: str | None = None) -> list[Subscription]:
        """Every subscription, or those ``owner`` made."""
        query = sa.select(webhooks).order_by(webhooks.c.created_at, webhooks.c.id)
        if owner is not None:
            query = query.where(webhooks.c.owner == owner)
        async with self.db.read() as conn:
            return [subscription_from_row(r) for r in (await conn.execute(query)).all()]

    async def enabled(self) -> list[Subscription]:
        async with self.db.read() as conn:
            rows = (await conn.execute(sa.select(webhooks).where(webhooks.c.enabled))).all()
        return [subscription_from_row(r) for r in rows]

    async def get(self, webhook_id: uuid.UUID) -> Subscription:
        async with self.db.read() as conn:
            row = (
                await conn.execute(sa.select(webhooks).where(webhooks.c.id == webhook_id))
            ).first()
        if row is None:
            raise WebhookNotFound(f"no webhook subscription has id {webhook_id}")
        return subscription_from_row(row)

    async def delete(self, webhook_id: uuid.UUID) -> None:
        """Remove the subscription with its deliveries and their attempts."""
        async with self.db.write() as tx:
            result = await tx.conn.execute(sa.delete(webhooks).where(webhooks.c.id == webhook_id))
            if result.rowcount == 0:
                raise WebhookNotFound(f"no webhook subscription has id {webhook_id}")
            await _delete_deliveries(tx.conn, webhook_deliveries.c.webhook_id == webhook_id)

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
                raise WebhookNotFound(f"no webhook subscription has id {webhook_id}")
        return await self.get(webhook_id)

    async def sweep_orphans(self) -> int:
        """Delete deliveries of removed subscriptions (written by a stale cached list)."""
        known = sa.select(webhooks.c.id)
        async with self.db.write() as tx:
            return await _delete_deliveries(
                tx.conn, webhook_deliveries.c.webhook_id.not_in(known.scalar_subquery())
            )

    # -- deliveries ---------------------------------------------------------

    async def deliveries(
        self, webhook_id: uuid.UUID, *, limit: int = 50, status: DeliveryStatus | None = None
    ) -> list[tuple[Delivery, list[AttemptRecord]]]:
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
            found = await conn.execute(sa.select(webhooks.c.id).where(webhooks.c.id == webhook_id))
            if found.first() is None:
                raise WebhookNotFound(f"no webhook subscription has id {webhook_id}")
            rows = [delivery_from_row(r) for r in (await conn.execute(query)).all()]
            attempts: dict[int, list[AttemptRecord]] = {d.id: [] for d in rows}
            if rows:
                result = await conn.execute(
                    sa.select(webhook_attempts)
                    .where(webhook_attempts.c.delivery_id.in_(list(attempts)))
                    .order_by(webhook_attempts.c.id)
                )
                for r in result.all():
                    m = r._mapping
                    attempts[m["delivery_id"]].append(
                        AttemptRecord(
                            m["delivery_id"],
                            m["at"],
                            m["status_code"],
                            m["error"],
                            m["duration_ms"],
                        )
                    )
        return [(d, attempts[d.id]) for d in rows]

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
        return _aware(value)

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
            attempts = delivery.attempts + 1
            values: dict[str, Any] = {
                "attempts": attempts,
                "last_status_code": status_code,
                "last_error": error,
            }
            health: dict[str, Any] = {}
            disabled: str | None = None
            if outcome is Outcome.delivered:
                values |= {"status": DeliveryStatus.delivered.value, "delivered_at": at}
                health = {"consecutive_failures": 0, "failing_since": None}
            elif outcome is Outcome.gone:
                values |= {"status": DeliveryStatus.failed.value}
                disabled = f"the receiver answered 410 Gone at {at:%Y-%m-%d %H:%M:%S} UTC"
            else:
                due = next_attempt_at(at, delivery.created_at, attempts, policy)
                values |= (
                    {"status": DeliveryStatus.failed.value}
                    if due is None
                    else {"status": DeliveryStatus.pending.value, "next_attempt_at": due}
                )
                if sub_row is not None:
                    sub = subscription_from_row(sub_row)
                    failures = sub.consecutive_failures + 1
                    since = sub.failing_since or at
                    health = {"consecutive_failures": failures, "failing_since": since}
                    gave_up = due is None
                    if sub.enabled and should_disable(failures, since, at, policy, gave_up=gave_up):
                        disabled = (
                            f"{failures} consecutive failed attempts since "
                            f"{since:%Y-%m-%d %H:%M:%S} UTC; last: {error or status_code}"
                        )
            if disabled is not None:
                health |= {"enabled": False, "disabled_reason": disabled[:500]}
            await conn.execute(
                sa.update(webhook_deliveries)
                .where(webhook_deliveries.c.id == delivery.id)
                .values(**values)
            )
            if health and sub_row is not None:
                await conn.execute(
                    sa.update(webhooks).where(webhooks.c.id == delivery.webhook_id).values(**health)
                )
        return AttemptResult(DeliveryStatus(values["status"]), disabled)

    async def requeue(
        self, webhook_id: uuid.UUID, events: Sequence[Event], public_url: str | None = None
    ) -> int:
        """Queue these events for the subscription again, under their own ids (a replay).

        A (webhook, event) pair that was already delivered or failed is reset to
        pending with a fresh retry period, rather than inserted twice.
        """
        await self.get(webhook_id)
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
                        webhook_id, event, delivery_body(event, public_url), now
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


async def _delete_deliveries(conn: AsyncConnection, where: Any) -> int:
    ids = list((await conn.execute(sa.select(webhook_deliveries.c.id).where(where))).scalars())
    for start in range(0, len(ids), CHUNK):
        chunk = ids[start : start + CHUNK]
        await conn.execute(
            sa.delete(webhook_attempts).where(webhook_attempts.c.delivery_id.in_(chunk))
        )
        await conn.execute(sa.delete(webhook_deliveries).where(webhook_deliveries.c.id.in_(chunk)))
    return len(ids)


def _aware(value: datetime | None) -> datetime | None:
    """Aggregates bypass the column type: restore UTC awareness (SQLite returns a string)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
