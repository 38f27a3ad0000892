"""Which HTTP status each ``core.errors`` type is answered with: the one table.

The server answers with it (``services/api/errors.py``) and the client reads error
responses back with it (``services/client/errors.py``), so the two cannot drift.
It imports no web framework: the client loads it without FastAPI.
"""

from __future__ import annotations

from flowyard.core.errors import (
    ConfigError,
    Conflict,
    FlowyardError,
    Forbidden,
    InvalidInput,
    NotFound,
    RequestTooLarge,
    SchemaMissing,
    TooManyAttempts,
    Unauthenticated,
    Unavailable,
    UnsupportedMediaType,
)

STATUS: tuple[tuple[type[FlowyardError], int], ...] = (
    (TooManyAttempts, 429),
    (Unauthenticated, 401),
    (Forbidden, 403),
    (RequestTooLarge, 413),
    (UnsupportedMediaType, 415),
    (InvalidInput, 422),
    (NotFound, 404),
    (Conflict, 409),
    (Unavailable, 503),
    (SchemaMissing, 503),
    (ConfigError, 500),
)
"""First match wins: a subclass comes before its base (429 before 401, 413 before 422)."""


def status_for(exc: FlowyardError) -> int:
    for kind, status in STATUS:
        if isinstance(exc, kind):
            return status
    return 500
