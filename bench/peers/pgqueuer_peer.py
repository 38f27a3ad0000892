"""PgQueuer's half of ``bench/db_queue.py``: run under ``bench/.venv-peers/bin/python``.

    bench/.venv-peers/bin/python bench/peers/pgqueuer_peer.py --dsn postgresql://… \
        [--tasks 2000] [--workers 4] [--batch 4] [--drains 1] [--samples 40]

PgQueuer's documented worker API, as its README and ``tools/benchmark.py``
use it: in each of ``--workers`` processes one asyncpg connection,
``QueueManager(Queries(AsyncpgDriver(conn)))``, an entrypoint that does
nothing, and ``qm.run(batch_size=--batch)`` (LISTEN/NOTIFY wake-ups, finished
jobs logged in batches as PgQueuer does). The schema is installed with
``Queries.install()`` when missing.

With the workers idle it first enqueues ``--samples`` jobs one at a time and
waits for each to leave the queue: enqueue-to-start is the job's ``created``
(the database's clock) to the entrypoint's first line (this host's clock),
enqueue-to-done is ``created`` to the ``successful`` row in ``pgqueuer_log``.
Then each drain enqueues ``--tasks`` jobs in one statement and times from its
commit until the queue holds none of them. The last line is ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import multiprocessing.queues
import multiprocessing.synchronize
import os
import time
from datetime import timedelta

import asyncpg
import psutil
from pgqueuer import AsyncpgDriver, Job, Queries, QueueManager

ENTRYPOINT = "bench_noop"
SAMPLE = b"sample"  # payload of the one-at-a-time jobs, whose start time is recorded


def worker(
    dsn: str,
    batch: int,
    ready: mp.synchronize.Semaphore,
    stop: mp.synchronize.Event,
    out: mp.queues.Queue[list[tuple[int, float, float]]],
) -> None:
    asyncio.run(_worker(dsn, batch, ready, stop, out))


async def _worker(
    dsn: str,
    batch: int,
    ready: mp.synchronize.Semaphore,
    stop: mp.synchronize.Event,
    out: mp.queues.Queue[list[tuple[int, float, float]]],
) -> None:
    conn = await asyncpg.connect(dsn)
    qm = QueueManager(Queries(AsyncpgDriver(conn)))
    started: list[tuple[int, float, float]] = []  # job id, created, entrypoint start

    @qm.entrypoint(ENTRYPOINT)
    async def noop(job: Job) -> None:
        if job.payload == SAMPLE:
            started.append((int(job.id), job.created.timestamp(), time.time()))

    run = asyncio.create_task(qm.run(batch_size=batch))
    deadline = time.monotonic() + 60
    while True:  # ready once its LISTEN answers a health-check NOTIFY
        try:
            await qm.listener_healthy(timeout=timedelta(seconds=0.5))
            break
        except Exception:
            if run.done() or time.monotonic() > deadline:
                raise
    ready.release()
    await asyncio.to_thread(stop.wait, 900)
    qm.shutdown.set()
    await asyncio.wait_for(run, 30)
    out.put(started)
    with contextlib.suppress(Exception):
        await conn.close()


def tree_cpu(pid: int) -> float:
    """CPU of a server and all its children, the exited ones included."""
    with contextlib.suppress(psutil.Error):
        parent = psutil.Process(pid)
        times = parent.cpu_times()
        total = times.user + times.system + times.children_user + times.children_system
        for child in parent.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                t = child.cpu_times()
                total += t.user + t.system
        return total
    return 0.0


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
    return total


def database_cpu(postmaster: int | None, backends: list[int]) -> float:
    """The whole cluster's CPU when its postmaster is known, else these backends'."""
    return tree_cpu(postmaster) if postmaster else cpu_seconds(backends)


async def backends(conn: asyncpg.Connection) -> list[int]:
    rows = await conn.fetch(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
        " AND pid <> pg_backend_pid()"
    )
    return [int(r["pid"]) for r in rows]


async def wait_gone(conn: asyncpg.Connection, job_id: int | None, limit: float) -> float:
    """Poll until the job (``None``: every bench job) has left the queue table."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if job_id is None:
            left = await conn.fetchval(
                "SELECT count(*) FROM pgqueuer WHERE entrypoint = $1", ENTRYPOINT
            )
        else:
            left = await conn.fetchval("SELECT count(*) FROM pgqueuer WHERE id = $1", job_id)
        if left == 0:
            return time.monotonic()
        await asyncio.sleep(0.005 if job_id is not None else 0.02)
    raise TimeoutError(f"PgQueuer jobs still queued after {limit:.0f}s")


async def measure(args: argparse.Namespace, pids: list[int]) -> dict[str, object]:
    conn = await asyncpg.connect(args.dsn)
    queries = Queries(AsyncpgDriver(conn))
    sample_ids: list[int] = []
    for _ in range(args.samples):
        (job_id,) = await queries.enqueue(ENTRYPOINT, SAMPLE)
        await wait_gone(conn, int(job_id), 10)
        sample_ids.append(int(job_id))
        await asyncio.sleep(0.25)  # the workers go idle again
    drains = []
    for _ in range(args.drains):
        database = [] if args.pg_pid else await backends(conn)
        before = cpu_seconds(pids), database_cpu(args.pg_pid, database)
        await queries.enqueue([ENTRYPOINT] * args.tasks, [None] * args.tasks, [0] * args.tasks)
        committed = time.monotonic()
        finished = await wait_gone(conn, None, 300)
        after = cpu_seconds(pids), database_cpu(args.pg_pid, database)
        drains.append(
            {
                "rate": args.tasks / (finished - committed),
                "client_ms": (after[0] - before[0]) / args.tasks * 1000,
                "database_ms": (after[1] - before[1]) / args.tasks * 1000,
            }
        )
    await asyncio.sleep(0.5)  # the last log buffer flushes (0.1 s timer)
    logged = await conn.fetch(
        "SELECT job_id, created FROM pgqueuer_log WHERE status = 'successful'"
        " AND job_id = ANY($1::bigint[])",
        sample_ids,
    )
    await conn.close()
    return {
        "drains": drains,
        "logged": {int(r["job_id"]): r["created"].timestamp() for r in logged},
    }


async def install(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        queries = Queries(AsyncpgDriver(conn))
        if not await queries.schema_is_installed():
            await queries.install()
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", required=True, help="postgresql:// URI")
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=4, help="qm.run(batch_size=…)")
    parser.add_argument("--drains", type=int, default=1)
    parser.add_argument("--samples", type=int, default=40, help="one-at-a-time jobs")
    parser.add_argument("--pg-pid", type=int, help="the postmaster (CPU of the whole cluster)")
    args = parser.parse_args()
    asyncio.run(install(args.dsn))

    ctx = mp.get_context("spawn")
    ready, stop, out = ctx.Semaphore(0), ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=worker, args=(args.dsn, args.batch, ready, stop, out))
        for _ in range(args.workers)
    ]
    for proc in procs:
        proc.start()
    try:
        for _ in procs:
            if not ready.acquire(timeout=60):
                raise TimeoutError("a PgQueuer worker did not start")
        result = asyncio.run(measure(args, [p.pid for p in procs if p.pid is not None]))
        stop.set()
        started = [s for _ in procs for s in out.get(timeout=60)]
    finally:
        stop.set()
        for proc in procs:
            proc.join(30)
            if proc.is_alive():
                proc.kill()
    logged: dict[int, float] = result.pop("logged")  # type: ignore[assignment]
    result["to_start_ms"] = [(at - created) * 1000 for _, created, at in started]
    result["to_done_ms"] = [
        (logged[job] - created) * 1000 for job, created, _ in started if job in logged
    ]
    result["pid"] = os.getpid()
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
