"""Webhook subscriptions and deliveries in memory, with the SQL store's rules.

``record_events`` is the commit hook (``MemoryTaskStore.on_commit``): one pending
delivery per event and matching enabled subscription, once per pair. Claims
hide a delivery until its lease ends; ``record_attempt`` moves it on (delivered,
retried with backoff until the retry period ends, failed) and keeps the
subscription's health, disabling it as ``core.webhook`` decides.
"""

from __future__ import annotations

import builtins
import dataclasses
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta

from flowyard.core.errors import WebhookNotFound
from flowyard.core.events import Event, utcnow
from flowyard.core.webhook import (
    AttemptRecord,
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


class MemoryWebhookStore:
    def __init__(self, output_url: OutputUrl | None = None) -> None:
        self._output_url = output_url
        self._subs: dict[uuid.UUID, Subscription] = {}
        self._deliveries: dict[int, Delivery] = {}
        self._attempts: dict[int, list[AttemptRecord]] = {}
        self._last_id = 0

    # -- the commit hook and its cache (nothing to cache here) ----------------

    def record_events(self, events: Sequence[Event]) -> None:
        known = {(d.webhook_id, d.event_id) for d in self._deliveries.values()}
        now = utcnow()
        for event in events:
            for sub in self._subs.values():
                if sub.enabled and sub.wants(event) and (sub.id, event.id) not in known:
                    self._add(sub.id, event, now)

    def _add(self, webhook_id: uuid.UUID, event: Event, now: datetime) -> Delivery:
        self._last_id += 1
        delivery = Delivery(
            id=self._last_id,
            webhook_id=webhook_id,
            event_id=event.id,
            event_type=event.type,
            task_id=event.task_id,
            body=delivery_body(event, self._output_url),
            status=DeliveryStatus.pending,
            attempts=0,
            next_attempt_at=now,
            created_at=now,
            delivered_at=None,
            last_status_code=None,
            last_error=None,
        )
        self._deliveries[delivery.id] = delivery
        self._attempts[delivery.id] = []
        return delivery

    def invalidate(self) -> None:
        """Nothing is cached: every call sees the subscriptions as they are."""

    def cached_wants(self, events: Iterable[Event]) -> bool:
        subs = [s for s in self._subs.values() if s.enabled]
        return any(sub.wants(event) for event in events for sub in subs)

    # -- subscriptions ------------------------------------------------------

    async def create(self, sub: Subscription) -> Subscription:
        created = dataclasses.replace(
            sub,
            enabled=True,
            disabled_reason=None,
            consecutive_failures=0,
            failing_since=None,
            created_at=sub.created_at or utcnow(),
        )
        self._subs[created.id] = created
        return created

    async def list(self, owner: str | None = None) -> builtins.list[Subscription]:
        subs = [s for s in self._subs.values() if owner is None or s.owner == owner]
        return sorted(subs, key=lambda s: (s.created_at or utcnow(), s.id))

    async def enabled(self) -> builtins.list[Subscription]:
        return [s for s in self._subs.values() if s.enabled]

    async def get(self, webhook_id: uuid.UUID) -> Subscription:
        try:
            return self._subs[webhook_id]
        except KeyError:
            raise WebhookNotFound(f"no webhook subscription has id {webhook_id}") from None

    async def delete(self, webhook_id: uuid.UUID) -> None:
        await self.get(webhook_id)
        del self._subs[webhook_id]
        await self.sweep_orphans()

    async def enable(self, webhook_id: uuid.UUID) -> Subscription:
        sub = dataclasses.replace(
            await self.get(webhook_id),
            enabled=True,
            disabled_reason=None,
            consecutive_failures=0,
            failing_since=None,
        )
        self._subs[webhook_id] = sub
        return sub

    async def sweep_orphans(self) -> int:
        orphans = [d.id for d in self._deliveries.values() if d.webhook_id not in self._subs]
        for delivery_id in orphans:
            del self._deliveries[delivery_id]
            del self._attempts[delivery_id]
        return len(orphans)

    # -- deliveries ---------------------------------------------------------

    async def deliveries(
        self, webhook_id: uuid.UUID, *, limit: int = 50, status: DeliveryStatus | None = None
    ) -> builtins.list[tuple[Delivery, builtins.list[AttemptRecord]]]:
        await self.get(webhook_id)
        found = [
            d
            for d in self._deliveries.values()
            if d.webhook_id == webhook_id and (status is None or d.status is status)
        ]
        found.sort(key=lambda d: d.id, reverse=True)
        return [(d, builtins.list(self._attempts[d.id])) for d in found[:limit]]

    async def claim(
        self, slots: Mapping[uuid.UUID, int], now: datetime, lease: timedelta
    ) -> builtins.list[Delivery]:
        claimed: list[Delivery] = []
        for webhook_id, n in slots.items():
            due = [
                d
                for d in self._deliveries.values()
                if d.webhook_id == webhook_id
                and d.status is DeliveryStatus.pending
                and d.next_attempt_at <= now
            ]
            due.sort(key=lambda d: (d.next_attempt_at, d.id))
            for d in due[: max(0, n)]:
                leased = dataclasses.replace(d, next_attempt_at=now + lease)
                self._deliveries[d.id] = leased
                claimed.append(leased)
        return sorted(claimed, key=lambda d: d.id)

    async def next_due(self, webhook_ids: Sequence[uuid.UUID]) -> datetime | None:
        wanted = set(webhook_ids)
        times = [
            d.next_attempt_at
            for d in self._deliveries.values()
            if d.status is DeliveryStatus.pending and d.webhook_id in wanted
        ]
        return min(times, default=None)

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
        self._attempts.setdefault(delivery.id, []).append(
            AttemptRecord(delivery.id, at, status_code, error, duration_ms)
        )
        sub = self._subs.get(delivery.webhook_id)
        attempts = delivery.attempts + 1
        status, due, disabled = DeliveryStatus.failed, delivery.next_attempt_at, None
        delivered_at = None
        if outcome is Outcome.delivered:
            status, delivered_at = DeliveryStatus.delivered, at
            if sub is not None:
                sub = dataclasses.replace(sub, consecutive_failures=0, failing_since=None)
        elif outcome is Outcome.gone:
            disabled = f"the receiver answered 410 Gone at {at:%Y-%m-%d %H:%M:%S} UTC"
        else:
            next_at = next_attempt_at(at, delivery.created_at, attempts, policy)
            if next_at is not None:
                status, due = DeliveryStatus.pending, next_at
            if sub is not None:
                failures, since = sub.consecutive_failures + 1, sub.failing_since or at
                sub = dataclasses.replace(sub, consecutive_failures=failures, failing_since=since)
                gave_up = next_at is None
                if sub.enabled and should_disable(failures, since, at, policy, gave_up=gave_up):
                    disabled = (
                        f"{failures} consecutive failed attempts since "
                        f"{since:%Y-%m-%d %H:%M:%S} UTC; last: {error or status_code}"
                    )
        if sub is not None:
            if disabled is not None:
                sub = dataclasses.replace(sub, enabled=False, disabled_reason=disabled[:500])
            self._subs[sub.id] = sub
        if delivery.id in self._deliveries:
            self._deliveries[delivery.id] = dataclasses.replace(
                self._deliveries[delivery.id],
                attempts=attempts,
                status=status,
                next_attempt_at=due,
                delivered_at=delivered_at,
                last_status_code=status_code,
                last_error=error,
            )
        return AttemptResult(status, disabled)
