"""Request-scoped access to the runtime that the app's lifespan opened."""

from __future__ import annotations

from fastapi import Request

from flowyard.services.runtime import Runtime


async def runtime(request: Request) -> Runtime:
    """Async on purpose: FastAPI runs a plain ``def`` dependency in its thread pool (a
    thread trip per request)."""
    rt: Runtime = request.app.state.runtime
    return rt
