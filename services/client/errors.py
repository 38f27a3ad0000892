"""Error responses back into the ``core.errors`` type the server raised.

The status of each type comes from the server's own table (``services/api/status.py``),
read backwards: a status names the most general type answered with it, and the body's
``type`` may narrow it to a subclass, never to an unrelated type (a confused server
cannot turn a 404 into a ``Conflict``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import httpx

from flowyard.core import errors
from flowyard.core.errors import FlowyardError, InvalidInput, TooManyAttempts, Unavailable
from flowyard.services.api.status import STATUS

_ERROR_TYPES: dict[str, type[FlowyardError]] = {
    name: value
    for name, value in vars(errors).items()
    if isinstance(value, type) and issubclass(value, FlowyardError)
}
_STATUS_BASES: dict[int, type[FlowyardError]] = {400: InvalidInput} | {
    status: kind for kind, status in reversed(STATUS) if status < 500
}
"""400 is not in the table: FastAPI and Starlette answer it for requests they cannot read."""
_RETRY_LATER = frozenset({502, 503, 504})
"""The waiting loops reconnect on ``Unavailable``."""


def error_from_response(
    status: int, body: Any, reason: str = "", *, retry_after: str | None = None
) -> FlowyardError:
    """The ``core.errors`` instance for an error response (``body``: its decoded JSON or text).

    ``retry_after`` is the ``Retry-After`` header of a 429.
    """
    detail, field, type_name = _error_parts(body)
    if status >= 500:
        cls = Unavailable if status in _RETRY_LATER else FlowyardError
        return cls(f"server error {status}: {detail or reason or 'no detail'}")
    base = _STATUS_BASES.get(status)
    if base is None:
        return FlowyardError(f"request failed with status {status}: {detail or reason}")
    named = _ERROR_TYPES.get(type_name or "")
    cls = named if named is not None and issubclass(named, base) else base
    if issubclass(cls, InvalidInput):
        return cls(detail, field=field)
    if issubclass(cls, TooManyAttempts):
        return cls(detail, retry_after=_seconds(retry_after))
    return cls(detail)


async def raise_for_error(response: httpx.Response) -> None:
    """Raise the response's ``core.errors`` type if it is an error (reading a streamed body)."""
    if response.status_code < 400:
        return
    await response.aread()
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text
    raise error_from_response(
        response.status_code,
        body,
        response.reason_phrase,
        retry_after=response.headers.get("retry-after"),
    )


def _seconds(value: str | None, default: float = 60.0) -> float:
    """``Retry-After`` in seconds (only the delay form: flowyard never sends a date)."""
    try:
        return max(0.0, float(value)) if value is not None else default
    except ValueError:
        return default


def _error_parts(body: Any) -> tuple[str | None, str | None, str | None]:
    """(detail, field, type) from an error body, including FastAPI's validation list."""
    if not isinstance(body, Mapping):
        text = body.strip()[:300] if isinstance(body, str) else ""
        return text or None, None, None
    detail = body.get("detail")
    field = body.get("field") if isinstance(body.get("field"), str) else None
    type_name = body.get("type") if isinstance(body.get("type"), str) else None
    if isinstance(detail, list) and detail and isinstance(detail[0], Mapping):
        first = detail[0]
        loc = [str(part) for part in first.get("loc", ())]
        if loc and loc[0] in ("body", "query", "path", "form", "header"):
            loc = loc[1:]
        field = field or ".".join(loc) or None
        message = str(first.get("msg", "invalid value"))
        detail = f"{field}: {message}" if field else message
    elif detail is not None and not isinstance(detail, str):
        detail = json.dumps(detail)
    return detail or None, field, type_name
