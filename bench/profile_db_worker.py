"""Where a database worker's CPU goes: one in-process worker drains no-op tasks under cProfile.

    .venv/bin/python bench/profile_db_worker.py [--tasks 600] [--concurrency 4] [--top 30]
                                                [--no-profile] [--split]
                                                [--flow debug.async_sleep]

Starts a throwaway PostgreSQL, commits ``--tasks`` no-op tasks (seconds=0) of ``--flow``
(``debug.async_sleep``, awaited on the loop, or ``debug.sleep``, run in a thread),
then runs the same ``Worker`` on ``SqlWorkQueue`` that ``flowyard worker --db`` runs,
in this process, and prints the drain rate and the functions with the most
cumulative and own time. A tool for finding the next lever, not a benchmark to
quote (``bench/db_queue.py`` is that). ``--no-profile`` prints the drain rate and the
worker process's CPU per task without the profiler's overhead, for comparing changes.
``--split`` (with ``--no-profile``) also prints the CPU time of the event loop's thread
spent in a worker's writes and in their statements: each call's ``thread_time`` from
start to end, which also counts whatever else the loop ran while it awaited (little
here: a write waits for the results of every task it carries).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import functools
import pstats
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.db_queue import ASYNC_NOOP, THREAD_NOOP, commit_tasks, prepare_tasks  # noqa: E402
from flowyard.adapters.files.local import LocalTaskFiles  # noqa: E402
from flowyard.adapters.sql import pg_direct, work_queue  # noqa: E402
from flowyard.adapters.sql.database import Database  # noqa: E402
from flowyard.adapters.sql.engine import make_engine, upgrade  # noqa: E402
from flowyard.adapters.sql.task_store import SqlTaskStore  # noqa: E402
from flowyard.adapters.sql.wakeup import PollWaker  # noqa: E402
from flowyard.adapters.sql.work_queue import SqlWorkQueue  # noqa: E402
from flowyard.core.settings import Settings  # noqa: E402
from flowyard.flows.registry import installed_flows  # noqa: E402
from flowyard.services.worker import Worker  # noqa: E402
from flowyard.services.worker_process import worker_identity, worker_options  # noqa: E402
from tests.support.postgres import PostgresCluster  # noqa: E402


async def drain(
    uri: str, files: Path, tasks: int, concurrency: int, profiled: bool, flow: str
) -> tuple[float, float, int, cProfile.Profile]:
    engine = make_engine(uri, pool_size=concurrency + 3, pre_ping=False)
    await upgrade(engine)
    created = await prepare_tasks(files, tasks, flow)
    await commit_tasks(uri, created)
    db = Database(engine)
    settings = Settings(mode="server", database_uri=uri, files_dir=files, poll_interval=0.05)
    queue = SqlWorkQueue(SqlTaskStore(db), PollWaker(0.05), lease_seconds=30)
    registry = installed_flows()
    identity = worker_identity("profiled", (flow,), concurrency, None, "db")
    worker = Worker(identity, queue, LocalTaskFiles(files), registry, worker_options(settings))
    profile = cProfile.Profile()

    async def stop_when_drained() -> None:
        unfinished = sa.text("SELECT count(*) FROM tasks WHERE state IN ('queued', 'running')")
        while True:
            async with db.read() as conn:
                if (await conn.scalar(unfinished)) == 0:
                    break
            await asyncio.sleep(0.05)
        worker.stop()

    started, cpu = time.perf_counter(), time.process_time()
    if profiled:
        profile.enable()
    await asyncio.gather(worker.run(), stop_when_drained())
    profile.disable()
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    await db.close()
    return tasks / elapsed, cpu / tasks, worker._runner.completer.batches, profile


SPLIT: dict[str, list[float]] = {}
"""Thread CPU seconds of each call of the functions ``--split`` times, by name."""


def timed(owner: Any, name: str, label: str) -> None:
    """Replace the coroutine function ``owner.name`` by one that records its CPU time."""
    original: Callable[..., Any] = getattr(owner, name)
    calls = SPLIT.setdefault(label, [])  # printed in the order timed

    @functools.wraps(original)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.thread_time()
        try:
            return await original(*args, **kwargs)
        finally:
            calls.append(time.thread_time() - started)

    setattr(owner, name, wrapper)


def split_writes() -> None:
    timed(work_queue.SqlWorkQueue, "report_many", "a write of results and claims")
    timed(pg_direct, "claim", "  its claim (and the pipeline's read)")
    timed(pg_direct, "insert_events", "  its events' insert")
    timed(pg_direct, "finish_held", "  its fenced update")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=600)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--no-profile", action="store_true", help="rate and CPU per task only")
    parser.add_argument("--split", action="store_true", help="CPU of the writes' parts")
    parser.add_argument("--flow", choices=(ASYNC_NOOP, THREAD_NOOP), default=ASYNC_NOOP)
    args = parser.parse_args()
    if args.split:
        split_writes()
    with tempfile.TemporaryDirectory(prefix="flowyard-profile-") as tmp:
        cluster = PostgresCluster(Path(tmp) / "pg")
        cluster.start()
        try:
            cluster.create_database("bench")
            files = Path(tmp) / "files"
            files.mkdir()
            rate, cpu, writes, profile = asyncio.run(
                drain(
                    cluster.uri("bench"),
                    files,
                    args.tasks,
                    args.concurrency,
                    not args.no_profile,
                    args.flow,
                )
            )
        finally:
            cluster.stop(timeout=10)
    how = "without profiler" if args.no_profile else "under cProfile"
    print(
        f"drained {args.tasks} {args.flow} tasks at {rate:.0f} tasks/s, "
        f"{cpu * 1000:.2f} ms CPU per task (one process, {how}); {writes} writes of results, "
        f"{args.tasks / max(writes, 1):.1f} results per write"
    )
    for label, seconds in SPLIT.items():
        if not seconds:
            continue
        print(
            f"{label:40s} {len(seconds):6d} calls, {sum(seconds) / len(seconds) * 1e3:.3f} ms "
            f"CPU each, {sum(seconds) / args.tasks * 1e3:.3f} ms per task"
        )
    if args.no_profile:
        return
    stats = pstats.Stats(profile).strip_dirs()
    stats.sort_stats("cumulative").print_stats(args.top)
    stats.sort_stats("tottime").print_stats(args.top)


if __name__ == "__main__":
    main()
