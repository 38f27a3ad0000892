"""Probes and metrics for operators: ``/ping``, ``/api/ready``, ``/metrics``.

They stay out of the OpenAPI document: they are for load balancers, orchestrators
and Prometheus, not API clients. ``/ping`` and ``/api/ready`` need no credentials
(a probe has none); ``/metrics`` needs an admin when authentication is on.
"""

from __future__ import annotations

import asyncio
from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from flowyard.services.api.auth import Admin
from flowyard.services.api.deps import runtime

READY_TIMEOUT_SECONDS = 2.0
"""A database that does not answer ``SELECT 1`` within this is not ready."""

router = APIRouter()


@router.get("/ping", include_in_schema=False)
async def ping() -> dict[str, str]:
    """Liveness: the process answers HTTP. No I/O, so a slow database never restarts it."""
    return {"status": "ok"}


@router.get("/api/ready", include_in_schema=False)
async def ready(request: Request) -> JSONResponse:
    """Readiness: the database answers and, when configured, NATS is connected; else 503."""
    rt = await runtime(request)
    checks: dict[str, Any] = {}
    try:
        async with asyncio.timeout(READY_TIMEOUT_SECONDS):
            async with rt.db.read() as conn:
                await conn.execute(sa.text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:  # noqa: BLE001 - any failure means "not ready", with its reason
        checks["database"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
    if rt.nats is not None:
        checks["nats"] = "ok" if rt.nats.connected else "not connected"
    failed = [f"{name}: {value}" for name, value in checks.items() if value != "ok"]
    if failed:
        body = {"status": "not ready", "detail": "; ".join(failed), "checks": checks}
        return JSONResponse(body, status_code=503, headers={"Retry-After": "5"})
    return JSONResponse({"status": "ready", "checks": checks})


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request, caller: Admin) -> Response:
    """Prometheus text format; gauges come from a snapshot at most 5 s old."""
    from prometheus_client import CONTENT_TYPE_LATEST

    rt = await runtime(request)
    await rt.metrics.refresh(rt)
    return Response(rt.metrics.render(), media_type=CONTENT_TYPE_LATEST)
