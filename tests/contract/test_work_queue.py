"""The ``WorkQueue`` contract: leased claims by priority, heartbeats, reports, release.

The NATS work queue is not a parameter here: its claims come from JetStream work
messages that only the server's relay, scheduler and consumer turn into task
rows (``services/nats_server.py``), so it cannot stand alone beside a store; the
same behaviours run against it end to end in
``tests/integration/test_task_operations_transports.py``.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from flowyard.core.errors import LeaseLost
from flowyard.core.events import FileRef, TaskCancelRequested, TaskDone, TaskProgress, utcnow
from flowyard.core.ports import Heartbeat, Refill
from flowyard.core.task import TaskState, apply, event_for
from tests.contract.conftest import Ports, worker

pytestmark = pytest.mark.timeout(60)


async def test_claim_takes_the_highest_priority_first_then_the_oldest(ports: Ports) -> None:
    low = await ports.create(priority=0)
    high = await ports.create(priority=9)
    older_mid = await ports.create(priority=5)
    newer_mid = await ports.create(priority=5)
    first = await ports.queue.claim(worker(), 2)
    assert [t.id for t in first] == [high.id, older_mid.id]
    assert all(t.state is TaskState.running and t.attempt == 1 for t in first)
    assert all(t.worker_id == worker().id and t.lease_expires_at is not None for t in first)
    rest = await ports.queue.claim(worker(), 5)
    assert [t.id for t in rest] == [newer_mid.id, low.id]
    assert await ports.queue.claim(worker(), 5) == []


async def test_claim_respects_not_before_owner_and_flows(ports: Ports) -> None:
    later = await ports.create(not_before=utcnow() + timedelta(hours=1))
    bobs = await ports.create(owner="bob")
    other_flow = await ports.create(flow="image.blur")
    alices = await ports.create(owner="alice")
    claimed = await ports.queue.claim(worker(owner="alice"), 10)
    assert [t.id for t in claimed] == [alices.id]
    claimed = await ports.queue.claim(worker(), 10)
    assert [t.id for t in claimed] == [bobs.id]
    assert (await ports.store.get(later.id)).state is TaskState.queued
    assert (await ports.store.get(other_flow.id)).state is TaskState.queued


async def test_a_report_finishes_the_attempt(ports: Ports) -> None:
    await ports.create()
    w = worker()
    (task,) = await ports.queue.claim(w, 1)
    await ports.queue.report(w, event_for(task, TaskDone, status="succeeded", worker_id=w.id))
    assert (await ports.store.get(task.id)).state is TaskState.succeeded


async def test_release_requeues_for_a_new_attempt(ports: Ports) -> None:
    await ports.create()
    w = worker()
    (task,) = await ports.queue.claim(w, 1)
    await ports.queue.release(w, task, "worker stopping")
    assert (await ports.store.get(task.id)).state is TaskState.queued
    (again,) = await ports.queue.claim(worker("w2"), 1)
    assert again.id == task.id
    assert again.attempt == 2


async def test_a_stale_attempts_report_is_refused(ports: Ports) -> None:
    await ports.create()
    w1, w2 = worker("w1"), worker("w2")
    (old,) = await ports.queue.claim(w1, 1)
    await ports.queue.release(w1, old, "lost")
    await ports.queue.claim(w2, 1)
    with pytest.raises(LeaseLost):
        await ports.queue.report(w1, event_for(old, TaskDone, status="succeeded", worker_id=w1.id))
    assert (await ports.store.get(old.id)).state is TaskState.running


async def test_heartbeat_extends_held_leases_and_answers_lost_for_the_others(
    ports: Ports,
) -> None:
    for _ in range(3):
        await ports.create()
    w = worker()
    task, other, third = await ports.queue.claim(w, 3)
    before = (await ports.store.get(task.id)).lease_expires_at
    assert before is not None
    await asyncio.sleep(0.01)
    beats = await ports.queue.heartbeat(w, [task, other, third])
    assert [isinstance(b, Heartbeat) and not b.cancel_requested for b in beats] == [True] * 3
    after = (await ports.store.get(task.id)).lease_expires_at
    assert after is not None
    assert after > before
    await ports.record(event_for(task, TaskCancelRequested))
    await ports.queue.release(w, other, "stopping")
    beats = await ports.queue.heartbeat(w, [task, other, third])
    assert isinstance(beats[0], Heartbeat)
    assert beats[0].cancel_requested
    assert isinstance(beats[1], LeaseLost)  # released: no longer ours
    assert isinstance(beats[2], Heartbeat)
    assert not beats[2].cancel_requested
    (lost,) = await ports.queue.heartbeat(worker("someone-else"), [third])
    assert isinstance(lost, LeaseLost)
    assert await ports.queue.heartbeat(w, []) == []


async def test_reap_requeues_an_expired_lease(ports: Ports) -> None:
    await ports.create()
    (task,) = await ports.queue.claim(worker(), 1)
    assert await ports.queue.reap(now=utcnow() + timedelta(hours=1)) == 1
    reaped = await ports.store.get(task.id)
    assert reaped.state is TaskState.queued
    assert reaped.worker_id is None


async def test_wait_for_work_is_woken_by_a_new_task(ports: Ports) -> None:
    assert await ports.queue.claim(worker(), 1) == []
    waiting = asyncio.create_task(ports.queue.wait_for_work(30))
    await asyncio.sleep(0.05)
    started = asyncio.get_running_loop().time()
    await ports.create()
    await asyncio.wait_for(waiting, 5)
    assert asyncio.get_running_loop().time() - started < 5
    assert len(await ports.queue.claim(worker(), 1)) == 1


async def test_wait_for_work_ends_when_a_scheduled_task_falls_due(ports: Ports) -> None:
    """Nothing wakes the worker for a task that becomes due: ``wait_for_work`` reads when
    the earliest one is due (after a claim that came up short) and stops waiting then."""
    due = utcnow() + timedelta(seconds=0.4)
    await ports.create(not_before=due)
    assert await ports.queue.claim(worker(), 1) == []
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.wait_for(ports.queue.wait_for_work(30), 10)
    assert loop.time() - started < 5
    assert utcnow() >= due
    assert len(await ports.queue.claim(worker(), 1)) == 1


async def test_report_many_records_each_and_refuses_only_the_stale_one(ports: Ports) -> None:
    for _ in range(4):
        await ports.create()
    w1, w2 = worker("w1"), worker("w2")
    first, *others = await ports.queue.claim(w1, 4)
    await ports.queue.release(w1, first, "lost")
    (taken_over,) = await ports.queue.claim(w2, 1)
    assert taken_over.id == first.id
    events = [event_for(t, TaskDone, status="succeeded", worker_id=w1.id) for t in [first, *others]]
    outcomes = (await ports.queue.report_many(w1, events)).refused
    assert isinstance(outcomes[0], LeaseLost)
    assert outcomes[1:] == [None, None, None]
    assert (await ports.store.get(first.id)).state is TaskState.running  # w2's attempt stands
    for task in others:
        assert (await ports.store.get(task.id)).state is TaskState.succeeded
    again = await ports.queue.report_many(w1, events[1:])  # the same events: no change
    assert again.refused == [None, None, None]


async def test_report_many_claims_the_freed_slots_in_the_same_write(ports: Ports) -> None:
    """A ``Refill`` claims queued work in the write of the results that free its slots,
    also when a stale result in the batch sends the write event by event."""
    for _ in range(6):
        await ports.create()
    w1, w2 = worker("w1"), worker("w2")
    first, second = await ports.queue.claim(w1, 2)
    reported = await ports.queue.report_many(
        w1, [event_for(first, TaskDone, status="succeeded", worker_id=w1.id)], Refill(w1, 2)
    )
    assert reported.refused == [None]
    assert len(reported.claimed) == 2
    for task in reported.claimed:
        stored = await ports.store.get(task.id)
        assert (stored.state, stored.worker_id, stored.attempt) == (TaskState.running, w1.id, 1)
        assert task.attempt == 1
    await ports.queue.release(w1, second, "lost")
    (taken_over,) = await ports.queue.claim(w2, 1)
    assert taken_over.id == second.id
    stale = event_for(second, TaskDone, status="succeeded", worker_id=w1.id)
    again = await ports.queue.report_many(w1, [stale], Refill(w1, 5))
    assert isinstance(again.refused[0], LeaseLost)
    assert len(again.claimed) == 2  # what was left
    assert await ports.queue.claim(w1, 5) == []


async def test_report_many_leaves_each_task_as_folding_its_events_would(ports: Ports) -> None:
    """Results written in one batch (without reading their rows) leave every task exactly
    as ``apply`` folds its events: statuses, outputs, errors, progress, the log."""
    for _ in range(3):
        await ports.create()
    w = worker()
    ok, bad, stopped = await ports.queue.claim(w, 3)
    progress = event_for(bad, TaskProgress, progress=0.4, message="half way")
    await ports.queue.report(w, progress)
    output = FileRef(name="a.txt", path="attempts/1/outputs/a.txt", size=3)
    events = [
        event_for(ok, TaskDone, status="succeeded", outputs=(output,), worker_id=w.id),
        event_for(bad, TaskDone, status="failed", error="boom " * 400, worker_id=w.id),
        event_for(stopped, TaskDone, status="cancelled", error="cancelled", worker_id=w.id),
    ]
    assert (await ports.queue.report_many(w, events)).refused == [None, None, None]
    for claimed, event in zip((ok, bad, stopped), events, strict=True):
        stored = await ports.store.get(claimed.id)
        folded = apply(claimed, event)
        if claimed is bad:
            folded = apply(apply(claimed, progress), event)
        assert stored.model_dump(exclude={"updated_at"}) == folded.model_dump(
            exclude={"updated_at"}
        )
        assert [e.id for e in await ports.store.events(claimed.id)][-1] == event.id
    assert (await ports.store.get(bad.id)).progress == 0.4  # a failure keeps its progress
