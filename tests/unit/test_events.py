"""The event contract: stable JSON, discriminated parsing, subjects."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from flowyard.bus.nats.subjects import subject_for
from flowyard.core.events import (
    EVENT_TYPES,
    TaskClaimed,
    TaskCreated,
    TaskDone,
    TaskProgress,
    parse_event,
)

TASK = uuid.UUID("00000000-0000-4000-8000-000000000001")


def test_json_round_trip_keeps_type_and_fields() -> None:
    event = TaskDone(task_id=TASK, flow="image.blur", attempt=2, status="failed", error="boom")
    again = parse_event(event.to_json())
    assert again == event
    assert isinstance(again, TaskDone)


def test_stable_json_form() -> None:
    event = TaskProgress(
        id=uuid.UUID("00000000-0000-4000-8000-0000000000aa"),
        task_id=TASK,
        flow="debug.sleep",
        owner="ann",
        attempt=1,
        at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        progress=0.25,
        message="step 1/4",
    )
    assert json.loads(event.to_json()) == {
        "id": "00000000-0000-4000-8000-0000000000aa",
        "task_id": str(TASK),
        "flow": "debug.sleep",
        "owner": "ann",
        "attempt": 1,
        "at": "2026-01-02T03:04:05Z",
        "schema_version": 1,
        "type": "task.progress",
        "progress": 0.25,
        "message": "step 1/4",
    }


def test_parse_picks_the_class_from_type() -> None:
    raw = {
        "type": "task.claimed",
        "task_id": str(TASK),
        "flow": "f",
        "attempt": 1,
        "worker_id": "w",
        "lease_expires_at": "2026-01-01T00:00:00Z",
    }
    assert isinstance(parse_event(raw), TaskClaimed)


def test_unknown_type_and_newer_schema_are_refused() -> None:
    with pytest.raises(ValidationError):
        parse_event({"type": "task.exploded", "task_id": str(TASK), "flow": "f"})
    event = TaskCreated(task_id=TASK, flow="f").model_dump(mode="json")
    event["schema_version"] = 99
    with pytest.raises(ValidationError, match="newer"):
        parse_event(event)


def test_naive_timestamps_are_taken_as_utc() -> None:
    event = TaskCreated(task_id=TASK, flow="f", at=datetime(2026, 1, 1))
    assert event.at.tzinfo is UTC


def test_events_are_immutable() -> None:
    event = TaskCreated(task_id=TASK, flow="f")
    with pytest.raises(ValidationError):
        event.flow = "other"  # type: ignore[misc]


def test_progress_is_bounded() -> None:
    with pytest.raises(ValidationError):
        TaskProgress(task_id=TASK, flow="f", progress=1.5)


def test_subject_carries_type_owner_and_flow_as_tokens() -> None:
    event = TaskCreated(task_id=TASK, flow="image.blur", owner="ann.smith")
    assert subject_for(event) == "flowyard.events.created.ann_smith.image_blur"


def test_every_type_is_listed() -> None:
    assert set(EVENT_TYPES) == {
        "task.created",
        "task.claimed",
        "task.progress",
        "task.cancel_requested",
        "task.requeued",
        "task.retried",
        "task.reprioritized",
        "task.done",
    }
