"""Tasks and their event log in memory, with the SQL store's rules.

Every change goes through ``core.task.apply``; the log keeps every event that
changed a task, so ``core.task.rebuild`` of a task's events gives its row. A
batch is staged and committed whole or not at all; listeners (the work queue's
wake-ups, webhook deliveries, an event hub) see each commit's events.
"""

from __future__ import annotations

import builtins
import uuid
from collections.abc import Callable, Collection, Sequence
from datetime import datetime, timedelta

from flowyard.core.errors import Conflict, TaskNotFound
from flowyard.core.events import Event, TaskCreated
from flowyard.core.ports import WorkerIdentity
from flowyard.core.task import Task, TaskState, apply

CommitListener = Callable[[Sequence[Event]], None]


class MemoryTaskStore:
    def __init__(self) -> None:
        self._tasks: dict[uuid.UUID, Task] = {}
        self._log: list[Event] = []
        self._seen: set[uuid.UUID] = set()
        self._keys: dict[tuple[str, str], tuple[uuid.UUID, str, datetime]] = {}
        self._listeners: list[CommitListener] = []
        self.registered: dict[str, tuple[WorkerIdentity, datetime]] = {}

    def on_commit(self, listener: CommitListener) -> None:
        """Told every committed batch of events, in commit order."""
        self._listeners.append(listener)

    async def record(self, event: Event) -> Task:
        return self.commit([event])[0]

    async def record_all(self, batch: Sequence[Event]) -> builtins.list[Task]:
        return self.commit(batch)

    def commit(self, batch: Sequence[Event]) -> builtins.list[Task]:
        """Fold the events into a staged copy; on any refusal nothing is kept."""
        staged = dict(self._tasks)
        seen: set[uuid.UUID] = set()
        logged: list[Event] = []
        results: list[Task] = []
        for event in batch:
            current = staged.get(event.task_id)
            if event.id in self._seen or event.id in seen:
                if current is None:
                    raise TaskNotFound(f"no task has id {event.task_id}")
                results.append(current)
                continue
            updated = apply(current, event)
            results.append(updated)
            if updated is not current:
                staged[event.task_id] = updated
                seen.add(event.id)
                logged.append(event)
        self._tasks = staged
        self._seen |= seen
        self._log += logged
        if logged:
            for listener in self._listeners:
                listener(logged)
        return results

    async def record_keyed(
        self, event: TaskCreated, key: str, request_hash: str, window: timedelta
    ) -> tuple[Task, bool]:
        existing = self._keys.get((event.owner, key))
        if existing is not None:
            task_id, digest, created_at = existing
            original = self._tasks.get(task_id)
            if original is not None and created_at >= event.at - window:
                if digest != request_hash:
                    raise Conflict(
                        f"Idempotency-Key: {key!r} was used for a different request "
                        "(other flow or parameters) within the idempotency window"
                    )
                return original, False
        task = self.commit([event])[0]
        self._keys[(event.owner, key)] = (event.task_id, request_hash, event.at)
        return task, True

    async def get(self, task_id: uuid.UUID) -> Task:
        try:
            return self._tasks[task_id]
        except KeyError:
            raise TaskNotFound(f"no task has id {task_id}") from None

    async def list(
        self,
        *,
        state: TaskState | None = None,
        flow: str | None = None,
        owner: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> Sequence[Task]:
        found = [
            t
            for t in self._tasks.values()
            if (state is None or t.state is state)
            and (flow is None or t.flow == flow)
            and (owner is None or t.owner == owner)
        ]
        found.sort(key=lambda t: (t.created_at, t.id), reverse=True)
        return found[offset : offset + limit]

    def tasks(self) -> builtins.list[Task]:
        """Every task, in no particular order (for the work queue)."""
        return builtins.list(self._tasks.values())

    async def children(self, task_id: uuid.UUID) -> builtins.list[uuid.UUID]:
        kids = [t for t in self._tasks.values() if t.parent_id == task_id]
        return [t.id for t in sorted(kids, key=lambda t: (t.created_at, t.id))]

    async def chain_parents(
        self,
        since: datetime | None = None,
        limit: int = 500,
        *,
        among: Collection[uuid.UUID] | None = None,
    ) -> builtins.list[Task]:
        found = [
            t
            for t in self._tasks.values()
            if t.state is TaskState.succeeded
            and t.then
            and t.finished_at is not None
            and (since is None or t.finished_at >= since)
            and (among is None or t.id in among)
        ]
        return sorted(found, key=lambda t: t.finished_at or datetime.min)[:limit]

    async def delete(self, task_id: uuid.UUID) -> None:
        """Remove the task; its events stay in the log."""
        if self._tasks.pop(task_id, None) is None:
            raise TaskNotFound(f"no task has id {task_id}")

    async def events(self, task_id: uuid.UUID) -> Sequence[Event]:
        return [e for e in self._log if e.task_id == task_id]

    async def events_after(self, seq: int, limit: int = 500) -> builtins.list[tuple[int, Event]]:
        """Log entries after ``seq``; a sequence number is a position in the log, from 1."""
        return [(i + 1, e) for i, e in enumerate(self._log[seq : seq + limit], start=seq)]

    async def last_seq(self) -> int:
        return len(self._log)

    def replace(self, task: Task) -> None:
        """Change a row without an event (a lease extension, as the SQL heartbeat does)."""
        self._tasks[task.id] = task

    async def register_worker(self, worker: WorkerIdentity, now: datetime) -> None:
        self.registered[worker.id] = (worker, now)
