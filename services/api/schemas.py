"""The JSON shapes of the HTTP API (the CLI and the web UI read exactly these)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any
from urllib.parse import quote

from pydantic import BaseModel, Field

from core.events import FileRef
from core.task import Task, TaskState


class InputOut(BaseModel):
    name: str
    size: int
    media_type: str
    input: str | None


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

    @classmethod
    def of(cls, task: Task) -> TaskOut:
        data = task.model_dump(exclude={"inputs", "outputs", "lease_expires_at"})
        return cls(
            **data,
            inputs=[InputOut(**f.model_dump(exclude={"path"})) for f in task.inputs],
            outputs=[_output(task.id, f) for f in task.outputs],
        )


def _output(task_id: uuid.UUID, ref: FileRef) -> OutputOut:
    return OutputOut(
        name=ref.name,
        size=ref.size,
        media_type=ref.media_type,
        url=f"/api/tasks/{task_id}/outputs/{quote(ref.name)}",
    )


class TaskPage(BaseModel):
    items: list[TaskOut]
    limit: int
    offset: int
    next_offset: int | None


class CreateTask(BaseModel):
    """The JSON form of ``POST /api/tasks`` (tasks without input files)."""

    flow: str = Field(min_length=1, max_length=200)
    params: dict[str, Any] = Field(default_factory=dict)
    priority: int = Field(default=0, ge=-1000, le=1000)
    owner: str | None = Field(default=None, min_length=1, max_length=200)


class WorkerOut(BaseModel):
    id: str
    name: str
    host: str
    flows: list[str]
    concurrency: int
    owner: str | None
    transport: str
    started_at: datetime
    last_seen_at: datetime
    online: bool
