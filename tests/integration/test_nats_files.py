"""Task files through the JetStream object store: streamed both ways, never whole in memory."""

from __future__ import annotations

import hashlib
import os
import tracemalloc
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import nats
import pytest
from nats.js import JetStreamContext

from flowyard.bus.nats.object_store import NatsFileTransfer, NatsTaskFiles, bucket_name
from flowyard.core.errors import InvalidInput
from flowyard.core.events import FileRef, TaskCreated, TaskDone
from flowyard.core.task import Task, TaskState
from flowyard.services.run_context import RunContext
from tests.support.nats import NatsServer

pytestmark = [pytest.mark.nats, pytest.mark.timeout(120)]

SIZE = 64 * 1024 * 1024
PEAK_LIMIT = 32 * 1024 * 1024
"""Half the object. Uploads hold a few 128 KiB chunks; a download holds at most JetStream's
flow-control window of chunks (about 20 MB here, the same for 96 MB and 256 MB objects)."""

T = TypeVar("T")


@pytest.fixture
async def js(nats_server: NatsServer) -> AsyncIterator[JetStreamContext]:
    client = await nats.connect(nats_server.url)
    try:
        yield client.jetstream(timeout=10)
    finally:
        await client.close()


def _write(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as out:
        for _ in range(size // (1024 * 1024)):
            chunk = os.urandom(1024 * 1024)
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()


def _sha(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as data:
        while chunk := data.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


async def _peak(call: Callable[[], Awaitable[T]]) -> tuple[T, int]:
    tracemalloc.start()
    try:
        result = await call()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


async def test_inputs_and_outputs_stream_through_the_owners_bucket(
    js: JetStreamContext, tmp_path: Path
) -> None:
    owner = f"o{uuid.uuid4().hex[:8]}"
    tasks_dir, worker_tmp = tmp_path / "server-tasks", tmp_path / "worker-tmp"
    worker_tmp.mkdir()
    task_id = uuid.uuid4()
    input_sha = _write(tasks_dir / str(task_id) / "inputs" / "big.bin", SIZE)
    ref = FileRef(name="big.bin", path="inputs/big.bin", size=SIZE, input="data")
    created = TaskCreated(task_id=task_id, flow="x.y", owner=owner, inputs=(ref,))
    server = NatsFileTransfer(js, tasks_dir)
    await server.ensure_bucket(owner)
    _, peak = await _peak(lambda: server.upload_inputs(created))
    assert peak < PEAK_LIMIT, f"upload held {peak} bytes"

    now = datetime.now(UTC)
    task = Task(
        id=task_id,
        flow="x.y",
        owner=owner,
        inputs=(ref,),
        state=TaskState.running,
        attempt=1,
        created_at=now,
        updated_at=now,
    )
    worker = NatsTaskFiles(js, worker_tmp)
    files, peak = await _peak(lambda: worker.open_attempt(task))
    assert peak < PEAK_LIMIT, f"download held {peak} bytes"
    assert _sha(files.inputs["data"]) == input_sha
    # the flow writes through its context, which makes the attempt's folders on first use
    ctx = RunContext(files, "cpu")
    output_sha = _write(ctx.output("result.bin"), SIZE)
    refs, peak = await _peak(lambda: worker.close_attempt(task, files))
    assert peak < PEAK_LIMIT, f"output upload held {peak} bytes"
    assert [(r.name, r.path, r.size) for r in refs] == [
        ("result.bin", "attempts/1/outputs/result.bin", SIZE)
    ]
    assert os.listdir(worker_tmp) == []  # the attempt's temp folder is gone

    done = TaskDone(task_id=task_id, flow="x.y", owner=owner, attempt=1, status="succeeded",
                    outputs=refs)  # fmt: skip
    _, peak = await _peak(lambda: server.download_outputs(done))
    assert peak < PEAK_LIMIT, f"output download held {peak} bytes"
    assert _sha(tasks_dir / str(task_id) / "attempts/1/outputs/result.bin") == output_sha

    await server.delete_objects(owner, task_id, ["inputs/big.bin", refs[0].path])
    bucket = await js.object_store(bucket_name(owner))
    with pytest.raises(nats.js.errors.NotFoundError):
        await bucket.get_info(f"{task_id}/inputs/big.bin")


async def test_outputs_outside_the_attempt_are_refused(
    js: JetStreamContext, tmp_path: Path
) -> None:
    server = NatsFileTransfer(js, tmp_path)
    for path in ("../../etc/passwd", "attempts/2/outputs/a.png", "inputs/a.png"):
        done = TaskDone(
            task_id=uuid.uuid4(),
            flow="x.y",
            owner="o",
            attempt=1,
            status="succeeded",
            outputs=(FileRef(name="a.png", path=path, size=1),),
        )
        with pytest.raises(InvalidInput):
            server.check_outputs(done)
