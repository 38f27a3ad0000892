"""The JSON shapes of the HTTP API (the CLI and the web UI read exactly these)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictStr
from pydantic_core import PydanticCustomError

from flowyard.core.events import ChainStep, FileRef
from flowyard.core.task import Task, TaskState
from flowyard.services.api.urls import input_path, output_path


class InputOut(BaseModel):
    name: str
    size: int
    media_type: str
    input: str | None
    url: str


class OutputOut(BaseModel):
    name: str
    size: int
    media_type: str
    url: str


class TaskOut(BaseModel):
    id: uuid.UUID
    flow: str
    owner: str
    state: TaskState
    progress: float
    message: str
    params: dict[str, Any]
    priority: int
    attempt: int
    max_attempts: int
    worker_id: str | None
    cancel_requested: bool
    error: str | None
    inputs: list[InputOut]
    outputs: list[OutputOut]
    created_at: datetime
    claimed_at: datetime | None
    finished_at: datetime | None
    cancelled_at: datetime | None
    updated_at: datetime
    not_before: datetime | None = Field(
        default=None, description="queued but not claimed before this time (run_at, backoff)"
    )
    interrupted_at: datetime | None = Field(
        default=None, description="when its client left a create-and-wait (cancel_on_disconnect)"
    )
    interrupted_stage: str | None = Field(
        default=None, description="what the task was doing then: state, attempt, progress"
    )
    timeout_seconds: float | None = Field(
        default=None, description="this task's limit per attempt (None: the flow's, if any)"
    )
    parent_id: uuid.UUID | None = Field(
        default=None, description="the task whose success created this one (a chain)"
    )
    then: list[ChainStep] = Field(default_factory=list, description="follow-ups still to come")
    children: list[uuid.UUID] = Field(
        default_factory=list,
        description="tasks this one's success created (filled by GET /api/tasks/{id})",
    )

    @classmethod
    def of(cls, task: Task) -> TaskOut:
        data = task.model_dump(exclude={"inputs", "outputs", "lease_expires_at", "then"})
        data["then"] = list(task.then)
        return cls(
            **data,
            inputs=[_input(task.id, f) for f in task.inputs],
            outputs=[_output(task.id, f) for f in task.outputs],
        )


def _output(task_id: uuid.UUID, ref: FileRef) -> OutputOut:
    return OutputOut(
        name=ref.name,
        size=ref.size,
        media_type=ref.media_type,
        url=output_path(task_id, ref.name),
    )


def _input(task_id: uuid.UUID, ref: FileRef) -> InputOut:
    return InputOut(
        **ref.model_dump(exclude={"path"}),
        url=input_path(task_id, ref.name),
    )


class TaskPage(BaseModel):
    items: list[TaskOut]
    limit: int
    offset: int
    next_offset: int | None


def _no_bool_or_text(value: Any) -> Any:
    if isinstance(value, bool | str | bytes):
        raise PydanticCustomError(
            "int_type", "Input should be a valid integer (a JSON number, not text or a boolean)"
        )
    return value


Integer = Annotated[int, BeforeValidator(_no_bool_or_text)]
"""An integer as JSON Schema means it: ``3`` and ``3.0`` are integers; ``true``, ``"3"``,
``"٣"`` and ``3.5`` are not (pydantic's lax int takes the first three, strict refuses 3.0)."""


def _number_not_text(value: Any) -> Any:
    if isinstance(value, bool | str | bytes):
        raise PydanticCustomError(
            "float_type", "Input should be a number (a JSON number, not text or a boolean)"
        )
    return value


Number = Annotated[float, BeforeValidator(_number_not_text)]
"""A JSON number, not ``"5"`` or ``true``."""

MAX_INT = 2**31 - 1
"""Upper bound of every integer query or path value: past 2^63 the database driver fails."""


def _iso_time(value: Any) -> Any:
    if not isinstance(value, str):
        raise PydanticCustomError(
            "datetime_type", "Input should be an ISO 8601 time, e.g. 2026-01-31T12:00:00Z"
        )
    return value


AwareTime = Annotated[datetime, BeforeValidator(_iso_time)]
"""A time as an ISO 8601 string only (no epoch numbers); without a zone it is UTC."""


class Error(BaseModel):
    """Every error response: ``detail`` starts with the bad field's name when there is one."""

    detail: str
    field: str | None = Field(description="the request field at fault, if one is")
    type: str = Field(description="the error class in core/errors.py, e.g. InvalidInput")


class CreateTask(BaseModel):
    """The JSON form of ``POST /api/tasks`` (tasks without input files).

    Strict types: ``true`` is not a priority and ``"3"`` is not an integer.
    """

    flow: StrictStr = Field(min_length=1, max_length=200)
    params: dict[str, Any] = Field(default_factory=dict)
    priority: Integer = Field(default=0, ge=-1000, le=1000)
    owner: StrictStr | None = Field(default=None, min_length=1, max_length=200)
    max_attempts: Integer | None = Field(
        default=None, ge=1, le=100, description="attempts (None: the flow's, else the server's)"
    )
    run_at: AwareTime | None = Field(
        default=None, description="ISO 8601 time before which the task is not claimed"
    )
    delay_seconds: Number | None = Field(
        default=None, ge=0, le=366 * 24 * 3600, description="run_at as seconds from now"
    )
    idempotency_key: StrictStr | None = Field(
        default=None,
        description="as the Idempotency-Key header: a repeat returns the first task (200)",
    )
    timeout_seconds: Number | None = Field(
        default=None,
        gt=0,
        le=366 * 24 * 3600,
        description="an attempt running longer fails 'timed out after N s' (None: the flow's)",
    )
    then: list[ChainStep] = Field(
        default_factory=list,
        max_length=20,
        description="follow-ups [{flow, params, priority, then}] created when this succeeds, "
        "its outputs their inputs",
    )


class CreateBatch(BaseModel):
    """``POST /api/tasks/batch``: a list of task specs, or ``count`` copies of one."""

    model_config = ConfigDict(extra="forbid")

    tasks: list[CreateTask] | None = Field(default=None, min_length=1)
    task: CreateTask | None = Field(default=None, description="with count: the one spec")
    count: Integer | None = Field(default=None, ge=1, description="copies of task")


class BatchOut(BaseModel):
    ids: list[uuid.UUID]
    items: list[TaskOut]


class PruneOut(BaseModel):
    """What ``POST /api/tasks/prune`` removed (or, with ``dry_run``, would remove)."""

    dry_run: bool
    tasks: int
    deliveries: int
    events: int


class UpdateTask(BaseModel):
    """``PATCH /api/tasks/{id}``: what may change on a queued task."""

    model_config = ConfigDict(extra="forbid")

    priority: Integer = Field(ge=-1000, le=1000, description="higher is claimed first")


class WorkerOut(BaseModel):
    id: str
    name: str
    host: str
    flows: list[str]
    concurrency: int
    owner: str | None
    transport: str
    resources: dict[str, str | int | None] | None = Field(
        default=None, description="device, device_name, device_memory_bytes, host_memory_bytes"
    )
    started_at: datetime
    last_seen_at: datetime
    online: bool
