"""Request-scoped access to the runtime that the app's lifespan opened."""

from __future__ import annotations

from fastapi import Request

from flowyard.services.runtime import Runtime


def runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt
