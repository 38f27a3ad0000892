"""Webhook decisions and replay ranges, without I/O: outcomes, backoff, disabling, bodies."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from flowyard.core.errors import InvalidInput
from flowyard.core.events import FileRef, TaskCreated, TaskDone, TaskProgress
from flowyard.core.replay import EventFilter, Rebuilder, differences, parse_point
from flowyard.core.task import TaskState, rebuild
from flowyard.core.webhook import (
    Outcome,
    RetryPolicy,
    Subscription,
    check_event_types,
    next_attempt_at,
    outcome,
    retry_delay,
    should_disable,
)
from flowyard.services.api.urls import webhook_body as delivery_body

T0 = datetime(2026, 1, 1, tzinfo=UTC)
POLICY = RetryPolicy(base=1.0, retry_for=timedelta(hours=24), disable_after=5)


def highest(_low: float, high: float) -> float:
    return high


@pytest.mark.parametrize(
    ("status", "expected"),
    [(200, Outcome.delivered), (204, Outcome.delivered), (299, Outcome.delivered),
     (301, Outcome.retry), (400, Outcome.retry), (429, Outcome.retry), (500, Outcome.retry),
     (410, Outcome.gone)],
)  # fmt: skip
def test_outcome_follows_standard_webhooks(status: int, expected: Outcome) -> None:
    assert outcome(status) is expected


def test_backoff_doubles_up_to_the_cap_and_full_jitter_stays_below_it() -> None:
    ceilings = [retry_delay(n, 1.0, cap=60, rand=highest) for n in range(1, 10)]
    assert ceilings == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert retry_delay(10_000, 1.0, rand=highest) == 3600.0
    assert all(0 <= retry_delay(5, 1.0) <= 16 for _ in range(200))


def test_retries_end_with_the_retry_period_and_the_last_one_lands_on_the_deadline() -> None:
    policy = RetryPolicy(base=1.0, retry_for=timedelta(seconds=100))
    assert next_attempt_at(T0 + timedelta(seconds=10), T0, 1, policy, highest) == T0 + timedelta(
        seconds=11
    )
    assert next_attempt_at(T0 + timedelta(seconds=90), T0, 20, policy, highest) == T0 + timedelta(
        seconds=100
    )
    assert next_attempt_at(T0 + timedelta(seconds=100), T0, 3, policy) is None


def test_a_subscription_is_disabled_only_after_many_failures_over_a_whole_retry_period() -> None:
    long_ago = T0 - timedelta(hours=25)
    assert should_disable(5, long_ago, T0, POLICY)
    assert not should_disable(4, long_ago, T0, POLICY)  # too few
    assert not should_disable(500, T0 - timedelta(minutes=5), T0, POLICY)  # a short outage
    assert not should_disable(500, None, T0, POLICY)
    recent = T0 - timedelta(minutes=5)
    assert should_disable(5, recent, T0, POLICY, gave_up=True)  # one delivery ran out of retries
    assert not should_disable(4, recent, T0, POLICY, gave_up=True)


def test_event_types_are_checked_and_default_to_task_done() -> None:
    assert check_event_types(None) == ("task.done",)
    assert check_event_types(["task.done", "task.created", "task.done"]) == (
        "task.done",
        "task.created",
    )
    with pytest.raises(InvalidInput, match=r"'task\.finished'.*task\.created, task\.claimed"):
        check_event_types(["task.finished"])


def done_event(task_id: uuid.UUID) -> TaskDone:
    ref = FileRef(name="out put.png", path="attempts/1/outputs/out put.png", size=3)
    return TaskDone(
        task_id=task_id, flow="image.blur", attempt=1, status="succeeded", outputs=(ref,)
    )


def test_done_bodies_carry_download_urls_absolute_with_a_public_url() -> None:
    task_id = uuid.uuid4()
    event = done_event(task_id)
    body = json.loads(delivery_body(event, "https://flowyard.example/"))
    assert body["id"] == str(event.id)
    assert body["type"] == "task.done"
    assert body["status"] == "succeeded"
    assert body["outputs"] == [
        {
            "name": "out put.png",
            "size": 3,
            "media_type": "application/octet-stream",
            "url": f"https://flowyard.example/api/tasks/{task_id}/outputs/out%20put.png",
        }
    ]
    relative = json.loads(delivery_body(event))
    assert relative["outputs"][0]["url"] == f"/api/tasks/{task_id}/outputs/out%20put.png"


def test_subscriptions_filter_on_type_and_flow() -> None:
    task_id = uuid.uuid4()
    sub = Subscription(uuid.uuid4(), "http://x", ("task.done",), ("image.blur",), "s")
    assert sub.wants(done_event(task_id))
    assert not sub.wants(TaskCreated(task_id=task_id, flow="image.blur"))
    assert not sub.wants(TaskCreated(task_id=task_id, flow="debug.sleep"))


def test_points_are_positions_times_or_ages() -> None:
    now = datetime(2026, 3, 1, 12, tzinfo=UTC)
    assert parse_point("42", "--since") == 42
    assert parse_point("2026-03-01T10:00:00Z", "--since") == datetime(2026, 3, 1, 10, tzinfo=UTC)
    assert parse_point("2026-03-01T10:00:00", "--since") == datetime(2026, 3, 1, 10, tzinfo=UTC)
    assert parse_point("90m", "--since", now) == now - timedelta(minutes=90)
    with pytest.raises(InvalidInput, match="`until`: 'yesterday' is neither"):
        parse_point("yesterday", "until")


def test_empty_or_reversed_ranges_and_unknown_types_are_refused() -> None:
    with pytest.raises(InvalidInput, match="`since` 10 is not before `until` 10"):
        EventFilter(since=10, until=10)
    with pytest.raises(InvalidInput, match="not before"):
        EventFilter(since=T0, until=T0 - timedelta(seconds=1))
    with pytest.raises(InvalidInput, match=r"unknown event type 'task\.bogus'"):
        EventFilter(types=("task.bogus",))
    with pytest.raises(InvalidInput, match="`rebuild`"):
        EventFilter(since=3).for_rebuild()


def test_filter_is_inclusive_at_since_and_exclusive_at_until() -> None:
    event = TaskCreated(task_id=uuid.uuid4(), flow="f", at=T0)
    assert EventFilter(since=5, until=6).matches(5, event)
    assert not EventFilter(since=5, until=6).matches(6, event)
    assert EventFilter(since=T0).matches(1, event)
    assert not EventFilter(until=T0).matches(1, event)
    assert not EventFilter(flow="g").matches(1, event)


def test_rebuilder_matches_core_rebuild_and_differences_name_fields() -> None:
    task_id = uuid.uuid4()
    created = TaskCreated(task_id=task_id, flow="f", at=T0)
    stale = TaskProgress(task_id=task_id, flow="f", attempt=3, progress=0.5)  # refused
    cancel = TaskDone(task_id=task_id, flow="f", status="cancelled", at=T0 + timedelta(seconds=1))
    folder = Rebuilder()
    for event in (created, stale, cancel):
        folder.add(event)
    expected = rebuild([created, stale, cancel])
    assert expected is not None
    assert folder.tasks[task_id] == expected
    assert folder.skipped == 1
    live = expected.model_copy(update={"state": TaskState.failed, "lease_expires_at": T0})
    assert differences(expected, live) == ["state: log says 'cancelled', table says 'failed'"]
    assert differences(expected, expected.model_copy(update={"lease_expires_at": T0})) == []
