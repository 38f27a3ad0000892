"""The ``TaskStore`` contract: record, read, list, log, idempotency, atomic batches."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest

from flowyard.core.errors import Conflict, IllegalTransition, StaleAttempt, TaskNotFound
from flowyard.core.events import TaskCreated, TaskDone, TaskProgress
from flowyard.core.task import TaskState, event_for, rebuild
from tests.contract.conftest import Ports, worker

pytestmark = pytest.mark.timeout(60)


async def test_record_then_get_list_and_events(ports: Ports) -> None:
    first = await ports.create(owner="alice")
    second = await ports.create(owner="bob", priority=5)
    assert await ports.store.get(first.id) == first
    assert second.priority == 5
    assert second.state is TaskState.queued
    assert [t.id for t in await ports.store.list()] == [second.id, first.id]
    assert [t.id for t in await ports.store.list(owner="alice")] == [first.id]
    assert await ports.store.list(state=TaskState.running) == []
    assert [e.type for e in await ports.store.events(first.id)] == ["task.created"]
    with pytest.raises(TaskNotFound):
        await ports.store.get(uuid.uuid4())


async def test_a_repeated_event_changes_nothing(ports: Ports) -> None:
    created = TaskCreated(task_id=uuid.uuid4(), flow="debug.sleep", owner="alice", params={})
    task = await ports.record(created)
    assert await ports.record(created) == task
    assert len(await ports.store.events(task.id)) == 1


async def test_a_batch_of_creates_sent_again_adds_only_the_new_tasks(ports: Ports) -> None:
    """A create sent again inside a batch (a client retrying) keeps its task as it is."""
    known = TaskCreated(task_id=uuid.uuid4(), flow="debug.sleep", owner="alice", params={})
    first = await ports.record(known)
    (claimed,) = await ports.queue.claim(worker(), 1)
    fresh = [
        TaskCreated(task_id=uuid.uuid4(), flow="debug.sleep", owner="alice", params={"n": n})
        for n in range(3)
    ]
    tasks = await ports.store.record_all([fresh[0], known, *fresh[1:]])
    assert [t.id for t in tasks] == [fresh[0].task_id, first.id, *(e.task_id for e in fresh[1:])]
    assert tasks[1].state is TaskState.running
    assert tasks[1].attempt == claimed.attempt
    assert [e.type for e in await ports.store.events(first.id)] == ["task.created", "task.claimed"]
    for event in fresh:
        stored = await ports.store.get(event.task_id)
        assert stored.params == event.params
        assert stored.state is TaskState.queued
        assert [e.id for e in await ports.store.events(event.task_id)] == [event.id]


async def test_a_stale_attempt_is_refused(ports: Ports) -> None:
    task = await ports.create()
    (claimed,) = await ports.queue.claim(worker(), 1)
    stale = event_for(task, TaskProgress, progress=0.5)  # attempt 0, the task is on 1
    with pytest.raises(StaleAttempt):
        await ports.record(stale)
    assert (await ports.store.get(task.id)).attempt == claimed.attempt == 1


async def test_a_batch_is_recorded_whole_or_not_at_all(ports: Ports) -> None:
    good = TaskCreated(task_id=uuid.uuid4(), flow="debug.sleep", owner="alice", params={})
    orphan = TaskDone(task_id=uuid.uuid4(), flow="debug.sleep", owner="alice", status="failed")
    with pytest.raises(IllegalTransition):
        await ports.store.record_all([good, orphan])
    with pytest.raises(TaskNotFound):
        await ports.store.get(good.task_id)
    tasks = await ports.store.record_all([good])
    assert [t.id for t in tasks] == [good.task_id]


async def test_an_idempotency_key_returns_the_first_task(ports: Ports) -> None:
    window = timedelta(hours=1)

    def created() -> TaskCreated:
        return TaskCreated(task_id=uuid.uuid4(), flow="debug.sleep", owner="alice", params={})

    first, fresh = await ports.store.record_keyed(created(), "k-1", "hash-a", window)
    again, repeat = await ports.store.record_keyed(created(), "k-1", "hash-a", window)
    assert fresh
    assert not repeat
    assert again.id == first.id
    with pytest.raises(Conflict):
        await ports.store.record_keyed(created(), "k-1", "hash-b", window)


async def test_delete_keeps_the_log(ports: Ports) -> None:
    task = await ports.create()
    await ports.store.delete(task.id)
    with pytest.raises(TaskNotFound):
        await ports.store.get(task.id)
    with pytest.raises(TaskNotFound):
        await ports.store.delete(task.id)
    assert [e.type for e in await ports.store.events(task.id)] == ["task.created"]


async def test_the_log_rebuilds_every_row(ports: Ports) -> None:
    done = await ports.create(priority=2)
    requeued = await ports.create()
    claimed = {t.id: t for t in await ports.queue.claim(worker(), 2)}
    w = worker()
    progress = event_for(claimed[done.id], TaskProgress, progress=0.5, message="half")
    await ports.queue.report(w, progress)
    result = event_for(claimed[done.id], TaskDone, status="succeeded", worker_id=w.id)
    await ports.queue.report(w, result)
    await ports.queue.release(w, claimed[requeued.id], "stopping")
    for task_id in (done.id, requeued.id):
        row = await ports.store.get(task_id)
        assert rebuild(list(await ports.store.events(task_id))) == row
    assert (await ports.store.get(done.id)).state is TaskState.succeeded
