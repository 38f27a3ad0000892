"""Following one task to its end: ``flowyard run --wait``.

Following is stream-first: the event stream is opened *before* the task is read,
so an event between the two is never lost, and a slow re-read of the task guards
against anything the stream drops (a server restart, a missed subscription).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any, Protocol

import httpx
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)

from flowyard.core.errors import Unavailable
from flowyard.core.events import (
    Event,
    TaskCancelRequested,
    TaskClaimed,
    TaskDone,
    TaskProgress,
    TaskRequeued,
)
from flowyard.core.task import TaskState
from flowyard.services.cli.output import FINISHED_STATES, err_console, truncate
from flowyard.services.client import Client, OutputOut, TaskOut
from flowyard.services.client.urls import output_path

POLL_SECONDS = 15.0  # re-read the task this often while the stream is quiet
RECONNECT_BASE_SECONDS = 0.5
RECONNECT_MAX_SECONDS = 10.0
RECONNECT_ATTEMPTS = 12  # consecutive failures before giving up (about 1.5 minutes)
SETTLE_ATTEMPTS = 10  # re-reads after task.done until the task shows it
SETTLE_SECONDS = 0.3


class View(Protocol):
    """Where following shows what happens (a progress bar; a list in tests)."""

    def show_task(self, task: TaskOut) -> None: ...
    def show_event(self, event: Event) -> None: ...
    def note(self, text: str) -> None: ...


async def follow(api: Client, task_id: str) -> TaskOut:
    """The finished task, with a progress bar on stderr meanwhile."""
    with _progress() as progress:
        return await Follower(api, task_id, ProgressView(progress)).run()


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

    def show_task(self, task: TaskOut) -> None:
        state = task.state.value
        if state not in FINISHED_STATES and task.cancel_requested:
            self._set("cancelling", None)
        elif state in FINISHED_STATES:
            self._set(state, 1.0 if state == "succeeded" else None)
        else:
            self._set(task.message or state, task.progress)

    def show_event(self, event: Event) -> None:
        if isinstance(event, TaskProgress):
            self._set(event.message or "running", event.progress)
        elif isinstance(event, TaskClaimed):
            self._set(f"running on {event.worker_id}", 0.0)
        elif isinstance(event, TaskRequeued):
            self._set(f"requeued: {event.reason}", 0.0)
        elif isinstance(event, TaskCancelRequested):
            self._set("cancelling", None)
        elif isinstance(event, TaskDone):
            self._set(event.status, 1.0 if event.status == "succeeded" else None)

    def note(self, text: str) -> None:
        self._set(text, None)

    def _set(self, description: str, progress: float | None) -> None:
        update: dict[str, Any] = {"description": truncate(description, 50)}
        if progress is not None:
            update["completed"] = max(0.0, min(progress, 1.0)) * 100
        self._progress.update(self._bar, **update)


class Follower:
    """Follows a task to its end across stream drops, reconnecting with bounded backoff."""

    def __init__(self, api: Client, task_id: str, view: View) -> None:
        self._api = api
        self._task_id = task_id
        self._view = view
        self._last_event_id: str | None = None

    async def run(self) -> TaskOut:
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

    async def _follow_once(self) -> TaskOut | None:
        """The finished task, or None when the stream ended before the task did."""
        async with self._api.open_event_stream(
            self._task_id, last_event_id=self._last_event_id
        ) as events:
            task = await self._api.get_task(self._task_id)
            self._view.show_task(task)
            if task.state.finished:
                return task
            reader = asyncio.create_task(self._read_until_done(events))
            try:
                while True:
                    done, _ = await asyncio.wait({reader}, timeout=POLL_SECONDS)
                    if done:
                        final_event = reader.result()
                        return None if final_event is None else await self._settle(final_event)
                    task = await self._api.get_task(self._task_id)
                    if task.state.finished:
                        return task
            finally:
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)

    async def _read_until_done(self, events: AsyncIterator[Event]) -> TaskDone | None:
        """Feed events to the view; the ``task.done`` event, or None if the stream ends."""
        async for event in events:
            if str(event.task_id) != self._task_id:
                continue
            self._last_event_id = str(event.id)
            self._view.show_event(event)
            if isinstance(event, TaskDone):
                return event
        return None

    async def _settle(self, done: TaskDone) -> TaskOut:
        """The task as the server shows it after ``done``; the event if the server lags."""
        for attempt in range(SETTLE_ATTEMPTS):
            task = await self._api.get_task(self._task_id)
            if task.state.finished:
                return task
            if attempt + 1 < SETTLE_ATTEMPTS:
                await asyncio.sleep(SETTLE_SECONDS)
        outputs = [
            OutputOut(
                name=ref.name,
                size=ref.size,
                media_type=ref.media_type,
                url=output_path(self._task_id, ref.name),
            )
            for ref in done.outputs
        ]
        update = {"state": TaskState(done.status), "error": done.error, "outputs": outputs}
        return task.model_copy(update=update)
