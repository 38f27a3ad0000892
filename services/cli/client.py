"""Async client for the flowyard HTTP API.

Error responses become the ``core.errors`` type the server raised, so a command
handles one error tree whether a failure happened here or on the server. Files
move as streams in both directions: the CLI never holds a whole input or output
in memory.

Credentials (an ``httpx.Auth``) go with every request, streams and downloads
included, but only to the server's own origin: an output URL pointing elsewhere
never receives them. A 401 becomes one line that says how to sign in.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Generator, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from types import TracebackType
from typing import Annotated, Any, BinaryIO, Self
from urllib.parse import quote

import aiofiles
import aiofiles.os
import httpx
import typer
from httpx_sse import EventSource, aconnect_sse

from flowyard.core import errors
from flowyard.core.errors import (
    ConfigError,
    Conflict,
    FlowyardError,
    Forbidden,
    InvalidInput,
    NotFound,
    RequestTooLarge,
    TooManyAttempts,
    Unauthenticated,
    Unavailable,
    UnsafeFileName,
    UnsupportedMediaType,
)

DEFAULT_SERVER = "http://127.0.0.1:8288"
SERVER_ENVVAR = "FLOWYARD_SERVER"

ServerOption = Annotated[
    str,
    typer.Option(
        "--server",
        envvar=SERVER_ENVVAR,
        metavar="URL",
        show_envvar=True,
        help="Base URL of the flowyard server.",
    ),
]

# One request may take a while (a large upload), but a dead server must not hang us.
_TIMEOUT = httpx.Timeout(30.0, connect=10.0)
# An event stream is idle for as long as the task waits: no read timeout.
_STREAM_TIMEOUT = httpx.Timeout(30.0, connect=10.0, read=None)
_CHUNK_SIZE = 1 << 16

# (file name sent to the server, open binary file, media type)
Upload = tuple[str, BinaryIO, str]

_ERROR_TYPES: dict[str, type[FlowyardError]] = {
    name: value
    for name, value in vars(errors).items()
    if isinstance(value, type) and issubclass(value, FlowyardError)
}
_STATUS_BASES: dict[int, type[FlowyardError]] = {
    400: InvalidInput,
    401: Unauthenticated,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: RequestTooLarge,
    415: UnsupportedMediaType,
    422: InvalidInput,
    429: TooManyAttempts,
}


def error_from_response(
    status: int, body: Any, reason: str = "", *, retry_after: str | None = None
) -> FlowyardError:
    """The ``core.errors`` instance for an error response (``body`` is its decoded JSON or text).

    The body's ``type`` picks a subclass only when it fits the status, so a confused
    server cannot turn a 404 into, say, a ``Conflict``. ``retry_after`` is the
    ``Retry-After`` header of a 429.
    """
    detail, field, type_name = _error_parts(body)
    if status >= 500:
        text = detail or reason or "no detail"
        # 502/503/504 mean "try again later": the waiting loop reconnects on Unavailable.
        cls = Unavailable if status in (502, 503, 504) else FlowyardError
        return cls(f"server error {status}: {text}")
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


def safe_output_name(name: str) -> str:
    """Refuse output names that would write outside the target folder."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise UnsafeFileName(f"the server sent an unsafe output file name: {name!r}", field="name")
    return name


class BearerAuth(httpx.Auth):
    """``Authorization: Bearer <token>``; ``stored`` marks a token saved by ``flowyard login``.

    ``stored`` only changes what a 401 says: such a token may have expired or been
    revoked since, and signing in again is the fix.
    """

    def __init__(self, token: str, *, stored: bool = False) -> None:
        self.token = token
        self.stored = stored

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self.token}"
        yield request

    def __repr__(self) -> str:  # never the secret, not even in a traceback
        return f"BearerAuth(stored={self.stored})"


class _SameOriginAuth(httpx.Auth):
    """Applies ``inner`` only to requests for the server's own scheme, host and port."""

    def __init__(self, inner: httpx.Auth, server: str) -> None:
        self._inner = inner
        self._origin = _origin(httpx.URL(server))

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if _origin(request.url) == self._origin:
            yield from self._inner.auth_flow(request)
        else:
            yield request


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return url.scheme, url.host, url.port


def sign_in_hint(server: str) -> str:
    """How to sign in to ``server``, in the words every 401 uses."""
    return (
        f"run 'flowyard login {server}', or pass --token / set FLOWYARD_TOKEN, "
        "or --user with FLOWYARD_PASSWORD"
    )


def explain_unauthenticated(server: str, auth: httpx.Auth | None, detail: str) -> str:
    """The one line for a 401: what was refused (if anything was sent) and how to sign in."""
    if auth is None:
        why = ""
    elif isinstance(auth, BearerAuth) and auth.stored:
        why = " (the token saved by 'flowyard login' may have expired or been revoked)"
    elif isinstance(auth, BearerAuth):
        why = f" (the token was refused: {detail})"
    else:
        why = f" (the user name and password were refused: {detail})"
    return f"the server at {server} needs you to sign in{why}: {sign_in_hint(server)}"


class ApiClient:
    """The HTTP API as async methods; use as ``async with ApiClient(url, auth=...) as api``.

    ``explain_401=False`` keeps the server's own 401 message, for callers (``login``)
    that say something better than "sign in".
    """

    def __init__(
        self,
        server: str = DEFAULT_SERVER,
        *,
        auth: httpx.Auth | None = None,
        explain_401: bool = True,
        timeout: httpx.Timeout | float = _TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.server = normalise_server(server)
        self._auth = auth
        self._explain_401 = explain_401
        self._http = httpx.AsyncClient(
            base_url=self.server,
            auth=_SameOriginAuth(auth, self.server) if auth is not None else None,
            timeout=timeout,
            transport=transport,
            headers={"User-Agent": "flowyard-cli"},
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

    # -- plain requests --------------------------------------------------

    async def health(self) -> dict[str, Any]:
        return await self._get_json("/api/health")

    # -- who am I --------------------------------------------------------

    async def me(self) -> dict[str, Any]:
        """``{"name", "role"}`` of whoever the credentials belong to."""
        return await self._get_json("/api/me")

    async def create_token(self, name: str, *, expires_days: int | None = None) -> dict[str, Any]:
        """A new API token of the caller; the response is the only one with its secret."""
        body: dict[str, Any] = {"name": name}
        if expires_days is not None:
            body["expires_days"] = expires_days
        return _json(await self._request("POST", "/api/me/tokens", json=body))

    async def revoke_token(self, token_id: str) -> None:
        await self._request("DELETE", f"/api/me/tokens/{quote(token_id, safe='')}")

    async def list_flows(self) -> list[dict[str, Any]]:
        return (await self._get_json("/api/flows"))["items"]

    async def list_workers(self) -> list[dict[str, Any]]:
        return (await self._get_json("/api/workers"))["items"]

    async def list_tasks(
        self,
        *,
        state: str | None = None,
        flow: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> dict[str, Any]:
        """One page: ``{"items", "limit", "offset", "next_offset"}``, newest first."""
        params: dict[str, str | int] = {"limit": limit, "offset": offset}
        if state:
            params["state"] = state
        if flow:
            params["flow"] = flow
        return await self._get_json("/api/tasks", params=params)

    async def get_task(self, task_id: str) -> dict[str, Any]:
        return await self._get_json(_task_path(task_id))

    async def task_events(self, task_id: str) -> list[dict[str, Any]]:
        return (await self._get_json(f"{_task_path(task_id)}/events"))["items"]

    async def cancel_task(self, task_id: str) -> dict[str, Any]:
        return _json(await self._request("POST", f"{_task_path(task_id)}/cancel"))

    async def delete_task(self, task_id: str) -> None:
        await self._request("DELETE", _task_path(task_id))

    async def retry_task(self, task_id: str) -> dict[str, Any]:
        """Queue a failed or cancelled task again (a new attempt of the same task)."""
        return _json(await self._request("POST", f"{_task_path(task_id)}/retry"))

    async def prune_tasks(
        self, older_than_days: float, *, dry_run: bool = False, events: bool = False
    ) -> dict[str, Any]:
        """Admins: remove finished tasks older than the age (``dry_run``: count only)."""
        params = {
            "older_than_days": str(older_than_days),
            "dry_run": str(dry_run).lower(),
            "events": str(events).lower(),
        }
        return _json(await self._request("POST", "/api/tasks/prune", params=params))

    async def set_priority(self, task_id: str, priority: int) -> dict[str, Any]:
        """Change a queued task's priority."""
        body = {"priority": priority}
        return _json(await self._request("PATCH", _task_path(task_id), json=body))

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
    ) -> dict[str, Any]:
        """Submit a task: JSON without files, multipart (files streamed from disk) with them.

        ``extra``: more create fields (``run_at``, ``delay_seconds``, ``max_attempts``…);
        None values are left out. ``query``: e.g. ``wait`` and ``cancel_on_disconnect``
        (no read timeout then: the server answers when the task ends or the wait is over).
        """
        options: dict[str, Any] = {}
        if query:
            options = {"params": dict(query), "timeout": httpx.Timeout(30.0, read=None)}
        more = {k: v for k, v in (extra or {}).items() if v is not None}
        if not inputs:
            body = {"flow": flow, "params": dict(params or {})}
            body |= {k: v for k, v in (("priority", priority), ("owner", owner)) if v is not None}
            return _json(await self._request("POST", "/api/tasks", json=body | more, **options))
        data = {"flow": flow, "params": json.dumps(dict(params or {}), allow_nan=False)}
        if priority is not None:
            data["priority"] = str(priority)
        if owner is not None:
            data["owner"] = owner
        data |= {k: str(v) for k, v in more.items()}
        files = [("inputs", (name, handle, media_type)) for name, handle, media_type in inputs]
        return _json(await self._request("POST", "/api/tasks", data=data, files=files, **options))

    async def create_batch(self, spec: Mapping[str, Any], count: int) -> dict[str, Any]:
        """``count`` copies of one JSON task spec, in one request and one transaction."""
        body = {"task": dict(spec), "count": count}
        return _json(await self._request("POST", "/api/tasks/batch", json=body))

    # -- webhooks --------------------------------------------------------

    async def create_webhook(
        self,
        url: str,
        *,
        events: Sequence[str] = (),
        flows: Sequence[str] = (),
        secret: str | None = None,
    ) -> dict[str, Any]:
        """Subscribe; the response is the only one that carries the signing secret."""
        body: dict[str, Any] = {"url": url, "events": list(events) or None}
        body |= {"flows": list(flows) or None, "secret": secret}
        return _json(await self._request("POST", "/api/webhooks", json=body))

    async def list_webhooks(self) -> list[dict[str, Any]]:
        return (await self._get_json("/api/webhooks"))["items"]

    async def delete_webhook(self, webhook_id: str) -> None:
        await self._request("DELETE", _webhook_path(webhook_id))

    async def enable_webhook(self, webhook_id: str) -> dict[str, Any]:
        return _json(await self._request("POST", f"{_webhook_path(webhook_id)}/enable"))

    async def webhook_deliveries(self, webhook_id: str, *, limit: int = 20) -> list[dict[str, Any]]:
        path = f"{_webhook_path(webhook_id)}/deliveries"
        return (await self._get_json(path, params={"limit": limit}))["items"]

    # -- streams ---------------------------------------------------------

    async def download_output(self, task_id: str, output: Mapping[str, Any], folder: Path) -> Path:
        """Stream one output into ``folder`` under a temp name, renamed once complete."""
        name = safe_output_name(str(output.get("name", "")))
        url = output.get("url") or f"{_task_path(task_id)}/outputs/{quote(name, safe='')}"
        target = folder / name
        partial = folder / f".{name}.{uuid.uuid4().hex[:8]}.part"
        try:
            async with self._http.stream("GET", url) as response:
                await self._raise_for_error(response)
                async with aiofiles.open(partial, "wb") as sink:
                    async for chunk in response.aiter_bytes(_CHUNK_SIZE):
                        await sink.write(chunk)
            await aiofiles.os.replace(partial, target)
        finally:
            with suppress(FileNotFoundError):
                await aiofiles.os.remove(partial)
        return target

    @asynccontextmanager
    async def open_event_stream(
        self, task_id: str | None, *, last_event_id: str | None = None
    ) -> AsyncIterator[AsyncIterator[dict[str, Any]]]:
        """Connect to the task's event stream; on entry the server has answered.

        Separate from iterating so a caller can fetch the task *after* the stream is
        open and miss nothing in between.
        """
        headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
        async with aconnect_sse(
            self._http,
            "GET",
            "/api/events/stream",
            params={"task": task_id} if task_id else {},  # None: every task's events
            headers=headers,
            timeout=_STREAM_TIMEOUT,
        ) as source:
            await self._raise_for_error(source.response)
            content_type = source.response.headers.get("content-type", "")
            if "text/event-stream" not in content_type:
                raise FlowyardError(
                    f"{self.server}/api/events/stream answered with "
                    f"{content_type or 'no content type'}, not an event stream"
                )
            events = _decode_events(source)
            try:
                yield events
            finally:
                await events.aclose()

    async def stream_events(self, task_id: str) -> AsyncIterator[dict[str, Any]]:
        """The task's events as they happen (decoded JSON), until the server closes."""
        async with self.open_event_stream(task_id) as events:
            async for event in events:
                yield event

    # -- internals -------------------------------------------------------

    async def _get_json(self, url: str, **kwargs: Any) -> Any:
        return _json(await self._request("GET", url, **kwargs))

    async def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        response = await self._http.request(method, url, **kwargs)
        await self._raise_for_error(response)
        return response

    async def _raise_for_error(self, response: httpx.Response) -> None:
        try:
            await _raise_for_error(response)
        except Unauthenticated as exc:
            if not self._explain_401 or isinstance(exc, TooManyAttempts):
                raise
            message = explain_unauthenticated(self.server, self._auth, exc.message)
            raise Unauthenticated(message) from exc


def normalise_server(server: str) -> str:
    """The server URL in one spelling (lower-case host, no default port, no trailing slash).

    It is also the key of the credentials file, so ``HTTP://Host:80/`` and
    ``http://host`` share one stored token. Fails early and clearly on a URL httpx
    would reject with a confusing message.
    """
    try:
        url = httpx.URL(server)
    except httpx.InvalidURL as exc:
        raise ConfigError(f"invalid --server URL {server!r}: {exc}") from exc
    if url.scheme not in ("http", "https") or not url.host:
        raise ConfigError(
            f"--server must be an http(s) URL such as {DEFAULT_SERVER}, got {server!r}"
        )
    if url.userinfo:  # it would be sent as Basic auth, and stored as a credentials key
        raise ConfigError(
            "--server must not contain a user name or password: use --user with "
            "FLOWYARD_PASSWORD, or 'flowyard login'"
        )
    if url.query or url.fragment:
        raise ConfigError(f"--server must be a base URL without ?query or #fragment: {server!r}")
    return str(url).rstrip("/")


def _task_path(task_id: str) -> str:
    return f"/api/tasks/{quote(task_id, safe='')}"


def _webhook_path(webhook_id: str) -> str:
    return f"/api/webhooks/{quote(webhook_id, safe='')}"


async def _raise_for_error(response: httpx.Response) -> None:
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


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError as exc:
        raise FlowyardError(
            f"the server sent invalid JSON for {response.request.method} {response.request.url}"
        ) from exc


async def _decode_events(source: EventSource) -> AsyncGenerator[dict[str, Any], None]:
    """Decoded event JSON; keep-alive comments (and id-only messages) carry no data."""
    async for message in source.aiter_sse():
        if not message.data:
            continue
        try:
            event = json.loads(message.data)
        except ValueError as exc:
            raise FlowyardError(
                f"undecodable event from the server: {message.data[:80]!r}"
            ) from exc
        if isinstance(event, dict):
            yield event
