"""Database queue benchmark: flowyard's own workers against a bare SKIP LOCKED loop.

    .venv/bin/python bench/db_queue.py [--tasks 2000] [--workers 4] [--concurrency 4]
                                       [--repeat 3] [--db postgresql://…]

On one PostgreSQL database (an embedded throwaway cluster unless ``--db`` names
one), it drains ``--tasks`` no-op ``debug.sleep`` tasks (seconds=0) through
``--workers`` real ``flowyard worker --db`` processes, then the same number of
rows through as many processes running a bare loop written with psycopg (one
``WITH … FOR UPDATE SKIP LOCKED … UPDATE … RETURNING`` claim of up to
``--concurrency`` rows, then one ``UPDATE`` per row to finish it; no events,
no files, no threads). Each drain starts when one transaction commits all of
its tasks and ends when none is left; the figure is the median of
``--repeat`` drains. With the workers idle it also times create-to-claim
(``claimed_at - created_at`` of tasks created one at a time, as the server
does: the claim comes from the LISTEN/NOTIFY wake-up). The last line is
``ratio 0.xx``: project throughput over bare throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import multiprocessing.queues
import multiprocessing.synchronize
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from adapters.sql.task_store import record_in  # noqa: E402
from core.events import TaskCreated  # noqa: E402
from tests.support.postgres import PostgresCluster  # noqa: E402
from tests.support.processes import ProcessGroup  # noqa: E402
from tests.support.task_db import open_store  # noqa: E402

BARE_FLOW = "bench.bare"
CLAIM = """
WITH picked AS (
    SELECT id FROM tasks
    WHERE state = 'queued' AND flow = %(flow)s
    ORDER BY priority DESC, created_at, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE tasks SET state = 'running', attempt = tasks.attempt + 1, worker_id = %(worker)s,
    lease_expires_at = now() + interval '30 seconds', claimed_at = now(), updated_at = now()
FROM picked WHERE tasks.id = picked.id
RETURNING tasks.id
"""
FINISH = """
UPDATE tasks SET state = 'succeeded', progress = 1, finished_at = now(), updated_at = now(),
    lease_expires_at = NULL
WHERE id = %(id)s AND state = 'running' AND worker_id = %(worker)s
"""
INSERT_BARE = """
INSERT INTO tasks (id, flow, owner, params, inputs, priority, state, attempt, max_attempts,
    cancel_requested, progress, message, outputs, created_at, updated_at)
SELECT gen_random_uuid(), %(flow)s, 'admin', '{}', '[]', 0, 'queued', 0, 3, false, 0, '', '[]',
    clock_timestamp(), clock_timestamp()
FROM generate_series(1, %(count)s)
"""
UNFINISHED = "SELECT count(*) FROM tasks WHERE flow = %(flow)s AND state IN ('queued', 'running')"


@contextmanager
def database(uri: str | None) -> Iterator[str]:
    """The URI to benchmark on: ``uri``, or a fresh embedded cluster's database."""
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


def plain(uri: str) -> str:
    """psycopg wants ``postgresql://``; accept the SQLAlchemy spelling too."""
    return uri.replace("postgresql+psycopg://", "postgresql://", 1)


def wait_drained(uri: str, flow: str, timeout: float) -> float:
    """Poll until no task of ``flow`` is queued or running; return when that was seen."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(plain(uri), autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(UNFINISHED, {"flow": flow}).fetchone()
            if row is not None and row[0] == 0:
                return time.monotonic()
            time.sleep(0.02)
    raise TimeoutError(f"{flow} tasks not drained after {timeout:.0f}s")


# ------------------------------------------------------------------- the project


async def prepare_tasks(files: Path, count: int) -> list[TaskCreated]:
    """The events of ``count`` no-op tasks, and their folders on the tasks folder."""
    created = [
        TaskCreated(task_id=uuid.uuid4(), flow="debug.sleep", params={"seconds": 0.0, "steps": 1})
        for _ in range(count)
    ]
    for event in created:
        (files / str(event.task_id)).mkdir(parents=True)
    return created


async def commit_tasks(uri: str, created: list[TaskCreated]) -> float:
    """Record the tasks as the server does, all visible at one commit; return its time."""
    async with open_store(uri, migrate=False) as store:
        async with store.db.write() as tx:
            for event in created:
                await record_in(tx, event)
        return time.monotonic()  # the commit happened when write() exited


async def claim_latencies(uri: str, files: Path, samples: int) -> list[float]:
    """Create tasks one at a time on idle workers; seconds from created_at to claimed_at."""
    latencies: list[float] = []
    async with open_store(uri, migrate=False) as store:
        for _ in range(samples):
            event = TaskCreated(
                task_id=uuid.uuid4(), flow="debug.sleep", params={"seconds": 0.0, "steps": 1}
            )
            (files / str(event.task_id)).mkdir(parents=True)
            await store.record(event)
            for _ in range(500):
                task = await store.get(event.task_id)
                if task.claimed_at is not None:
                    break
                await asyncio.sleep(0.005)
            assert task.claimed_at is not None, "a task was not claimed within 2.5 s"
            latencies.append((task.claimed_at - task.created_at).total_seconds())
            await asyncio.sleep(0.25)  # the workers go idle again
    return latencies


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of these processes and all their threads, so far."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
    return total


def postgres_pids(uri: str) -> list[int]:
    """The backends serving ``uri``'s database right now (their CPU is the database's work)."""
    with psycopg.connect(plain(uri), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid()"
        ).fetchall()
    return [int(r[0]) for r in rows]


@dataclass
class Drain:
    rate: float
    client_ms: float  # CPU per task in the worker processes
    database_ms: float  # CPU per task in the PostgreSQL backends (same host only)


def drain_project(uri: str, files: Path, tasks: int, workers: list[int]) -> Drain:
    created = asyncio.run(prepare_tasks(files, tasks))
    backends = postgres_pids(uri)
    before = cpu_seconds(workers), cpu_seconds(backends)
    committed = asyncio.run(commit_tasks(uri, created))
    finished = wait_drained(uri, "debug.sleep", 300)
    after = cpu_seconds(workers), cpu_seconds(backends)
    return Drain(
        tasks / (finished - committed),
        (after[0] - before[0]) / tasks * 1000,
        (after[1] - before[1]) / tasks * 1000,
    )


# --------------------------------------------------------------- the bare loop


def bare_worker(
    uri: str,
    name: str,
    concurrency: int,
    ready: mp.synchronize.Semaphore,
    go: mp.synchronize.Event,
    stop: mp.synchronize.Event,
    cpu: mp.queues.Queue[float],
) -> None:
    """Claim up to ``concurrency`` rows, finish each in its own transaction; stop when empty."""
    with psycopg.connect(uri, autocommit=False) as conn:
        ready.release()
        go.wait(300)
        started = time.process_time()
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            with conn.transaction():
                rows = conn.execute(
                    CLAIM, {"flow": BARE_FLOW, "limit": concurrency, "worker": name}
                ).fetchall()
            if not rows:
                break
            for (task_id,) in rows:
                with conn.transaction():
                    conn.execute(FINISH, {"id": task_id, "worker": name})
        cpu.put(time.process_time() - started)
        stop.wait(60)  # keep the backend alive until the parent has read its CPU time


def drain_bare(uri: str, workers: int, concurrency: int, tasks: int) -> Drain:
    ctx = mp.get_context("spawn")
    go, stop, ready, cpu = ctx.Event(), ctx.Event(), ctx.Semaphore(0), ctx.Queue()
    procs = [
        ctx.Process(
            target=bare_worker,
            args=(plain(uri), f"bare-{i}", concurrency, ready, go, stop, cpu),
        )
        for i in range(workers)
    ]
    for proc in procs:
        proc.start()
    try:
        for _ in procs:  # connected and waiting: start-up is not part of the drain
            if not ready.acquire(timeout=60):
                raise TimeoutError("a bare worker did not start")
        with psycopg.connect(plain(uri)) as conn:
            conn.execute(INSERT_BARE, {"flow": BARE_FLOW, "count": tasks})
            conn.commit()
        backends = postgres_pids(uri)
        database_before = cpu_seconds(backends)
        committed = time.monotonic()
        go.set()
        finished = wait_drained(uri, BARE_FLOW, 300)
        client = sum(cpu.get(timeout=60) for _ in procs)
        database = cpu_seconds(backends) - database_before
    finally:
        stop.set()
        for proc in procs:
            proc.join(30)
            if proc.is_alive():
                proc.kill()
    return Drain(tasks / (finished - committed), client / tasks * 1000, database / tasks * 1000)


# ------------------------------------------------------------------------ main


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def run(args: argparse.Namespace, uri: str) -> tuple[list[Drain], list[Drain], list[float]]:
    """Start the workers, time wake-ups, then alternate project and bare drains."""
    with tempfile.TemporaryDirectory(prefix="flowyard-bench-files-") as tmp:
        files = Path(tmp)
        group = ProcessGroup(files / ".logs")
        try:
            for i in range(args.workers):
                group.start_worker(
                    ["--db", uri, "--files", str(files), "--concurrency", str(args.concurrency)],
                    name=f"bench-{i}",
                )
            for process in group.processes:
                process.wait_for_log(r"services\.db_worker: worker ", 60)
            time.sleep(1.0)
            latencies = asyncio.run(claim_latencies(uri, files, args.samples))
            pids = [p.pid for p in group.processes]
            project, bare = [], []
            for _ in range(args.repeat):  # alternating, so a change in machine load hits both
                project.append(drain_project(uri, files, args.tasks, pids))
                bare.append(drain_bare(uri, args.workers, args.concurrency, args.tasks))
            return project, bare, latencies
        finally:
            group.stop_all()


def describe(name: str, drains: list[Drain]) -> str:
    rate = statistics.median(d.rate for d in drains)
    client = statistics.median(d.client_ms for d in drains)
    database = statistics.median(d.database_ms for d in drains)
    return (
        f"{name:27s}{rate:7.0f} tasks/s  runs {[round(d.rate) for d in drains]}  "
        f"CPU per task: clients {client:.2f} ms, PostgreSQL {database:.2f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=4, help="slots per worker")
    parser.add_argument("--repeat", type=int, default=3, help="drains per side (median)")
    parser.add_argument("--samples", type=int, default=40, help="create-to-claim samples")
    parser.add_argument("--db", help="PostgreSQL URI (default: an embedded throwaway cluster)")
    args = parser.parse_args()

    with database(args.db) as uri:
        asyncio.run(_migrate(uri))
        print(
            f"PostgreSQL {uri.split('@')[-1]}: {args.tasks} no-op tasks, {args.workers} "
            f"processes x {args.concurrency} slots, median of {args.repeat}; "
            f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}",
            flush=True,
        )
        project, bare, latencies = run(args, uri)

    p50, p99 = percentile(latencies, 50) * 1000, percentile(latencies, 99) * 1000
    print(describe("project (flowyard worker):", project))
    print(describe("bare SKIP LOCKED loop:", bare))
    print(
        f"create-to-claim, idle workers (NOTIFY): p50 {p50:.1f} ms, p99 {p99:.1f} ms "
        f"({len(latencies)} tasks)"
    )
    ratio = statistics.median(d.rate for d in project) / statistics.median(d.rate for d in bare)
    print(f"ratio {ratio:.2f}")


async def _migrate(uri: str) -> None:
    async with open_store(uri):
        pass


if __name__ == "__main__":
    main()
