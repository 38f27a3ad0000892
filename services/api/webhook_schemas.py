"""The JSON shapes of webhook subscriptions and their deliveries (``/api/webhooks``).

Apart from the routes in ``services/api/webhooks.py`` so that the client
(``services/client``) reads them without loading FastAPI or the database.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from flowyard.core.webhook import DeliveryStatus, Subscription

if TYPE_CHECKING:
    from flowyard.core.webhook import AttemptRecord, Delivery


class WebhookOut(BaseModel):
    id: uuid.UUID
    url: str
    events: list[str]
    flows: list[str] | None
    enabled: bool
    disabled_reason: str | None
    created_at: datetime | None
    consecutive_failures: int
    owner: str | None
    all_owners: bool

    @classmethod
    def of(cls, sub: Subscription) -> WebhookOut:
        return cls(
            id=sub.id,
            url=sub.url,
            events=list(sub.events),
            flows=None if sub.flows is None else list(sub.flows),
            enabled=sub.enabled,
            disabled_reason=sub.disabled_reason,
            created_at=sub.created_at,
            consecutive_failures=sub.consecutive_failures,
            owner=sub.owner,
            all_owners=sub.all_owners,
        )


class WebhookCreated(WebhookOut):
    secret: str = Field(description="shown only in this response")


class AttemptOut(BaseModel):
    at: datetime
    status_code: int | None
    error: str | None
    duration_ms: int


class DeliveryOut(BaseModel):
    id: int
    event_id: uuid.UUID
    event_type: str
    task_id: uuid.UUID
    status: DeliveryStatus
    attempts: int
    next_attempt_at: datetime | None
    created_at: datetime
    delivered_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    attempt_log: list[AttemptOut]

    @classmethod
    def of(cls, delivery: Delivery, attempts: list[AttemptRecord]) -> DeliveryOut:
        return cls(
            id=delivery.id,
            event_id=delivery.event_id,
            event_type=delivery.event_type,
            task_id=delivery.task_id,
            status=delivery.status,
            attempts=delivery.attempts,
            next_attempt_at=(
                delivery.next_attempt_at if delivery.status is DeliveryStatus.pending else None
            ),
            created_at=delivery.created_at,
            delivered_at=delivery.delivered_at,
            last_status_code=delivery.last_status_code,
            last_error=delivery.last_error,
            attempt_log=[
                AttemptOut(
                    at=a.at, status_code=a.status_code, error=a.error, duration_ms=a.duration_ms
                )
                for a in attempts
            ],
        )
