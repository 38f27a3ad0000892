"""The NATS reconciler's decisions, with JetStream and the database faked.

What is checked here is what a store loss exposed: a round that fails does not
stop the reconciler, a queued task with no live message is sent again, a
message that was delivered but never claimed is replaced, and a task sent again
and again without any claim arriving is failed with a clear error.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import Any

import nats.js.errors
import pytest

from flowyard.bus.nats.reconcile import Cursor, Reconciler
from flowyard.core.events import Event, TaskCreated, TaskDone, utcnow
from flowyard.core.task import Task, apply


def queued_task(attempt: int = 0) -> Task:
    created = TaskCreated(
        task_id=uuid.uuid4(), flow="debug.sleep", at=utcnow() - timedelta(minutes=5)
    )
    task = apply(None, created)
    return task.model_copy(update={"attempt": attempt})


@dataclass
class FakeRecords:
    tasks: list[Task]
    failed: list[tuple[uuid.UUID, int, str]] = field(default_factory=list)
    broken: int = 0
    """Raise this many times from ``queued`` first (a bug or an outage)."""

    async def queued(
        self, updated_before: datetime, limit: int = 1000, after: Cursor | None = None
    ) -> list[Task]:
        if self.broken:
            self.broken -= 1
            raise RuntimeError("boom")
        if after is not None:
            return []
        done = {task_id for task_id, _, _ in self.failed}
        return [t for t in self.tasks if t.id not in done][:limit]

    async def stale_running(self, before: datetime, limit: int = 100) -> list[Task]:
        return []

    async def expire(
        self, task_id: uuid.UUID, before: datetime, reason: str, now: datetime | None = None
    ) -> tuple[Event, Task] | None:
        return None

    async def states(self, task_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, tuple[str, int]]:
        return {t.id: ("queued", t.attempt) for t in self.tasks if t.id in set(task_ids)}

    async def fail_stuck(
        self, task_id: uuid.UUID, attempt: int, error: str, now: datetime | None = None
    ) -> TaskDone | None:
        self.failed.append((task_id, attempt, error))
        task = next(t for t in self.tasks if t.id == task_id)
        return TaskDone(
            task_id=task_id, flow=task.flow, owner=task.owner, attempt=attempt, status="failed"
        )


@dataclass
class FakeDispatcher:
    sent: list[tuple[uuid.UUID, int]] = field(default_factory=list)

    async def ensure(self, owner: str, flow: str) -> None:
        return None

    async def send(self, created: TaskCreated, *, base: int, msg_id: str) -> None:
        self.sent.append((created.task_id, base))

    async def wake(self, owner: str, flow: str) -> None:
        return None


@dataclass
class FakeJetStream:
    """One work subject: ``messages`` (task id by sequence), delivered up to ``delivered``."""

    messages: dict[int, uuid.UUID] = field(default_factory=dict)
    delivered: int = 0
    deleted: list[int] = field(default_factory=list)
    stream_exists: bool = True

    async def stream_info(self, stream: str, subjects_filter: str | None = None) -> Any:
        if not self.stream_exists:
            raise nats.js.errors.NotFoundError
        return SimpleNamespace(
            state=SimpleNamespace(subjects={subjects_filter: len(self.messages)})
        )

    async def get_msg(self, stream: str, seq: int, subject: str, next: bool) -> Any:
        for found in sorted(self.messages):
            if found >= seq:
                body = TaskCreated(task_id=self.messages[found], flow="debug.sleep").to_json()
                return SimpleNamespace(seq=found, data=body.encode())
        raise nats.js.errors.NotFoundError

    async def consumer_info(self, stream: str, consumer: str) -> Any:
        return SimpleNamespace(
            delivered=SimpleNamespace(stream_seq=self.delivered), num_pending=0, num_ack_pending=0
        )

    async def delete_msg(self, stream: str, seq: int) -> None:
        self.deleted.append(seq)
        self.messages.pop(seq, None)


def reconciler(
    records: FakeRecords, js: FakeJetStream, dispatcher: FakeDispatcher, **options: Any
) -> Reconciler:
    return Reconciler(
        records,
        dispatcher,  # type: ignore[arg-type]
        js,  # type: ignore[arg-type]
        lease_seconds=2.0,
        connected_for=lambda: 0.0,
        **options,
    )


async def test_a_queued_task_whose_stream_is_gone_is_sent_again() -> None:
    task = queued_task()
    js, dispatcher = FakeJetStream(stream_exists=False), FakeDispatcher()
    await reconciler(FakeRecords([task]), js, dispatcher).once()
    assert dispatcher.sent == [(task.id, 0)]


async def test_a_failing_round_is_logged_and_the_next_round_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    task = queued_task()
    records = FakeRecords([task], broken=1)
    dispatcher = FakeDispatcher()
    rec = reconciler(records, FakeJetStream(stream_exists=False), dispatcher)
    await rec.once()  # must not raise
    assert "reconciling queued tasks failed" in caplog.text
    assert dispatcher.sent == []
    await rec.once()
    assert dispatcher.sent == [(task.id, 0)]


async def test_a_delivered_but_never_claimed_message_is_replaced_after_dead_after() -> None:
    task = queued_task(attempt=1)
    js = FakeJetStream(messages={7: task.id}, delivered=7)
    dispatcher = FakeDispatcher()
    rec = reconciler(FakeRecords([task]), js, dispatcher, dead_after=0.0)
    await rec.once()  # first sight: remembered
    assert dispatcher.sent == [(task.id, 1)]
    assert js.deleted == [7]


async def test_a_message_not_yet_delivered_is_left_alone() -> None:
    task = queued_task()
    js = FakeJetStream(messages={7: task.id}, delivered=6)
    dispatcher = FakeDispatcher()
    rec = reconciler(FakeRecords([task]), js, dispatcher, dead_after=0.0)
    await rec.once()
    assert dispatcher.sent == []
    assert js.deleted == []


async def test_a_delivered_message_waits_dead_after_before_it_is_replaced() -> None:
    task = queued_task()
    js = FakeJetStream(messages={7: task.id}, delivered=7)
    dispatcher = FakeDispatcher()
    rec = reconciler(FakeRecords([task]), js, dispatcher, dead_after=3600.0)
    await rec.once()
    await rec.once()
    assert dispatcher.sent == []


async def test_work_sent_again_and_again_without_a_claim_fails_the_task_clearly() -> None:
    task = queued_task()
    records = FakeRecords([task])
    dispatcher = FakeDispatcher()
    rec = reconciler(records, FakeJetStream(stream_exists=False), dispatcher, max_resends=3)
    for _ in range(5):
        await rec.once()
    assert dispatcher.sent == [(task.id, 0)] * 3
    [(task_id, attempt, error)] = records.failed
    assert (task_id, attempt) == (task.id, 0)
    assert "sent 3 times" in error
    assert "no worker's claim" in error
    assert rec.failed == 1
