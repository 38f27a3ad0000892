"""Database queue benchmark: flowyard's workers, PgQueuer and a bare SKIP LOCKED loop.

    .venv/bin/python bench/db_queue.py [--tasks 2000] [--workers 4] [--concurrency 4]
                                       [--repeat 3] [--samples 40] [--db postgresql://…]
                                       [--no-peer]

On one PostgreSQL database (an embedded throwaway cluster unless ``--db`` names
one), each round drains ``--tasks`` no-op jobs three ways, one after the other
so a change in machine load hits all three; the figures are medians of
``--repeat`` rounds:

- flowyard: no-op tasks (seconds=0) through ``--workers`` real ``flowyard worker
  --db`` processes with ``--concurrency`` slots each, twice: ``debug.async_sleep``
  (an ``AsyncFlow``, awaited on the worker's event loop, as the peer's coroutine
  job is) and ``debug.sleep`` (run in a thread, as a torch flow is);
- PgQueuer, the peer a user would pick instead (``bench/peers/pgqueuer_peer.py``,
  run under ``bench/.venv-peers``, made from ``bench/requirements-peers.txt``
  on first use): ``--workers`` processes, each a ``QueueManager`` on one asyncpg
  connection with a no-op entrypoint and ``batch_size=--concurrency``;
- a bare loop written with psycopg in as many processes (one ``WITH … FOR
  UPDATE SKIP LOCKED … UPDATE … RETURNING`` claim of up to ``--concurrency``
  rows, then one ``UPDATE`` per row to finish it; no events, no files, no
  threads).

Each drain starts when one transaction (one statement for PgQueuer) has
committed all of its jobs and ends when none is left unfinished. CPU per task
is that of the worker processes ("clients") and of PostgreSQL during the drain
(the whole embedded cluster, background processes included; with ``--db``,
the database's backends, same host only).

With the workers idle, ``--samples`` jobs are also created one at a time, each
after the previous one finished: create-to-claim (flowyard: ``claimed_at -
created_at``, the claim coming from the LISTEN/NOTIFY wake-up; PgQueuer: the
job's ``created`` to its entrypoint's first line; bare: one ``INSERT`` + ``NOTIFY``
to a LISTENing bare worker's ``claimed_at``) and create-to-done (``finished_at``;
PgQueuer: its ``pgqueuer_log`` row, which it writes in batches every 0.1 s).
Each one waits 0.25 s after the previous one finished; the "trickle" row creates
flowyard's again 20 ms after the previous one finished, as a steady stream of
submissions does (a NOTIFY debounce window longer than that delays every claim).

The last lines are ``ratio_to_bare X.XX``, ``ratio_to_peer X.XX`` and
``ratio_to_peer_thread X.XX``: flowyard's throughput (the ``AsyncFlow`` no-op,
like the peer's job; the last one the thread flow's) over the bare loop's and
over PgQueuer's.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.peer_env import run_peer  # noqa: E402
from flowyard.adapters.files.local import LocalFileStore  # noqa: E402
from flowyard.core.events import TaskCreated  # noqa: E402
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
BARE_CHANNEL = "bench_bare"
INSERT_ONE = """
INSERT INTO tasks (id, flow, owner, params, inputs, priority, state, attempt, max_attempts,
    cancel_requested, progress, message, outputs, created_at, updated_at)
VALUES (%(id)s, %(flow)s, 'admin', '{}', '[]', 0, 'queued', 0, 3, false, 0, '', '[]',
    clock_timestamp(), clock_timestamp())
"""
TIMES = "SELECT state, created_at, claimed_at, finished_at FROM tasks WHERE id = %(id)s"


@contextmanager
def database(uri: str | None) -> Iterator[str]:
    """The URI to benchmark on: ``uri``, or a fresh embedded cluster's database."""
    if uri is not None:
        yield uri
        return
    with tempfile.TemporaryDirectory(prefix="flowyard-bench-") as tmp:
        cluster = PostgresCluster(Path(tmp) / "pg")
        cluster.start()
        global POSTMASTER
        POSTMASTER = cluster.pid
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


ASYNC_NOOP, THREAD_NOOP = "debug.async_sleep", "debug.sleep"
"""The no-op flows: awaited on the worker's event loop, and run in a thread."""


async def prepare_tasks(files: Path, count: int, flow: str = ASYNC_NOOP) -> list[TaskCreated]:
    """The events of ``count`` no-op tasks, and the tasks folder marked as a server marks it."""
    LocalFileStore(files).mark_root()
    return [
        TaskCreated(task_id=uuid.uuid4(), flow=flow, params={"seconds": 0.0, "steps": 1})
        for _ in range(count)
    ]


async def commit_tasks(uri: str, created: list[TaskCreated]) -> float:
    """Record the tasks as the server does for a batch create (``POST /api/tasks/batch``):
    all in one transaction, visible at one commit; return its time."""
    async with open_store(uri, migrate=False) as store:
        await store.record_all(created)
        return time.monotonic()  # the commit happened when record_all returned


async def claim_latencies(
    uri: str, files: Path, samples: int, pause: float = 0.25
) -> tuple[list[float], list[float]]:
    """Create tasks one at a time on idle workers, ``pause`` seconds after the previous one
    finished; seconds from created_at to claimed_at and to finished_at."""
    to_claim: list[float] = []
    to_done: list[float] = []
    LocalFileStore(files).mark_root()
    async with open_store(uri, migrate=False) as store:
        for _ in range(samples):
            event = TaskCreated(
                task_id=uuid.uuid4(), flow=ASYNC_NOOP, params={"seconds": 0.0, "steps": 1}
            )
            await store.record(event)
            for _ in range(1000):
                task = await store.get(event.task_id)
                if task.finished_at is not None:
                    break
                await asyncio.sleep(0.005)
            assert task.claimed_at is not None, "a task was not claimed within 5 s"
            assert task.finished_at is not None, "a task was not finished within 5 s"
            to_claim.append((task.claimed_at - task.created_at).total_seconds())
            to_done.append((task.finished_at - task.created_at).total_seconds())
            await asyncio.sleep(pause)  # the workers go idle again
    return to_claim, to_done


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of these processes and all their threads, so far."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
    return total


POSTMASTER: int | None = None
"""The embedded cluster's postmaster, when the benchmark started one."""


def tree_cpu(pid: int) -> float:
    """CPU of a server and all its children, the exited ones included (living ones read
    directly, reaped ones in its ``children_*`` times)."""
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


def database_cpu(backends: list[int]) -> float:
    """PostgreSQL's CPU so far: all of the embedded cluster (every backend, the ones that
    exit during the drain included), or with ``--db`` these backends of the database."""
    return tree_cpu(POSTMASTER) if POSTMASTER is not None else cpu_seconds(backends)


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


def drain_project(uri: str, files: Path, tasks: int, workers: list[int], flow: str) -> Drain:
    created = asyncio.run(prepare_tasks(files, tasks, flow))
    backends = postgres_pids(uri)
    before = cpu_seconds(workers), database_cpu(backends)
    committed = asyncio.run(commit_tasks(uri, created))
    finished = wait_drained(uri, flow, 300)
    after = cpu_seconds(workers), database_cpu(backends)
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
        database_before = database_cpu(backends)
        committed = time.monotonic()
        go.set()
        finished = wait_drained(uri, BARE_FLOW, 300)
        client = sum(cpu.get(timeout=60) for _ in procs)
        database = database_cpu(backends) - database_before
    finally:
        stop.set()
        for proc in procs:
            proc.join(30)
            if proc.is_alive():
                proc.kill()
    return Drain(tasks / (finished - committed), client / tasks * 1000, database / tasks * 1000)


def bare_listener(
    uri: str,
    name: str,
    concurrency: int,
    ready: mp.synchronize.Event,
    stop: mp.synchronize.Event,
) -> None:
    """LISTEN; on each NOTIFY claim and finish rows (as ``bare_worker``) until none is left."""
    with (
        psycopg.connect(uri, autocommit=True) as listen,
        psycopg.connect(uri, autocommit=False) as conn,
    ):
        listen.execute(f"LISTEN {BARE_CHANNEL}")
        ready.set()
        deadline = time.monotonic() + 600
        while not stop.is_set() and time.monotonic() < deadline:
            if not list(listen.notifies(timeout=0.5, stop_after=1)):
                continue
            while True:
                with conn.transaction():
                    rows = conn.execute(
                        CLAIM, {"flow": BARE_FLOW, "limit": concurrency, "worker": name}
                    ).fetchall()
                if not rows:
                    break
                for (task_id,) in rows:
                    with conn.transaction():
                        conn.execute(FINISH, {"id": task_id, "worker": name})


def bare_latencies(uri: str, concurrency: int, samples: int) -> tuple[list[float], list[float]]:
    """One row + NOTIFY in one transaction, then wait until the bare listener finished it."""
    ctx = mp.get_context("spawn")
    ready, stop = ctx.Event(), ctx.Event()
    proc = ctx.Process(
        target=bare_listener, args=(plain(uri), "bare-listener", concurrency, ready, stop)
    )
    proc.start()
    to_claim: list[float] = []
    to_done: list[float] = []
    try:
        if not ready.wait(60):
            raise TimeoutError("the bare listener did not start")
        with psycopg.connect(plain(uri)) as conn:
            for _ in range(samples):
                task_id = uuid.uuid4()
                conn.execute(INSERT_ONE, {"id": task_id, "flow": BARE_FLOW})
                conn.execute(f"NOTIFY {BARE_CHANNEL}")
                conn.commit()
                for _ in range(1000):
                    row = conn.execute(TIMES, {"id": task_id}).fetchone()
                    conn.commit()
                    if row is not None and row[0] == "succeeded":
                        break
                    time.sleep(0.002)
                if row is None or row[0] != "succeeded":
                    raise TimeoutError("a bare row was not done within 2 s")
                _, created, claimed, finished = row
                to_claim.append((claimed - created).total_seconds())
                to_done.append((finished - created).total_seconds())
                time.sleep(0.25)
    finally:
        stop.set()
        proc.join(30)
        if proc.is_alive():
            proc.kill()
    return to_claim, to_done


# ---------------------------------------------------------------------- the peer


def drain_peer(args: argparse.Namespace, uri: str, samples: int) -> tuple[Drain, dict[str, Any]]:
    """One PgQueuer drain (and ``samples`` idle jobs first) in the peers' environment."""
    result = run_peer(
        "pgqueuer_peer.py",
        [
            "--dsn", plain(uri), "--tasks", str(args.tasks), "--workers", str(args.workers),
            "--batch", str(args.concurrency), "--drains", "1", "--samples", str(samples),
            *(["--pg-pid", str(POSTMASTER)] if POSTMASTER is not None else []),
        ],
        timeout=900,
    )  # fmt: skip
    (drain,) = result["drains"]  # type: ignore[misc]
    return Drain(drain["rate"], drain["client_ms"], drain["database_ms"]), result


# ------------------------------------------------------------------------ main


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


@dataclass
class Results:
    project: list[Drain] = field(default_factory=list)
    project_thread: list[Drain] = field(default_factory=list)
    peer: list[Drain] = field(default_factory=list)
    bare: list[Drain] = field(default_factory=list)
    latency: dict[str, list[float]] = field(default_factory=dict)  # milliseconds


def run(args: argparse.Namespace, uri: str) -> Results:
    """Start the workers, time wake-ups, then alternate project, peer and bare drains."""
    out = Results()
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
                process.wait_for_log(r"services\.worker_process: worker ", 60)
            time.sleep(1.0)
            claim, done = asyncio.run(claim_latencies(uri, files, args.samples))
            out.latency["flowyard create-to-claim"] = [x * 1000 for x in claim]
            out.latency["flowyard create-to-done"] = [x * 1000 for x in done]
            claim, _ = asyncio.run(claim_latencies(uri, files, args.samples, pause=TRICKLE))
            out.latency["flowyard create-to-claim, trickle"] = [x * 1000 for x in claim]
            pids = [p.pid for p in group.processes]
            for round_ in range(args.repeat):  # alternating, so a change in load hits all
                out.project.append(drain_project(uri, files, args.tasks, pids, ASYNC_NOOP))
                out.project_thread.append(drain_project(uri, files, args.tasks, pids, THREAD_NOOP))
                if not args.no_peer:
                    drain, result = drain_peer(args, uri, args.samples if round_ == 0 else 0)
                    out.peer.append(drain)
                    if round_ == 0:
                        out.latency["PgQueuer enqueue-to-start"] = result["to_start_ms"]
                        out.latency["PgQueuer enqueue-to-done"] = result["to_done_ms"]
                out.bare.append(drain_bare(uri, args.workers, args.concurrency, args.tasks))
        finally:
            group.stop_all()
    claim, done = bare_latencies(uri, args.concurrency, args.samples)
    out.latency["bare INSERT+NOTIFY-to-claim"] = [x * 1000 for x in claim]
    out.latency["bare INSERT+NOTIFY-to-done"] = [x * 1000 for x in done]
    return out


TRICKLE = 0.02
"""Pause between the trickle's tasks: a user submitting work a few dozen times a second,
within any NOTIFY debounce window of the previous task."""


def describe(name: str, drains: list[Drain]) -> str:
    rate = statistics.median(d.rate for d in drains)
    client = statistics.median(d.client_ms for d in drains)
    database = statistics.median(d.database_ms for d in drains)
    return (
        f"{name:27s}{rate:7.0f} tasks/s  runs {[round(d.rate) for d in drains]}  "
        f"CPU per task: clients {client:.2f} ms, PostgreSQL {database:.2f} ms"
    )


def median_rate(drains: list[Drain]) -> float:
    return statistics.median(d.rate for d in drains)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=4, help="slots per worker")
    parser.add_argument("--repeat", type=int, default=3, help="drains per side (median)")
    parser.add_argument("--samples", type=int, default=40, help="idle latency samples")
    parser.add_argument("--db", help="PostgreSQL URI (default: an embedded throwaway cluster)")
    parser.add_argument("--no-peer", action="store_true", help="skip PgQueuer")
    args = parser.parse_args()

    with database(args.db) as uri:
        asyncio.run(_migrate(uri))
        print(
            f"PostgreSQL {uri.split('@')[-1]}: {args.tasks} no-op tasks, {args.workers} "
            f"processes x {args.concurrency} slots, median of {args.repeat}; "
            f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}",
            flush=True,
        )
        results = run(args, uri)
        print(f"load average after: {os.getloadavg()[0]:.1f}")

    print(describe("flowyard, AsyncFlow:", results.project))
    print(describe("flowyard, thread flow:", results.project_thread))
    if results.peer:
        print(describe("PgQueuer (peer):", results.peer))
    print(describe("bare SKIP LOCKED loop:", results.bare))
    print("idle latency, one task at a time:")
    width = max(len(name) for name in results.latency) + 1
    for name, values in results.latency.items():
        print(
            f"  {name + ':':{width}s} p50 {percentile(values, 50):6.1f} ms, "
            f"p99 {percentile(values, 99):6.1f} ms ({len(values)} tasks)"
        )
    print(f"ratio_to_bare {median_rate(results.project) / median_rate(results.bare):.2f}")
    if results.peer:
        peer = median_rate(results.peer)
        print(f"ratio_to_peer {median_rate(results.project) / peer:.2f}")
        print(f"ratio_to_peer_thread {median_rate(results.project_thread) / peer:.2f}")
    else:
        print("ratio_to_peer n/a (--no-peer)")


async def _migrate(uri: str) -> None:
    async with open_store(uri):
        pass


if __name__ == "__main__":
    main()
