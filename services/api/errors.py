"""Errors to HTTP responses, in one table. Every body names the field when there is one."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from core.errors import (
    ConfigError,
    Conflict,
    FlowyardError,
    Forbidden,
    InvalidInput,
    NotFound,
    SchemaMissing,
    TooManyAttempts,
    Unauthenticated,
    Unavailable,
    UploadTooLarge,
)

log = logging.getLogger(__name__)

STATUS: tuple[tuple[type[FlowyardError], int], ...] = (
    (TooManyAttempts, 429),
    (Unauthenticated, 401),
    (Forbidden, 403),
    (UploadTooLarge, 413),
    (InvalidInput, 422),
    (NotFound, 404),
    (Conflict, 409),
    (Unavailable, 503),
    (SchemaMissing, 503),
    (ConfigError, 500),
)


def status_for(exc: FlowyardError) -> int:
    for kind, status in STATUS:
        if isinstance(exc, kind):
            return status
    return 500


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
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse(error_body(str(exc.detail), "HTTPError"), exc.status_code)
