"""Errors to HTTP responses, in one table. Every body names the field when there is one."""

from __future__ import annotations

import functools
import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.routing import compile_path

from flowyard.core.errors import FlowyardError, InvalidInput, TooManyAttempts, Unauthenticated
from flowyard.services.api.schemas import Error
from flowyard.services.api.status import STATUS, status_for

log = logging.getLogger(__name__)

__all__ = ["STATUS", "documented", "error_body", "install", "status_for"]

WHEN: dict[int, str] = {
    401: "No, wrong, expired or revoked credentials",
    403: "Signed in, but the role (or a missing CSRF token) does not allow it",
    404: "No such object, or someone else's",
    409: "The object's state does not allow it",
    413: "The body, an input file or params is over its limit",
    415: "The body's content type is not one this route reads",
    422: "A field is invalid; `field` names it",
    429: "Too many failed sign-ins; see Retry-After",
    503: "The database (or NATS) is unreachable",
}


def documented(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these error statuses, all with the ``Error`` body."""
    return {status: {"model": Error, "description": WHEN[status]} for status in statuses}


def error_body(message: str, kind: str, field: str | None = None) -> dict[str, str | None]:
    return {"detail": message, "field": field, "type": kind}


def _auth_headers(exc: FlowyardError) -> dict[str, str] | None:
    """401 names the schemes (Bearer only: a Basic challenge would pop up a browser dialog)."""
    if isinstance(exc, TooManyAttempts):
        return {"Retry-After": str(max(1, round(exc.retry_after)))}
    if isinstance(exc, Unauthenticated):
        return {"WWW-Authenticate": 'Bearer realm="flowyard"'}
    return None


def install(app: FastAPI) -> None:
    @app.exception_handler(FlowyardError)
    async def _flowyard(_: Request, exc: FlowyardError) -> JSONResponse:
        status = status_for(exc)
        if status >= 500:
            log.error("request failed: %s", exc.message)
        field = exc.field if isinstance(exc, InvalidInput) else None
        body = error_body(exc.message, type(exc).__name__, field)
        return JSONResponse(body, status, headers=_auth_headers(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path", "form")]
        field = ".".join(loc) or None
        message = f"{field}: {first.get('msg')}" if field else str(first.get("msg"))
        return JSONResponse(error_body(message, "InvalidInput", field), 422)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = _allowed(request) or headers.get("Allow", "")
        return JSONResponse(error_body(str(exc.detail), "HTTPError"), exc.status_code, headers)


def _allowed(request: Request) -> str | None:
    """Every method of the path (RFC 9110), from the OpenAPI document.

    Starlette names only the methods of the first route that matched the path, and
    FastAPI has one route per method.
    """
    paths: dict[str, dict[str, Any]] = request.app.openapi().get("paths", {})
    for template, operations in paths.items():
        if _path_regex(template).match(request.url.path):
            methods = {m.upper() for m in operations}
            if "GET" in methods:
                methods.add("HEAD")  # Starlette answers HEAD for every GET route
            return ", ".join(sorted(methods))
    return None


@functools.cache
def _path_regex(template: str) -> re.Pattern[str]:
    return compile_path(template)[0]
