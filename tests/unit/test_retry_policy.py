"""The retry decision (``core.retry``) and scheduled tasks in the state machine, without I/O."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from flowyard.core.errors import DoNotRetry, FlowCancelled, FlowFailed, FlowTimedOut
from flowyard.core.events import TaskClaimed, TaskCreated, TaskRequeued, parse_event
from flowyard.core.retry import RetryPolicy, after_failure
from flowyard.core.task import Task, TaskState, apply, lease_expired, rebuild

T0 = datetime(2026, 1, 1, tzinfo=UTC)
POLICY = RetryPolicy(retry_on=(FlowFailed,), backoff_seconds=1.0, backoff_max_seconds=10.0)


def running(attempt: int = 1, max_attempts: int = 3, **kw: object) -> Task:
    created = TaskCreated(task_id=uuid.uuid4(), flow="f", at=T0, max_attempts=max_attempts)
    task = apply(None, created)
    for n in range(1, attempt + 1):
        task = task.model_copy(update={"state": TaskState.queued})
        task = apply(
            task,
            TaskClaimed(
                task_id=task.id, flow="f", attempt=n, worker_id="w", lease_expires_at=T0, at=T0
            ),
        )
    return task.model_copy(update=kw)


@pytest.mark.parametrize(
    ("attempt", "cap"), [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 10.0), (60, 10.0)]
)
def test_backoff_is_exponential_with_full_jitter_and_capped(attempt: int, cap: float) -> None:
    assert POLICY.delay(attempt, 0.0) == 0.0
    assert POLICY.delay(attempt, 0.5) == pytest.approx(cap / 2)
    assert POLICY.delay(attempt, 0.999999) == pytest.approx(cap, rel=1e-5)
    assert POLICY.delay(attempt, 7.0) == pytest.approx(cap)  # a bad draw stays in bounds


def test_what_is_retryable() -> None:
    assert POLICY.retryable(FlowFailed("x"))
    assert POLICY.retryable(FlowTimedOut("timed out after 1 s"))
    assert not POLICY.retryable(DoNotRetry("bad input"))
    assert not POLICY.retryable(FlowCancelled())
    assert not POLICY.retryable(ValueError("x"))
    assert not RetryPolicy().retryable(FlowFailed("no policy: never"))


def test_a_retryable_failure_requeues_with_a_time_and_a_reason() -> None:
    task = running(attempt=2)
    now = T0 + timedelta(minutes=1)
    event = after_failure(task, POLICY, FlowFailed("boom"), "boom", now, draw=lambda: 0.5)
    assert isinstance(event, TaskRequeued)
    assert (event.attempt, event.error) == (2, "boom")
    assert event.not_before == now + timedelta(seconds=1.0)
    assert "attempt 2 of 3 failed (boom)" in event.reason
    assert "retrying in 1.0s" in event.reason
    after = apply(task, event)
    assert (after.state, after.attempt, after.not_before) == (TaskState.queued, 2, event.not_before)
    assert after.error == "boom"
    again = parse_event(event.to_json())
    assert again == event


def test_no_retry_without_attempts_policy_or_when_cancelled() -> None:
    boom = FlowFailed("boom")
    assert after_failure(running(3), POLICY, boom, "boom", T0) is None  # the last attempt
    assert after_failure(running(1), RetryPolicy(), boom, "boom", T0) is None
    assert after_failure(running(1), POLICY, DoNotRetry("no"), "no", T0) is None
    cancelling = running(1, cancel_requested=True)
    assert after_failure(cancelling, POLICY, boom, "boom", T0) is None
    assert after_failure(running(1, max_attempts=1), POLICY, boom, "boom", T0) is None


def test_a_claim_clears_not_before_and_rebuild_agrees() -> None:
    task = running(1)
    requeue = after_failure(task, POLICY, FlowFailed("b"), "b", T0, draw=lambda: 0.1)
    assert requeue is not None
    queued = apply(task, requeue)
    claim = TaskClaimed(
        task_id=task.id, flow="f", attempt=2, worker_id="w", lease_expires_at=T0, at=T0
    )
    again = apply(queued, claim)
    assert again.not_before is None
    assert again.attempt == 2


def test_scheduled_creation_and_lease_expiry_still_counts() -> None:
    at = T0 + timedelta(hours=1)
    created = TaskCreated(task_id=uuid.uuid4(), flow="f", at=T0, not_before=at.replace(tzinfo=None))
    task = apply(None, created)
    assert task.not_before == at  # naive times are UTC
    assert rebuild([created]) == task
    expired = lease_expired(running(3), T0)
    assert expired.type == "task.done"  # the third lease expiry used the last attempt


def test_retention_defaults_by_mode_and_the_event_stream_age() -> None:
    from flowyard.core.settings import Settings

    assert Settings().task_retention_days is None
    assert Settings(mode="server").task_retention_days == 30
    assert Settings(mode="server", retention_days=0).task_retention_days is None
    assert Settings(retention_days=7).task_retention_days == 7
    assert Settings(events_retention_days=2).events_stream_max_age_hours == 48
    assert Settings().events_stream_max_age_hours == Settings().events_max_age_hours


def test_free_slots_count_owners_and_admin_workers() -> None:
    from flowyard.bus.nats.scheduler import free_slots

    slots = [("alice", {"f"}, 2), (None, {"f", "g"}, 3), ("bob", {"g"}, 1)]
    in_use = {("alice", "f"): 4, ("bob", "f"): 1, ("bob", "g"): 0, ("carol", "h"): 0}
    assert free_slots(slots, in_use) == {
        ("alice", "f"): 1,  # her 2 and the admin's 3, 4 in use
        ("bob", "f"): 2,  # only the admin's worker serves bob's f
        ("bob", "g"): 4,
        ("carol", "h"): 0,  # nobody runs h
    }


def test_free_slots_with_prefetch_count_each_slot_plus_what_waits_ahead_for_it() -> None:
    from flowyard.bus.nats.scheduler import free_slots

    slots = [("alice", {"f"}, 2), (None, {"f"}, 1)]
    in_use = {("alice", "f"): 3, ("bob", "f"): 0}
    assert free_slots(slots, in_use) == {("alice", "f"): 0, ("bob", "f"): 1}
    assert free_slots(slots, in_use, prefetch=2) == {("alice", "f"): 6, ("bob", "f"): 3}
