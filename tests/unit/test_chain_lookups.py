"""Follow-ups are looked up once for the successes of many commits, and none is missed."""

from __future__ import annotations

import asyncio
import builtins
import uuid
from collections.abc import Collection
from datetime import datetime

from flowyard.adapters.memory import MemoryFiles, MemoryTaskStore
from flowyard.core.events import TaskClaimed, TaskCreated, TaskDone, utcnow
from flowyard.core.task import Task, event_for
from flowyard.flows.debug import Sleep
from flowyard.flows.registry import FlowRegistry
from flowyard.services import chains
from flowyard.services.chains import Chainer


class CountingStore(MemoryTaskStore):
    def __init__(self) -> None:
        super().__init__()
        self.lookups: list[int] = []

    async def chain_parents(
        self,
        since: datetime | None = None,
        limit: int = 500,
        *,
        among: Collection[uuid.UUID] | None = None,
    ) -> builtins.list[Task]:
        self.lookups.append(len(among or ()))
        return await super().chain_parents(since, limit, among=among)


def _succeed(store: MemoryTaskStore, then: tuple[dict[str, object], ...] = ()) -> TaskDone:
    created = TaskCreated(task_id=uuid.uuid4(), flow=Sleep.name, owner="a", then=then)
    task = store.commit([created])
    claimed = store.commit(
        [event_for(task[0], TaskClaimed, attempt=1, worker_id="w", lease_expires_at=utcnow())]
    )
    done = event_for(claimed[0], TaskDone, status="succeeded", worker_id="w")
    store.commit([done])
    return done


def _chainer(store: MemoryTaskStore) -> Chainer:
    registry = FlowRegistry({Sleep.name: Sleep})
    return Chainer(store, MemoryFiles(), registry, max_attempts=3, max_upload_bytes=1000)


async def test_successes_of_many_commits_share_one_lookup_of_their_follow_ups() -> None:
    store = CountingStore()
    chainer = _chainer(store)
    plain = [_succeed(store) for _ in range(30)]
    parent = _succeed(store, then=({"flow": Sleep.name},))
    for done in [*plain[:15], parent, *plain[15:]]:  # one commit each, as a busy worker's
        chainer.notice([done])
    await asyncio.sleep(chains.GATHER_SECONDS * 5)
    assert store.lookups == [31]
    assert len(await store.children(parent.task_id)) == 1

    later = _succeed(store, then=({"flow": Sleep.name},))
    chainer.notice([later])  # noticed after the look-up: a look-up of its own
    await asyncio.sleep(chains.GATHER_SECONDS * 5)
    assert store.lookups == [31, 1]
    assert len(await store.children(later.task_id)) == 1
    await chainer.close()


async def test_a_gathering_larger_than_one_read_is_looked_up_in_parts() -> None:
    store = CountingStore()
    chainer = _chainer(store)
    parents = [_succeed(store, then=({"flow": Sleep.name},)) for _ in range(7)]
    original, chains.LOOKUP_IDS = chains.LOOKUP_IDS, 3
    try:
        chainer.notice(parents)
        await asyncio.sleep(chains.GATHER_SECONDS * 5)
    finally:
        chains.LOOKUP_IDS = original
    assert store.lookups == [3, 3, 1]
    for parent in parents:
        assert len(await store.children(parent.task_id)) == 1
    await chainer.close()
