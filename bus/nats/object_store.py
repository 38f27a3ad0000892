"""Task files over a NATS JetStream object store, for workers that share no folder.

One bucket per owner, ``flowyard_files_<owner>``, so a NATS account can be
allowed exactly its owner's objects (subjects and stream names are the only
things NATS permissions can match, and an object's subject does not carry its
name). Object names mirror the server's task folder, so a ``FileRef.path`` means
the same thing on both sides:

    <task id>/inputs/<name>                     uploaded by the server when it relays task.created
    <task id>/attempts/<n>/outputs/<name>        uploaded by the worker that ran attempt n

Everything is streamed in the object store's 128 KiB chunks (``put(name,
fileobj)`` and ``get(name, writeinto=file)``): a 500 MB output never needs
500 MB of memory on either side. ``get`` without a writer would load the whole
object, so it is never called here.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import secrets
import shutil
import tempfile
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import StorageType
from nats.js.object_store import ObjectStore

from flowyard.bus.nats.broker import best_effort, nats_errors
from flowyard.bus.nats.subjects import name_token
from flowyard.core.backoff import Backoff
from flowyard.core.errors import FlowFailed, InvalidInput, LeaseLost, Unavailable
from flowyard.core.events import FileRef, TaskCreated, TaskDone
from flowyard.core.files import guess_media_type, safe_file_name
from flowyard.core.ports import AttemptFiles
from flowyard.core.task import Task

log = logging.getLogger(__name__)

BUCKET_PREFIX = "flowyard_files_"

Abandon = Callable[[Task, str], Awaitable[None]]


def bucket_name(owner: str) -> str:
    return f"{BUCKET_PREFIX}{name_token(owner)}"


def object_name(task_id: uuid.UUID, path: str) -> str:
    return f"{task_id}/{path}"


def output_path(attempt: int, name: str) -> str:
    return f"attempts/{attempt}/outputs/{name}"


class _Buckets:
    """Bucket handles per owner, looked up once (a lookup is a stream-info request)."""

    def __init__(self, js: JetStreamContext, *, create: bool) -> None:
        self.js = js
        self.create = create
        self._stores: dict[str, ObjectStore] = {}

    async def get(self, owner: str) -> ObjectStore:
        name = bucket_name(owner)
        store = self._stores.get(name)
        if store is not None:
            return store
        try:
            store = await self.js.object_store(name)
        except nats.js.errors.NotFoundError:
            if not self.create:
                raise
            store = await self.js.create_object_store(name, storage=StorageType.FILE)
        self._stores[name] = store
        return store

    def forget(self) -> None:
        """JetStream lost its store: look every bucket up (and create it) again."""
        self._stores.clear()


class NatsTaskFiles:
    """The worker's side: inputs into a private temp folder, outputs back to the bucket.

    The temp folder of an attempt is removed when the attempt ends (uploaded or
    discarded) and, for attempts cut short by a shutdown, when the worker closes.
    """

    def __init__(
        self,
        js: JetStreamContext,
        temp_root: Path | None = None,
        *,
        abandon: Abandon | None = None,
        retry_seconds: float = 60.0,
    ) -> None:
        self.buckets = _Buckets(js, create=False)
        self.temp_root = temp_root
        self.abandon = abandon
        self.retry_seconds = retry_seconds
        self._open: dict[Path, Task] = {}

    async def open_attempt(self, task: Task) -> AttemptFiles:
        # one private folder on local disk (mode 0700, a name no one can guess), made
        # only when used: for the inputs here, else with outputs/ and scratch/ on the
        # flow's first use (``AttemptFiles.made``); a flow that writes nothing makes none
        base = self.temp_root or Path(tempfile.gettempdir())
        root = base / f"flowyard-{task.id}-{task.attempt}-{secrets.token_hex(8)}"
        self._open[root] = task
        files = AttemptFiles(
            inputs={}, outputs=root / "outputs", scratch=root / "scratch", private=root
        )
        try:
            if task.inputs:
                await asyncio.to_thread(_private_inputs, root)
            for ref in task.inputs:
                path = root / "inputs" / safe_file_name(ref.name)
                await self._retrying(functools.partial(self._download, task, ref, path), task)
                files.inputs[ref.input or ref.name] = path
        except BaseException:
            await self._remove(root, files)
            raise
        return files

    async def _download(self, task: Task, ref: FileRef, path: Path) -> None:
        with nats_errors(f"object store download of input {ref.name!r}"):
            try:
                store = await self.buckets.get(task.owner)
                with path.open("wb") as out:
                    await store.get(object_name(task.id, ref.path), writeinto=out)
            except nats.js.errors.NotFoundError:
                raise FlowFailed(
                    f"input {ref.name!r} of task {task.id} is missing from the object store "
                    f"(bucket {bucket_name(task.owner)})"
                ) from None

    async def close_attempt(self, task: Task, files: AttemptFiles) -> tuple[FileRef, ...]:
        root = files.outputs.parent
        try:
            found = await asyncio.to_thread(_outputs, files.outputs) if files.made else []
            refs = []
            for name, size in found:
                ref = FileRef(
                    name=name,
                    path=output_path(task.attempt, name),
                    size=size,
                    media_type=guess_media_type(name),
                )
                path = files.outputs / name
                await self._retrying(functools.partial(self._upload, task, ref, path), task)
                refs.append(ref)
            return tuple(refs)
        finally:
            await self._remove(root, files)

    async def _upload(self, task: Task, ref: FileRef, path: Path) -> None:
        with nats_errors(f"object store upload of output {ref.name!r}"):
            store = await self.buckets.get(task.owner)
            with path.open("rb") as data:
                await store.put(object_name(task.id, ref.path), data)

    async def discard_attempt(self, task: Task, files: AttemptFiles) -> None:
        await self._remove(files.outputs.parent, files)

    async def close(self) -> None:
        """Remove what attempts interrupted by a shutdown left behind."""
        for root in list(self._open):
            self._open.pop(root, None)
            await asyncio.to_thread(shutil.rmtree, root, True)

    async def _remove(self, root: Path, files: AttemptFiles) -> None:
        task = self._open.pop(root, None)
        if files.made or task is None or task.inputs:
            await asyncio.to_thread(shutil.rmtree, root, True)
        # else the folder was never made: nothing to remove, no trip to a thread

    async def _retrying(self, call: Callable[[], Awaitable[None]], task: Task) -> None:
        """Ride out a short NATS outage; then give the attempt back for another worker."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.retry_seconds
        backoff = Backoff()
        while True:
            try:
                await call()
                return
            except Unavailable as exc:
                if loop.time() + backoff.current > deadline:
                    if self.abandon is not None:
                        await self.abandon(task, exc.message)
                    raise LeaseLost(f"task {task.id}: {exc.message}; giving it back") from exc
                pause = backoff.failed()
                log.warning("%s; retrying in %.1fs", exc.message, pause)
                await asyncio.sleep(pause)


def _outputs(folder: Path) -> list[tuple[str, int]]:
    with os.scandir(folder) as entries:
        return sorted((e.name, e.stat().st_size) for e in entries if e.is_file())


class NatsFileTransfer:
    """The server's side: inputs up when work is sent, outputs down before a result is recorded.

    Outputs land in the server's tasks folder at the ``FileRef.path`` they name, so
    ``GET /api/tasks/{id}/outputs/{name}`` serves them as in every other mode.
    """

    def __init__(self, js: JetStreamContext, tasks_dir: Path) -> None:
        self.buckets = _Buckets(js, create=True)
        self.tasks_dir = tasks_dir

    def forget(self) -> None:
        self.buckets.forget()

    async def ensure_bucket(self, owner: str) -> None:
        with nats_errors(f"object store bucket for {owner!r}"):
            await self.buckets.get(owner)

    async def upload_inputs(self, created: TaskCreated) -> None:
        folder = self.tasks_dir / str(created.task_id)
        with nats_errors(f"object store upload of the inputs of task {created.task_id}"):
            store = await self.buckets.get(created.owner)
            for ref in created.inputs:
                path = folder / ref.path
                if not path.is_file():  # deleted meanwhile: the worker will say so
                    log.warning("task %s: input %s is gone; not uploaded", created.task_id, path)
                    continue
                with path.open("rb") as data:
                    await store.put(object_name(created.task_id, ref.path), data)

    def check_outputs(self, done: TaskDone) -> None:
        """Refuse output paths a worker could use to write outside its attempt's folder."""
        for ref in done.outputs:
            expected = output_path(done.attempt, safe_file_name(ref.name, field="outputs"))
            if ref.path != expected:
                raise InvalidInput(
                    f"outputs: {ref.path!r} is not {expected!r}: a worker may only return files "
                    "of its own attempt",
                    field="outputs",
                )

    async def download_outputs(self, done: TaskDone) -> None:
        """Stream each output to ``<tasks>/<task>/<path>`` (via a ``.part`` file, then rename)."""
        self.check_outputs(done)
        if not done.outputs:
            return
        folder = self.tasks_dir / str(done.task_id)
        with nats_errors(f"object store download of the outputs of task {done.task_id}"):
            try:
                store = await self.buckets.get(done.owner)
                for ref in done.outputs:
                    await self._download_output(store, done, folder / ref.path, ref.path)
            except nats.js.errors.NotFoundError:
                raise FlowFailed(
                    f"the outputs of task {done.task_id} attempt {done.attempt} are missing "
                    "from the object store"
                ) from None

    async def _download_output(
        self, store: ObjectStore, done: TaskDone, target: Path, path: str
    ) -> None:
        await asyncio.to_thread(target.parent.mkdir, parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.part")
        try:
            with partial.open("wb") as out:
                await store.get(object_name(done.task_id, path), writeinto=out)
            await asyncio.to_thread(os.replace, partial, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()

    async def delete_objects(self, owner: str, task_id: uuid.UUID, paths: list[str]) -> None:
        """Best effort: the server keeps its own copy, and a leftover object is only space."""
        with best_effort(f"deleting the objects of task {task_id}", log_to=log, level=logging.INFO):
            store = await self.buckets.get(owner)
            for path in paths:
                with contextlib.suppress(nats.js.errors.NotFoundError):
                    await store.delete(object_name(task_id, path))


def _private_inputs(root: Path) -> None:
    """The attempt's folder (mode 0700; one already there is refused) and its inputs/."""
    root.mkdir(mode=0o700, parents=True)
    (root / "inputs").mkdir()
