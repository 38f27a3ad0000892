"""``/api/webhooks``: subscribe to events, list and remove subscriptions, inspect deliveries.

The signing secret is in the response to ``POST`` only; it is never shown again.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from flowyard.adapters.sql.webhook_store import AttemptRecord, Delivery
from flowyard.core.events import EVENT_TYPES
from flowyard.core.webhook import DeliveryStatus, Subscription
from flowyard.services.api.auth import Caller, principal
from flowyard.services.api.deps import runtime
from flowyard.services.runtime import Runtime
from flowyard.services.webhook_service import NewWebhook

router = APIRouter(prefix="/api/webhooks", tags=["webhooks"], dependencies=[Depends(principal)])
Rt = Annotated[Runtime, Depends(runtime)]


# check_event_types names a bad type with the valid ones; the schema lists them for clients
EventName = Annotated[str, Field(json_schema_extra={"enum": list(EVENT_TYPES)})]
FlowName = Annotated[str, Field(min_length=1, max_length=200, pattern=r"\S")]


class CreateWebhook(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(
        min_length=1,
        max_length=2000,
        description="http(s); its host must resolve to public addresses (docs/webhooks.md)",
        # documented only: check_url refuses the rest with a message that says why
        json_schema_extra={"pattern": r"^[Hh][Tt][Tt][Pp][Ss]?://[^/?#@\s]+"},
    )
    events: list[EventName] | None = Field(default=None, description="default: task.done")
    flows: list[FlowName] | None = Field(
        default=None, min_length=1, description="default: every flow"
    )
    secret: str | None = Field(default=None, description="whsec_<base64>; generated if absent")
    owner: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="whose task events (admins only; default yours, or every owner's for admins)",
    )


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


@router.post("", status_code=201, response_model=WebhookCreated)
async def create_webhook(body: CreateWebhook, rt: Rt, caller: Caller) -> WebhookCreated:
    request = NewWebhook(body.url, body.events, body.flows, body.secret, body.owner)
    sub = await rt.webhooks.create(request, caller)
    return WebhookCreated(**WebhookOut.of(sub).model_dump(), secret=sub.secret)


@router.get("")
async def list_webhooks(rt: Rt, caller: Caller) -> dict[str, list[WebhookOut]]:
    return {"items": [WebhookOut.of(sub) for sub in await rt.webhooks.list(caller)]}


@router.get("/{webhook_id}", response_model=WebhookOut)
async def get_webhook(webhook_id: uuid.UUID, rt: Rt, caller: Caller) -> WebhookOut:
    return WebhookOut.of(await rt.webhooks.get(webhook_id, caller))


@router.delete("/{webhook_id}", status_code=204)
async def delete_webhook(webhook_id: uuid.UUID, rt: Rt, caller: Caller) -> Response:
    await rt.webhooks.delete(webhook_id, caller)
    return Response(status_code=204)


@router.post("/{webhook_id}/enable", response_model=WebhookOut)
async def enable_webhook(webhook_id: uuid.UUID, rt: Rt, caller: Caller) -> WebhookOut:
    """Turn a disabled subscription back on; its pending deliveries resume."""
    sub = await rt.webhooks.enable(webhook_id, caller)
    rt.dispatcher.wake()
    return WebhookOut.of(sub)


@router.get("/{webhook_id}/deliveries")
async def list_deliveries(
    webhook_id: uuid.UUID,
    rt: Rt,
    caller: Caller,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    status: DeliveryStatus | None = None,
) -> dict[str, list[DeliveryOut]]:
    """The newest deliveries first, each with every attempt (status code, error, duration)."""
    rows = await rt.webhooks.deliveries(webhook_id, caller, limit=limit, status=status)
    return {"items": [DeliveryOut.of(d, attempts) for d, attempts in rows]}
