"""An attempt's folders on the shared tasks folder are made on the flow's first use.

A flow that writes no file costs no folder (and no trip to a thread); one that
writes gets exactly its own files back, never what an earlier run of the same
attempt left behind.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest

from flowyard.adapters.files.local import LocalFileStore, LocalTaskFiles
from flowyard.bus.nats.object_store import NatsTaskFiles
from flowyard.core.errors import FlowFailed
from flowyard.core.task import Task, TaskState
from flowyard.services.run_context import RunContext


def _task(root: Path, attempt: int = 1) -> Task:
    now = datetime.now(UTC)
    task = Task(
        id=uuid.uuid4(),
        flow="debug.sleep",
        owner="admin",
        state=TaskState.running,
        attempt=attempt,
        created_at=now,
        updated_at=now,
    )
    (root / str(task.id)).mkdir()
    return task


async def test_a_flow_that_writes_nothing_makes_no_folder(tmp_path: Path) -> None:
    files = LocalTaskFiles(tmp_path)
    task = _task(tmp_path)
    attempt = await files.open_attempt(task)
    RunContext(attempt, "cpu").progress(1.0)
    assert await files.close_attempt(task, attempt) == ()
    assert list((tmp_path / str(task.id)).iterdir()) == []


async def test_outputs_are_reported_and_scratch_removed(tmp_path: Path) -> None:
    files = LocalTaskFiles(tmp_path)
    task = _task(tmp_path)
    attempt = await files.open_attempt(task)
    ctx = RunContext(attempt, "cpu")
    (ctx.scratch / "tmp.bin").write_bytes(b"x" * 10)
    ctx.output("result.txt").write_text("done")
    refs = await files.close_attempt(task, attempt)
    assert [(r.name, r.path, r.size) for r in refs] == [
        ("result.txt", "attempts/1/outputs/result.txt", 4)
    ]
    assert not attempt.scratch.exists()


async def test_an_earlier_run_of_the_same_attempt_leaves_nothing_in_the_result(
    tmp_path: Path,
) -> None:
    files = LocalTaskFiles(tmp_path)
    task = _task(tmp_path)
    stale = tmp_path / str(task.id) / "attempts" / "1" / "outputs"
    stale.mkdir(parents=True)
    (stale / "old.txt").write_text("from a run that was cut short")
    quiet = await files.open_attempt(task)
    assert await files.close_attempt(task, quiet) == ()  # wrote nothing: reports nothing
    attempt = await files.open_attempt(task)
    RunContext(attempt, "cpu").output("new.txt").write_text("new")
    assert [r.name for r in await files.close_attempt(task, attempt)] == ["new.txt"]


async def test_a_folder_that_is_not_the_servers_fails_before_the_flow_runs(
    tmp_path: Path,
) -> None:
    (tmp_path / "elsewhere").mkdir()
    files = LocalTaskFiles(tmp_path / "elsewhere")
    with pytest.raises(FlowFailed, match="must be the server's tasks folder"):
        await files.open_attempt(_task(tmp_path))


async def test_a_task_without_inputs_needs_no_folder_of_its_own_on_the_servers_root(
    tmp_path: Path,
) -> None:
    """The server makes no folder for a task without inputs; its mark on the root is
    what tells a worker that it mounted the right folder."""
    root = tmp_path / "tasks"
    files = LocalTaskFiles(root)
    task = _task(tmp_path)
    with pytest.raises(FlowFailed):
        await files.open_attempt(task)
    LocalFileStore(root).mark_root()
    attempt = await files.open_attempt(task)
    RunContext(attempt, "cpu").output("result.txt").write_text("done")
    assert [r.path for r in await files.close_attempt(task, attempt)] == [
        "attempts/1/outputs/result.txt"
    ]
    assert (root / str(task.id) / "attempts" / "1" / "outputs" / "result.txt").is_file()


async def test_a_nats_workers_folder_is_made_private_and_only_when_used(tmp_path: Path) -> None:
    """On a NATS worker's own disk: nothing made for a flow that writes nothing; a flow's
    first scratch file makes the attempt's folder, mode 0700, removed at the end."""
    files = NatsTaskFiles(cast(Any, None), tmp_path)  # no inputs, no outputs: no bucket used
    quiet, busy = _task(tmp_path), _task(tmp_path)
    before = _entries(tmp_path)

    attempt = await files.open_attempt(quiet)
    RunContext(attempt, "cpu").progress(1.0)
    assert _entries(tmp_path) == before
    assert await files.close_attempt(quiet, attempt) == ()

    attempt = await files.open_attempt(busy)
    assert attempt.private is not None
    assert not attempt.private.exists()
    (RunContext(attempt, "cpu").scratch / "tmp.bin").write_bytes(b"x")
    assert _mode(attempt.private) == 0o700
    assert await files.close_attempt(busy, attempt) == ()
    assert _entries(tmp_path) == before


def _entries(folder: Path) -> set[Path]:
    return set(folder.iterdir())


def _mode(folder: Path) -> int:
    return folder.stat().st_mode & 0o777
