"""Use cases of the server: create, read, cancel, retry, reprioritize and delete tasks.

Every read and action is scoped to what the caller may see: someone else's task
is ``TaskNotFound``, exactly as a missing one. Validation (``task_requests.py``)
happens before anything is stored, and a task's files are written before its
``task.created`` event: a request that fails half-way removes what it wrote, so
nothing half-stored is ever visible.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta

from flowyard.core.errors import (
    IllegalTransition,
    InvalidInput,
    StaleAttempt,
    TaskFinished,
    TaskNotFound,
)
from flowyard.core.events import (
    Event,
    FileRef,
    TaskCancelRequested,
    TaskCreated,
    TaskDone,
    TaskReprioritized,
    utcnow,
)
from flowyard.core.files import safe_file_name
from flowyard.core.flow import Flow
from flowyard.core.identity import Principal
from flowyard.core.ports import EventSource, FlowSource, InputStore, TaskStore
from flowyard.core.task import RETRYABLE, Task, TaskState, event_for, retry_event
from flowyard.services.task_requests import NewTask, TaskRules, Upload, request_digest

__all__ = ["NewTask", "TaskService", "Upload"]

log = logging.getLogger(__name__)


class TaskService:
    def __init__(
        self,
        store: TaskStore,
        files: InputStore,
        flows: FlowSource,
        *,
        max_upload_bytes: int,
        max_attempts: int,
        retry_skip: int = 0,
        schedule_tolerance: float = 60.0,
        idempotency_window: float = 24 * 3600.0,
    ) -> None:
        """``retry_skip``: attempt numbers a retry leaves out (see ``core.task.retry_event``);
        ``schedule_tolerance``: seconds a ``run_at`` may lie in the past (clock skew)."""
        self.store = store
        self.files = files
        self.flows = flows
        self.rules = TaskRules(
            flows, max_attempts=max_attempts, schedule_tolerance=schedule_tolerance
        )
        self.max_upload_bytes = max_upload_bytes
        self.max_attempts = max_attempts
        self.retry_skip = retry_skip
        self.idempotency_window = timedelta(seconds=idempotency_window)

    def validate(self, request: NewTask, upload_count: int) -> type[Flow]:
        """Everything that can be checked before a byte is written (``TaskRules``)."""
        return self.rules.validate(request, upload_count)

    async def create(self, request: NewTask, uploads: Sequence[Upload] = ()) -> Task:
        return (await self.create_keyed(request, uploads))[0]

    async def create_keyed(
        self, request: NewTask, uploads: Sequence[Upload] = ()
    ) -> tuple[Task, bool]:
        """The task and whether it is new: False when ``idempotency_key`` was used before
        (within the window, same owner) for the same request; another request is a 409."""
        flow_cls = self.validate(request, len(uploads))
        for upload in uploads:  # every name is checked before the first byte is written
            safe_file_name(upload.filename)
        params = flow_cls.parse_params(request.params).model_dump(mode="json")
        task_id = uuid.uuid4()
        try:
            refs: list[FileRef] = []
            for spec, upload in zip(flow_cls.inputs, uploads, strict=False):
                refs.append(
                    await self.files.save_input(
                        task_id,
                        input_name=spec.name,
                        filename=upload.filename,
                        chunks=upload.chunks,
                        limit=self.max_upload_bytes,
                    )
                )
            event = self.rules.created(
                request,
                flow_cls,
                params,
                task_id=task_id,
                not_before=self.rules.not_before(request),
                inputs=refs,
            )
            if request.idempotency_key is None:
                return await self.store.record(event), True
            digest = request_digest(request, params, [u.filename for u in uploads])
            task, fresh = await self.store.record_keyed(
                event, request.idempotency_key, digest, self.idempotency_window
            )
        except BaseException:
            await self.files.delete_task(task_id)
            raise
        if not fresh:
            await self.files.delete_task(task_id)  # the files of the copy that was not made
        return task, fresh

    async def create_batch(self, requests: Sequence[NewTask], limit: int) -> list[Task]:
        """Tasks without files, in one transaction: one bad item and nothing is stored.

        Every item is checked first; the error names the item (``tasks[3].params.seconds``).
        """
        if len(requests) > limit:
            raise InvalidInput(
                f"tasks: {len(requests)} tasks, more than the limit of {limit} per batch "
                "(max_batch_tasks)",
                field="tasks",
            )
        now = utcnow()
        created: list[TaskCreated] = []
        for index, request in enumerate(requests):
            try:
                flow_cls = self.validate(request, 0)
                params = flow_cls.parse_params(request.params).model_dump(mode="json")
                not_before = self.rules.not_before(request, now)
            except InvalidInput as exc:
                field = f"tasks[{index}].{exc.field or 'body'}"
                raise InvalidInput(f"tasks[{index}].{exc.message}", field=field) from None
            created.append(
                self.rules.created(
                    request, flow_cls, params, task_id=uuid.uuid4(), not_before=not_before
                )
            )
        return await self.store.record_all(created)

    async def get(self, task_id: uuid.UUID, caller: Principal) -> Task:
        task = await self.store.get(task_id)
        if not caller.sees(task.owner):
            raise TaskNotFound(f"no task has id {task_id}")
        return task

    async def list(
        self,
        caller: Principal,
        *,
        state: TaskState | None = None,
        flow: str | None = None,
        owner: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> Sequence[Task]:
        """A user's listing is their own, whatever ``owner`` they ask for."""
        scope = caller.owner_filter()
        if scope is not None and owner not in (None, scope):
            return []
        return await self.store.list(
            state=state, flow=flow, owner=scope or owner, limit=limit, offset=offset
        )

    async def events(self, task_id: uuid.UUID, caller: Principal) -> Sequence[Event]:
        events = await self.store.events(task_id)
        if not events or not caller.sees(events[0].owner):
            raise TaskNotFound(f"no task has id {task_id}")
        return events

    async def cancel(
        self,
        task_id: uuid.UUID,
        caller: Principal,
        *,
        reason: str | None = None,
        stage: str | None = None,
    ) -> Task:
        """Queued: cancelled now. Running: the worker is asked to stop and reports cancelled.

        ``stage`` (with ``reason``): an interruption, e.g. the client of a create-and-wait
        left; the task records when, and what it was doing then.
        """
        task = await self.get(task_id, caller)
        if task.state.finished:
            raise TaskFinished(f"task {task_id} already {task.state}; nothing to cancel")
        if stage is not None:
            task = await self.store.record(
                event_for(task, TaskCancelRequested, reason=reason, stage=stage)
            )
        if task.state is TaskState.queued:
            try:
                error = "cancelled before it started" + (f" ({reason})" if reason else "")
                return await self.store.record(
                    event_for(task, TaskDone, status="cancelled", error=error)
                )
            except (IllegalTransition, StaleAttempt):  # claimed meanwhile: ask the worker
                task = await self.store.get(task_id)
        return await self.store.record(event_for(task, TaskCancelRequested))

    async def wait(
        self,
        task_id: uuid.UUID,
        caller: Principal,
        seconds: float,
        events: EventSource,
        *,
        gone: Callable[[], Awaitable[bool]] | None = None,
        cancel_on_gone: bool = False,
        poll: float = 0.5,
    ) -> Task:
        """The task once finished, or as it is after ``seconds``.

        Woken by the task's events; re-read every ``poll`` seconds too (an event the
        live hub dropped must not stretch the wait). ``gone`` tells whether the client
        left; with ``cancel_on_gone`` its unfinished task is then cancelled, recording
        the stage it was at.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        async with events.subscription() as queue:
            task = await self.get(task_id, caller)
            while not task.state.finished:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return task
                if gone is not None and await gone():
                    if cancel_on_gone:
                        return await self._interrupted(task, caller)
                    return task
                # one bound for the whole inner wait: other tasks' events, however many,
                # must not keep ``gone`` from being asked again within ``poll``
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(remaining, poll)):
                        while True:
                            event = await queue.get()
                            if event is None:
                                return await self.get(task_id, caller)  # the server is stopping
                            if event.task_id == task_id:
                                break
                task = await self.get(task_id, caller)
        return task

    async def _interrupted(self, task: Task, caller: Principal) -> Task:
        stage = f"{task.state} (attempt {task.attempt}, {task.progress:.0%})"
        if task.message:
            stage += f": {task.message}"
        log.info("task %s: the client left while it was %s; cancelling", task.id, stage)
        try:
            return await self.cancel(task.id, caller, reason="the client disconnected", stage=stage)
        except TaskFinished:
            return await self.get(task.id, caller)

    async def retry(self, task_id: uuid.UUID, caller: Principal) -> Task:
        """A failed or cancelled task is queued again as a new attempt, with its history."""
        task = await self.get(task_id, caller)
        if task.state not in RETRYABLE:
            raise IllegalTransition(
                f"task {task_id} is {task.state}: only a failed or cancelled task can be retried"
            )
        event = retry_event(task, attempts=self.max_attempts, skip=self.retry_skip)
        return await self.store.record(event)

    async def set_priority(self, task_id: uuid.UUID, caller: Principal, priority: int) -> Task:
        """Only while queued: a running or finished task's priority means nothing any more."""
        task = await self.get(task_id, caller)
        if task.state is not TaskState.queued:
            raise IllegalTransition(
                f"task {task_id} is {task.state}: only a queued task's priority can change"
            )
        return await self.store.record(event_for(task, TaskReprioritized, priority=priority))

    async def delete(self, task_id: uuid.UUID, caller: Principal) -> None:
        task = await self.get(task_id, caller)
        if task.state is TaskState.running:
            await self.cancel(task_id, caller)
        await self.store.delete(task_id)
        await self.files.delete_task(task_id)
