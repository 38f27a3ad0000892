"""Flows, workers and health."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, Depends

from flowyard.core.events import utcnow
from flowyard.services.api.auth import Caller, principal
from flowyard.services.api.deps import runtime
from flowyard.services.api.schemas import WorkerOut
from flowyard.services.runtime import Runtime

router = APIRouter(prefix="/api", tags=["system"], dependencies=[Depends(principal)])
health_router = APIRouter(prefix="/api", tags=["system"])
Rt = Annotated[Runtime, Depends(runtime)]


@router.get("/flows")
async def list_flows(rt: Rt) -> dict[str, Any]:
    return {
        "items": [info.model_dump(mode="json") for info in rt.flows.describe()],
        "broken": rt.flows.broken,
    }


@router.get("/workers")
async def list_workers(rt: Rt, caller: Caller) -> dict[str, list[WorkerOut]]:
    """A user sees the workers that can serve them: their own and admins' (no owner)."""
    cutoff = utcnow() - timedelta(seconds=rt.settings.worker_offline_seconds)
    rows = [
        row
        for row in await rt.store.workers()
        if row["owner"] is None or caller.sees(str(row["owner"]))
    ]
    return {
        "items": [
            WorkerOut.model_validate({**row, "online": _seen_since(row["last_seen_at"], cutoff)})
            for row in rows
        ]
    }


@health_router.get("/health")
async def health(rt: Rt) -> dict[str, Any]:
    async with rt.db.read() as conn:
        await conn.execute(sa.text("SELECT 1"))
    return {
        "status": "ok",
        "mode": rt.settings.mode,
        "database": rt.db.dialect,
        "flows": len(rt.flows.names()),
        "in_process_workers": rt.settings.workers if rt.worker else 0,
        "running_here": rt.worker.busy if rt.worker else 0,
        "live_subscribers": rt.hub.subscriber_count,
        **({"nats": await rt.nats.health()} if rt.nats is not None else {}),
    }


def _seen_since(last_seen: object, cutoff: datetime) -> bool:
    return isinstance(last_seen, datetime) and last_seen >= cutoff
