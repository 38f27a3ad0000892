"""``flowyard tasks``: list, inspect, cancel, retry and reprioritize tasks on the server."""

from __future__ import annotations

import json
import uuid
from typing import Annotated

import typer
from rich.console import RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from flowyard.core.errors import InvalidInput
from flowyard.core.events import (
    Event,
    TaskClaimed,
    TaskCreated,
    TaskDone,
    TaskProgress,
    TaskReprioritized,
    TaskRequeued,
    TaskRetried,
)
from flowyard.core.task import TaskState
from flowyard.services.cli.aio import async_command
from flowyard.services.cli.connect import DEFAULT_SERVER, ServerOption, connect
from flowyard.services.cli.credentials import TokenOption, UserOption
from flowyard.services.cli.output import (
    FINISHED_STATES,
    console,
    err_console,
    human_size,
    percent,
    plain,
    print_json,
    print_json_line,
    short_time,
    state_text,
    truncate,
)
from flowyard.services.client import InputOut, OutputOut, TaskOut

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


def display_state(task: TaskOut) -> str:
    """The state, or ``cancelling`` while a requested cancellation has not landed yet."""
    state = task.state.value
    if state not in FINISHED_STATES and task.cancel_requested:
        return "cancelling"
    return state


@tasks_app.command("list")
@async_command
async def list_tasks(
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
    async with connect(server, token, user) as api:
        page = await api.list_tasks(
            state=state.value if state else None, flow=flow, limit=limit, offset=offset
        )
    if json_output:
        for item in page.items:
            print_json_line(item)
        return
    if not page.items:
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
    for task in page.items:
        failed = task.state is TaskState.failed
        table.add_row(
            Text(str(task.id)),
            Text(task.flow),
            state_text(display_state(task)),
            percent(task.progress),
            str(task.attempt),
            short_time(task.created_at, compact=True),
            Text(
                truncate(task.error if failed else task.message, 50), style="red" if failed else ""
            ),
        )
    console.print(table)
    if page.next_offset is not None:
        err_console.print(f"more tasks: add --offset {page.next_offset}")


@tasks_app.command("show")
@async_command
async def show_task(
    task_id: TaskIdArgument,
    events: Annotated[bool, typer.Option("--events", "-e", help="Also list its events.")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Raw JSON.")] = False,
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    user: UserOption = None,
) -> None:
    """Show one task; with --events also its history."""
    task_id = parse_task_id(task_id)
    async with connect(server, token, user) as api:
        task = await api.get_task(task_id)
        history = await api.task_events(task_id) if events else []
    if json_output:
        print_json({**plain(task), "events": [plain(e) for e in history]} if events else task)
        return
    console.print(task_panel(task))
    if events:
        console.print(events_table(history))


@tasks_app.command("cancel")
@async_command
async def cancel_task(
    task_id: TaskIdArgument,
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    user: UserOption = None,
) -> None:
    """Cancel a task: at once when queued, by asking its worker when running."""
    async with connect(server, token, user) as api:
        task = await api.cancel_task(parse_task_id(task_id))
    console.print(Text.assemble(str(task.id), " ", state_text(display_state(task))))


@tasks_app.command("retry")
@async_command
async def retry_task(
    task_id: TaskIdArgument,
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    user: UserOption = None,
) -> None:
    """Queue a failed or cancelled task again, as a new attempt that keeps its history."""
    async with connect(server, token, user) as api:
        task = await api.retry_task(parse_task_id(task_id))
    console.print(
        Text.assemble(
            str(task.id),
            " ",
            state_text(display_state(task)),
            f" (next attempt {task.attempt + 1} of {task.max_attempts})",
        )
    )


@tasks_app.command("priority")
@async_command
async def set_priority(
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
    async with connect(server, token, user) as api:
        task = await api.set_priority(parse_task_id(task_id), priority)
    console.print(f"{task.id} priority {task.priority}")


@tasks_app.command("prune")
@async_command
async def prune_tasks(
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
    async with connect(server, token, user) as api:
        done = await api.prune_tasks(older_than, dry_run=dry_run, events=events)
    verb = "would remove" if done.dry_run else "removed"
    console.print(
        f"{verb} {done.tasks} tasks, {done.deliveries} webhook deliveries, {done.events} events"
    )


def task_panel(task: TaskOut) -> Panel:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    rows: list[tuple[str, Text | str]] = [
        ("flow", Text(task.flow)),
        ("owner", Text(task.owner)),
        ("state", state_text(display_state(task))),
        ("progress", percent(task.progress)),
        ("message", Text(task.message or "")),
        ("attempt", f"{task.attempt} of {task.max_attempts}"),
        ("priority", str(task.priority)),
        ("worker", Text(task.worker_id or "-")),
        ("params", Text(json.dumps(task.params, ensure_ascii=False))),
        ("inputs", _files(task.inputs)),
        ("outputs", _files(task.outputs)),
    ]
    if task.error:
        rows.insert(5, ("error", Text(task.error, style="red")))
    times = {
        "created": task.created_at,
        "claimed": task.claimed_at,
        "finished": task.finished_at,
        "cancelled": task.cancelled_at,
        "updated": task.updated_at,
    }
    rows += [(label, short_time(moment)) for label, moment in times.items() if moment]
    for label, value in rows:
        grid.add_row(label, value)
    return Panel(grid, title=Text(f"task {task.id}"), title_align="left")


def _files(files: list[InputOut] | list[OutputOut]) -> Text:
    """Inputs show their media type, outputs their URL."""
    lines = [
        f"{f.name}  {human_size(f.size)}  {f.media_type if isinstance(f, InputOut) else f.url}"
        for f in files
    ]
    return Text("\n".join(line.rstrip() for line in lines) or "-")


def events_table(events: list[Event]) -> RenderableType:
    if not events:
        return Text("no events")
    table = Table("#", "At", "Type", "Attempt", "Details")
    for number, event in enumerate(events, 1):
        table.add_row(
            str(number),
            short_time(event.at),
            Text(event.type),
            str(event.attempt),
            Text(truncate(event_details(event), 70)),
        )
    return table


def event_details(event: Event) -> str:
    """The type-specific part of an event, in a few words."""
    if isinstance(event, TaskCreated):
        params = json.dumps(event.params, ensure_ascii=False)
        return f"priority {event.priority}, params {params}"
    if isinstance(event, TaskClaimed):
        return f"worker {event.worker_id}, lease until {short_time(event.lease_expires_at)}"
    if isinstance(event, TaskProgress):
        return f"{percent(event.progress)} {event.message}".rstrip()
    if isinstance(event, TaskRequeued):
        return event.reason
    if isinstance(event, TaskRetried):
        return f"next attempt {event.next_attempt} of {event.max_attempts}"
    if isinstance(event, TaskReprioritized):
        return f"priority {event.priority}"
    if isinstance(event, TaskDone):
        names = ", ".join(ref.name for ref in event.outputs)
        text = event.status + (f": {event.error}" if event.error else "")
        return f"{text} ({names})" if names else text
    return ""
