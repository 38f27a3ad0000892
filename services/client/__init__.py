"""A typed async client for the flowyard HTTP API.

    from flowyard.services.client import BearerAuth, Client

    async with Client("http://127.0.0.1:8288", auth=BearerAuth(token)) as api:
        task = await api.create_task("image.blur", {"radius": 2})
        async for event in api.stream_events(task.id):
            ...

Methods return the server's response models (``TaskOut``, ``TaskPage``…) and raise
the ``core.errors`` type the server raised. The CLI (``services/cli``) is built on it.
"""

from __future__ import annotations

from flowyard.services.api.schemas import (
    BatchOut,
    InputOut,
    OutputOut,
    PruneOut,
    TaskOut,
    TaskPage,
    WorkerOut,
)
from flowyard.services.api.user_schemas import MeOut, TokenCreated, TokenOut
from flowyard.services.api.webhook_schemas import DeliveryOut, WebhookCreated, WebhookOut
from flowyard.services.client.auth import BearerAuth
from flowyard.services.client.client import Client, Upload
from flowyard.services.client.errors import error_from_response
from flowyard.services.client.streams import safe_output_name
from flowyard.services.client.urls import DEFAULT_SERVER, normalise_server

__all__ = [
    "DEFAULT_SERVER",
    "BatchOut",
    "BearerAuth",
    "Client",
    "DeliveryOut",
    "InputOut",
    "MeOut",
    "OutputOut",
    "PruneOut",
    "TaskOut",
    "TaskPage",
    "TokenCreated",
    "TokenOut",
    "Upload",
    "WebhookCreated",
    "WebhookOut",
    "WorkerOut",
    "error_from_response",
    "normalise_server",
    "safe_output_name",
]
