"""Drain N no-op tasks through NATS workers, then the same N through a bare nats-py loop.

    .venv/bin/python bench/nats_queue.py [--tasks 2000] [--workers 4] [--concurrency 4]
                                         [--db postgresql://…] [--nats nats://…]

Project: a ``flowyard serve --mode server --nats`` process and ``--workers``
``flowyard worker --nats`` processes; N ``debug.sleep`` tasks (seconds=0) are
written to the database (task + outbox event per row, as the API would) and the
clock runs until the last one succeeded. Bare: on the same nats-server, one
publisher (awaited PubAcks, 64 in flight, like the relay) and ``--workers``
pull consumers (fetch ``--concurrency`` at a time, ack each) in this process.

Prints throughput and created-to-claimed (published-to-fetched) latency p50/p99
for both, and ``ratio 0.xx`` (project/bare throughput) on its last line. Without
--db / --nats it starts throwaway PostgreSQL and nats-server instances.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import nats
import sqlalchemy as sa
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StorageType

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adapters.sql.schema import events, tasks  # noqa: E402
from tests.support.nats import NatsServer  # noqa: E402
from tests.support.nats_processes import bulk_create  # noqa: E402
from tests.support.postgres import PostgresCluster  # noqa: E402
from tests.support.processes import ManagedProcess, ProcessGroup  # noqa: E402
from tests.support.task_db import open_store  # noqa: E402

WARMUP = 40


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@contextlib.contextmanager
def servers(args: argparse.Namespace, work: Path) -> Iterator[tuple[str, str]]:
    """PostgreSQL and nats-server: the given ones, or throwaway ones."""
    cluster = nats_server = None
    try:
        db = args.db
        if db is None:
            cluster = PostgresCluster(work / "pg")
            cluster.start()
            name = f"bench_{uuid.uuid4().hex[:8]}"
            cluster.create_database(name)
            db = cluster.uri(name)
        url = args.nats
        if url is None:
            nats_server = NatsServer(work / "nats" / "store")
            nats_server.start()
            url = nats_server.url
        yield db, url
    finally:
        if nats_server is not None:
            nats_server.stop()
        if cluster is not None:
            cluster.stop()


async def wait_succeeded(db: str, count: int, limit: float) -> float:
    async with open_store(db, migrate=False) as store:
        deadline = time.monotonic() + limit
        query = sa.select(sa.func.count()).where(tasks.c.state == "succeeded")
        while time.monotonic() < deadline:
            async with store.db.read() as conn:
                done = (await conn.execute(query)).scalar() or 0
            if done >= count:
                return time.monotonic()
            await asyncio.sleep(0.02)
    raise TimeoutError(f"only {done} of {count} tasks succeeded in {limit}s")


async def phases(db: str, ids: set[uuid.UUID], verbose: bool) -> dict[str, list[float]]:
    """Milliseconds per task: created->claimed, and where the time went (``--phases``)."""
    async with open_store(db, migrate=False) as store, store.db.read() as conn:
        rows = (
            await conn.execute(
                sa.select(events.c.task_id, events.c.type, events.c.at, events.c.relayed_at)
            )
        ).all()
    at: dict[tuple[uuid.UUID, str], tuple[float, float]] = {}
    for task_id, kind, when, relayed in rows:
        if task_id in ids:
            at.setdefault((task_id, kind), (when.timestamp(), relayed.timestamp()))
    out: dict[str, list[float]] = {}

    def add(name: str, first: tuple[str, int], second: tuple[str, int]) -> None:
        out[name] = [
            (at[(t, second[0])][second[1]] - at[(t, first[0])][first[1]]) * 1000
            for t in ids
            if (t, first[0]) in at and (t, second[0]) in at
        ]

    add("created->claimed", ("task.created", 0), ("task.claimed", 0))
    add("relay (created->published)", ("task.created", 0), ("task.created", 1))
    add("dispatch (published->claimed)", ("task.created", 1), ("task.claimed", 0))
    add("server sees claim", ("task.claimed", 0), ("task.claimed", 1))
    add("run (claimed->done)", ("task.claimed", 0), ("task.done", 0))
    add("server sees done", ("task.done", 0), ("task.done", 1))
    batches: dict[float, int] = {}
    for (_, kind), (_, relayed) in at.items():
        if kind == "task.created":
            batches[relayed] = batches.get(relayed, 0) + 1
    first = min(batches, default=0.0)
    cadence = ", ".join(f"+{t - first:.2f}s:{n}" for t, n in sorted(batches.items()))
    if verbose:
        print(f"  relay batches (time after the first: events): {cadence[:2000]}")
    return out


def worker_args(url: str, index: int, concurrency: int) -> list[str]:
    return [
        "--nats", url, "--flows", "debug.sleep", "--name", f"bench-{index}",
        "--concurrency", str(concurrency),
    ]  # fmt: skip


async def run_project(args: argparse.Namespace, db: str, url: str, work: Path) -> float:
    group = ProcessGroup(work / "logs")
    files = work / "tasks"
    try:
        server = group.start_server(
            [
                "--mode", "server", "--db", db, "--files", str(files), "--nats", url,
                "--lease-seconds", "30",
            ]
        )  # fmt: skip
        server.wait_healthy(120)
        workers: list[ManagedProcess] = [
            group.start_worker(worker_args(url, i, args.concurrency)) for i in range(args.workers)
        ]
        for worker in workers:
            worker.wait_for_log(r"worker nats:\S+ on nats://", timeout=120)
        async with open_store(db, migrate=False) as store:
            await bulk_create(store, WARMUP)
            await wait_succeeded(db, WARMUP, 120)
            started = time.monotonic()
            ids = await bulk_create(store, args.tasks)
        finished = await wait_succeeded(db, WARMUP + args.tasks, 600)
        elapsed = finished - started
        timings = await phases(db, set(ids), args.phases)
        latency = timings["created->claimed"]
        async with httpx.AsyncClient(base_url=server.url or "", timeout=10) as client:
            health = (await client.get("/api/health")).json()
        rate = args.tasks / elapsed
        if args.phases:
            for name, values in timings.items():
                print(
                    f"  {name}: p50 {percentile(values, 0.5):.1f} ms, "
                    f"p99 {percentile(values, 0.99):.1f} ms"
                )
        print(
            f"project: {args.tasks} tasks through {args.workers} NATS workers x "
            f"{args.concurrency} in {elapsed:.2f}s: {rate:.0f} tasks/s; created->claimed "
            f"p50 {percentile(latency, 0.5):.1f} ms, p99 {percentile(latency, 0.99):.1f} ms "
            f"(relay pending after: {health.get('nats', {}).get('relay', {}).get('pending')})"
        )
        return rate
    finally:
        group.stop_all()


async def run_bare(args: argparse.Namespace, url: str) -> float:
    stream, subject = f"BARE_{uuid.uuid4().hex[:8]}", f"bare.{uuid.uuid4().hex[:8]}"
    publisher = await nats.connect(url)
    js = publisher.jetstream()
    await js.add_stream(
        name=stream, subjects=[subject], retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
    )  # fmt: skip
    await js.add_consumer(
        stream,
        ConsumerConfig(durable_name="bare", ack_policy=AckPolicy.EXPLICIT, ack_wait=30),
    )
    latencies: list[float] = []
    received = 0
    done = asyncio.Event()

    async def consume() -> None:
        nonlocal received
        nc = await nats.connect(url)
        try:
            sub = await nc.jetstream().pull_subscribe_bind("bare", stream=stream)
            while not done.is_set():
                try:
                    msgs = await sub.fetch(args.concurrency, timeout=0.5)
                except TimeoutError:
                    continue
                for msg in msgs:
                    latencies.append((time.time() - json.loads(msg.data)["t"]) * 1000)
                    await msg.ack()
                    received += 1
                if received >= args.tasks:
                    done.set()
        finally:
            await nc.close()

    async def publish_one(i: int, slots: asyncio.Semaphore) -> None:
        async with slots:
            body = json.dumps({"i": i, "t": time.time()}).encode()
            await js.publish(subject, body, headers={"Nats-Msg-Id": f"bare:{i}"})

    consumers = [asyncio.create_task(consume()) for _ in range(args.workers)]
    started = time.monotonic()
    slots = asyncio.Semaphore(64)
    await asyncio.gather(*(publish_one(i, slots) for i in range(args.tasks)))
    await asyncio.wait_for(done.wait(), 300)
    elapsed = time.monotonic() - started
    await asyncio.gather(*consumers)
    await js.delete_stream(stream)
    await publisher.close()
    rate = args.tasks / elapsed
    print(
        f"bare:    {args.tasks} messages through {args.workers} pull consumers x "
        f"{args.concurrency} in {elapsed:.2f}s: {rate:.0f} msgs/s; published->fetched "
        f"p50 {percentile(latencies, 0.5):.1f} ms, p99 {percentile(latencies, 0.99):.1f} ms"
    )
    return rate


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--db", help="PostgreSQL URI (default: a throwaway cluster)")
    parser.add_argument("--nats", help="nats:// URL (default: a throwaway nats-server)")
    parser.add_argument("--phases", action="store_true", help="where the project's time went")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="flowyard-bench-") as tmp:
        work = Path(tmp)
        with servers(args, work) as (db, url):
            project = await run_project(args, db, url, work)
            bare = await run_bare(args, url)
    print(f"ratio {project / bare:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
