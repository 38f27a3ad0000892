"""The server's base URL in one spelling, and the paths of the resources the client asks for."""

from __future__ import annotations

import uuid
from urllib.parse import quote

import httpx

from flowyard.core.errors import ConfigError

DEFAULT_SERVER = "http://127.0.0.1:8288"


def normalise_server(server: str) -> str:
    """The server URL in one spelling (lower-case host, no default port, no trailing slash).

    It is also the key of the CLI's credentials file, so ``HTTP://Host:80/`` and
    ``http://host`` share one stored token. Fails early and clearly on a URL httpx
    would reject with a confusing message.
    """
    try:
        url = httpx.URL(server)
    except httpx.InvalidURL as exc:
        raise ConfigError(f"invalid server URL {server!r}: {exc}") from exc
    if url.scheme not in ("http", "https") or not url.host:
        raise ConfigError(
            f"the server URL must be http(s), such as {DEFAULT_SERVER}, got {server!r}"
        )
    if url.userinfo:  # it would be sent as Basic auth, and stored as a credentials key
        raise ConfigError(
            "the server URL must not contain a user name or password (give them as auth)"
        )
    if url.query or url.fragment:
        raise ConfigError(
            f"the server URL must be a base URL without ?query or #fragment: {server!r}"
        )
    return str(url).rstrip("/")


def task_path(task_id: str | uuid.UUID) -> str:
    return f"/api/tasks/{quote(str(task_id), safe='')}"


def webhook_path(webhook_id: str | uuid.UUID) -> str:
    return f"/api/webhooks/{quote(str(webhook_id), safe='')}"


def output_path(task_id: str | uuid.UUID, name: str) -> str:
    return f"{task_path(task_id)}/outputs/{quote(name, safe='')}"
