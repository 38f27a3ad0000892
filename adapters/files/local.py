"""Task files on a local (or shared, mounted) folder.

Layout, the same for the server and for database workers that mount it:

    <root>/<task id>/inputs/<safe name>
    <root>/<task id>/attempts/<n>/outputs/<name>
    <root>/<task id>/attempts/<n>/scratch/          (removed after the attempt)

Each attempt writes its own folder, so a worker that lost its lease can never
overwrite the outputs of the attempt that replaced it. A task's folder is made by
its first file (an upload, or an attempt's folders when its flow first asks for
them, ``AttemptFiles.made``), so a task without inputs costs no folder at create.
The server marks the root (``ROOT_MARK``): a worker whose ``--files`` is some other
folder then finds neither the task's folder nor the mark, and says so.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiofiles
import aiofiles.os

from flowyard.core.errors import FlowFailed, NotFound, OutputNotFound, UploadTooLarge
from flowyard.core.events import FileRef
from flowyard.core.files import guess_media_type, safe_file_name
from flowyard.core.ports import AttemptFiles
from flowyard.core.task import Task

ROOT_MARK = ".flowyard-tasks"
"""A file the server keeps at the root of its tasks folder (see the module's docstring)."""


class LocalFileStore:
    """The server's side: streamed uploads, downloads, deletion."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def mark_root(self) -> None:
        """Make the tasks folder and its mark (at start, before any task is served)."""
        self.root.mkdir(parents=True, exist_ok=True)
        mark = self.root / ROOT_MARK
        if not mark.exists():
            mark.write_text("the tasks folder of a flowyard server\n")

    def task_dir(self, task_id: uuid.UUID) -> Path:
        return self.root / str(task_id)

    async def save_input(
        self,
        task_id: uuid.UUID,
        *,
        input_name: str,
        filename: str,
        chunks: AsyncIterator[bytes],
        limit: int,
    ) -> FileRef:
        """Stream one upload to disk, never whole in memory; over ``limit`` bytes is refused."""
        name = safe_file_name(filename)
        folder = self.task_dir(task_id) / "inputs"
        await aiofiles.os.makedirs(folder, exist_ok=True)
        target = folder / name
        partial = folder / f".{name}.part"
        size = 0
        async with aiofiles.open(partial, "wb") as out:
            async for chunk in chunks:
                size += len(chunk)
                if size > limit:
                    await out.close()
                    await aiofiles.os.remove(partial)
                    raise UploadTooLarge(
                        f"inputs: file {filename!r} is larger than the limit of {limit} bytes",
                        field="inputs",
                    )
                await out.write(chunk)
        await aiofiles.os.replace(partial, target)
        return FileRef(
            name=name,
            path=f"inputs/{name}",
            size=size,
            media_type=guess_media_type(name),
            input=input_name,
        )

    def output_path(self, task: Task, name: str) -> tuple[Path, FileRef]:
        for ref in task.outputs:
            if ref.name == name:
                path = self.task_dir(task.id) / ref.path
                if path.is_file():
                    return path, ref
                break
        raise OutputNotFound(f"task {task.id} has no output named {name!r}")

    def input_path(self, task: Task, name: str) -> tuple[Path, FileRef]:
        for ref in task.inputs:
            if ref.name == name:
                path = self.task_dir(task.id) / ref.path
                if path.is_file():
                    return path, ref
                break
        raise NotFound(f"task {task.id} has no input named {name!r}")

    async def delete_task(self, task_id: uuid.UUID) -> None:
        await asyncio.to_thread(shutil.rmtree, self.task_dir(task_id), True)


class LocalTaskFiles:
    """The worker's side: inputs and outputs in place on the shared folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._marked = False
        """The server's mark was seen here once: it stays (checked again until then)."""

    async def open_attempt(self, task: Task) -> AttemptFiles:
        # A stat per file, here: a trip to a thread (waking it, handing the GIL over and
        # back) costs more than that. The attempt's folders come on the flow's first use.
        folder = self.root / str(task.id)
        if not self._server_folder(folder):
            raise FlowFailed(
                f"{self.root} holds neither {ROOT_MARK} nor this task's folder: this "
                "worker's files folder must be the server's tasks folder (mount it and pass "
                "the same path with --files)"
            )
        return _open_attempt(folder, task)

    def _server_folder(self, folder: Path) -> bool:
        """The root is the server's: it bears the mark (or, from a server that made a
        folder per task, this task's folder is there)."""
        if not self._marked:
            self._marked = (self.root / ROOT_MARK).is_file()
        return self._marked or folder.is_dir()

    async def close_attempt(self, task: Task, files: AttemptFiles) -> tuple[FileRef, ...]:
        if not files.made:  # the flow wrote no file
            return ()
        return await asyncio.to_thread(_close_attempt, self.root / str(task.id), files)

    async def discard_attempt(self, task: Task, files: AttemptFiles) -> None:
        if files.made:
            await asyncio.to_thread(shutil.rmtree, files.scratch, True)


def _open_attempt(folder: Path, task: Task) -> AttemptFiles:
    inputs: dict[str, Path] = {}
    for ref in task.inputs:
        path = folder / ref.path
        if not path.is_file():
            raise FlowFailed(f"input {ref.name!r} is missing from {folder}")
        inputs[ref.input or ref.name] = path
    attempt = folder / "attempts" / str(task.attempt)
    return AttemptFiles(inputs=inputs, outputs=attempt / "outputs", scratch=attempt / "scratch")


def _close_attempt(task_dir: Path, files: AttemptFiles) -> tuple[FileRef, ...]:
    shutil.rmtree(files.scratch, ignore_errors=True)
    return _collect(task_dir, files.outputs)


def _collect(task_dir: Path, outputs: Path) -> tuple[FileRef, ...]:
    refs = []
    for entry in sorted(os.scandir(outputs), key=lambda e: e.name):
        if entry.is_file():
            path = Path(entry.path)
            refs.append(
                FileRef(
                    name=entry.name,
                    path=path.relative_to(task_dir).as_posix(),
                    size=entry.stat().st_size,
                    media_type=guess_media_type(entry.name),
                )
            )
    return tuple(refs)
