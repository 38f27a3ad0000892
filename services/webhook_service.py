"""Use cases of webhook subscriptions: subscribe (validated, SSRF-checked), list, remove.

A subscription belongs to who made it: a user's receives only their own tasks'
events and is visible only to them (and admins); someone else's is
``WebhookNotFound``, as a missing one. What makes delivery rows is registered by the
composition root (``services/composition/``).
"""

from __future__ import annotations

import builtins
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from flowyard.adapters.webhook_guard import check_target
from flowyard.adapters.webhook_sender import generate_secret, parse_secret
from flowyard.core.errors import WebhookNotFound
from flowyard.core.identity import Principal
from flowyard.core.ports import SubscriptionCache, WebhookStore
from flowyard.core.settings import Settings
from flowyard.core.webhook import (
    AttemptRecord,
    Delivery,
    DeliveryStatus,
    Subscription,
    check_event_types,
    check_flows,
)


@dataclass(frozen=True)
class NewWebhook:
    url: str
    events: Sequence[str] | None = None
    flows: Sequence[str] | None = None
    secret: str | None = None
    owner: str | None = None
    """Whose events (default: the caller's; an admin's default is every owner's)."""


class WebhookService:
    def __init__(
        self, store: WebhookStore, recorder: SubscriptionCache, settings: Settings
    ) -> None:
        self.store = store
        self.recorder = recorder
        self.allow_private = settings.webhooks_allow_private

    async def create(self, request: NewWebhook, caller: Principal) -> Subscription:
        """Check everything, then store; the returned subscription holds the secret."""
        owner = caller.owner_for(request.owner)
        all_owners = caller.is_admin and request.owner is None
        events = check_event_types(request.events)
        flows = check_flows(request.flows)
        secret = request.secret or generate_secret()
        parse_secret(secret)
        await check_target(request.url, allow_private=self.allow_private)
        sub = Subscription(
            id=uuid.uuid4(),
            url=request.url,
            events=events,
            flows=flows,
            secret=secret,
            owner=owner,
            all_owners=all_owners,
        )
        created = await self.store.create(sub)
        self.recorder.invalidate()
        return created

    async def list(self, caller: Principal) -> list[Subscription]:
        return await self.store.list(caller.owner_filter())

    async def get(self, webhook_id: uuid.UUID, caller: Principal) -> Subscription:
        sub = await self.store.get(webhook_id)
        if not caller.is_admin and sub.owner != caller.name:
            raise WebhookNotFound(f"no webhook subscription has id {webhook_id}")
        return sub

    async def delete(self, webhook_id: uuid.UUID, caller: Principal) -> None:
        await self.get(webhook_id, caller)
        await self.store.delete(webhook_id)
        self.recorder.invalidate()

    async def enable(self, webhook_id: uuid.UUID, caller: Principal) -> Subscription:
        await self.get(webhook_id, caller)
        sub = await self.store.enable(webhook_id)
        self.recorder.invalidate()
        return sub

    async def deliveries(
        self,
        webhook_id: uuid.UUID,
        caller: Principal,
        *,
        limit: int,
        status: DeliveryStatus | None = None,
    ) -> builtins.list[tuple[Delivery, builtins.list[AttemptRecord]]]:
        await self.get(webhook_id, caller)
        return await self.store.deliveries(webhook_id, limit=limit, status=status)
