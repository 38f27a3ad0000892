"""Typed task events: the contract every transport, store and consumer shares.

Each event is immutable, carries a unique id (the dedup key everywhere: the SQL
unique key, JetStream's ``Nats-Msg-Id``, the webhook id) and the attempt number
it belongs to, which the projection uses as a fencing token. The JSON form is
stable: ``event.to_json()`` and ``parse_event()`` round-trip it, and
``schema_version`` lets a reader refuse what it does not understand.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator

SCHEMA_VERSION = 1

DoneStatus = Literal["succeeded", "failed", "cancelled"]


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> uuid.UUID:
    return uuid.uuid4()


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class FileRef(BaseModel):
    """A file that belongs to a task: where it lies relative to the task folder."""

    model_config = ConfigDict(frozen=True)

    name: str
    path: str
    size: int = Field(ge=0)
    media_type: str = "application/octet-stream"
    input: str | None = None


class ChainStep(BaseModel):
    """A follow-up task: created when its parent succeeds, the parent's outputs its inputs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    flow: str = Field(min_length=1, max_length=200)
    params: dict[str, Any] = Field(default_factory=dict)
    priority: int = 0
    then: tuple[ChainStep, ...] = ()


class EventBase(BaseModel):
    """The envelope every event shares."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: uuid.UUID = Field(default_factory=new_id)
    task_id: uuid.UUID
    flow: str
    owner: str = "admin"
    attempt: int = Field(default=0, ge=0)
    at: datetime = Field(default_factory=utcnow)
    schema_version: int = SCHEMA_VERSION

    @field_validator("at")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    @field_validator("schema_version")
    @classmethod
    def _known_version(cls, value: int) -> int:
        if value > SCHEMA_VERSION:
            raise ValueError(f"event schema version {value} is newer than {SCHEMA_VERSION}")
        return value

    def to_json(self) -> str:
        return self.model_dump_json()


class TaskCreated(EventBase):
    type: Literal["task.created"] = "task.created"
    params: dict[str, Any] = Field(default_factory=dict)
    inputs: tuple[FileRef, ...] = ()
    priority: int = 0
    max_attempts: int = Field(default=3, ge=1)
    not_before: datetime | None = None
    """Not claimable before this time (``run_at``/``delay_seconds``); None: at once."""

    _not_before_utc = field_validator("not_before")(classmethod(lambda cls, v: _utc(v)))
    timeout_seconds: float | None = Field(default=None, gt=0)
    """Seconds an attempt may run before its flow is stopped (None: the flow's default)."""
    parent_id: uuid.UUID | None = None
    """The task whose success created this one (a chain's follow-up)."""
    then: tuple[ChainStep, ...] = ()
    """Follow-ups to create when this task succeeds."""


class TaskClaimed(EventBase):
    type: Literal["task.claimed"] = "task.claimed"
    worker_id: str
    lease_expires_at: datetime


class TaskProgress(EventBase):
    type: Literal["task.progress"] = "task.progress"
    progress: float = Field(ge=0.0, le=1.0)
    message: str = ""


class TaskCancelRequested(EventBase):
    """Asks the worker that runs the task to stop; persisted so a missed signal is not lost."""

    type: Literal["task.cancel_requested"] = "task.cancel_requested"
    reason: str | None = None
    """Why, when not a person's cancel (e.g. "the client disconnected")."""
    stage: str | None = None
    """What the task was doing when it was interrupted (state, progress, message)."""


class TaskRequeued(EventBase):
    """A running attempt ended without a result (lease expired, worker stopped): wait again.

    A retryable failure also requeues: ``error`` is the attempt's error and
    ``not_before`` when the next attempt may start (the retry policy's backoff).
    """

    type: Literal["task.requeued"] = "task.requeued"
    reason: str
    error: str | None = None
    not_before: datetime | None = None

    _not_before_utc = field_validator("not_before")(classmethod(lambda cls, v: _utc(v)))


class TaskRetried(EventBase):
    """A failed or cancelled task queued again by a person: a new attempt of the same task.

    ``attempt`` is the attempt that ended; the next claim runs ``next_attempt``. Over
    NATS the server skips attempt numbers (``next_attempt`` > ``attempt + 1``) so that
    no leftover work message of an earlier attempt can claim the new one.
    """

    type: Literal["task.retried"] = "task.retried"
    next_attempt: int = Field(ge=1)
    max_attempts: int = Field(ge=1)


class TaskReprioritized(EventBase):
    """A queued task's priority changed (higher is claimed first)."""

    type: Literal["task.reprioritized"] = "task.reprioritized"
    priority: int


class TaskDone(EventBase):
    type: Literal["task.done"] = "task.done"
    status: DoneStatus
    outputs: tuple[FileRef, ...] = ()
    error: str | None = None
    # set when a worker reports its own run: fences a result of a run that no longer holds the task
    worker_id: str | None = None


Event = Annotated[
    TaskCreated
    | TaskClaimed
    | TaskProgress
    | TaskCancelRequested
    | TaskRequeued
    | TaskRetried
    | TaskReprioritized
    | TaskDone,
    Field(discriminator="type"),
]
EVENT_TYPES: tuple[str, ...] = (
    "task.created",
    "task.claimed",
    "task.progress",
    "task.cancel_requested",
    "task.requeued",
    "task.retried",
    "task.reprioritized",
    "task.done",
)

_adapter: TypeAdapter[Event] = TypeAdapter(Event)


def parse_event(data: str | bytes | dict[str, Any]) -> Event:
    """Decode an event from its JSON form (or an already-decoded dict)."""
    if isinstance(data, dict):
        return _adapter.validate_python(data)
    return _adapter.validate_json(data)
