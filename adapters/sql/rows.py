"""Conversions between domain objects and table rows, in one place."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from flowyard.core.events import Event, FileRef, parse_event
from flowyard.core.task import Task, TaskState


def task_from_row(row: sa.Row[Any] | sa.RowMapping) -> Task:
    data = dict(row._mapping) if isinstance(row, sa.Row) else dict(row)
    data["state"] = TaskState(data["state"])
    data["inputs"] = tuple(FileRef.model_validate(f) for f in data["inputs"] or ())
    data["outputs"] = tuple(FileRef.model_validate(f) for f in data["outputs"] or ())
    data["params"] = data["params"] or {}
    data["then"] = tuple(data.get("then") or ())
    return Task.model_validate(data)


def task_values(task: Task) -> dict[str, Any]:
    values = task.model_dump(mode="python")
    values["state"] = task.state.value
    values["inputs"] = [f.model_dump(mode="json") for f in task.inputs]
    values["outputs"] = [f.model_dump(mode="json") for f in task.outputs]
    values["message"] = task.message[:500]
    values["then"] = [step.model_dump(mode="json") for step in task.then] or None
    return values


def event_values(event: Event) -> dict[str, Any]:
    return {
        "id": event.id,
        "task_id": event.task_id,
        "type": event.type,
        "flow": event.flow,
        "owner": event.owner,
        "attempt": event.attempt,
        "at": event.at,
        "body": event.to_json(),
    }


def event_from_row(row: sa.Row[*tuple[Any, ...]]) -> Event:
    return parse_event(row.body)
