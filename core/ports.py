"""The seams between the services and the outside world, each as narrow as its callers.

A service names the port it needs, never an adapter class; ``services/runtime.py``
(and the worker commands) pass the SQL, file, NATS or in-memory implementation
(``adapters/memory/``). One contract suite per port (``tests/contract/``) runs
against every implementation, so they cannot drift apart.

- ``TaskStore``: the system of record the server writes through (``TaskService``);
  ``ChainStore`` the part the chainer reads.
- ``WorkQueue``: what a worker sees of its transport (in-process on SQLite, SKIP
  LOCKED on a database, JetStream over NATS); a worker never knows which one it has.
- ``TaskFiles``: local paths for an attempt's inputs and its outputs taken back (a
  shared folder, or an object store); ``InputStore`` the server's side of them.
- ``WebhookStore`` (subscriptions) and ``DeliveryQueue`` (due deliveries, attempts).
- ``FlowSource``, ``Waker``, ``EventSource``, ``SubscriptionCache``, ``Retention``,
  ``UserStore``: the rest a service calls.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Protocol

from flowyard.core.errors import LeaseLost
from flowyard.core.events import Event, FileRef, TaskCreated, TaskDone, TaskProgress, TaskRequeued
from flowyard.core.flow import Flow
from flowyard.core.identity import ApiToken, Role, TokenKind, User
from flowyard.core.task import Task, TaskState
from flowyard.core.webhook import (
    AttemptRecord,
    AttemptResult,
    Delivery,
    DeliveryStatus,
    Outcome,
    RetryPolicy,
    Subscription,
)

# -- values the ports exchange ------------------------------------------------


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


@dataclass(frozen=True)
class Heartbeat:
    """What a lease extension learned."""

    cancel_requested: bool = False


Sizer = Callable[[dict[tuple[str, str], int]], Mapping[tuple[str, str], int]]
"""Sizes a round of sending work: work in use per ``(owner, flow)`` that has work waiting
in, how many of each pair to send now out (the NATS server's priority dispatch)."""


@dataclass(frozen=True)
class Refill:
    """Claim up to ``limit`` tasks of ``worker``'s flows in the write of results that free
    their slots (``WorkQueue.report_many``)."""

    worker: WorkerIdentity
    limit: int


@dataclass(frozen=True)
class Reported:
    """What ``report_many`` did: each event's refusal in its place (``None``: recorded),
    and the tasks it claimed in the same write (``Refill``)."""

    refused: list[LeaseLost | None]
    claimed: Sequence[Task] = ()


@dataclass
class AttemptFiles:
    """Local paths for one attempt of a task."""

    inputs: dict[str, Path]
    outputs: Path
    scratch: Path
    produced: list[FileRef] = field(default_factory=list)
    made: bool = False
    """``outputs`` and ``scratch`` exist and hold only this attempt's files. The flow's
    context makes them on first use, in the flow's thread: a flow that writes no file
    costs no folder and no trip to a thread (``services/run_context.py``)."""
    private: Path | None = None
    """A folder made with mode 0700, and only when first used, before ``outputs`` and
    ``scratch`` inside it (a NATS worker's temp folder: no other user may read it)."""


@dataclass
class Pruned:
    """What one pruning pass removed (or, dry, would remove)."""

    tasks: list[uuid.UUID] = field(default_factory=list)
    deliveries: int = 0
    events: int = 0
    keys: int = 0

    def add(self, other: Pruned) -> None:
        self.tasks += other.tasks
        self.deliveries += other.deliveries
        self.events += other.events
        self.keys += other.keys


# -- tasks --------------------------------------------------------------------


class TaskRecords(Protocol):
    """Record an event, read a task: what every writer of tasks needs."""

    async def record(self, event: Event) -> Task:
        """Apply ``event`` to its task and append it to the log, in one transaction."""
        ...

    async def get(self, task_id: uuid.UUID) -> Task:
        """The task, or ``TaskNotFound``."""
        ...


class TaskStore(TaskRecords, Protocol):
    """The system of record behind ``TaskService``."""

    async def record_all(self, batch: Sequence[Event]) -> builtins.list[Task]:
        """All of the events in one transaction, or none."""
        ...

    async def record_keyed(
        self, event: TaskCreated, key: str, request_hash: str, window: timedelta
    ) -> tuple[Task, bool]:
        """Create under an idempotency key: (task, True) now, (original, False) a repeat."""
        ...

    async def list(
        self,
        *,
        state: TaskState | None = None,
        flow: str | None = None,
        owner: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> Sequence[Task]:
        """Newest first."""
        ...

    async def events(self, task_id: uuid.UUID) -> Sequence[Event]:
        """The task's log in order (kept after the task row is deleted)."""
        ...

    async def delete(self, task_id: uuid.UUID) -> None: ...


class ChainStore(TaskRecords, Protocol):
    async def chain_parents(
        self,
        since: datetime | None = None,
        limit: int = 500,
        *,
        among: Collection[uuid.UUID] | None = None,
    ) -> builtins.list[Task]:
        """Succeeded tasks with follow-ups, finished since ``since`` and, when given, with
        an id ``among`` these (the successes one commit recorded: one read for them all)."""
        ...


class FlowSource(Protocol):
    """What services need of a flow registry (``flows.registry.FlowRegistry``)."""

    def get(self, name: str) -> type[Flow]:
        """The flow class, or ``FlowNotFound``."""
        ...


class EventSource(Protocol):
    """Live events (``bus.inprocess.EventHub``): a queue that yields None once closed."""

    def subscription(
        self,
    ) -> contextlib.AbstractAsyncContextManager[asyncio.Queue[Event | None]]: ...


# -- workers ------------------------------------------------------------------


class Waker(Protocol):
    """How an idle loop (a worker, the event tailer) learns that something may be waiting.

    ``found_work`` tells it whether the last look found anything, so polling wakers
    back off while idle and look again soon while busy.
    """

    def clear(self) -> None: ...

    async def wait(self, max_wait: float) -> None: ...

    def found_work(self, found: bool) -> None: ...

    async def close(self) -> None: ...


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

    async def heartbeat(
        self, worker: WorkerIdentity, tasks: Sequence[Task]
    ) -> list[Heartbeat | LeaseLost]:
        """Extend the leases of these attempts, all at once (one statement on a database);
        for each, its ``Heartbeat``, or ``LeaseLost`` when the attempt is no longer ours."""
        ...

    async def report(
        self, worker: WorkerIdentity, event: TaskProgress | TaskDone | TaskRequeued
    ) -> None:
        """Publish the attempt's progress or result; ``TaskDone`` also acks the work.

        ``TaskRequeued`` (a retryable failure, with its backoff's ``not_before``) ends
        the attempt too: the next one is dispatched when it is due. A stale attempt's
        report raises ``LeaseLost``.
        """
        ...

    async def report_many(
        self,
        worker: WorkerIdentity,
        events: Sequence[TaskDone | TaskRequeued],
        refill: Refill | None = None,
    ) -> Reported:
        """Record several attempts' ends at once (one transaction where the store allows);
        each is refused alone: its ``LeaseLost`` stands in its place, ``None`` if recorded.

        ``refill``: also claim new work for the slots these results free, in the same
        transaction (a database); a queue that cannot claims nothing here and its
        worker's claim loop takes the slots.
        """
        ...

    async def release(self, worker: WorkerIdentity, task: Task, reason: str) -> None:
        """Give an unfinished task back to the queue (graceful stop)."""
        ...

    async def close(self) -> None: ...


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


# -- the server's files -------------------------------------------------------


class TaskFolders(Protocol):
    async def delete_task(self, task_id: uuid.UUID) -> None:
        """Remove everything stored for the task (nothing there is fine)."""
        ...


class InputStore(TaskFolders, Protocol):
    async def save_input(
        self,
        task_id: uuid.UUID,
        *,
        input_name: str,
        filename: str,
        chunks: AsyncIterator[bytes],
        limit: int,
    ) -> FileRef:
        """Stream one upload in; over ``limit`` bytes is ``UploadTooLarge``."""
        ...


class ChainFiles(InputStore, Protocol):
    def output_path(self, task: Task, name: str) -> tuple[Path, FileRef]:
        """A parent's output as a local file (``OutputNotFound`` when absent)."""
        ...


# -- webhooks -----------------------------------------------------------------


class WebhookStore(Protocol):
    """Subscriptions and their deliveries as ``WebhookService`` manages them."""

    async def create(self, sub: Subscription) -> Subscription: ...

    async def list(self, owner: str | None = None) -> builtins.list[Subscription]: ...

    async def get(self, webhook_id: uuid.UUID) -> Subscription:
        """The subscription, or ``WebhookNotFound``."""
        ...

    async def delete(self, webhook_id: uuid.UUID) -> None: ...

    async def enable(self, webhook_id: uuid.UUID) -> Subscription: ...

    async def deliveries(
        self, webhook_id: uuid.UUID, *, limit: int = 50, status: DeliveryStatus | None = None
    ) -> builtins.list[tuple[Delivery, builtins.list[AttemptRecord]]]:
        """The newest deliveries first, each with its attempts oldest first."""
        ...


class DeliveryQueue(Protocol):
    """Due deliveries as ``WebhookDispatcher`` sends them."""

    async def enabled(self) -> builtins.list[Subscription]: ...

    async def sweep_orphans(self) -> int:
        """Delete deliveries of removed subscriptions."""
        ...

    async def claim(
        self, slots: Mapping[uuid.UUID, int], now: datetime, lease: timedelta
    ) -> builtins.list[Delivery]:
        """Up to ``slots[webhook]`` due pending deliveries each, hidden until now+lease."""
        ...

    async def next_due(self, webhook_ids: Sequence[uuid.UUID]) -> datetime | None: ...

    async def record_attempt(
        self,
        delivery: Delivery,
        *,
        at: datetime,
        status_code: int | None,
        error: str | None,
        duration_ms: int,
        outcome: Outcome,
        policy: RetryPolicy,
    ) -> AttemptResult:
        """Record one attempt; move the delivery and the subscription's health on."""
        ...


class SubscriptionCache(Protocol):
    """A process's cached list of subscriptions (``DeliveryRecorder``)."""

    def invalidate(self) -> None: ...

    def cached_wants(self, events: Iterable[Event]) -> bool:
        """Whether any event matches a cached subscription (no I/O)."""
        ...


# -- retention and users ------------------------------------------------------


class Retention(Protocol):
    async def prune_tasks(self, before: datetime, *, batch: int, dry_run: bool) -> Pruned: ...

    async def prune_events(self, before: datetime, *, batch: int, dry_run: bool) -> Pruned: ...

    async def prune_keys(self, before: datetime) -> int: ...


class UserStore(Protocol):
    async def count_admins(self) -> int: ...

    async def create(self, name: str, password: str, role: Role) -> User: ...

    async def get(self, name: str) -> User:
        """The user, or ``UserNotFound``."""
        ...

    async def check_password(self, name: str, password: str) -> User | None: ...

    async def authenticate_token(self, secret: str, now: datetime) -> tuple[ApiToken, User] | None:
        """The live token and its user, or None."""
        ...

    async def create_token(
        self,
        user: str,
        *,
        name: str,
        kind: TokenKind = TokenKind.api,
        expires_at: datetime | None = None,
    ) -> tuple[ApiToken, str]: ...

    async def revoke_token(self, token_id: str, *, user: str | None = None) -> ApiToken: ...
