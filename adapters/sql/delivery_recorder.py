"""Delivery rows written with their events, inside the same transaction.

``DeliveryRecorder`` is a ``Database.in_transaction`` hook: inside the transaction
that appends an event, one row per matching subscription. So every process that
records events (server, database workers) creates deliveries atomically with the
event, and nobody tails the log with a cursor that could skip rows committed out
of order. The unique key (webhook_id, event_id) makes a delivery exist once per
subscription and event.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from flowyard.adapters.sql.database import Tx
from flowyard.adapters.sql.schema import webhooks
from flowyard.adapters.sql.webhook_rows import (
    delivery_values,
    insert_ignoring_duplicates,
    subscription_from_row,
)
from flowyard.core.events import Event, utcnow
from flowyard.core.webhook import OutputUrl, Subscription, delivery_body

CACHE_SECONDS = 3.0
"""How stale a process's list of subscriptions may be (progress events must not query it)."""


class DeliveryRecorder:
    """The in-transaction hook: one pending delivery per event and matching subscription.

    The enabled subscriptions are cached for ``ttl`` seconds per process, so a burst
    of progress events does not query the webhooks table each time; a new or
    removed subscription reaches other processes within that time (this process
    learns at once through ``invalidate``). ``output_url`` puts download URLs of a
    result's outputs into the bodies.
    """

    def __init__(
        self, dialect: str, output_url: OutputUrl | None = None, ttl: float = CACHE_SECONDS
    ) -> None:
        self._insert = insert_ignoring_duplicates(dialect)
        self._output_url = output_url
        self._ttl = ttl
        self._cached: tuple[Subscription, ...] | None = None
        self._loaded_at = 0.0

    def invalidate(self) -> None:
        self._cached = None

    def cached_wants(self, events: Iterable[Event]) -> bool:
        """Whether any event matches a cached subscription (no I/O: for commit listeners)."""
        subs = self._cached or ()
        return any(sub.wants(event) for event in events for sub in subs)

    def knows_none(self) -> bool:
        """Whether the cached list is fresh and empty: nothing to make, no need to ask."""
        return self._cached == () and self._fresh()

    def _fresh(self) -> bool:
        return self._cached is not None and time.monotonic() - self._loaded_at <= self._ttl

    async def subscriptions(self, conn: AsyncConnection) -> tuple[Subscription, ...]:
        if self._cached is None or not self._fresh():
            rows = (await conn.execute(sa.select(webhooks).where(webhooks.c.enabled))).all()
            self._cached = tuple(subscription_from_row(r) for r in rows)
            self._loaded_at = time.monotonic()
        return self._cached

    async def __call__(self, tx: Tx, batch: Sequence[Event]) -> None:
        await self.record(tx, batch)

    async def record(self, tx: Tx, batch: Sequence[Event]) -> int:
        """Write the delivery rows of ``batch``; return how many were wanted."""
        subs = self._cached
        if subs is None or not self._fresh():  # a read: SQLAlchemy, out of any pipeline
            subs = await self.subscriptions(await tx.plain())
        if not subs:
            return 0
        now = utcnow()
        rows: list[dict[str, Any]] = []
        for event in batch:
            wanting = [sub for sub in subs if sub.wants(event)]
            if wanting:
                body = delivery_body(event, self._output_url)
                rows.extend(delivery_values(sub.id, event, body, now) for sub in wanting)
        if rows:
            await (await tx.plain()).execute(self._insert, rows)
        return len(rows)
