"""The FastAPI application: routers, error table, web UI, and the runtime's lifespan."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse

from core.settings import Settings
from services.api import errors, events, system, tasks, users, webhooks
from services.runtime import Runtime

STATIC = Path(__file__).parent / "static"


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

    app = FastAPI(title="flowyard", version="0.1.0", lifespan=lifespan)
    errors.install(app)
    app.include_router(tasks.router)
    app.include_router(events.router)
    app.include_router(system.router)
    app.include_router(webhooks.router)
    app.include_router(users.router)
    # no credentials needed: health, sign-in (the credentials are the request) and the pages
    app.include_router(system.health_router)
    app.include_router(users.public)

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/login", include_in_schema=False)
    async def login_page() -> FileResponse:
        return FileResponse(STATIC / "login.html", media_type="text/html")

    return app
