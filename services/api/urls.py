"""The paths of task files the API serves, for responses and for webhook bodies.

The routes live in ``services/api``; so does the one place that spells their paths
for others, so the domain (``core.webhook.delivery_body``) takes a URL builder
instead of knowing ``/api/tasks/...``.
"""

from __future__ import annotations

import uuid
from urllib.parse import quote

from flowyard.core.events import Event
from flowyard.core.webhook import OutputUrl, delivery_body


def input_path(task_id: uuid.UUID, name: str) -> str:
    """The path of ``GET /api/tasks/{id}/inputs/{name}`` for one input."""
    return f"/api/tasks/{task_id}/inputs/{quote(name)}"


def output_path(task_id: uuid.UUID, name: str) -> str:
    """The path of ``GET /api/tasks/{id}/outputs/{name}`` for one output."""
    return f"/api/tasks/{task_id}/outputs/{quote(name)}"


def output_url(task_id: uuid.UUID, name: str, public_url: str | None = None) -> str:
    """Where the API serves an output: absolute when the server's public URL is known."""
    path = output_path(task_id, name)
    return f"{public_url.rstrip('/')}{path}" if public_url else path


def output_urls(public_url: str | None) -> OutputUrl:
    """``output_url`` bound to the server's public URL, for ``delivery_body``."""

    def url(task_id: uuid.UUID, name: str) -> str:
        return output_url(task_id, name, public_url)

    return url


def webhook_body(event: Event, public_url: str | None = None) -> str:
    """The body a subscriber receives, with output URLs under ``public_url`` (or relative)."""
    return delivery_body(event, output_urls(public_url))
