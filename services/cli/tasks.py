"""``flowyard tasks``: list, inspect, cancel, retry and reprioritize tasks on the server."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Mapping
from typing import Annotated, Any

import httpx
import typer
from rich.console import RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from flowyard.core.errors import InvalidInput
from flowyard.core.task import TaskState
from flowyard.services.cli.client import DEFAULT_SERVER, ApiClient, ServerOption
from flowyard.services.cli.credentials import TokenOption, UserOption, resolve_auth
from flowyard.services.cli.output import (
    FINISHED_STATES,
    console,
    err_console,
    human_size,
    percent,
    print_json,
    print_json_line,
    short_time,
    state_text,
    truncate,
)

tasks_app = typer.Typer(
    help="List, inspect, cancel, retry and reprioritize tasks.", no_args_is_help=True
)

TaskIdArgument = Annotated[str, typer.Argument(metavar="ID", help="The task id (a UUID).")]


def parse_task_id(value: str) -> str:
    """The canonical UUID; anything else is refused here so the server is never asked."""
    try:
        return str(uuid.UUID(value.strip()))
    except ValueError:
        raise InvalidInput(f"{value!r} is not a task id (expected a UUID)", field="id") from None


def display_state(task: Mapping[str, Any]) -> str:
    """The state, or ``cancelling`` while a requested cancellation has not landed yet."""
    state = str(task.get("state", ""))
    if state not in FINISHED_STATES and task.get("cancel_requested"):
        return "cancelling"
    return state


@tasks_app.command("list")
def list_tasks(
    state: Annotated[
        TaskState | None, typer.Option("--state", "-s", help="Only tasks in this state.")
    ] = None,
    flow: Annotated[str | None, typer.Option("--flow", "-f", help="Only this flow.")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="At most this many.")] = 50,
    offset: Annotated[int, typer.Option("--offset", min=0, help="Skip this many.")] = 0,
    json_output: Annotated[
        bool, typer.Option("--json", help="One raw JSON task per line.")
    ] = False,
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    user: UserOption = None,
) -> None:
    """List tasks, newest first."""
    auth = resolve_auth(server, token, user)
    page = asyncio.run(_list(server, auth, state.value if state else None, flow, limit, offset))
    items: list[dict[str, Any]] = page.get("items") or []
    if json_output:
        for item in items:
            print_json_line(item)
        return
    if not items:
        console.print("no tasks")
        return
    # Fixed columns keep their width (the id whole, so it can be copied); the message gives way.
    table = Table(box=None, pad_edge=False, padding=(0, 1), header_style="bold underline")
    table.add_column("ID", no_wrap=True, min_width=36)
    table.add_column("Flow", no_wrap=True, overflow="ellipsis", min_width=8, max_width=24)
    table.add_column("State", no_wrap=True, min_width=9)
    table.add_column("%", justify="right", no_wrap=True, min_width=4)
    table.add_column("Try", justify="right", no_wrap=True, min_width=3)
    table.add_column("Created", no_wrap=True, min_width=11)
    table.add_column("Message", no_wrap=True, overflow="ellipsis")
    for task in items:
        note = task.get("error") if task.get("state") == "failed" else task.get("message")
        table.add_row(
            Text(str(task.get("id", ""))),
            Text(str(task.get("flow", ""))),
            state_text(display_state(task)),
            percent(task.get("progress")),
            str(task.get("attempt", 0)),
            short_time(task.get("created_at"), compact=True),
            Text(truncate(note, 50), style="red" if task.get("state") == "failed" else ""),
        )
    console.print(table)
    if page.get("next_offset") is not None:
        err_console.print(f"more tasks: add --offset {page['next_offset']}")


@tasks_app.command("show")
def show_task(
    task_id: TaskIdArgument,
    events: Annotated[bool, typer.Option("--events", "-e", help="Also list its events.")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Raw JSON.")] = False,
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    user: UserOption = None,
) -> None:
    """Show one task; with --events also its history."""
    task_id = parse_task_id(task_id)
    auth = resolve_auth(server, token, user)
    task, history = asyncio.run(_show(server, auth, task_id, events))
    if json_output:
        print_json({**task, "events": history} if events else task)
        return
    console.print(task_panel(task))
    if events:
        console.print(events_table(history or []))


@tasks_app.command("cancel")
def cancel_task(
    task_id: TaskIdArgument,
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    user: UserOption = None,
) -> None:
    """Cancel a task: at once when queued, by asking its worker when running."""
    task_id = parse_task_id(task_id)
    auth = resolve_auth(server, token, user)
    task = asyncio.run(_cancel(server, auth, task_id))
    console.print(Text.assemble(str(task.get("id", task_id)), " ", state_text(display_state(task))))


@tasks_app.command("retry")
def retry_task(
    task_id: TaskIdArgument,
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    user: UserOption = None,
) -> None:
    """Queue a failed or cancelled task again, as a new attempt that keeps its history."""
    task_id = parse_task_id(task_id)
    auth = resolve_auth(server, token, user)
    task = asyncio.run(_retry(server, auth, task_id))
    console.print(
        Text.assemble(
            str(task.get("id", task_id)),
            " ",
            state_text(display_state(task)),
            f" (next attempt {int(task.get('attempt', 0)) + 1} of {task.get('max_attempts')})",
        )
    )


@tasks_app.command("priority")
def set_priority(
    task_id: TaskIdArgument,
    priority: Annotated[
        int,
        typer.Argument(
            metavar="N", min=-1000, max=1000, help="-1000..1000; higher is claimed first."
        ),
    ],
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    user: UserOption = None,
) -> None:
    """Change the priority of a queued task."""
    task_id = parse_task_id(task_id)
    auth = resolve_auth(server, token, user)
    task = asyncio.run(_set_priority(server, auth, task_id, priority))
    console.print(f"{task.get('id', task_id)} priority {task.get('priority')}")


@tasks_app.command("prune")
def prune_tasks(
    older_than: Annotated[
        float,
        typer.Option("--older-than", metavar="DAYS", min=0, help="Finished more than DAYS ago."),
    ],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Count what would go; remove nothing.")
    ] = False,
    events: Annotated[
        bool, typer.Option("--events", help="Also remove the events of the removed tasks.")
    ] = False,
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    user: UserOption = None,
) -> None:
    """Admins: remove finished tasks, their files and webhook deliveries older than DAYS."""
    auth = resolve_auth(server, token, user)

    async def call() -> dict[str, Any]:
        async with ApiClient(server, auth=auth) as api:
            return await api.prune_tasks(older_than, dry_run=dry_run, events=events)

    done = asyncio.run(call())
    verb = "would remove" if done["dry_run"] else "removed"
    console.print(
        f"{verb} {done['tasks']} tasks, {done['deliveries']} webhook deliveries, "
        f"{done['events']} events"
    )


async def _list(
    server: str,
    auth: httpx.Auth | None,
    state: str | None,
    flow: str | None,
    limit: int,
    offset: int,
) -> dict[str, Any]:
    async with ApiClient(server, auth=auth) as api:
        return await api.list_tasks(state=state, flow=flow, limit=limit, offset=offset)


async def _show(
    server: str, auth: httpx.Auth | None, task_id: str, with_events: bool
) -> tuple[dict[str, Any], list[dict[str, Any]] | None]:
    async with ApiClient(server, auth=auth) as api:
        task = await api.get_task(task_id)
        return task, (await api.task_events(task_id) if with_events else None)


async def _cancel(server: str, auth: httpx.Auth | None, task_id: str) -> dict[str, Any]:
    async with ApiClient(server, auth=auth) as api:
        return await api.cancel_task(task_id)


async def _retry(server: str, auth: httpx.Auth | None, task_id: str) -> dict[str, Any]:
    async with ApiClient(server, auth=auth) as api:
        return await api.retry_task(task_id)


async def _set_priority(
    server: str, auth: httpx.Auth | None, task_id: str, priority: int
) -> dict[str, Any]:
    async with ApiClient(server, auth=auth) as api:
        return await api.set_priority(task_id, priority)


def task_panel(task: Mapping[str, Any]) -> Panel:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    rows: list[tuple[str, Text | str]] = [
        ("flow", Text(str(task.get("flow", "")))),
        ("owner", Text(str(task.get("owner", "")))),
        ("state", state_text(display_state(task))),
        ("progress", percent(task.get("progress"))),
        ("message", Text(str(task.get("message") or ""))),
        ("attempt", f"{task.get('attempt', 0)} of {task.get('max_attempts', '?')}"),
        ("priority", str(task.get("priority", 0))),
        ("worker", Text(str(task.get("worker_id") or "-"))),
        ("params", Text(json.dumps(task.get("params") or {}, ensure_ascii=False))),
        ("inputs", _files(task.get("inputs"), "media_type")),
        ("outputs", _files(task.get("outputs"), "url")),
    ]
    if task.get("error"):
        rows.insert(5, ("error", Text(str(task["error"]), style="red")))
    for label in ("created", "claimed", "finished", "cancelled", "updated"):
        if task.get(f"{label}_at"):
            rows.append((label, short_time(task[f"{label}_at"])))
    for label, value in rows:
        grid.add_row(label, value)
    return Panel(grid, title=Text(f"task {task.get('id', '')}"), title_align="left")


def _files(files: Any, extra: str) -> Text:
    lines = [
        f"{item.get('name')}  {human_size(item.get('size'))}  {item.get(extra) or ''}".rstrip()
        for item in files or ()
    ]
    return Text("\n".join(lines) or "-")


def events_table(events: list[dict[str, Any]]) -> RenderableType:
    if not events:
        return Text("no events")
    table = Table("#", "At", "Type", "Attempt", "Details")
    for number, event in enumerate(events, 1):
        table.add_row(
            str(number),
            short_time(event.get("at")),
            Text(str(event.get("type", ""))),
            str(event.get("attempt", "")),
            Text(truncate(event_details(event), 70)),
        )
    return table


def event_details(event: Mapping[str, Any]) -> str:
    """The type-specific part of an event, in a few words."""
    kind = event.get("type")
    if kind == "task.created":
        params = json.dumps(event.get("params") or {}, ensure_ascii=False)
        return f"priority {event.get('priority', 0)}, params {params}"
    if kind == "task.claimed":
        lease = short_time(event.get("lease_expires_at"))
        return f"worker {event.get('worker_id')}, lease until {lease}"
    if kind == "task.progress":
        return f"{percent(event.get('progress'))} {event.get('message') or ''}".rstrip()
    if kind == "task.requeued":
        return str(event.get("reason", ""))
    if kind == "task.retried":
        return f"next attempt {event.get('next_attempt')} of {event.get('max_attempts')}"
    if kind == "task.reprioritized":
        return f"priority {event.get('priority')}"
    if kind == "task.done":
        names = ", ".join(str(ref.get("name")) for ref in event.get("outputs") or ())
        text = str(event.get("status", ""))
        if event.get("error"):
            text += f": {event['error']}"
        return f"{text} ({names})" if names else text
    return ""
