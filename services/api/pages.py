"""The web UI's pages and files, and the OpenAPI pages, all served from this package.

Every UI path (``/``, ``/tasks/<id>``, ``/flows/<name>``, ``/workers``, …) answers
the same shell, ``static/app.html``; its ES modules route on the path in the
browser, so a deep link or a reload lands on the right page. ``/login`` is a
page of its own. None of it needs credentials: the pages hold no data, the API
calls they make do.

``/docs`` (Swagger UI) and ``/redoc`` load their assets from the
``fastapi-offline`` package instead of a CDN, so they work without internet.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

STATIC = Path(__file__).parent / "static"
DOCS_ASSETS = Path(str(importlib.resources.files("fastapi_offline") / "static"))

UI_PATHS = (
    "/",
    "/tasks",
    "/tasks/{task_id}",
    "/flows",
    "/flows/{name}",
    "/workers",
    "/webhooks",
    "/users",
)

# Our own files only: scripts and styles from this origin, images also from blob:
# (previews of files not uploaded yet), and no framing by other sites.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-cache",
}


class RevalidatedFiles(StaticFiles):
    """Static files the browser must revalidate (a cheap 304): an upgrade shows at once."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers["Cache-Control"] = "no-cache"
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response


def install(app: FastAPI) -> None:
    app.mount("/static", RevalidatedFiles(directory=STATIC), name="static")
    app.mount("/docs/assets", StaticFiles(directory=DOCS_ASSETS), name="docs-assets")

    async def shell() -> FileResponse:
        return FileResponse(STATIC / "app.html", media_type="text/html", headers=PAGE_HEADERS)

    for path in UI_PATHS:
        app.add_api_route(path, shell, methods=["GET"], include_in_schema=False)

    @app.get("/login", include_in_schema=False)
    async def login_page() -> FileResponse:
        return FileResponse(STATIC / "login.html", media_type="text/html", headers=PAGE_HEADERS)

    @app.get("/docs", include_in_schema=False)
    async def swagger() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title="flowyard API",
            swagger_js_url="/docs/assets/swagger-ui-bundle.js",
            swagger_css_url="/docs/assets/swagger-ui.css",
            swagger_favicon_url="/static/favicon.svg",
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title="flowyard API",
            redoc_js_url="/docs/assets/redoc.standalone.js",
            redoc_favicon_url="/static/favicon.svg",
            with_google_fonts=False,
        )
