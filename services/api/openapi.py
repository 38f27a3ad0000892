"""What the OpenAPI document says that FastAPI cannot infer from the routes.

Generated clients and fuzzers (schemathesis runs in CI) trust the document, so
it must list the errors each operation can answer, with the one error body
(``Error``: ``{"detail", "field", "type"}``), rather than FastAPI's default 422
shape, which flowyard never sends. The statuses follow from how a route is
built, so a new route is documented without anyone remembering to:

- every operation: 422 (a query, path or body field; NUL in any text) and 503;
- behind ``principal``: 401 and 429; 403 when it changes something (CSRF, owners)
  or needs an admin;
- with a path parameter: 404, and 409 when it changes something;
- with a request body: 413 and 415.

``POST /api/tasks`` reads its body itself (JSON or multipart), so its two
bodies are declared here too (``CREATE_TASK_BODY``, used as ``openapi_extra``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute

from flowyard.core.settings import MAX_INPUT_FILES
from flowyard.services.api.auth import SAFE_METHODS, admin, principal
from flowyard.services.api.errors import WHEN
from flowyard.services.api.schemas import CreateTask, Error

ERROR_REF = {"$ref": "#/components/schemas/Error"}

_FORM_FIELDS: dict[str, Any] = {
    "flow": {"type": "string", "minLength": 1, "maxLength": 200, "examples": ["debug.sleep"]},
    "params": {
        "type": "string",
        "default": "{}",
        "description": "a JSON object as text (at most max_params_bytes)",
        "examples": ['{"seconds": 0}'],
    },
    # an HTML form sends a field left blank as "": it means the default, as if absent
    "priority": {
        "anyOf": [
            {"type": "integer", "minimum": -1000, "maximum": 1000},
            {"type": "string", "maxLength": 0},
        ],
        "default": 0,
    },
    "owner": {
        "type": "string",
        "maxLength": 200,
        "description": "admins only; blank or absent: yourself",
    },
}

CREATE_TASK_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": (
            "JSON for flows without input files; multipart/form-data (or a urlencoded "
            "form) with the files in `inputs`, filling the flow's declared inputs in order."
        ),
        "content": {
            "application/json": {
                "schema": CreateTask.model_json_schema(),
                "example": {"flow": "debug.sleep", "params": {"seconds": 0}},
            },
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["flow"],
                    "properties": {
                        **_FORM_FIELDS,
                        "inputs": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "maxItems": MAX_INPUT_FILES,
                        },
                    },
                },
                "encoding": {"inputs": {"contentType": "application/octet-stream"}},
            },
            "application/x-www-form-urlencoded": {
                "schema": {"type": "object", "required": ["flow"], "properties": _FORM_FIELDS}
            },
        },
    }
}


FILE_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The file, streamed, with the media type its name suggests",
        "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}},
    }
}
EVENT_STREAM_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Server-sent events until the client (or the stopping server) ends it",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
}


def install(app: FastAPI, routers: Iterable[APIRouter]) -> None:
    """Post-process the document FastAPI builds (once, then cached like FastAPI's own).

    ``routers``: those the app includes; their routes carry the full path and every
    dependency (the router's too), which is what the rules read.
    """
    build = app.openapi
    routes = [route for router in routers for route in router.routes]

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document_errors(build(), routes)
        assert app.openapi_schema is not None
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def document_errors(doc: dict[str, Any], routes: Iterable[BaseRoute]) -> None:
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    schemas["Error"] = Error.model_json_schema()
    for route in routes:
        if not isinstance(route, APIRoute) or not route.include_in_schema:
            continue
        for method in route.methods or ():
            operation = doc["paths"].get(route.path_format, {}).get(method.lower())
            if operation is None:
                continue
            responses = operation.setdefault("responses", {})
            for status in error_statuses(route, method, "requestBody" in operation):
                responses.setdefault(str(status), {"description": WHEN[status]})
            for status, response in responses.items():
                if status[0] in "45":
                    response["content"] = {"application/json": {"schema": ERROR_REF}}
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)


def error_statuses(route: APIRoute, method: str, has_body: bool) -> set[int]:
    statuses = {422, 503}
    changes = method.upper() not in SAFE_METHODS
    if _depends_on(route.dependant, principal):
        statuses |= {401, 429}
        if changes or _depends_on(route.dependant, admin):
            statuses.add(403)
    if "{" in route.path_format:
        statuses.add(404)
        if changes:
            statuses.add(409)
    if has_body:
        statuses |= {413, 415}
    return statuses


def _depends_on(dependant: Dependant, call: Callable[..., Any]) -> bool:
    return any(d.call is call or _depends_on(d, call) for d in dependant.dependencies)
