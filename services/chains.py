"""Chains: when a task with follow-ups (``then``) succeeds, create them, its outputs their inputs.

Every transport ends a task by recording ``task.done``; this runs where those
commits are seen (default mode: the commit listener; server mode: the event
tailer, which also sees database and NATS workers' results), plus a sweep at
start for what a stopped server missed. Children get ids derived from the
parent's (``uuid5(parent, "then/<index>")``), so two servers, a sweep and a
listener may all try: the second ``task.created`` of the same task changes
nothing. A child's ``task.created`` carries ``parent_id``; the parent's children
are the tasks that name it.

A parent's outputs become the child's inputs by name first, then in order.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from pathlib import Path

import aiofiles

from flowyard.core.errors import FlowNotFound, FlowyardError, TaskNotFound
from flowyard.core.events import ChainStep, Event, FileRef, TaskCreated, TaskDone, utcnow
from flowyard.core.flow import Flow, InputSpec
from flowyard.core.ports import ChainFiles, ChainStore, FlowSource
from flowyard.core.task import Task, TaskState

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024
GATHER_SECONDS = 0.02
"""Successes noticed within this share one look-up of their follow-ups: a busy worker
commits a few results at a time, and a read per commit cost default mode's drain
about 8% of its CPU. A follow-up is created this much later at most."""
LOOKUP_IDS = 500
"""Ids per look-up at most (the store's limit on parents returned by one read)."""


def child_id(parent: uuid.UUID, index: int) -> uuid.UUID:
    return uuid.uuid5(parent, f"then/{index}")


def pair_outputs(
    outputs: Sequence[FileRef], inputs: Sequence[InputSpec]
) -> list[tuple[InputSpec, FileRef]]:
    """Which parent output feeds which child input: the same name, else the next in order."""
    left = list(outputs)
    pairs = []
    for spec in inputs:
        match = next((ref for ref in left if ref.name == spec.name), None)
        if match is None and left:
            match = left[0]
        if match is None:
            break
        left.remove(match)
        pairs.append((spec, match))
    return pairs


class Chainer:
    def __init__(
        self,
        store: ChainStore,
        files: ChainFiles,
        flows: FlowSource,
        *,
        max_attempts: int,
        max_upload_bytes: int,
    ) -> None:
        self.store = store
        self.files = files
        self.flows = flows
        self.max_attempts = max_attempts
        self.max_upload_bytes = max_upload_bytes
        self._jobs: set[asyncio.Task[object]] = set()
        self._noticed: set[uuid.UUID] = set()
        """Successes waiting for their look-up (``GATHER_SECONDS``), by ``_gathering``."""
        self._gathering: asyncio.Task[object] | None = None

    def notice(self, events: Sequence[Event]) -> None:
        """Commit listener: successes may have follow-ups to create (the work runs later,
        one read for all the successes of the commits of ``GATHER_SECONDS``)."""
        succeeded = {
            event.task_id
            for event in events
            if isinstance(event, TaskDone) and event.status == "succeeded"
        }
        if not succeeded:
            return
        self._noticed |= succeeded
        if self._gathering is None or self._gathering.done():
            job = asyncio.get_running_loop().create_task(self._look_up_gathered())
            self._jobs.add(job)
            job.add_done_callback(self._jobs.discard)
            self._gathering = job

    async def _look_up_gathered(self) -> None:
        await asyncio.sleep(GATHER_SECONDS)
        gathered, self._noticed = sorted(self._noticed), set()
        self._gathering = None  # what is noticed from here on waits for the next look-up
        for start in range(0, len(gathered), LOOKUP_IDS):
            await self._spawn_logged(set(gathered[start : start + LOOKUP_IDS]))

    async def _spawn_logged(self, succeeded: set[uuid.UUID]) -> None:
        try:
            parents = await self.store.chain_parents(among=succeeded)
        except FlowyardError as exc:  # the sweep at the next start tries again
            log.warning("follow-ups of %d tasks not looked up: %s", len(succeeded), exc.message)
            return
        except Exception:
            log.exception("follow-ups of %d tasks not looked up", len(succeeded))
            return
        for parent in parents:
            try:
                await self.spawn(parent.id)
            except FlowyardError as exc:
                log.warning("follow-ups of task %s not created yet: %s", parent.id, exc.message)
            except Exception:  # the sweep at the next start tries again
                log.exception("follow-ups of task %s failed", parent.id)

    async def sweep(self, within: timedelta = timedelta(days=1)) -> int:
        """Create the follow-ups of recent successes that have none yet."""
        made = 0
        for parent in await self.store.chain_parents(utcnow() - within):
            made += len(await self.spawn(parent.id))
        return made

    async def spawn(self, parent_id: uuid.UUID) -> list[Task]:
        """The follow-ups of a succeeded task, created once whoever calls."""
        parent = await self.store.get(parent_id)
        if parent.state is not TaskState.succeeded or not parent.then:
            return []
        made = []
        for index, step in enumerate(parent.then):
            task_id = child_id(parent.id, index)
            try:
                await self.store.get(task_id)
                continue  # made already
            except TaskNotFound:
                pass
            made.append(await self._create(parent, step, task_id))
        return made

    async def _create(self, parent: Task, step: ChainStep, task_id: uuid.UUID) -> Task:
        try:
            flow_cls: type[Flow] | None = self.flows.get(step.flow)
        except FlowNotFound:
            flow_cls = None  # removed since: the child fails on a worker, visibly
        refs: list[FileRef] = []
        for spec, ref in pair_outputs(parent.outputs, flow_cls.inputs if flow_cls else ()):
            path, _ = self.files.output_path(parent, ref.name)
            refs.append(
                await self.files.save_input(
                    task_id,
                    input_name=spec.name,
                    filename=ref.name,
                    chunks=_read(path),
                    limit=self.max_upload_bytes,
                )
            )
        event = TaskCreated(
            task_id=task_id,
            flow=step.flow,
            owner=parent.owner,
            params=step.params,
            inputs=tuple(refs),
            priority=step.priority,
            max_attempts=(flow_cls.max_attempts if flow_cls else None) or self.max_attempts,
            parent_id=parent.id,
            then=step.then,
        )
        task = await self.store.record(event)
        log.info("task %s succeeded: created its follow-up %s (%s)", parent.id, task.id, step.flow)
        return task

    async def close(self) -> None:
        for job in list(self._jobs):
            job.cancel()
        await asyncio.gather(*self._jobs, return_exceptions=True)


async def _read(path: Path) -> AsyncIterator[bytes]:
    async with aiofiles.open(path, "rb") as fh:
        while chunk := await fh.read(CHUNK):
            yield chunk
