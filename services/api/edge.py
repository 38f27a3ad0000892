"""The HTTP edge: what every request passes before a route sees it.

One pure-ASGI middleware (``EdgeGuard``) refuses, with the JSON error body of
``services/api/errors.py``:

- a body over its limit, counted while it streams (chunked bodies included), and
  a declared ``Content-Length`` over it before a byte is read: FastAPI reads a JSON
  body whole before validating it, so without this a 1 GiB body costs gigabytes;
- a body whose content type no route reads (``application/jsonx`` is not JSON);
- a JSON body that is not strict JSON, nests too deeply, has a lone surrogate, a
  NUL character or a non-finite number: PostgreSQL refuses NUL in text and NaN in
  JSON, and a string Python cannot encode breaks the response, so either would
  otherwise be a 500 deep inside a route;
- NUL in the query string or the path.

Multipart fields are text the middleware cannot see without parsing the form, so
``POST /api/tasks`` checks them with ``check_text`` and ``parse_json_object`` from here.
"""

from __future__ import annotations

import math
from typing import Any
from urllib.parse import parse_qsl

import pydantic_core
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from flowyard.core.errors import FlowyardError, InvalidInput, RequestTooLarge, UnsupportedMediaType
from flowyard.services.api.errors import error_body, status_for

JSON_TYPES = frozenset({"application/json"})
MULTIPART = "multipart/form-data"
URLENCODED = "application/x-www-form-urlencoded"
READABLE = "application/json, multipart/form-data or application/x-www-form-urlencoded"


def media_type(content_type: str | None) -> str:
    """``Application/JSON; charset=utf-8`` -> ``application/json``; ``""`` when absent."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def is_json(media: str) -> bool:
    return media in JSON_TYPES or (media.startswith("application/") and media.endswith("+json"))


class EdgeGuard:
    """Body limits while the body streams; text and JSON checked once for every route.

    ``json_limit`` applies to every body but multipart (JSON bodies are read whole,
    so their limit stays small); ``multipart_limit`` to multipart bodies, which are
    spooled to disk as they arrive.
    """

    def __init__(self, app: ASGIApp, *, json_limit: int, multipart_limit: int) -> None:
        self.app = app
        self.json_limit = json_limit
        self.multipart_limit = multipart_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        try:
            check_request_line(scope)
            media, limit = self._body_rules(headers)
        except FlowyardError as exc:
            await reply(exc, scope, send)
            return
        if limit is None:
            await self.app(scope, receive, send)
        elif is_json(media):
            await self._json(scope, receive, send, limit)
        else:
            await self._streamed(scope, receive, send, limit)

    def _body_rules(self, headers: Headers) -> tuple[str, int | None]:
        """The body's media type and limit; ``None``: the request has no body."""
        declared = headers.get("content-length")
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        if not chunked and (declared is None or declared.strip() in ("", "0")):
            return "", None
        media = media_type(headers.get("content-type"))
        if not (is_json(media) or media in (MULTIPART, URLENCODED)):
            shown = media or "none"
            raise UnsupportedMediaType(
                f"content-type: {shown!r} is not readable here; send {READABLE}",
                field="content-type",
            )
        limit = self.multipart_limit if media == MULTIPART else self.json_limit
        if declared is not None and declared.strip().isdigit() and int(declared) > limit:
            raise _too_large(limit, media)
        return media, limit

    async def _json(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        """Read the (small) JSON body, check it, then hand the same bytes to the app."""
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client left: nobody to answer
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await reply(_too_large(limit, "application/json"), scope, send, close=True)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        try:
            check_json_body(body)
        except InvalidInput as exc:
            await reply(exc, scope, send)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _streamed(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        """Count a form's bytes as the app reads them; over the limit, answer 413 ourselves.

        The refusal is raised inside the app's read (a form parser, FastAPI's body
        reader); whatever the app then answers is dropped in favour of our 413.
        """
        size = 0
        refused: RequestTooLarge | None = None
        started = False

        async def counted() -> Message:
            nonlocal size, refused
            message = await receive()
            if message["type"] == "http.request":
                size += len(message.get("body", b""))
                if size > limit:
                    refused = _too_large(limit, MULTIPART)
                    raise refused
            return message

        async def guarded(message: Message) -> None:
            nonlocal started
            if refused is not None:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted, guarded)
        except Exception:
            if refused is None or started:
                raise
        if refused is not None and not started:
            await reply(refused, scope, send, close=True)


def _too_large(limit: int, media: str) -> RequestTooLarge:
    if media == MULTIPART:
        why = "a multipart body (max_request_bytes)"
    else:
        why = "a body that is not multipart (max_params_bytes plus 64 KiB)"
    return RequestTooLarge(f"body: over the limit of {limit} bytes for {why}", field="body")


async def reply(exc: FlowyardError, scope: Scope, send: Send, *, close: bool = False) -> None:
    """The error response of the one table, sent before the app runs (or instead of it)."""
    field = exc.field if isinstance(exc, InvalidInput) else None
    headers = {"Connection": "close"} if close else None
    response = JSONResponse(
        error_body(exc.message, type(exc).__name__, field), status_for(exc), headers=headers
    )

    async def no_body() -> Message:
        return {"type": "http.disconnect"}

    await response(scope, no_body, send)


def check_request_line(scope: Scope) -> None:
    """NUL anywhere in the path or in a query parameter (name or value)."""
    if "\x00" in scope.get("path", ""):
        raise InvalidInput("path: must not contain NUL characters", field="path")
    raw = scope.get("query_string", b"").decode("latin-1")
    if "\x00" in raw or "%00" in raw:
        for name, value in parse_qsl(raw, keep_blank_values=True):
            check_text(value, name)
            check_text(name, "query")


def check_json_body(body: bytes) -> None:
    """Strict JSON (no NaN, no lone surrogates, bounded depth) without NUL or infinities."""
    walk_text(_parse_json(body, "body"), "")


def parse_json_object(raw: str | bytes, field: str) -> dict[str, Any]:
    """A JSON object from a text field, held to the same rules as a JSON body."""
    value = _parse_json(raw, field)
    if not isinstance(value, dict):
        raise InvalidInput(f"{field}: must be a JSON object", field=field)
    walk_text(value, field)
    return value


def _parse_json(raw: str | bytes, field: str) -> Any:
    try:
        return pydantic_core.from_json(raw, allow_inf_nan=False)
    except ValueError as exc:
        # e.g. "recursion limit exceeded", "lone leading surrogate in hex escape"
        raise InvalidInput(f"{field}: not valid JSON ({exc})", field=field) from None


def check_text(value: str, field: str) -> None:
    """One text field: no NUL, nothing Python cannot encode as UTF-8."""
    if "\x00" in value:
        raise InvalidInput(f"{field}: must not contain NUL characters", field=field)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(
            f"{field}: contains a lone surrogate (not valid Unicode)", field=field
        ) from None


def walk_text(value: Any, field: str) -> None:
    """Every string (keys too) and number of a parsed JSON value; ``field`` names the path."""
    if isinstance(value, str):
        check_text(value, field or "body")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidInput(f"{field or 'body'}: numbers must be finite", field=field or "body")
    elif isinstance(value, dict):
        for key, item in value.items():
            path = f"{field}.{key}" if field else str(key)
            check_text(key, path)
            walk_text(item, path)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            walk_text(item, f"{field}.{index}" if field else str(index))
