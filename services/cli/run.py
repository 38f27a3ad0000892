"""``flowyard run``: submit a task and, with ``--wait``, follow it to the end (``follow.py``)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.text import Text

from flowyard.core.errors import FlowCancelled, FlowFailed, FlowyardError, InvalidInput
from flowyard.core.task import TaskState
from flowyard.services.cli.aio import Interrupted, async_command, resume_after_interrupt
from flowyard.services.cli.connect import DEFAULT_SERVER, SERVER_ENVVAR, ServerOption, connect
from flowyard.services.cli.credentials import TokenOption, UserOption
from flowyard.services.cli.follow import follow
from flowyard.services.cli.output import console, err_console, state_text
from flowyard.services.cli.params import (
    build_params,
    check_param_items,
    check_params_json,
    make_folder,
    open_inputs,
    parse_delay,
)
from flowyard.services.client import Client, TaskOut

HELD_WAIT_SECONDS = 60
"""--cancel-on-exit: how long the create request is held (then followed as usual)."""


@async_command
async def run_command(
    flow: Annotated[str, typer.Argument(help="Flow name, as `flowyard flows list` shows it.")],
    param: Annotated[
        list[str] | None,
        typer.Option(
            "--param",
            "-p",
            metavar="KEY=VALUE",
            callback=check_param_items,
            help="A flow parameter; VALUE is JSON when it parses, else a string. Repeatable.",
        ),
    ] = None,
    params_json: Annotated[
        str | None,
        typer.Option(
            "--params-json",
            metavar="JSON",
            callback=check_params_json,
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
    spec = {"flow": flow, "params": params, "priority": priority, "owner": owner, **extra}
    if count > 1:
        if inputs:
            raise InvalidInput("--count works without input files", field="--count")
        if wait:
            raise InvalidInput(
                "--count works without --wait (follow each id instead)", field="--count"
            )
        async with connect(server, token, user) as api:
            await _submit_copies(api, spec, count)
        return
    async with AsyncExitStack() as stack:
        uploads = open_inputs(inputs or (), stack)  # every input exists before a request
        if wait:
            make_folder(out)
        # once: a password prompt comes at most once
        api = await stack.enter_async_context(connect(server, token, user))
        # held: the server cancels the task if this connection drops before the answer
        held = {"wait": str(HELD_WAIT_SECONDS), "cancel_on_disconnect": "true"}
        try:
            task = await api.create_task(
                flow,
                params,
                priority=priority,
                owner=owner,
                inputs=uploads,
                extra=extra,
                query=held if cancel_on_exit else None,
            )
        except Interrupted:
            if not cancel_on_exit:
                raise
            err_console.print("stopped; the server cancels the task (--cancel-on-exit)")
            raise typer.Exit(130) from None
        if not wait:
            console.print(Text.assemble(str(task.id), " ", state_text(task.state.value)))
            return
        console.print(str(task.id), markup=False)
        final = await _wait(api, task, cancel_on_exit)
        await _finish(api, final, out)


async def _submit_copies(api: Client, spec: Mapping[str, Any], count: int) -> None:
    """``--count N``: one batch request; prints every id (one per line)."""
    answer = await api.create_batch({k: v for k, v in spec.items() if v is not None}, count)
    for item in answer.items:
        console.print(Text.assemble(str(item.id), " ", state_text(item.state.value)))


async def _wait(api: Client, task: TaskOut, cancel_on_exit: bool) -> TaskOut:
    """The finished task; Ctrl-C stops waiting (and with --cancel-on-exit cancels it)."""
    task_id = str(task.id)
    try:
        return task if task.state.finished else await follow(api, task_id)
    except Interrupted:
        resume_after_interrupt()
        if cancel_on_exit:
            with contextlib.suppress(FlowyardError):  # finished meanwhile: nothing to cancel
                await api.cancel_task(task_id)
            err_console.print(Text(f"stopped waiting; task {task_id} was cancelled"))
            raise typer.Exit(130) from None
        implied = api.server in (DEFAULT_SERVER, os.environ.get(SERVER_ENVVAR))
        hint = "" if implied else f" --server {api.server}"
        err_console.print(
            Text(
                f"stopped waiting; task {task_id} keeps running. "
                f"Check on it with: flowyard tasks show {task_id}{hint}"
            ),
            soft_wrap=True,
        )
        raise typer.Exit(130) from None


async def _finish(api: Client, task: TaskOut, out: Path) -> None:
    """Download on success; a failed or cancelled task is an error (exit 1)."""
    check_succeeded(task)
    for output in task.outputs:
        try:
            path = await api.download_output(task.id, output.name, out, url=output.url)
        except OSError as exc:
            raise FlowyardError(
                f"cannot write output {output.name!r} into {out}: {exc.strerror}"
            ) from exc
        console.print(str(path), markup=False, soft_wrap=True)


def check_succeeded(task: TaskOut) -> None:
    """A failed or cancelled task as the error it is."""
    if task.state is TaskState.failed:
        raise FlowFailed(f"task {task.id} failed: {task.error or 'no error message'}")
    if task.state is TaskState.cancelled:
        raise FlowCancelled(f"task {task.id} was cancelled")
