"""The task projection and its state machine, as pure functions.

A task row is a fold of its events: ``apply(None, created)`` starts it and each
later event moves it on. ``apply`` is idempotent (an event already reflected in
the task returns the task unchanged) and refuses what the state machine forbids:

    queued ──claimed──▶ running ──done──▶ succeeded | failed | cancelled
      ▲ ▲                 │                           │        │
      │ └────requeued─────┘                           │        │
      └──────────────── retried ◀─────────────────────┴────────┘
    queued ──done(cancelled | failed)──▶ finished

Attempts count claims: each claim runs the next attempt (a retry may skip
numbers, see ``TaskRetried``). ``claimed``, ``progress``, ``cancel_requested``,
``requeued``, ``retried``, ``reprioritized`` and ``done`` must carry the current
attempt (a fencing token), so a worker that lost its lease cannot overwrite the
attempt that replaced it. Only a queued task's priority may change.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from flowyard.core.errors import IllegalTransition, StaleAttempt, TaskFinished
from flowyard.core.events import (
    ChainStep,
    Event,
    EventBase,
    FileRef,
    TaskCancelRequested,
    TaskClaimed,
    TaskCreated,
    TaskDone,
    TaskProgress,
    TaskReprioritized,
    TaskRequeued,
    TaskRetried,
)


class TaskState(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def finished(self) -> bool:
        return self in FINISHED


FINISHED = frozenset({TaskState.succeeded, TaskState.failed, TaskState.cancelled})


class Task(BaseModel):
    """The current state of one task, as rebuilt from its events."""

    model_config = ConfigDict(frozen=True)

    id: uuid.UUID
    flow: str
    owner: str
    params: dict[str, Any] = Field(default_factory=dict)
    inputs: tuple[FileRef, ...] = ()
    priority: int = 0
    state: TaskState = TaskState.queued
    attempt: int = 0
    max_attempts: int = 3
    worker_id: str | None = None
    lease_expires_at: datetime | None = None
    cancel_requested: bool = False
    progress: float = 0.0
    message: str = ""
    error: str | None = None
    outputs: tuple[FileRef, ...] = ()
    created_at: datetime
    claimed_at: datetime | None = None
    finished_at: datetime | None = None
    cancelled_at: datetime | None = None
    updated_at: datetime
    not_before: datetime | None = None
    """Queued but not claimable before this time (scheduled, or a retry's backoff)."""
    interrupted_at: datetime | None = None
    """When a cancel with a stage (the client disconnected) was asked."""
    interrupted_stage: str | None = None
    timeout_seconds: float | None = None
    """This task's own limit per attempt; None: the flow's ``timeout_seconds``."""
    parent_id: uuid.UUID | None = None
    then: tuple[ChainStep, ...] = ()
    """Follow-ups created when this task succeeds (``services/chains.py``)."""


E = TypeVar("E", bound=EventBase)


def event_for(task: Task, kind: type[E], **fields: Any) -> E:
    """An event about the task's current attempt: the envelope (id, flow, owner,
    attempt) comes from the task, so no call site copies it by hand."""
    envelope: dict[str, Any] = {
        "task_id": task.id,
        "flow": task.flow,
        "owner": task.owner,
        "attempt": task.attempt,
    }
    return kind(**(envelope | fields))


def apply(task: Task | None, event: Event) -> Task:
    """Return the task after ``event``; raise ``IllegalTransition`` or ``StaleAttempt``."""
    if isinstance(event, TaskCreated):
        if task is not None:
            return task
        return Task(
            id=event.task_id,
            flow=event.flow,
            owner=event.owner,
            params=event.params,
            inputs=event.inputs,
            priority=event.priority,
            max_attempts=event.max_attempts,
            created_at=event.at,
            updated_at=event.at,
            not_before=event.not_before,
            timeout_seconds=event.timeout_seconds,
            parent_id=event.parent_id,
            then=event.then,
        )
    if task is None:
        raise IllegalTransition(f"{event.type} for task {event.task_id} that was never created")
    if isinstance(event, TaskClaimed):
        return _claimed(task, event)
    if isinstance(event, TaskDone):
        return _done(task, event)
    if isinstance(event, TaskRetried):
        return _retried(task, event)
    _check_attempt(task, event)
    if isinstance(event, TaskProgress):
        if task.state is not TaskState.running:
            raise IllegalTransition(f"progress for a task that is {task.state}")
        if event.progress == task.progress and event.message == task.message:
            return task
        return task.model_copy(
            update={"progress": event.progress, "message": event.message, "updated_at": event.at}
        )
    if isinstance(event, TaskCancelRequested):
        if task.state.finished:
            raise TaskFinished(f"task {task.id} already {task.state}")
        if task.cancel_requested:
            return task
        update: dict[str, Any] = {"cancel_requested": True, "updated_at": event.at}
        if event.stage is not None:
            update |= {"interrupted_at": event.at, "interrupted_stage": event.stage[:500]}
        return task.model_copy(update=update)
    if isinstance(event, TaskRequeued):
        if task.state is TaskState.queued:
            return task
        if task.state is not TaskState.running:
            raise IllegalTransition(f"requeue of a task that is {task.state}")
        return task.model_copy(
            update={
                "state": TaskState.queued,
                "worker_id": None,
                "lease_expires_at": None,
                "progress": 0.0,
                "message": event.reason,
                "error": event.error if event.error is not None else task.error,
                "not_before": event.not_before,
                "updated_at": event.at,
            }
        )
    if isinstance(event, TaskReprioritized):
        if task.state is not TaskState.queued:
            raise IllegalTransition(
                f"task {task.id} is {task.state}: only a queued task's priority can change"
            )
        if task.priority == event.priority:
            return task
        return task.model_copy(update={"priority": event.priority, "updated_at": event.at})
    raise IllegalTransition(f"unknown event {type(event).__name__}")  # pragma: no cover


RETRYABLE = frozenset({TaskState.failed, TaskState.cancelled})


def _retried(task: Task, event: TaskRetried) -> Task:
    """Back to queued for a new attempt; the history (events, created_at, inputs) stays."""
    base = event.next_attempt - 1
    if (
        task.state is TaskState.queued
        and task.attempt == base
        and task.max_attempts == event.max_attempts
    ):
        return task  # already reflected
    if task.state not in RETRYABLE:
        raise IllegalTransition(
            f"task {task.id} is {task.state}: only a failed or cancelled task can be retried"
        )
    _check_attempt(task, event)
    if base < task.attempt or event.max_attempts <= base:
        raise IllegalTransition(
            f"retry of task {task.id} to attempt {event.next_attempt} of {event.max_attempts} "
            f"after attempt {task.attempt}"
        )
    return task.model_copy(
        update={
            "state": TaskState.queued,
            "attempt": base,
            "max_attempts": event.max_attempts,
            "worker_id": None,
            "lease_expires_at": None,
            "cancel_requested": False,
            "progress": 0.0,
            "message": "retried",
            "error": None,
            "outputs": (),
            "claimed_at": None,
            "finished_at": None,
            "cancelled_at": None,
            "not_before": None,
            "interrupted_at": None,
            "interrupted_stage": None,
            "updated_at": event.at,
        }
    )


def retry_event(task: Task, *, attempts: int, skip: int = 0) -> TaskRetried:
    """The event that gives a failed or cancelled task ``attempts`` more attempts.

    ``skip`` attempt numbers are left out first (NATS: the deliveries a leftover
    work message of an earlier attempt could still get, plus one).
    """
    base = task.attempt + skip
    return event_for(
        task,
        TaskRetried,
        next_attempt=base + 1,
        max_attempts=base + attempts,
    )


def _check_attempt(task: Task, event: Event) -> None:
    if event.attempt != task.attempt:
        raise StaleAttempt(
            f"{event.type} from attempt {event.attempt}, but task {task.id} is on "
            f"attempt {task.attempt}"
        )


def _claimed(task: Task, event: TaskClaimed) -> Task:
    if task.state is TaskState.running and event.attempt == task.attempt:
        if event.worker_id == task.worker_id:
            return task.model_copy(update={"lease_expires_at": event.lease_expires_at})
        raise StaleAttempt(f"attempt {event.attempt} of task {task.id} is held by another worker")
    if task.state is not TaskState.queued:
        raise IllegalTransition(f"claim of a task that is {task.state}")
    if event.attempt != task.attempt + 1:
        raise StaleAttempt(
            f"claim for attempt {event.attempt}, but task {task.id} is due "
            f"attempt {task.attempt + 1}"
        )
    return task.model_copy(
        update={
            "state": TaskState.running,
            "attempt": event.attempt,
            "worker_id": event.worker_id,
            "lease_expires_at": event.lease_expires_at,
            "claimed_at": event.at,
            "progress": 0.0,
            "message": "",
            "not_before": None,
            "updated_at": event.at,
        }
    )


def _done(task: Task, event: TaskDone) -> Task:
    if task.state.finished:
        if task.state == event.status and task.attempt == event.attempt:
            return task
        raise TaskFinished(f"task {task.id} already {task.state}")
    _check_attempt(task, event)
    if event.worker_id is not None and (
        task.state is not TaskState.running or task.worker_id != event.worker_id
    ):
        # a requeued (or re-claimed) task: this worker's run lost its lease meanwhile
        raise StaleAttempt(
            f"task {task.id} attempt {event.attempt} is no longer held by the worker"
        )
    if task.state is TaskState.queued and event.status == "succeeded":
        raise IllegalTransition("a queued task cannot succeed without being claimed")
    return task.model_copy(update=done_update(event))


def done_update(event: TaskDone) -> dict[str, Any]:
    """The fields a result sets on its task. They depend on the event alone, so a store
    can write a worker's result without reading the row first, under the fence
    ``held_by_worker`` names (the only case in which ``apply`` accepts it)."""
    update: dict[str, Any] = {
        "state": TaskState(event.status),
        "outputs": event.outputs,
        "error": event.error,
        "finished_at": event.at,
        "lease_expires_at": None,
        "updated_at": event.at,
    }
    if event.status == "succeeded":
        update["progress"] = 1.0
    if event.status == "cancelled":
        update["cancelled_at"] = event.at
    return update


def held_by_worker(task: Task, event: TaskDone) -> bool:
    """The fence of a worker's result: ``apply`` records it exactly when this holds (or
    when the task already ended with it, which changes nothing)."""
    return (
        event.worker_id is not None
        and task.state is TaskState.running
        and task.attempt == event.attempt
        and task.worker_id == event.worker_id
    )


def rebuild(events: list[Event]) -> Task | None:
    """Fold a task's events in order; events the state machine refuses are skipped, as live."""
    task: Task | None = None
    for event in events:
        try:
            task = apply(task, event)
        except (IllegalTransition, StaleAttempt, TaskFinished):
            continue
    return task


def lease_expired(
    task: Task, now: datetime, reason: str = "lease expired"
) -> TaskRequeued | TaskDone:
    """What happens to a running task whose worker vanished: retry, or fail when out of attempts.

    A task whose cancellation was requested ends cancelled instead: nobody wants it re-run.
    """
    if task.cancel_requested:
        return event_for(
            task,
            TaskDone,
            at=now,
            status="cancelled",
            error=f"cancelled ({reason} before the worker confirmed)",
        )
    if task.attempt >= task.max_attempts:
        return event_for(
            task,
            TaskDone,
            at=now,
            status="failed",
            error=(
                f"{reason} on attempt {task.attempt} of {task.max_attempts}: "
                "the worker stopped responding, no attempts left"
            ),
        )
    return event_for(
        task,
        TaskRequeued,
        at=now,
        reason=f"{reason} on attempt {task.attempt}; retrying",
    )


def lease_deadline(now: datetime, lease_seconds: float) -> datetime:
    return now + timedelta(seconds=lease_seconds)
