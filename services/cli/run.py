"""``flowyard run``: submit a task and, with ``--wait``, follow it to the end.

Following is stream-first: the event stream is opened *before* the task is read,
so an event between the two is never lost, and a slow re-read of the task guards
against anything the stream drops (a server restart, a missed subscription).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import mimetypes
import os
import random
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from flowyard.core.errors import FlowCancelled, FlowFailed, FlowyardError, InvalidInput, Unavailable
from flowyard.services.cli.client import (
    DEFAULT_SERVER,
    SERVER_ENVVAR,
    ApiClient,
    ServerOption,
    Upload,
)
from flowyard.services.cli.credentials import TokenOption, UserOption, resolve_auth
from flowyard.services.cli.output import FINISHED_STATES, console, err_console, state_text, truncate

POLL_SECONDS = 15.0  # re-read the task this often while the stream is quiet
RECONNECT_BASE_SECONDS = 0.5
RECONNECT_MAX_SECONDS = 10.0
RECONNECT_ATTEMPTS = 12  # consecutive failures before giving up (about 1.5 minutes)
SETTLE_ATTEMPTS = 10  # re-reads after task.done until the task shows it
SETTLE_SECONDS = 0.3
HELD_WAIT_SECONDS = 60
"""--cancel-on-exit: how long the create request is held (then followed as usual)."""


# -- parameters ----------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_param_value(raw: str) -> Any:
    """JSON when it parses (``3``, ``2.5``, ``true``, ``[1,2]``, ``null``), else the string.

    NaN and Infinity stay strings: they are not JSON and the server could not read them.
    """
    try:
        return json.loads(raw, parse_constant=_reject_constant)
    except ValueError:
        return raw


def parse_param(item: str) -> tuple[str, Any]:
    """``KEY=VALUE`` to ``(KEY, value)``; keys stay flat (``a.b=1`` sets the key ``"a.b"``)."""
    key, sep, raw = item.partition("=")
    if not sep:
        raise InvalidInput(f"--param {item!r} is not KEY=VALUE", field="--param")
    if not key:
        raise InvalidInput(f"--param {item!r} has an empty key", field="--param")
    return key, parse_param_value(raw)


def parse_params_json(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except ValueError as exc:
        raise InvalidInput(
            f"--params-json must be valid JSON ({exc})", field="--params-json"
        ) from exc
    if not isinstance(value, dict):
        raise InvalidInput("--params-json must be a JSON object", field="--params-json")
    return value


def build_params(params_json: str | None, items: Iterable[str]) -> dict[str, Any]:
    """``--params-json`` first, then each ``--param`` on top (the last one of a key wins)."""
    params = parse_params_json(params_json) if params_json else {}
    params.update(parse_param(item) for item in items)
    return params


def _usage_error(exc: InvalidInput) -> typer.BadParameter:
    """Usage errors already name the option, so the message drops its own prefix."""
    return typer.BadParameter(exc.message.removeprefix(f"{exc.field} "))


def _check_param_items(items: list[str] | None) -> list[str] | None:
    """Turns a malformed ``--param`` into a usage error before anything is sent."""
    for item in items or ():
        try:
            parse_param(item)
        except InvalidInput as exc:
            raise _usage_error(exc) from exc
    return items


def _check_params_json(text: str | None) -> str | None:
    if text is not None:
        try:
            parse_params_json(text)
        except InvalidInput as exc:
            raise _usage_error(exc) from exc
    return text


def open_inputs(paths: Sequence[Path], stack: ExitStack) -> list[Upload]:
    """Open every input for streaming; all must exist before any request is made."""
    for path in paths:
        if not path.expanduser().exists():
            raise InvalidInput(f"input file not found: {path}", field="--input")
        if not path.expanduser().is_file():
            raise InvalidInput(f"input is not a file: {path}", field="--input")
    uploads: list[Upload] = []
    for path in paths:
        try:
            handle = stack.enter_context(path.expanduser().open("rb"))
        except OSError as exc:
            raise InvalidInput(
                f"cannot read input file {path}: {exc.strerror}", field="--input"
            ) from exc
        media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        uploads.append((path.name, handle, media_type))
    return uploads


# -- the command ---------------------------------------------------------


def run_command(
    flow: Annotated[str, typer.Argument(help="Flow name, as `flowyard flows list` shows it.")],
    param: Annotated[
        list[str] | None,
        typer.Option(
            "--param",
            "-p",
            metavar="KEY=VALUE",
            callback=_check_param_items,
            help="A flow parameter; VALUE is JSON when it parses, else a string. Repeatable.",
        ),
    ] = None,
    params_json: Annotated[
        str | None,
        typer.Option(
            "--params-json",
            metavar="JSON",
            callback=_check_params_json,
            help="All parameters as one JSON object; --param values override it.",
        ),
    ] = None,
    inputs: Annotated[
        list[Path] | None,
        typer.Option("--input", "-i", metavar="PATH", help="An input file. Repeatable."),
    ] = None,
    priority: Annotated[int | None, typer.Option("--priority", help="Higher runs first.")] = None,
    owner: Annotated[str | None, typer.Option("--owner", help="Submit on behalf of.")] = None,
    wait: Annotated[
        bool, typer.Option("--wait", "-w", help="Follow progress and download the outputs.")
    ] = False,
    out: Annotated[
        Path,
        typer.Option("--out", "-o", metavar="DIR", help="Where --wait writes the outputs."),
    ] = Path("."),
    run_at: Annotated[
        str | None,
        typer.Option("--at", metavar="TIME", help="Run at this ISO 8601 time, not before."),
    ] = None,
    run_in: Annotated[
        str | None,
        typer.Option("--in", metavar="DELAY", help="Run after this delay: 90, 30s, 5m, 2h, 1d."),
    ] = None,
    max_attempts: Annotated[
        int | None,
        typer.Option("--max-attempts", min=1, max=100, help="Attempts the task gets."),
    ] = None,
    timeout_seconds: Annotated[
        float | None,
        typer.Option("--timeout", min=0.001, metavar="SECONDS", help="Fail an attempt after this."),
    ] = None,
    idempotency_key: Annotated[
        str | None,
        typer.Option(
            "--idempotency-key",
            metavar="KEY",
            help="Submitting again with this key returns the first task, not a new one.",
        ),
    ] = None,
    count: Annotated[
        int,
        typer.Option("--count", "-n", min=1, help="Create this many copies, in one request."),
    ] = 1,
    cancel_on_exit: Annotated[
        bool,
        typer.Option(
            "--cancel-on-exit",
            help="With --wait: cancel the task if this command stops before it ends "
            "(Ctrl-C, or the connection drops).",
        ),
    ] = False,
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    user: UserOption = None,
) -> None:
    """Submit a task to a flow; with --wait follow it and download its outputs."""
    params = build_params(params_json, param or ())
    extra: dict[str, Any] = {
        "max_attempts": max_attempts,
        "idempotency_key": idempotency_key,
        "timeout_seconds": timeout_seconds,
    }
    if run_at is not None and run_in is not None:
        raise InvalidInput("give --at or --in, not both", field="--at")
    if run_at is not None:
        extra["run_at"] = run_at
    if run_in is not None:
        extra["delay_seconds"] = parse_delay(run_in)
    if cancel_on_exit and not wait:
        raise InvalidInput("--cancel-on-exit needs --wait", field="--cancel-on-exit")
    if count > 1:
        if inputs:
            raise InvalidInput("--count works without input files", field="--count")
        _submit_copies(server, token, user, flow, params, priority, owner, extra, count, wait)
        return
    # the server cancels the task if this connection drops before the answer
    query = {"wait": str(HELD_WAIT_SECONDS), "cancel_on_disconnect": "true"}
    with ExitStack() as stack:
        uploads = open_inputs(inputs or (), stack)
        if wait:
            _make_folder(out)
        auth = resolve_auth(server, token, user)  # once: a password prompt comes at most once
        held = query if cancel_on_exit else None
        try:
            task = asyncio.run(
                _submit(server, auth, flow, params, priority, owner, uploads, extra, held)
            )
        except KeyboardInterrupt:
            if held is None:
                raise
            err_console.print("stopped; the server cancels the task (--cancel-on-exit)")
            raise typer.Exit(130) from None
    task_id = str(task["id"])
    if not wait:
        console.print(Text.assemble(task_id, " ", state_text(str(task["state"]))))
        return
    console.print(task_id, markup=False)
    try:
        final = (
            task if task["state"] in FINISHED_STATES else asyncio.run(_wait(server, auth, task_id))
        )
    except KeyboardInterrupt:
        if cancel_on_exit:
            asyncio.run(_cancel(server, auth, task_id))
            err_console.print(Text(f"stopped waiting; task {task_id} was cancelled"))
            raise typer.Exit(130) from None
        implied = server in (DEFAULT_SERVER, os.environ.get(SERVER_ENVVAR))
        hint = "" if implied else f" --server {server}"
        err_console.print(
            Text(
                f"stopped waiting; task {task_id} keeps running. "
                f"Check on it with: flowyard tasks show {task_id}{hint}"
            ),
            soft_wrap=True,
        )
        raise typer.Exit(130) from None
    _finish(final, out, server, auth)


def _make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidInput(
            f"cannot create --out folder {folder}: {exc.strerror}", field="--out"
        ) from exc


async def _submit(
    server: str,
    auth: httpx.Auth | None,
    flow: str,
    params: Mapping[str, Any],
    priority: int | None,
    owner: str | None,
    uploads: Sequence[Upload],
    extra: Mapping[str, Any] | None = None,
    query: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    async with ApiClient(server, auth=auth) as api:
        return await api.create_task(
            flow, params, priority=priority, owner=owner, inputs=uploads, extra=extra, query=query
        )


def _submit_copies(
    server: str,
    token: str | None,
    user: str | None,
    flow: str,
    params: Mapping[str, Any],
    priority: int | None,
    owner: str | None,
    extra: Mapping[str, Any],
    count: int,
    wait: bool,
) -> None:
    """``--count N``: one batch request; prints every id (one per line)."""
    if wait:
        raise InvalidInput("--count works without --wait (follow each id instead)", field="--count")
    spec = {"flow": flow, "params": dict(params)}
    spec |= {k: v for k, v in (("priority", priority), ("owner", owner)) if v is not None}
    spec |= {k: v for k, v in extra.items() if v is not None}
    auth = resolve_auth(server, token, user)

    async def send() -> dict[str, Any]:
        async with ApiClient(server, auth=auth) as api:
            return await api.create_batch(spec, count)

    answer = asyncio.run(send())
    for item in answer["items"]:
        console.print(Text.assemble(str(item["id"]), " ", state_text(str(item["state"]))))


async def _cancel(server: str, auth: httpx.Auth | None, task_id: str) -> None:
    async with ApiClient(server, auth=auth) as api:
        with contextlib.suppress(FlowyardError):  # finished meanwhile: nothing to cancel
            await api.cancel_task(task_id)


_DELAY_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_delay(text: str) -> float:
    """``90``, ``30s``, ``5m``, ``2h``, ``1d`` to seconds; ``--in`` names the error."""
    raw = text.strip().lower()
    unit = raw[-1:] if raw[-1:] in _DELAY_UNITS and raw[-1:] else ""
    number = raw[: len(raw) - len(unit)]
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if not number or value < 0 or value != value or value == float("inf"):
        raise InvalidInput(
            f"--in {text!r} is not a delay: use seconds (90) or 30s, 5m, 2h, 1d", field="--in"
        )
    return value * _DELAY_UNITS[unit]


def _finish(
    task: Mapping[str, Any], out: Path, server: str, auth: httpx.Auth | None = None
) -> None:
    """Download on success; a failed or cancelled task is an error (exit 1)."""
    task_id, state = str(task["id"]), str(task["state"])
    if state == "failed":
        raise FlowFailed(f"task {task_id} failed: {task.get('error') or 'no error message'}")
    if state == "cancelled":
        raise FlowCancelled(f"task {task_id} was cancelled")
    for path in asyncio.run(_download_all(server, auth, task, out)):
        console.print(str(path), markup=False, soft_wrap=True)


async def _download_all(
    server: str, auth: httpx.Auth | None, task: Mapping[str, Any], out: Path
) -> list[Path]:
    written: list[Path] = []
    async with ApiClient(server, auth=auth) as api:
        for output in task.get("outputs") or ():
            try:
                written.append(await api.download_output(str(task["id"]), output, out))
            except OSError as exc:
                raise FlowyardError(
                    f"cannot write output {output.get('name')!r} into {out}: {exc.strerror}"
                ) from exc
    return written


# -- following a task ----------------------------------------------------


async def _wait(server: str, auth: httpx.Auth | None, task_id: str) -> dict[str, Any]:
    with _progress() as progress:
        view = ProgressView(progress)
        async with ApiClient(server, auth=auth) as api:
            return await Follower(api, task_id, view).run()


def _progress() -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        console=err_console,
    )


class ProgressView:
    """Shows one task on a rich progress bar; knows nothing about HTTP."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._bar = progress.add_task("submitted", total=100)

    def show_task(self, task: Mapping[str, Any]) -> None:
        state = str(task.get("state", ""))
        if state not in FINISHED_STATES and task.get("cancel_requested"):
            self._set("cancelling", None)
        elif state in FINISHED_STATES:
            self._set(state, 1.0 if state == "succeeded" else None)
        else:
            self._set(task.get("message") or state, float(task.get("progress") or 0.0))

    def show_event(self, event: Mapping[str, Any]) -> None:
        kind = event.get("type")
        if kind == "task.progress":
            self._set(event.get("message") or "running", float(event.get("progress") or 0.0))
        elif kind == "task.claimed":
            self._set(f"running on {event.get('worker_id', 'a worker')}", 0.0)
        elif kind == "task.requeued":
            self._set(f"requeued: {event.get('reason', '')}", 0.0)
        elif kind == "task.cancel_requested":
            self._set("cancelling", None)
        elif kind == "task.done":
            status = str(event.get("status", "done"))
            self._set(status, 1.0 if status == "succeeded" else None)

    def note(self, text: str) -> None:
        self._set(text, None)

    def _set(self, description: str, progress: float | None) -> None:
        update: dict[str, Any] = {"description": truncate(description, 50)}
        if progress is not None:
            update["completed"] = max(0.0, min(progress, 1.0)) * 100
        self._progress.update(self._bar, **update)


class Follower:
    """Follows a task to its end across stream drops, reconnecting with bounded backoff."""

    def __init__(self, api: ApiClient, task_id: str, view: ProgressView) -> None:
        self._api = api
        self._task_id = task_id
        self._view = view
        self._last_event_id: str | None = None

    async def run(self) -> dict[str, Any]:
        failures = 0
        while True:
            try:
                task = await self._follow_once()
            except (httpx.TransportError, Unavailable):
                failures += 1
                if failures >= RECONNECT_ATTEMPTS:
                    raise
                delay = min(RECONNECT_BASE_SECONDS * 2 ** (failures - 1), RECONNECT_MAX_SECONDS)
                self._view.note(f"connection lost, reconnecting (try {failures})")
            else:
                if task is not None:
                    self._view.show_task(task)
                    return task
                failures = 0  # the server closed the stream cleanly: go again
                delay = RECONNECT_BASE_SECONDS
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))

    async def _follow_once(self) -> dict[str, Any] | None:
        """The finished task, or None when the stream ended before the task did."""
        async with self._api.open_event_stream(
            self._task_id, last_event_id=self._last_event_id
        ) as events:
            task = await self._api.get_task(self._task_id)
            self._view.show_task(task)
            if task["state"] in FINISHED_STATES:
                return task
            reader = asyncio.create_task(self._read_until_done(events))
            try:
                while True:
                    done, _ = await asyncio.wait({reader}, timeout=POLL_SECONDS)
                    if done:
                        final_event = reader.result()
                        return None if final_event is None else await self._settle(final_event)
                    task = await self._api.get_task(self._task_id)
                    if task["state"] in FINISHED_STATES:
                        return task
            finally:
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)

    async def _read_until_done(
        self, events: AsyncIterator[dict[str, Any]]
    ) -> dict[str, Any] | None:
        """Feed events to the view; the ``task.done`` event, or None if the stream ends."""
        async for event in events:
            if event.get("task_id") not in (None, self._task_id):
                continue
            if event.get("id"):
                self._last_event_id = str(event["id"])
            self._view.show_event(event)
            if event.get("type") == "task.done":
                return event
        return None

    async def _settle(self, done: Mapping[str, Any]) -> dict[str, Any]:
        """The task as the server shows it after ``done``; the event if the server lags."""
        task: dict[str, Any] = {}
        for attempt in range(SETTLE_ATTEMPTS):
            task = await self._api.get_task(self._task_id)
            if task["state"] in FINISHED_STATES:
                return task
            if attempt + 1 < SETTLE_ATTEMPTS:
                await asyncio.sleep(SETTLE_SECONDS)
        outputs = [
            {"name": ref.get("name"), "size": ref.get("size"), "media_type": ref.get("media_type")}
            for ref in done.get("outputs") or ()
        ]
        return {**task, "state": done.get("status"), "error": done.get("error"), "outputs": outputs}
