"""``TaskService`` on the in-memory ports: validation, scoping by owner, and the use cases."""

from __future__ import annotations

import asyncio
import contextlib
import types
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from flowyard.adapters.memory import MemoryFiles, MemoryTaskStore, MemoryWorkQueue
from flowyard.core.errors import InvalidInput, TaskNotFound, UploadTooLarge
from flowyard.core.events import TaskDone
from flowyard.core.identity import Principal, Role
from flowyard.core.ports import WorkerIdentity
from flowyard.core.task import TaskState, event_for
from flowyard.flows.debug import Sleep
from flowyard.flows.image import Blur
from flowyard.flows.registry import FlowRegistry
from flowyard.services.task_service import NewTask, TaskService, Upload

ALICE = Principal("alice", Role.user)
BOB = Principal("bob", Role.user)
ADMIN = Principal("root", Role.admin)


@pytest.fixture
def files() -> MemoryFiles:
    return MemoryFiles()


@pytest.fixture
def service(files: MemoryFiles) -> TaskService:
    flows = FlowRegistry({Sleep.name: Sleep, Blur.name: Blur})
    return TaskService(MemoryTaskStore(), files, flows, max_upload_bytes=10, max_attempts=3)


def sleep(owner: str = "alice", idempotency_key: str | None = None) -> NewTask:
    return NewTask(
        flow="debug.sleep", params={"seconds": 0}, owner=owner, idempotency_key=idempotency_key
    )


async def test_create_stores_the_task_and_its_input(service: TaskService) -> None:
    task = await service.create(
        NewTask(flow="image.blur", params={"radius": 2}, owner="alice"),
        [Upload("photo.png", _chunks(b"png"))],
    )
    assert task.state is TaskState.queued
    assert task.params["radius"] == 2
    assert [ref.name for ref in task.inputs] == ["photo.png"]
    assert task.max_attempts == 3


async def test_validation_refuses_before_anything_is_stored(service: TaskService) -> None:
    with pytest.raises(InvalidInput, match="flow"):
        await service.create(NewTask(flow="nope", params={}))
    with pytest.raises(InvalidInput):
        await service.create(NewTask(flow="debug.sleep", params={"seconds": -1}))
    with pytest.raises(InvalidInput, match="inputs"):
        await service.create(NewTask(flow="image.blur", params={}))
    with pytest.raises(UploadTooLarge):
        await service.create(
            NewTask(flow="image.blur", params={}), [Upload("big.png", _chunks(b"x" * 11))]
        )
    assert await service.list(ADMIN) == []


async def test_someone_elses_task_is_not_found(service: TaskService) -> None:
    task = await service.create(sleep("alice"))
    assert (await service.get(task.id, ALICE)).id == task.id
    assert (await service.get(task.id, ADMIN)).id == task.id
    for action in (service.get, service.cancel, service.retry, service.delete, service.events):
        with pytest.raises(TaskNotFound):
            await action(task.id, BOB)
    assert await service.list(BOB) == []
    assert await service.list(BOB, owner="alice") == []
    assert [t.id for t in await service.list(ADMIN, owner="alice")] == [task.id]


async def test_cancel_retry_and_delete(service: TaskService) -> None:
    task = await service.create(sleep())
    cancelled = await service.cancel(task.id, ALICE)
    assert cancelled.state is TaskState.cancelled
    retried = await service.retry(task.id, ALICE)
    assert retried.state is TaskState.queued
    assert retried.max_attempts == 3
    await service.delete(task.id, ALICE)
    with pytest.raises(TaskNotFound):
        await service.get(task.id, ALICE)


async def test_cancel_of_a_running_task_asks_its_worker(service: TaskService) -> None:
    task = await service.create(sleep())
    assert isinstance(service.store, MemoryTaskStore)
    queue = MemoryWorkQueue(service.store)
    worker = WorkerIdentity(id="w", name="w", host="h", flows=("debug.sleep",))
    (claimed,) = await queue.claim(worker, 1)
    asked = await service.cancel(task.id, ALICE)
    assert asked.state is TaskState.running
    assert asked.cancel_requested
    await queue.report(worker, event_for(claimed, TaskDone, status="cancelled", worker_id="w"))
    assert (await service.get(task.id, ALICE)).state is TaskState.cancelled


async def test_an_idempotency_key_makes_one_task(service: TaskService) -> None:
    first, fresh = await service.create_keyed(sleep(idempotency_key="order-1"))
    again, repeat = await service.create_keyed(sleep(idempotency_key="order-1"))
    assert fresh
    assert not repeat
    assert again.id == first.id
    assert len(await service.list(ADMIN)) == 1


async def test_a_batch_is_all_or_nothing(service: TaskService) -> None:
    with pytest.raises(InvalidInput, match=r"tasks\[1\]"):
        await service.create_batch([sleep(), NewTask(flow="nope", params={})], limit=10)
    assert await service.list(ADMIN) == []
    made = await service.create_batch([sleep(), sleep("bob")], limit=10)
    assert {t.owner for t in made} == {"alice", "bob"}


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data


class _Flood:
    """An event source whose subscription never falls quiet: other tasks' events every 20 ms."""

    @contextlib.asynccontextmanager
    async def subscription(self) -> AsyncIterator[asyncio.Queue[Any]]:
        queue: asyncio.Queue[Any] = asyncio.Queue()

        async def flood() -> None:
            while True:
                queue.put_nowait(types.SimpleNamespace(task_id=uuid.uuid4()))
                await asyncio.sleep(0.02)

        feeder = asyncio.create_task(flood())
        try:
            yield queue
        finally:
            feeder.cancel()


async def test_a_waiting_client_that_left_is_noticed_whatever_else_happens(
    service: TaskService,
) -> None:
    """Other tasks' events keep coming faster than the poll: the client's leaving is still
    asked about every ``poll`` seconds, and its task cancelled."""
    task = await service.create(sleep())
    asked: list[float] = []
    loop = asyncio.get_running_loop()

    async def gone() -> bool:
        asked.append(loop.time())
        return len(asked) > 1  # there at the first question, gone at the second

    started = loop.time()
    final = await asyncio.wait_for(
        service.wait(task.id, ALICE, 30, _Flood(), gone=gone, cancel_on_gone=True, poll=0.2), 5
    )
    assert final.state is TaskState.cancelled
    assert loop.time() - started < 2
