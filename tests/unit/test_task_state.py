"""The state machine and projection, without I/O."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from flowyard.core.errors import IllegalTransition, StaleAttempt, TaskFinished
from flowyard.core.events import (
    Event,
    FileRef,
    TaskCancelRequested,
    TaskClaimed,
    TaskCreated,
    TaskDone,
    TaskProgress,
    TaskRequeued,
)
from flowyard.core.task import (
    Task,
    TaskState,
    apply,
    done_update,
    held_by_worker,
    lease_expired,
    rebuild,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
TASK = uuid.uuid4()


def created(**kw: object) -> TaskCreated:
    return TaskCreated(task_id=TASK, flow="debug.sleep", at=T0, **kw)  # type: ignore[arg-type]


def claimed(attempt: int = 1, worker: str = "w1") -> TaskClaimed:
    return TaskClaimed(
        task_id=TASK,
        flow="debug.sleep",
        attempt=attempt,
        worker_id=worker,
        at=T0 + timedelta(seconds=attempt),
        lease_expires_at=T0 + timedelta(seconds=30 + attempt),
    )


def progress(value: float, attempt: int = 1) -> TaskProgress:
    return TaskProgress(task_id=TASK, flow="debug.sleep", attempt=attempt, progress=value)


def done(status: str = "succeeded", attempt: int = 1, **kw: object) -> TaskDone:
    return TaskDone(
        task_id=TASK,
        flow="debug.sleep",
        attempt=attempt,
        status=status,  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )


def fold(*events: Event) -> Task:
    task: Task | None = None
    for event in events:
        task = apply(task, event)
    assert task is not None
    return task


def test_happy_path() -> None:
    out = FileRef(name="output.png", path="attempts/1/outputs/output.png", size=3)
    task = fold(created(priority=5), claimed(), progress(0.5), done(outputs=(out,)))
    assert task.state is TaskState.succeeded
    assert task.attempt == 1
    assert task.progress == 1.0
    assert task.outputs == (out,)
    assert task.priority == 5
    assert task.claimed_at == T0 + timedelta(seconds=1)
    assert task.finished_at is not None
    assert task.lease_expires_at is None


@pytest.mark.parametrize(
    "events",
    [
        [created()],
        [created(), claimed()],
        [created(), claimed(), progress(0.3)],
        [created(), claimed(), progress(0.3), done()],
        [created(), claimed(), done("failed", error="boom")],
    ],
)
def test_every_event_is_idempotent(events: list[Event]) -> None:
    once = fold(*events)
    assert apply(once, events[-1]) == once


def test_done_then_claimed_is_refused() -> None:
    task = fold(created(), claimed(), done())
    with pytest.raises(IllegalTransition):
        apply(task, claimed(attempt=2))


def test_second_done_with_other_status_is_refused() -> None:
    task = fold(created(), claimed(), done())
    with pytest.raises(TaskFinished):
        apply(task, done("failed"))


def test_stale_attempt_cannot_overwrite_newer_attempt() -> None:
    requeue = TaskRequeued(task_id=TASK, flow="debug.sleep", attempt=1, reason="lease expired")
    task = fold(created(), claimed(1), requeue, claimed(2, worker="w2"))
    with pytest.raises(StaleAttempt):
        apply(task, done(attempt=1))
    with pytest.raises(StaleAttempt):
        apply(task, progress(0.9, attempt=1))
    assert apply(task, done(attempt=2)).state is TaskState.succeeded


def test_claim_must_be_the_next_attempt() -> None:
    with pytest.raises(StaleAttempt):
        fold(created(), claimed(attempt=2))


def test_claim_by_another_worker_for_same_attempt_is_refused() -> None:
    task = fold(created(), claimed(1, "w1"))
    with pytest.raises(StaleAttempt):
        apply(task, claimed(1, "w2"))


def test_progress_requires_running() -> None:
    with pytest.raises(IllegalTransition):
        fold(created(), progress(0.1, attempt=0))


def test_queued_task_can_be_cancelled_but_not_succeed() -> None:
    task = fold(created())
    assert apply(task, done("cancelled", attempt=0)).state is TaskState.cancelled
    with pytest.raises(IllegalTransition):
        apply(task, done("succeeded", attempt=0))


def test_never_created_task_refuses_events() -> None:
    with pytest.raises(IllegalTransition):
        apply(None, claimed())


def test_cancel_request_on_running_task() -> None:
    request = TaskCancelRequested(task_id=TASK, flow="debug.sleep", attempt=1)
    task = fold(created(), claimed(), request)
    assert task.cancel_requested
    assert apply(task, request) is task
    with pytest.raises(TaskFinished):
        apply(fold(created(), claimed(), done()), request)


def test_lease_expiry_retries_then_fails() -> None:
    task = fold(created(max_attempts=2), claimed(1))
    first = lease_expired(task, T0)
    assert isinstance(first, TaskRequeued)
    task = fold(created(max_attempts=2), claimed(1), first, claimed(2))
    last = lease_expired(task, T0)
    assert isinstance(last, TaskDone)
    assert last.status == "failed"
    assert "attempt 2 of 2" in (last.error or "")


def test_lease_expiry_of_cancelled_task_ends_cancelled() -> None:
    request = TaskCancelRequested(task_id=TASK, flow="debug.sleep", attempt=1)
    task = fold(created(), claimed(1), request)
    outcome = lease_expired(task, T0)
    assert isinstance(outcome, TaskDone)
    assert outcome.status == "cancelled"


def test_rebuild_skips_refused_events_like_the_live_projection() -> None:
    requeue = TaskRequeued(task_id=TASK, flow="debug.sleep", attempt=1, reason="lease expired")
    log: list[Event] = [
        created(),
        claimed(1),
        requeue,
        claimed(2, "w2"),
        done(attempt=1),  # late result of the first attempt: refused live, skipped here
        progress(0.5, attempt=2),
        done(attempt=2),
    ]
    task = rebuild(log)
    assert task is not None
    assert task.state is TaskState.succeeded
    assert task.attempt == 2
    assert task.worker_id == "w2"
    assert rebuild([]) is None


def test_stale_worker_cannot_fail_a_requeued_task() -> None:
    requeue = TaskRequeued(task_id=TASK, flow="debug.sleep", attempt=1, reason="lease expired")
    task = fold(created(), claimed(1, "w1"), requeue)
    with pytest.raises(StaleAttempt):
        apply(task, done("failed", attempt=1, worker_id="w1"))
    # the server's own decision (no worker) still cancels a queued task
    assert apply(task, done("cancelled", attempt=1)).state is TaskState.cancelled
    running = fold(created(), claimed(1, "w1"))
    with pytest.raises(StaleAttempt):
        apply(running, done("succeeded", attempt=1, worker_id="w2"))
    assert apply(running, done("succeeded", attempt=1, worker_id="w1")).state is TaskState.succeeded


@pytest.mark.parametrize("status", ["succeeded", "failed", "cancelled"])
@pytest.mark.parametrize(
    "history",
    [
        [],  # queued
        [1],  # running attempt 1 for w1
        [1, "requeued"],
        [1, "requeued", 2],
        [1, "done"],
    ],
)
@pytest.mark.parametrize(("attempt", "worker"), [(1, "w1"), (1, "w2"), (2, "w1")])
def test_a_workers_result_is_recorded_exactly_when_its_fence_holds(
    status: str, history: list[object], attempt: int, worker: str
) -> None:
    """The fence a store writes results under (``held_by_worker``) accepts what ``apply``
    accepts, and ``done_update`` is all that ``apply`` changes then."""
    task = apply(None, created())
    for step in history:
        if step == "requeued":
            task = apply(task, TaskRequeued(task_id=TASK, flow="debug.sleep",
                                            attempt=task.attempt, reason="lost"))  # fmt: skip
        elif step == "done":
            task = apply(task, TaskDone(task_id=TASK, flow="debug.sleep", attempt=task.attempt,
                                        status="failed", worker_id="w1"))  # fmt: skip
        else:
            task = apply(task, claimed(int(str(step))))
    result = TaskDone(
        task_id=TASK, flow="debug.sleep", attempt=attempt, status=status,  # type: ignore[arg-type]
        error=None if status == "succeeded" else "x", worker_id=worker,
    )  # fmt: skip
    try:
        folded = apply(task, result)
    except (IllegalTransition, StaleAttempt, TaskFinished):
        folded = None
    if held_by_worker(task, result):
        assert folded == task.model_copy(update=done_update(result))
    else:
        assert folded is None or folded is task
