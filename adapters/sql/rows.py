"""Conversions between domain objects and table rows, in one place."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa

from flowyard.core.events import Event, FileRef, parse_event
from flowyard.core.task import Task, TaskState


def task_from_row(row: sa.Row[Any] | Mapping[str, Any]) -> Task:
    data = dict(row._mapping) if isinstance(row, sa.Row) else dict(row)
    data["state"] = TaskState(data["state"])
    data["inputs"] = tuple(FileRef.model_validate(f) for f in data["inputs"] or ())
    data["outputs"] = tuple(FileRef.model_validate(f) for f in data["outputs"] or ())
    data["params"] = data["params"] or {}
    data["then"] = tuple(data.get("then") or ())
    return Task.model_validate(data)


def task_values(task: Task) -> dict[str, Any]:
    values = task.model_dump(mode="python")
    values |= column_values(
        {
            "state": task.state,
            "inputs": task.inputs,
            "outputs": task.outputs,
            "message": task.message,
            "then": task.then,
        }
    )
    return values


def column_values(fields: dict[str, Any]) -> dict[str, Any]:
    """Task fields (``Task`` attribute names and values) as column values."""
    values = dict(fields)
    if "state" in values:
        values["state"] = TaskState(values["state"]).value
    for name in ("inputs", "outputs"):
        if name in values:
            values[name] = [f.model_dump(mode="json") for f in values[name]]
    if "message" in values:
        values["message"] = values["message"][:500]
    if "then" in values:
        values["then"] = [step.model_dump(mode="json") for step in values["then"]] or None
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
