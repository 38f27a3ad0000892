"""Retry and priority changes in the state machine, without I/O."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from flowyard.core.errors import IllegalTransition, StaleAttempt
from flowyard.core.events import (
    Event,
    FileRef,
    TaskClaimed,
    TaskCreated,
    TaskDone,
    TaskReprioritized,
    TaskRetried,
    parse_event,
)
from flowyard.core.task import Task, TaskState, apply, lease_expired, rebuild, retry_event

T0 = datetime(2026, 1, 1, tzinfo=UTC)
TASK = uuid.uuid4()
FLOW = "debug.sleep"


def created() -> TaskCreated:
    return TaskCreated(task_id=TASK, flow=FLOW, at=T0, max_attempts=3)


def claimed(attempt: int, worker: str = "w1") -> TaskClaimed:
    at = T0 + timedelta(seconds=attempt)
    return TaskClaimed(
        task_id=TASK,
        flow=FLOW,
        attempt=attempt,
        worker_id=worker,
        at=at,
        lease_expires_at=at + timedelta(seconds=30),
    )


def done(status: str, attempt: int, **kw: object) -> TaskDone:
    return TaskDone(task_id=TASK, flow=FLOW, attempt=attempt, status=status, **kw)  # type: ignore[arg-type]


def fold(*events: Event) -> Task:
    task: Task | None = None
    for event in events:
        task = apply(task, event)
    assert task is not None
    return task


def failed_task() -> Task:
    out = FileRef(name="log.txt", path="attempts/1/outputs/log.txt", size=1)
    return fold(created(), claimed(1), done("failed", 1, error="boom", outputs=(out,)))


def test_retry_queues_a_failed_task_as_the_next_attempt() -> None:
    task = failed_task()
    retried = apply(task, retry_event(task, attempts=3))
    assert retried.state is TaskState.queued
    assert (retried.attempt, retried.max_attempts) == (1, 4)
    assert retried.error is None
    assert retried.outputs == ()
    assert retried.finished_at is None
    assert retried.claimed_at is None
    assert retried.created_at == task.created_at
    again = apply(retried, claimed(2))
    assert (again.state, again.attempt) == (TaskState.running, 2)


def test_retry_of_a_task_cancelled_while_queued() -> None:
    task = fold(created(), done("cancelled", 0))
    retried = apply(task, retry_event(task, attempts=3))
    assert (retried.state, retried.attempt, retried.cancelled_at) == (TaskState.queued, 0, None)
    assert apply(retried, claimed(1)).state is TaskState.running


def test_retry_is_idempotent() -> None:
    task = failed_task()
    event = retry_event(task, attempts=3, skip=4)
    once = apply(task, event)
    assert apply(once, event) is once


@pytest.mark.parametrize("state", ["queued", "running", "succeeded"])
def test_only_failed_or_cancelled_tasks_can_be_retried(state: str) -> None:
    steps: dict[str, list[Event]] = {
        "queued": [created()],
        "running": [created(), claimed(1)],
        "succeeded": [created(), claimed(1), done("succeeded", 1)],
    }
    task = fold(*steps[state])
    event = TaskRetried(
        task_id=TASK, flow=FLOW, attempt=task.attempt, next_attempt=2, max_attempts=5
    )
    with pytest.raises(IllegalTransition, match="only a failed or cancelled task"):
        apply(task, event)


def test_a_retry_of_an_older_attempt_is_stale() -> None:
    task = failed_task()
    event = TaskRetried(task_id=TASK, flow=FLOW, attempt=0, next_attempt=1, max_attempts=3)
    with pytest.raises(StaleAttempt):
        apply(task, event)


def test_skipped_attempts_fence_leftover_claims() -> None:
    """Over NATS a leftover work message of attempt 1 could still be delivered 3 times."""
    task = failed_task()
    retried = apply(task, retry_event(task, attempts=3, skip=4))
    assert (retried.attempt, retried.max_attempts) == (5, 8)
    for leftover in (2, 3, 4, 5):
        with pytest.raises(StaleAttempt):
            apply(retried, claimed(leftover, worker="old"))
    running = apply(retried, claimed(6))
    assert running.attempt == 6


def test_a_retried_task_gets_fresh_attempts_before_the_reaper_fails_it() -> None:
    task = failed_task()
    task = apply(apply(task, retry_event(task, attempts=2)), claimed(2))
    assert lease_expired(task, T0).type == "task.requeued"
    task = apply(apply(task, lease_expired(task, T0)), claimed(3))
    assert lease_expired(task, T0).type == "task.done"


def test_priority_changes_only_while_queued() -> None:
    queued = fold(created())
    event = TaskReprioritized(task_id=TASK, flow=FLOW, priority=7)
    changed = apply(queued, event)
    assert changed.priority == 7
    assert apply(changed, event) is changed
    running = apply(changed, claimed(1))
    with pytest.raises(IllegalTransition, match="only a queued task"):
        apply(running, TaskReprioritized(task_id=TASK, flow=FLOW, attempt=1, priority=1))


def test_priority_change_of_an_old_attempt_is_stale() -> None:
    task = fold(created(), claimed(1))
    task = apply(task, lease_expired(task, T0))
    with pytest.raises(StaleAttempt):
        apply(task, TaskReprioritized(task_id=TASK, flow=FLOW, attempt=0, priority=1))


def test_rebuild_from_the_log_matches_the_live_projection() -> None:
    first = failed_task()
    retry = retry_event(first, attempts=3)
    log: list[Event] = [
        created(),
        claimed(1),
        done("failed", 1, error="boom"),
        retry,
        TaskReprioritized(task_id=TASK, flow=FLOW, attempt=1, priority=3),
        claimed(2),
        done("succeeded", 2),
    ]
    live = fold(*log)
    assert live.state is TaskState.succeeded
    assert rebuild(log) == live
    assert rebuild([parse_event(e.to_json()) for e in log]) == live
