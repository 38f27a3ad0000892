"""The seams between the domain and the outside world.

``TaskStore`` is the system of record the server writes through. ``WorkQueue``
is what a worker sees of its transport (in-process on SQLite, SKIP LOCKED on a
database, JetStream over NATS); a worker never knows which one it has.
``TaskFiles`` gives a worker local paths for a task's inputs and takes its
outputs back (a shared folder, or an object store).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from flowyard.core.events import Event, FileRef, TaskDone, TaskProgress, TaskRequeued
from flowyard.core.task import Task, TaskState


@dataclass(frozen=True)
class WorkerIdentity:
    """Who claims: ``owner`` None means an admin's worker that serves every owner."""

    id: str
    name: str
    host: str
    flows: tuple[str, ...]
    concurrency: int = 1
    owner: str | None = None
    transport: str = "inprocess"
    resources: dict[str, str | int | None] = field(default_factory=dict, compare=False)
    """Device, device memory, host memory: shown by ``GET /api/workers``."""


class Waker(Protocol):
    """How an idle loop (a worker, the event tailer) learns that something may be waiting.

    ``found_work`` tells it whether the last look found anything, so polling wakers
    back off while idle and look again soon while busy.
    """

    def clear(self) -> None: ...

    async def wait(self, max_wait: float) -> None: ...

    def found_work(self, found: bool) -> None: ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class Heartbeat:
    """What a lease extension learned."""

    cancel_requested: bool = False


class TaskStore(Protocol):
    async def record(self, event: Event) -> Task:
        """Apply ``event`` to its task and append it to the log, in one transaction."""
        ...

    async def get(self, task_id: uuid.UUID) -> Task: ...

    async def list(
        self,
        *,
        state: TaskState | None = None,
        flow: str | None = None,
        owner: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> Sequence[Task]: ...

    async def delete(self, task_id: uuid.UUID) -> None: ...

    async def events(self, task_id: uuid.UUID) -> Sequence[Event]: ...


class WorkQueue(Protocol):
    async def register(self, worker: WorkerIdentity) -> None:
        """Announce the worker (and refresh its last-seen time)."""
        ...

    async def claim(self, worker: WorkerIdentity, limit: int) -> Sequence[Task]:
        """Take up to ``limit`` queued tasks of the worker's flows and owner, with a lease."""
        ...

    async def wait_for_work(self, max_wait: float) -> None:
        """Return when work may be available, or after ``max_wait`` seconds."""
        ...

    async def heartbeat(self, worker: WorkerIdentity, task: Task) -> Heartbeat:
        """Extend the lease of the task's current attempt; raise ``LeaseLost`` if gone."""
        ...

    async def report(
        self, worker: WorkerIdentity, event: TaskProgress | TaskDone | TaskRequeued
    ) -> None:
        """Publish the attempt's progress or result; ``TaskDone`` also acks the work.

        ``TaskRequeued`` (a retryable failure, with its backoff's ``not_before``) ends
        the attempt too: the next one is dispatched when it is due.
        """
        ...

    async def release(self, worker: WorkerIdentity, task: Task, reason: str) -> None:
        """Give an unfinished task back to the queue (graceful stop)."""
        ...

    async def close(self) -> None: ...


@dataclass
class AttemptFiles:
    """Local paths for one attempt of a task."""

    inputs: dict[str, Path]
    outputs: Path
    scratch: Path
    produced: list[FileRef] = field(default_factory=list)


class TaskFiles(Protocol):
    async def open_attempt(self, task: Task) -> AttemptFiles:
        """Make the inputs available locally and prepare empty output and scratch folders."""
        ...

    async def close_attempt(self, task: Task, files: AttemptFiles) -> tuple[FileRef, ...]:
        """Store the outputs where the server can serve them; clean up scratch space."""
        ...

    async def discard_attempt(self, task: Task, files: AttemptFiles) -> None:
        """Clean up after an attempt that produced no result."""
        ...


class EventFeed(Protocol):
    """Live events for subscribers (SSE, webhooks, CLI tail)."""

    def subscribe(self, task_id: uuid.UUID | None = None) -> AsyncIterator[Event]: ...
