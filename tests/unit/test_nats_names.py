"""The pure parts of the NATS transport: names, subjects, config comparison, catch-up."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StreamConfig

from flowyard.bus.nats.broker import NatsAuth, check_url
from flowyard.bus.nats.streams import (
    consumer_differences,
    events_stream_config,
    server_consumer_config,
    stream_differences,
    work_consumer,
    work_consumer_config,
    work_stream,
    work_stream_config,
)
from flowyard.bus.nats.subjects import (
    cancel_subject,
    event_subject,
    lease_subject,
    name_token,
    split_work_subject,
    subject_for,
    wake_subject,
    work_subject,
    workers_subject,
)
from flowyard.bus.nats.worker_events import check_subject
from flowyard.bus.nats.worker_protocol import NATS_LEASES
from flowyard.core.errors import ConfigError
from flowyard.core.events import (
    Event,
    TaskCancelRequested,
    TaskClaimed,
    TaskCreated,
    TaskDone,
    TaskProgress,
    TaskRequeued,
)
from flowyard.core.redelivery import catch_up
from flowyard.core.task import Task, TaskState, apply

NOW = datetime(2026, 1, 1, tzinfo=UTC)
TASK = uuid.uuid4()


# ------------------------------------------------------------------------------ names


@pytest.mark.parametrize(
    ("value", "expected"),
    [("alice", "alice"), ("image.blur", "image_blur"), ("a-b_c9", "a-b_c9"), ("x y", "x_y")],
)
def test_plain_names_stay_readable(value: str, expected: str) -> None:
    assert name_token(value) == expected


def test_names_that_need_replacing_stay_distinct() -> None:
    assert name_token("a@b") != name_token("a_b")
    assert name_token("a@b") != name_token("a#b")
    assert name_token("a@b").startswith("a_b_")
    assert name_token("") != ""
    # owners whose subject tokens coincide also coincide here (they share a namespace)
    assert name_token("a.b") == name_token("a_b")


def test_work_lives_in_one_stream_per_owner_with_a_consumer_per_flow() -> None:
    assert work_subject("alice", "image.blur") == "flowyard.work.alice.image_blur"
    assert work_stream("alice") == "FLOWYARD_WORK_alice"
    assert work_consumer("image.blur") == "image_blur"
    config = work_stream_config("alice")
    assert config.subjects == ["flowyard.work.alice.*"]
    assert config.retention == RetentionPolicy.WORK_QUEUE
    consumer = work_consumer_config("alice", "image.blur", lease_seconds=30, max_attempts=3)
    assert consumer.filter_subject == work_subject("alice", "image.blur")
    assert (consumer.ack_wait, consumer.max_deliver) == (30, 3)
    assert consumer.ack_policy == AckPolicy.EXPLICIT


def test_consumer_filters_of_a_stream_never_overlap() -> None:
    flows = ["image.blur", "image.edges", "debug.sleep"]
    filters = [work_consumer_config("bob", f, lease_seconds=1, max_attempts=1) for f in flows]
    subjects = [c.filter_subject for c in filters]
    assert len(set(subjects)) == len(subjects)
    assert all("*" not in s and ">" not in s for s in subjects if s)  # exact subjects only


@pytest.mark.parametrize(
    "event",
    [
        TaskCreated(task_id=TASK, flow="image.blur", owner="alice"),
        TaskClaimed(
            task_id=TASK, flow="image.blur", owner="alice", worker_id="w", lease_expires_at=NOW
        ),
        TaskProgress(task_id=TASK, flow="image.blur", owner="alice", progress=0.5),
        TaskCancelRequested(task_id=TASK, flow="image.blur", owner="alice"),
        TaskRequeued(task_id=TASK, flow="image.blur", owner="alice", reason="r"),
        TaskDone(task_id=TASK, flow="image.blur", owner="alice", status="succeeded"),
    ],
)
def test_the_relay_derives_subject_for_from_stored_columns(event: Event) -> None:
    assert event_subject(event.type, event.owner, event.flow) == subject_for(event)
    assert check_subject(subject_for(event), event) == ""


def test_a_subject_that_does_not_match_its_event_is_named() -> None:
    done = TaskDone(task_id=TASK, flow="debug.sleep", owner="alice", status="succeeded")
    assert "does not match" in check_subject("flowyard.events.done.mallory.debug_sleep", done)
    assert check_subject("flowyard.events.claimed.alice.debug_sleep", done)


def test_core_subjects_carry_owner_and_flow() -> None:
    assert cancel_subject(None, "debug.sleep") == "flowyard.events.cancel_requested.*.debug_sleep"
    assert (
        cancel_subject("bob", "debug.sleep") == "flowyard.events.cancel_requested.bob.debug_sleep"
    )
    assert lease_subject("bob", "a.b") == "flowyard.rpc.lease.bob.a_b"
    assert workers_subject(None) == "flowyard.workers._all"
    assert workers_subject("bob") == "flowyard.workers.bob"
    assert split_work_subject(wake_subject("bob", "a_b")) == ("bob", "a_b")
    assert split_work_subject("flowyard.events.done.bob.x") is None


# ----------------------------------------------------------------------------- configs


def test_an_unchanged_consumer_has_no_differences() -> None:
    desired = work_consumer_config("a", "f", lease_seconds=30, max_attempts=3)
    # what the server reports back: nanoseconds turned to float seconds, enums as values
    reported = ConsumerConfig.from_response(
        {
            "durable_name": "f",
            "ack_policy": "explicit",
            "ack_wait": 30_000_000_000,
            "max_deliver": 3,
            "max_ack_pending": 10_000,
            "filter_subject": "flowyard.work.a.f",
            "deliver_policy": "all",
        }
    )
    assert consumer_differences(reported, desired) == []


def test_a_changed_lease_or_attempt_limit_is_a_difference() -> None:
    old = work_consumer_config("a", "f", lease_seconds=30, max_attempts=3)
    new = work_consumer_config("a", "f", lease_seconds=10, max_attempts=5)
    diffs = consumer_differences(old, new)
    assert any(d.startswith("ack_wait") for d in diffs)
    assert any(d.startswith("max_deliver") for d in diffs)


def test_filters_compare_as_sets_however_the_server_spells_them() -> None:
    desired = server_consumer_config()
    one = ConsumerConfig(
        durable_name=desired.durable_name,
        filter_subjects=list(reversed(desired.filter_subjects or [])),
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=30,
        max_deliver=-1,
        max_ack_pending=20_000,
        deliver_policy=desired.deliver_policy,
    )
    assert consumer_differences(one, desired) == []
    narrower = ConsumerConfig(**{**one.as_dict(), "filter_subjects": ["flowyard.events.done.>"]})
    assert consumer_differences(narrower, desired)[0].startswith("filters")


def test_stream_differences_name_missing_subjects_and_limits() -> None:
    desired = events_stream_config(max_age_hours=24, max_bytes=-1)
    same = StreamConfig.from_response(desired.as_dict())  # as the server reports it back
    assert stream_differences(same, desired) == []
    older = StreamConfig.from_response(
        {**desired.as_dict(), "subjects": ["other.>"], "max_age": 3600 * 10**9}
    )
    diffs = stream_differences(older, desired)
    assert any(d.startswith("max_age") for d in diffs)
    assert any("missing" in d for d in diffs)


# ---------------------------------------------------------------------------- catch-up


def _task(state: TaskState = TaskState.queued, attempt: int = 0, max_attempts: int = 3) -> Task:
    return Task(
        id=TASK,
        flow="debug.sleep",
        owner="admin",
        state=state,
        attempt=attempt,
        max_attempts=max_attempts,
        worker_id="nats:h/w1" if state is TaskState.running else None,
        created_at=NOW,
        updated_at=NOW,
    )


def _claim(attempt: int) -> TaskClaimed:
    return TaskClaimed(
        task_id=TASK,
        flow="debug.sleep",
        owner="admin",
        attempt=attempt,
        worker_id="nats:h/w2",
        lease_expires_at=NOW + timedelta(seconds=30),
    )


def _done(attempt: int) -> TaskDone:
    return TaskDone(
        task_id=TASK, flow="debug.sleep", owner="admin", attempt=attempt, status="succeeded"
    )


def test_a_claim_for_the_next_attempt_needs_nothing() -> None:
    assert catch_up(_task(), _claim(1), NOW, NATS_LEASES) == []
    assert catch_up(_task(TaskState.running, 1), _done(1), NOW, NATS_LEASES) == []


def test_a_redelivery_requeues_the_attempt_it_replaces() -> None:
    task = _task(TaskState.running, 1)
    (step,) = catch_up(task, _claim(2), NOW, NATS_LEASES)
    assert isinstance(step, TaskRequeued)
    assert step.attempt == 1
    assert NATS_LEASES.redelivered in step.reason
    after = apply(apply(task, step), _claim(2))
    assert (after.state, after.attempt, after.worker_id) == (TaskState.running, 2, "nats:h/w2")


def test_unreported_deliveries_are_filled_in() -> None:
    steps = catch_up(_task(), _claim(3), NOW, NATS_LEASES)
    assert [(s.type, s.attempt) for s in steps] == [
        ("task.claimed", 1),
        ("task.requeued", 1),
        ("task.claimed", 2),
        ("task.requeued", 2),
    ]
    assert all(
        s.worker_id == NATS_LEASES.unreported_worker for s in steps if isinstance(s, TaskClaimed)
    )
    task = _task()
    for step in [*steps, _claim(3)]:
        task = apply(task, step)
    assert (task.state, task.attempt) == (TaskState.running, 3)


def test_a_result_that_overtook_its_claim_gets_a_stand_in_claim() -> None:
    (step,) = catch_up(_task(), _done(1), NOW, NATS_LEASES)
    assert isinstance(step, TaskClaimed)
    assert step.worker_id == NATS_LEASES.unreported_worker
    assert apply(apply(_task(), step), _done(1)).state is TaskState.succeeded
    # a result that names its worker: the stand-in claim is that worker's, as apply requires
    signed = _done(1).model_copy(update={"worker_id": "nats:h/w2"})
    (step,) = catch_up(_task(), signed, NOW, NATS_LEASES)
    assert isinstance(step, TaskClaimed)
    assert step.worker_id == "nats:h/w2"
    assert apply(apply(_task(), step), signed).state is TaskState.succeeded


def test_a_redelivery_past_the_last_attempt_fails_the_task() -> None:
    (step,) = catch_up(_task(TaskState.running, 3, max_attempts=3), _claim(4), NOW, NATS_LEASES)
    assert isinstance(step, TaskDone)
    assert step.status == "failed"


def test_nothing_catches_up_a_finished_task_or_a_progress_report() -> None:
    finished = apply(_task(TaskState.running, 1), _done(1))
    assert catch_up(finished, _claim(2), NOW, NATS_LEASES) == []
    progress = TaskProgress(task_id=TASK, flow="debug.sleep", owner="admin", attempt=2, progress=1)
    assert catch_up(_task(TaskState.running, 1), progress, NOW, NATS_LEASES) == []


# -------------------------------------------------------------------------------- auth


def test_auth_options_are_checked_before_connecting(tmp_path: Path) -> None:
    NatsAuth().check()
    NatsAuth("u", "p").check()
    with pytest.raises(ConfigError, match="go together"):
        NatsAuth("u", None).check()
    with pytest.raises(ConfigError, match="not both"):
        NatsAuth("u", "p", tmp_path / "x.creds").check()
    with pytest.raises(ConfigError, match="does not exist"):
        NatsAuth(creds=tmp_path / "missing.creds").check()
    with pytest.raises(ConfigError, match="nats://"):
        check_url("http://localhost:4222")
