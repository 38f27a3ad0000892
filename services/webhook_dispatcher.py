"""The webhook dispatcher: sends due delivery rows, off the request path, in the server.

Delivery rows are created with their events (``DeliveryRecorder``); this loop
only sends them. It claims due rows in small batches, at most ``PER_WEBHOOK`` in
flight per subscription and ``MAX_IN_FLIGHT`` overall, so one slow subscriber
ties up only its own slots. Each send is bounded by ``webhook_timeout``; every
attempt is recorded; failures are retried with backoff until the retry period
ends. A commit whose events match a subscription wakes the loop at once; rows
written by other processes (database workers, ``flowyard events replay``) are
found by a slow poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import timedelta

import httpx

from flowyard.adapters.webhook_guard import check_target
from flowyard.adapters.webhook_sender import Attempt, send
from flowyard.core.errors import InvalidInput, Unavailable
from flowyard.core.events import Event, utcnow
from flowyard.core.ports import DeliveryQueue, SubscriptionCache
from flowyard.core.settings import Settings
from flowyard.core.webhook import Delivery, Outcome, RetryPolicy, Subscription, outcome

log = logging.getLogger(__name__)

PER_WEBHOOK = 4
"""Deliveries in flight per subscription: a slow receiver holds only these."""
MAX_IN_FLIGHT = 64
LEASE_MARGIN_SECONDS = 10.0
"""A claimed row is retried this long after its send deadline if the sender died."""
SWEEP_SECONDS = 600.0
MIN_WAIT_SECONDS = 0.05


def retry_policy(settings: Settings) -> RetryPolicy:
    return RetryPolicy(
        base=settings.webhook_backoff_base,
        retry_for=timedelta(hours=settings.webhook_retry_hours),
        disable_after=settings.webhook_disable_after,
    )


class WebhookDispatcher:
    def __init__(
        self,
        store: DeliveryQueue,
        recorder: SubscriptionCache,
        settings: Settings,
        *,
        per_webhook: int = PER_WEBHOOK,
        max_in_flight: int = MAX_IN_FLIGHT,
    ) -> None:
        self.store = store
        self.recorder = recorder
        self.timeout = settings.webhook_timeout
        self.allow_private = settings.webhooks_allow_private
        self.poll_interval = settings.poll_interval
        self.policy = retry_policy(settings)
        self.per_webhook = per_webhook
        self.max_in_flight = max_in_flight
        self.lease = timedelta(seconds=self.timeout + LEASE_MARGIN_SECONDS)
        self._wake = asyncio.Event()
        self._in_flight: dict[uuid.UUID, set[asyncio.Task[None]]] = {}
        self._rotation = 0
        self._swept_at = 0.0
        self.on_attempt: Callable[[str], None] = _ignore
        """Told each attempt's outcome (``delivered``, ``retry``, ``gone``): the metrics."""

    def on_commit(self, events: Sequence[Event]) -> None:
        """Commit listener: wake up when a committed event matches a subscription."""
        if self.recorder.cached_wants(events):
            self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    @property
    def in_flight(self) -> int:
        return sum(len(tasks) for tasks in self._in_flight.values())

    async def run(self) -> None:
        """Dispatch until cancelled; database outages are waited out, never fatal."""
        limits = httpx.Limits(max_connections=self.max_in_flight, max_keepalive_connections=16)
        async with httpx.AsyncClient(
            follow_redirects=False, trust_env=False, limits=limits, timeout=self.timeout
        ) as client:
            try:
                while True:
                    next_due: float | None
                    try:
                        next_due = await self.dispatch_once(client)
                    except Unavailable as exc:
                        log.warning("webhook dispatch paused: %s", exc.message)
                        next_due = self.poll_interval
                    await self._sleep(next_due)
            finally:
                await self._cancel_in_flight()

    async def dispatch_once(self, client: httpx.AsyncClient) -> float | None:
        """Claim and start what is due; return seconds until the next known due row."""
        if time.monotonic() - self._swept_at > SWEEP_SECONDS:
            self._swept_at = time.monotonic()
            await self.store.sweep_orphans()
        subs = {sub.id: sub for sub in await self.store.enabled()}
        now = utcnow()
        deliveries = await self.store.claim(self._slots(list(subs)), now, self.lease)
        for delivery in deliveries:
            sub = subs[delivery.webhook_id]
            job = asyncio.create_task(self._deliver(client, delivery, sub), name="webhook-send")
            self._in_flight.setdefault(sub.id, set()).add(job)
        free = [wid for wid in subs if len(self._in_flight.get(wid, ())) < self.per_webhook]
        due = await self.store.next_due(free) if self.in_flight < self.max_in_flight else None
        return None if due is None else (due - utcnow()).total_seconds()

    def _slots(self, webhook_ids: list[uuid.UUID]) -> dict[uuid.UUID, int]:
        """Free slots per subscription, shared out in turn when the global cap is near."""
        budget = self.max_in_flight - self.in_flight
        slots: dict[uuid.UUID, int] = {}
        if not webhook_ids or budget <= 0:
            return slots
        self._rotation = (self._rotation + 1) % len(webhook_ids)
        for wid in webhook_ids[self._rotation :] + webhook_ids[: self._rotation]:
            free = min(self.per_webhook - len(self._in_flight.get(wid, ())), budget)
            if free > 0:
                slots[wid] = free
                budget -= free
        return slots

    async def _deliver(
        self, client: httpx.AsyncClient, delivery: Delivery, sub: Subscription
    ) -> None:
        try:
            at = utcnow()
            attempt = await self._attempt(client, delivery, sub)
            result = outcome(attempt.status_code) if attempt.status_code is not None else None
            recorded = await self.store.record_attempt(
                delivery,
                at=at,
                status_code=attempt.status_code,
                error=attempt.error,
                duration_ms=attempt.duration_ms,
                outcome=result or Outcome.retry,
                policy=self.policy,
            )
            self.on_attempt(str(result or Outcome.retry))
            if recorded.disabled_reason is not None:
                log.warning("webhook %s disabled: %s", sub.id, recorded.disabled_reason)
                self.recorder.invalidate()
            elif result is not Outcome.delivered:
                log.info(
                    "webhook %s: delivery of %s %s failed (%s), now %s",
                    sub.id,
                    delivery.event_type,
                    delivery.event_id,
                    attempt.error or attempt.status_code,
                    recorded.status,
                )
        except Unavailable as exc:  # the lease runs out and the row is tried again
            log.warning("webhook %s: cannot record attempt: %s", sub.id, exc.message)
        except Exception:  # one broken delivery must not stop the dispatcher
            log.exception("webhook %s: delivery %s failed unexpectedly", sub.id, delivery.id)
        finally:
            jobs = self._in_flight.get(sub.id, set())
            current = asyncio.current_task()
            if current is not None:
                jobs.discard(current)
            if not jobs:
                self._in_flight.pop(sub.id, None)
            self._wake.set()

    async def _attempt(
        self, client: httpx.AsyncClient, delivery: Delivery, sub: Subscription
    ) -> Attempt:
        """One send; the SSRF guard runs again now, since DNS may have changed."""
        try:
            target = await check_target(sub.url, allow_private=self.allow_private)
        except InvalidInput as exc:
            return Attempt(None, f"refused: {exc.message}", 0)
        return await send(
            client,
            sub.url,
            secret=sub.secret,
            msg_id=str(delivery.event_id),
            body=delivery.body,
            deadline=self.timeout,
            connect_to=target.address,
        )

    async def _sleep(self, next_due: float | None) -> None:
        wait = self.poll_interval if next_due is None else min(self.poll_interval, next_due)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), max(MIN_WAIT_SECONDS, wait))
        self._wake.clear()

    async def drain(self) -> None:
        """Wait for the sends in flight now (each is bounded by the delivery timeout)."""
        jobs = [job for jobs in self._in_flight.values() for job in jobs]
        if jobs:
            await asyncio.gather(*jobs, return_exceptions=True)

    async def _cancel_in_flight(self) -> None:
        jobs = [job for jobs in self._in_flight.values() for job in jobs]
        for job in jobs:
            job.cancel()
        if jobs:
            await asyncio.gather(*jobs, return_exceptions=True)
        self._in_flight.clear()


def _ignore(outcome: str) -> None:
    """The default ``on_attempt``: nobody counts."""
