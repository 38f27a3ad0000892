"""Task files in memory: the server's uploads and an attempt's outputs kept as bytes.

One object plays both sides (``InputStore`` for the server, ``TaskFiles`` for a
worker). A flow reads and writes paths, so ``open_attempt`` lays the inputs out
in a private temporary folder and ``close_attempt`` reads the outputs back into
memory and removes it: the folder lives only while a flow runs.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from flowyard.core.errors import FlowFailed, OutputNotFound, UploadTooLarge
from flowyard.core.events import FileRef
from flowyard.core.files import guess_media_type, safe_file_name
from flowyard.core.ports import AttemptFiles
from flowyard.core.task import Task


class MemoryFiles:
    def __init__(self) -> None:
        self._blobs: dict[uuid.UUID, dict[str, bytes]] = {}
        """Per task: its files by path (``inputs/a.png``, ``attempts/1/outputs/b.png``)."""

    async def save_input(
        self,
        task_id: uuid.UUID,
        *,
        input_name: str,
        filename: str,
        chunks: AsyncIterator[bytes],
        limit: int,
    ) -> FileRef:
        name = safe_file_name(filename)
        data = bytearray()
        async for chunk in chunks:
            data += chunk
            if len(data) > limit:
                raise UploadTooLarge(
                    f"inputs: file {filename!r} is larger than the limit of {limit} bytes",
                    field="inputs",
                )
        path = f"inputs/{name}"
        self._blobs.setdefault(task_id, {})[path] = bytes(data)
        media_type = guess_media_type(name)
        return FileRef(
            name=name, path=path, size=len(data), media_type=media_type, input=input_name
        )

    async def delete_task(self, task_id: uuid.UUID) -> None:
        self._blobs.pop(task_id, None)

    def read(self, task: Task, name: str) -> bytes:
        """An output of the task's result (``OutputNotFound`` when it has none by that name)."""
        for ref in task.outputs:
            if ref.name == name and ref.path in self._blobs.get(task.id, {}):
                return self._blobs[task.id][ref.path]
        raise OutputNotFound(f"task {task.id} has no output named {name!r}")

    async def open_attempt(self, task: Task) -> AttemptFiles:
        blobs = self._blobs.get(task.id, {})
        missing = [ref.name for ref in task.inputs if ref.path not in blobs]
        if missing:
            raise FlowFailed(f"input {missing[0]!r} of task {task.id} is missing")
        return await asyncio.to_thread(_lay_out, task, blobs)

    async def close_attempt(self, task: Task, files: AttemptFiles) -> tuple[FileRef, ...]:
        outputs = await asyncio.to_thread(_read_outputs, files.outputs)
        refs = []
        blobs = self._blobs.setdefault(task.id, {})
        for name, data in outputs:
            path = f"attempts/{task.attempt}/outputs/{name}"
            blobs[path] = data
            refs.append(
                FileRef(name=name, path=path, size=len(data), media_type=guess_media_type(name))
            )
        await self.discard_attempt(task, files)
        return tuple(refs)

    async def discard_attempt(self, task: Task, files: AttemptFiles) -> None:
        await asyncio.to_thread(shutil.rmtree, files.outputs.parent, True)


def _lay_out(task: Task, blobs: dict[str, bytes]) -> AttemptFiles:
    root = Path(tempfile.mkdtemp(prefix=f"flowyard-{task.id}-{task.attempt}-"))
    inputs: dict[str, Path] = {}
    for ref in task.inputs:
        path = root / "inputs" / ref.name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(blobs[ref.path])
        inputs[ref.input or ref.name] = path
    (root / "outputs").mkdir()
    (root / "scratch").mkdir()
    return AttemptFiles(
        inputs=inputs, outputs=root / "outputs", scratch=root / "scratch", made=True
    )


def _read_outputs(folder: Path) -> list[tuple[str, bytes]]:
    return [(p.name, p.read_bytes()) for p in sorted(folder.iterdir()) if p.is_file()]
