"""``/api/webhooks``: subscribe to events, list and remove subscriptions, inspect deliveries.

The signing secret is in the response to ``POST`` only; it is never shown again.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from flowyard.core.events import EVENT_TYPES
from flowyard.core.webhook import DeliveryStatus
from flowyard.services.api.auth import Caller, principal
from flowyard.services.api.deps import runtime
from flowyard.services.api.webhook_schemas import DeliveryOut, WebhookCreated, WebhookOut
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
