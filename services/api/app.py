"""The FastAPI application: routers, error table, web UI, offline API docs, and the lifespan."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI

from flowyard.core.settings import Settings
from flowyard.services.api import (
    errors,
    events,
    openapi,
    ops,
    pages,
    system,
    tasks,
    users,
    webhooks,
)
from flowyard.services.api.edge import EdgeGuard
from flowyard.services.runtime import Runtime


def create_app(settings: Settings, runtime: Runtime | None = None) -> FastAPI:
    """``runtime`` may be opened beforehand so start-up errors surface before serving."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        rt = runtime or await Runtime.open(settings)
        app.state.runtime = rt
        await rt.start()
        try:
            yield
        finally:
            await rt.close()

    # /docs is our own route with local Swagger UI assets (FastAPI's default loads a CDN)
    app = FastAPI(
        title="flowyard", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None
    )
    # the edge: body limits while bodies stream, strict JSON and no NUL, for every route
    app.add_middleware(
        EdgeGuard, json_limit=settings.json_limit, multipart_limit=settings.multipart_limit
    )
    if settings.cors_origins:
        # added after EdgeGuard, so outermost: preflights and error answers get CORS headers
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=settings.cors_methods,
            allow_headers=settings.cors_headers,
            allow_credentials=settings.cors_credentials,
        )
    errors.install(app)
    app.include_router(ops.router)  # /ping, /api/ready, /metrics: probes, not in the document
    app.include_router(tasks.router)
    app.include_router(events.router)
    app.include_router(system.router)
    app.include_router(webhooks.router)
    app.include_router(users.router)
    # no credentials needed: health, sign-in (the credentials are the request) and the pages
    app.include_router(system.health_router)
    app.include_router(users.public)
    # every router above (a test checks that each operation in the document has its errors)
    openapi.install(
        app,
        [
            tasks.router,
            events.router,
            system.router,
            webhooks.router,
            users.router,
            system.health_router,
            users.public,
        ],
    )
    pages.install(app)
    return app
