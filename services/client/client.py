"""``Client``: the flowyard HTTP API as typed async methods.

Every method returns the server's own response model (``services/api/schemas.py``
and its siblings), and every error response becomes the ``core.errors`` type the
server raised (``errors.py``), so a caller handles one error tree whether a failure
happened here or on the server. Files move as streams in both directions.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from functools import cache
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Self, TypeVar
from urllib.parse import quote

import httpx
from httpx_sse import aconnect_sse
from pydantic import TypeAdapter, ValidationError

from flowyard.core.errors import FlowyardError, TooManyAttempts, Unauthenticated
from flowyard.core.events import Event
from flowyard.core.flow import FlowInfo
from flowyard.services.api.schemas import BatchOut, PruneOut, TaskOut, TaskPage, WorkerOut
from flowyard.services.api.user_schemas import MeOut, TokenCreated
from flowyard.services.api.webhook_schemas import DeliveryOut, WebhookCreated, WebhookOut
from flowyard.services.client import streams
from flowyard.services.client.auth import SameOriginAuth
from flowyard.services.client.errors import raise_for_error
from flowyard.services.client.urls import (
    DEFAULT_SERVER,
    normalise_server,
    output_path,
    task_path,
    webhook_path,
)

T = TypeVar("T")
Id = str | uuid.UUID

TIMEOUT = httpx.Timeout(30.0, connect=10.0)
"""One request may take a while (a large upload), but a dead server must not hang us."""
STREAM_TIMEOUT = httpx.Timeout(30.0, connect=10.0, read=None)
"""An event stream (or a held create) is idle for as long as the task runs: no read timeout."""

Upload = tuple[str, BinaryIO, str]
"""(file name sent to the server, open binary file, media type)"""

Explain401 = Callable[[Unauthenticated], FlowyardError]


class Client:
    """Use as ``async with Client(url, auth=...) as api``.

    ``on_unauthenticated`` rewrites a 401 (the CLI says how to sign in); without it
    the server's own message stands.
    """

    def __init__(
        self,
        server: str = DEFAULT_SERVER,
        *,
        auth: httpx.Auth | None = None,
        on_unauthenticated: Explain401 | None = None,
        timeout: httpx.Timeout | float = TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,
        user_agent: str = "flowyard-client",
    ) -> None:
        self.server = normalise_server(server)
        self.auth = auth
        self._explain = on_unauthenticated
        self._http = httpx.AsyncClient(
            base_url=self.server,
            auth=SameOriginAuth(auth, self.server) if auth is not None else None,
            timeout=timeout,
            transport=transport,
            headers={"User-Agent": user_agent},
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- the server and who am I --------------------------------------------

    async def health(self) -> dict[str, Any]:
        return await self._get(dict[str, Any], "/api/health")

    async def me(self) -> MeOut:
        """Whoever the credentials belong to (``auth_required``: whether the server checks)."""
        return await self._get(MeOut, "/api/me")

    async def create_token(self, name: str, *, expires_days: float | None = None) -> TokenCreated:
        """A new API token of the caller; the response is the only one with its secret."""
        body: dict[str, Any] = {"name": name}
        if expires_days is not None:
            body["expires_days"] = expires_days
        return await self._call(TokenCreated, "POST", "/api/me/tokens", json=body)

    async def revoke_token(self, token_id: str) -> None:
        await self._request("DELETE", f"/api/me/tokens/{quote(token_id, safe='')}")

    async def list_flows(self) -> list[FlowInfo]:
        return await self._items(FlowInfo, "/api/flows")

    async def list_workers(self) -> list[WorkerOut]:
        return await self._items(WorkerOut, "/api/workers")

    # -- tasks ----------------------------------------------------------------

    async def list_tasks(
        self, *, state: str | None = None, flow: str | None = None, limit: int = 50, offset: int = 0
    ) -> TaskPage:
        """One page, newest first; ``next_offset`` is None on the last."""
        params: dict[str, str | int] = {"limit": limit, "offset": offset}
        params |= {k: v for k, v in (("state", state), ("flow", flow)) if v}
        return await self._get(TaskPage, "/api/tasks", params=params)

    async def get_task(self, task_id: Id) -> TaskOut:
        return await self._get(TaskOut, task_path(task_id))

    async def task_events(self, task_id: Id) -> list[Event]:
        return await self._items(Event, f"{task_path(task_id)}/events")

    async def cancel_task(self, task_id: Id) -> TaskOut:
        return await self._call(TaskOut, "POST", f"{task_path(task_id)}/cancel")

    async def delete_task(self, task_id: Id) -> None:
        await self._request("DELETE", task_path(task_id))

    async def retry_task(self, task_id: Id) -> TaskOut:
        """Queue a failed or cancelled task again (a new attempt of the same task)."""
        return await self._call(TaskOut, "POST", f"{task_path(task_id)}/retry")

    async def set_priority(self, task_id: Id, priority: int) -> TaskOut:
        """Change a queued task's priority."""
        body = {"priority": priority}
        return await self._call(TaskOut, "PATCH", task_path(task_id), json=body)

    async def prune_tasks(
        self, older_than_days: float, *, dry_run: bool = False, events: bool = False
    ) -> PruneOut:
        """Admins: remove finished tasks older than the age (``dry_run``: count only)."""
        params = {
            "older_than_days": str(older_than_days),
            "dry_run": str(dry_run).lower(),
            "events": str(events).lower(),
        }
        return await self._call(PruneOut, "POST", "/api/tasks/prune", params=params)

    async def create_task(
        self,
        flow: str,
        params: Mapping[str, Any] | None = None,
        *,
        priority: int | None = None,
        owner: str | None = None,
        inputs: Sequence[Upload] = (),
        extra: Mapping[str, Any] | None = None,
        query: Mapping[str, str] | None = None,
    ) -> TaskOut:
        """Submit a task: JSON without files, multipart (files streamed from disk) with them.

        ``extra``: more create fields (``run_at``, ``delay_seconds``, ``max_attempts``…);
        None values are left out. ``query``: e.g. ``wait`` and ``cancel_on_disconnect``
        (no read timeout then: the server answers when the task ends or the wait is over).
        """
        options: dict[str, Any] = {}
        if query:
            options = {"params": dict(query), "timeout": STREAM_TIMEOUT}
        fields = {"priority": priority, "owner": owner, **(extra or {})}
        more = {k: v for k, v in fields.items() if v is not None}
        if not inputs:
            body = {"flow": flow, "params": dict(params or {})} | more
            return await self._call(TaskOut, "POST", "/api/tasks", json=body, **options)
        data = {"flow": flow, "params": json.dumps(dict(params or {}), allow_nan=False)}
        data |= {k: str(v) for k, v in more.items()}
        files = [("inputs", (name, handle, media_type)) for name, handle, media_type in inputs]
        return await self._call(TaskOut, "POST", "/api/tasks", data=data, files=files, **options)

    async def create_batch(self, spec: Mapping[str, Any], count: int) -> BatchOut:
        """``count`` copies of one JSON task spec, in one request and one transaction."""
        body = {"task": dict(spec), "count": count}
        return await self._call(BatchOut, "POST", "/api/tasks/batch", json=body)

    async def download_output(
        self, task_id: Id, name: str, folder: Path, *, url: str | None = None
    ) -> Path:
        """Stream one output into ``folder/name``; ``url`` as the task lists it, if known."""
        name = streams.safe_output_name(name)
        target = folder / name
        return await streams.download(self._http, url or output_path(task_id, name), target)

    # -- webhooks -------------------------------------------------------------

    async def create_webhook(
        self,
        url: str,
        *,
        events: Sequence[str] = (),
        flows: Sequence[str] = (),
        secret: str | None = None,
    ) -> WebhookCreated:
        """Subscribe; the response is the only one that carries the signing secret."""
        body: dict[str, Any] = {"url": url, "events": list(events) or None}
        body |= {"flows": list(flows) or None, "secret": secret}
        return await self._call(WebhookCreated, "POST", "/api/webhooks", json=body)

    async def list_webhooks(self) -> list[WebhookOut]:
        return await self._items(WebhookOut, "/api/webhooks")

    async def delete_webhook(self, webhook_id: Id) -> None:
        await self._request("DELETE", webhook_path(webhook_id))

    async def enable_webhook(self, webhook_id: Id) -> WebhookOut:
        return await self._call(WebhookOut, "POST", f"{webhook_path(webhook_id)}/enable")

    async def webhook_deliveries(self, webhook_id: Id, *, limit: int = 20) -> list[DeliveryOut]:
        path = f"{webhook_path(webhook_id)}/deliveries"
        return await self._items(DeliveryOut, path, params={"limit": limit})

    # -- the event stream -----------------------------------------------------

    @asynccontextmanager
    async def open_event_stream(
        self, task_id: Id | None, *, last_event_id: str | None = None
    ) -> AsyncIterator[AsyncIterator[Event]]:
        """Connect to the event stream (``None``: every task's); on entry the server answered.

        Separate from iterating so a caller can fetch the task *after* the stream is
        open and miss nothing in between.
        """
        headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
        async with aconnect_sse(
            self._http,
            "GET",
            "/api/events/stream",
            params={"task": str(task_id)} if task_id else {},
            headers=headers,
            timeout=STREAM_TIMEOUT,
        ) as source:
            await self._check(source.response)
            streams.check_event_stream(source, self.server)
            events = streams.decode_events(source)
            try:
                yield events
            finally:
                await events.aclose()

    async def stream_events(self, task_id: Id) -> AsyncIterator[Event]:
        """The task's events as they happen, until the server closes the stream."""
        async with self.open_event_stream(task_id) as events:
            async for event in events:
                yield event

    # -- internals ------------------------------------------------------------

    async def _get(self, shape: type[T], url: str, **kwargs: Any) -> T:
        return await self._call(shape, "GET", url, **kwargs)

    async def _items(self, shape: Any, url: str, **kwargs: Any) -> list[Any]:
        """The ``items`` of a list response (the lists that have no page model)."""
        items: list[Any] = _decode(shape, await self._request("GET", url, **kwargs), items=True)
        return items

    async def _call(self, shape: type[T], method: str, url: str, **kwargs: Any) -> T:
        value: T = _decode(shape, await self._request(method, url, **kwargs))
        return value

    async def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        response = await self._http.request(method, url, **kwargs)
        await self._check(response)
        return response

    async def _check(self, response: httpx.Response) -> None:
        try:
            await raise_for_error(response)
        except Unauthenticated as exc:
            if self._explain is None or isinstance(exc, TooManyAttempts):
                raise
            raise self._explain(exc) from exc


@cache
def _adapter(shape: Any) -> TypeAdapter[Any]:
    return TypeAdapter(shape)


def _decode(shape: Any, response: httpx.Response, *, items: bool = False) -> Any:
    """The body as ``shape`` (``items``: its ``items``, each one); another shape is the
    server's fault, and said so."""
    adapter = _adapter(shape)
    try:
        body = response.json()
        if items:
            return [adapter.validate_python(item) for item in body["items"]]
        return adapter.validate_python(body)
    except (ValueError, KeyError, TypeError, ValidationError) as exc:
        request = response.request
        raise FlowyardError(
            f"the server sent an unexpected answer to {request.method} {request.url}: "
            f"{str(exc).splitlines()[0]}"
        ) from exc
