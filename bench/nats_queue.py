"""NATS queue benchmark: flowyard's NATS workers, taskiq-nats and a bare nats-py loop.

    .venv/bin/python bench/nats_queue.py [--tasks 2000] [--workers 4] [--concurrency 4]
                                         [--repeat 3] [--samples 40] [--phases]
                                         [--peer-results none,objectstore] [--no-peer]
                                         [--prefetch 0]
                                         [--db postgresql://…] [--nats nats://…]

Without --db / --nats it starts throwaway PostgreSQL and nats-server instances.
Each round drains ``--tasks`` no-op jobs three ways on the same nats-server, one
after the other so a change in machine load hits all three; the figures are
medians of ``--repeat`` rounds:

- flowyard: one ``flowyard serve --mode server --nats`` process and ``--workers``
  ``flowyard worker --nats`` processes (``--concurrency`` slots each); N
  no-op tasks (seconds=0) are written to the database in one
  transaction (task row + outbox event per task, as the API would) and the
  clock runs from that commit until the last one succeeded in the database;
  the server sends their work by priority dispatch, the default (``--prefetch
  N`` sets ``nats_prefetch``: N more per worker slot sent ahead); drained twice,
  as ``debug.async_sleep`` (an ``AsyncFlow``, awaited on the worker's event
  loop, as taskiq's coroutine task is) and as ``debug.sleep`` (run in a thread,
  as a torch flow is);
- taskiq-nats, the peer a user would pick instead (``bench/peers/taskiq_peer.py``
  under ``bench/.venv-peers``, made from ``bench/requirements-peers.txt`` on
  first use): ``taskiq worker --workers W --max-async-tasks C`` on a
  ``PullBasedJetStreamBroker``, a no-op task, N kicks, measured twice by
  default (``--peer-results``): without a result backend (``none``) and with
  taskiq-nats's own ``NATSObjectStoreResultBackend`` (``objectstore``); the
  clock runs from the first kick until the consumer's ack floor reaches the
  last one (taskiq acks after the result is saved);
- bare: in this process, one publisher (awaited PubAcks, 64 in flight, like
  the relay) and ``--workers`` pull consumers (fetch ``--concurrency`` at a
  time, ack each), from the first publish until the last ack.

With everything idle, ``--samples`` jobs are also created one at a time, each
after the previous one finished: flowyard's ``claimed_at - created_at`` and
``finished_at - created_at`` (from the task row), of tasks written to the
database by this process (the server hears of them through its event tailer)
and, in the "(HTTP)" rows, of tasks created with ``POST /api/tasks`` (the
server's own commit kicks its scheduler; the "trickle" row creates them 20 ms
after the previous one finished instead of 0.25 s), taskiq's kick to the task's
first line and to just after its result was saved, the bare loop's publish to
fetch and to the acknowledged ack. CPU per task: worker processes ("clients"),
and the servers: flowyard's server process, its PostgreSQL backends and the
nats-server (taskiq: its kicker too; bare: this process).

The last lines are ratios of flowyard's throughput (the ``AsyncFlow`` no-op,
like taskiq's coroutine task, unless named ``_thread``): ``ratio_to_bare X.XX``
over the bare loop's, ``ratio_to_peer_objectstore X.XX`` over taskiq-nats's with
results stored, and ``ratio_to_peer_thread X.XX`` (the thread flow's) and
``ratio_to_peer X.XX`` over taskiq-nats's without a result backend (the faster of
the two, so the bar to clear).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import nats
import psutil
import sqlalchemy as sa
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StorageType

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.db_queue import ASYNC_NOOP, THREAD_NOOP  # noqa: E402
from bench.peer_env import run_peer  # noqa: E402
from flowyard.adapters.sql.schema import events, tasks  # noqa: E402
from flowyard.adapters.sql.task_store import SqlTaskStore  # noqa: E402
from flowyard.core.task import TaskState  # noqa: E402
from tests.support.auth import ADMIN_AUTH, ADMIN_ENV  # noqa: E402
from tests.support.nats import NatsServer  # noqa: E402
from tests.support.nats_processes import bulk_create  # noqa: E402
from tests.support.postgres import PostgresCluster  # noqa: E402
from tests.support.processes import ManagedProcess, ProcessGroup  # noqa: E402
from tests.support.task_db import open_store  # noqa: E402

WARMUP = 40
TRICKLE = 0.02
"""The trickle's pause: each task created 20 ms after the previous one finished."""
NOOP: dict[str, Any] = {"flow": ASYNC_NOOP, "params": {"seconds": 0, "steps": 1}}


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of these processes and all their threads, so far."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
    return total


@dataclass
class Drain:
    rate: float
    client_ms: float  # CPU per task: worker processes
    server_ms: float  # CPU per task: the servers (see each side)
    note: str = ""


@dataclass
class Servers:
    db: str
    url: str
    nats_pid: int | None  # None when --nats names a server elsewhere
    pg_pid: int | None  # the postmaster; None when --db names a server


@contextlib.contextmanager
def servers(args: argparse.Namespace, work: Path) -> Iterator[Servers]:
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
        yield Servers(
            db,
            url,
            nats_server.pid if nats_server is not None else None,
            cluster.pid if cluster is not None else None,
        )
    finally:
        if nats_server is not None:
            nats_server.stop()
        if cluster is not None:
            cluster.stop()


def tree_cpu(pid: int | None) -> float:
    """CPU of a server and all its children, the exited ones included (e.g. a postmaster's
    backends: living ones read directly, reaped ones in its ``children_*`` times)."""
    if pid is None:
        return 0.0
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


async def postgres_pids(db: str) -> list[int]:
    """The backends serving ``db``'s database right now (their CPU is the database's work)."""
    async with open_store(db, migrate=False) as store, store.db.read() as conn:
        rows = (
            await conn.execute(
                sa.text(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                    " AND pid <> pg_backend_pid()"
                )
            )
        ).all()
    return [int(r[0]) for r in rows]


async def wait_succeeded(db: str, count: int, limit: float) -> float:
    """Poll until no task is queued or running, then check that ``count`` succeeded.

    The poll asks whether any is left (one index probe), not how many succeeded: that
    count grows with the run, and every 20 ms it cost PostgreSQL more CPU than some of
    the project's own statements (3.3 s in a 20,000-task drain), CPU this bench
    would then charge to the project."""
    left = sa.select(
        sa.exists().where(tasks.c.state.in_((TaskState.queued.value, TaskState.running.value)))
    )
    async with open_store(db, migrate=False) as store:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            async with store.db.read() as conn:
                busy = bool((await conn.execute(left)).scalar())
            if not busy:
                finished = time.monotonic()
                break
            await asyncio.sleep(0.02)
        else:
            raise TimeoutError(f"tasks still queued or running after {limit}s")
        succeeded = sa.select(sa.func.count()).where(tasks.c.state == "succeeded")
        async with store.db.read() as conn:
            done = (await conn.execute(succeeded)).scalar() or 0
    if done < count:
        raise RuntimeError(f"only {done} of {count} tasks succeeded")
    return finished


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
        if task_id in ids and relayed is not None:
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


async def work_taken(db: str, ids: set[uuid.UUID]) -> list[tuple[float, float, float]]:
    """``(created, work taken, claimed)`` of each task the scheduler sent (priority dispatch)."""
    query = sa.select(tasks.c.created_at, tasks.c.work_sent_at, tasks.c.claimed_at).where(
        tasks.c.id.in_(ids) & tasks.c.work_sent_at.is_not(None)
    )
    async with open_store(db, migrate=False) as store, store.db.read() as conn:
        rows = (await conn.execute(query)).all()
    return [(c.timestamp(), s.timestamp(), w.timestamp()) for c, s, w in rows if w is not None]


def worker_args(url: str, index: int, concurrency: int) -> list[str]:
    return [
        "--nats", url, "--flows", f"{ASYNC_NOOP},{THREAD_NOOP}", "--name", f"bench-{index}",
        "--concurrency", str(concurrency),
    ]  # fmt: skip


# ------------------------------------------------------------------- the project


class Project:
    """A flowyard server with NATS and its workers, started once for every round."""

    def __init__(self, args: argparse.Namespace, srv: Servers, work: Path) -> None:
        self.args, self.srv = args, srv
        self.group = ProcessGroup(work / "logs")
        self.files = work / "tasks"
        self.succeeded = 0
        self.server: ManagedProcess | None = None
        self.workers: list[ManagedProcess] = []

    async def start(self) -> None:
        os.environ.update(ADMIN_ENV)  # the server bootstraps its admin; workers inherit it
        self.server = self.group.start_server(
            [
                "--mode", "server", "--db", self.srv.db, "--files", str(self.files),
                "--nats", self.srv.url, "--lease-seconds", "30",
            ],
            env={"FLOWYARD_NATS_PREFETCH": str(self.args.prefetch)},
        )  # fmt: skip
        self.server.wait_healthy(120)
        self.workers = [
            self.group.start_worker(worker_args(self.srv.url, i, self.args.concurrency))
            for i in range(self.args.workers)
        ]
        for worker in self.workers:
            worker.wait_for_log(r"worker nats:\S+ on nats://", timeout=120)
        async with open_store(self.srv.db, migrate=False) as store:
            await bulk_create(store, WARMUP, flow=ASYNC_NOOP)
        self.succeeded += WARMUP
        await wait_succeeded(self.srv.db, self.succeeded, 120)

    def stop(self) -> None:
        self.group.stop_all()

    async def latencies(self, samples: int) -> dict[str, list[float]]:
        """Tasks created one at a time on idle workers, in the database by another process
        (the server hears of them through its event tailer) and then with ``POST
        /api/tasks`` (its own commit kicks the scheduler): ms to claimed_at and to
        finished_at, and the two legs of the claim: the server's (until the scheduler
        took the work, or the relay published it under fifo), then the worker's."""
        out: dict[str, list[float]] = {}
        async with open_store(self.srv.db, migrate=False) as store:

            async def in_database() -> uuid.UUID:
                (task_id,) = await bulk_create(store, 1, flow=ASYNC_NOOP)
                return task_id

            out |= await self._one_at_a_time(store, samples, in_database, "")
            assert self.server is not None
            async with httpx.AsyncClient(
                base_url=self.server.url or "", auth=ADMIN_AUTH, timeout=10
            ) as client:

                async def over_http() -> uuid.UUID:
                    response = await client.post("/api/tasks", json=NOOP)
                    response.raise_for_status()
                    return uuid.UUID(response.json()["id"])

                out |= await self._one_at_a_time(store, samples, over_http, " (HTTP)")
                trickle = await self._one_at_a_time(
                    store, samples, over_http, " (HTTP, trickle)", pause=TRICKLE
                )
                out["flowyard create-to-claim (HTTP, trickle)"] = trickle[
                    "flowyard create-to-claim (HTTP, trickle)"
                ]
        return out

    async def _one_at_a_time(
        self,
        store: SqlTaskStore,
        samples: int,
        create: Callable[[], Awaitable[uuid.UUID]],
        label: str,
        pause: float = 0.25,
    ) -> dict[str, list[float]]:
        to_claim: list[float] = []
        to_done: list[float] = []
        ids: set[uuid.UUID] = set()
        for _ in range(samples):
            task_id = await create()
            ids.add(task_id)
            for _ in range(1000):
                task = await store.get(task_id)
                if task.finished_at is not None:
                    break
                await asyncio.sleep(0.005)
            if task.claimed_at is None or task.finished_at is None:
                raise TimeoutError(f"task {task_id} not finished within 5 s")
            to_claim.append((task.claimed_at - task.created_at).total_seconds() * 1000)
            to_done.append((task.finished_at - task.created_at).total_seconds() * 1000)
            await asyncio.sleep(pause)  # everything goes idle again
        self.succeeded += samples
        sent = await work_taken(self.srv.db, ids)
        if sent:  # priority dispatch: the scheduler takes the work, then publishes it
            server = [(s - c) * 1000 for c, s, _ in sent]
            worker = [(w - s) * 1000 for _, s, w in sent]
            legs = {"server (created->work taken)": server, "worker (taken->claimed)": worker}
        else:  # fifo: the relay publishes the work with the event
            both = await phases(self.srv.db, ids, False)
            legs = {
                "server (created->published)": both["relay (created->published)"],
                "worker (published->claimed)": both["dispatch (published->claimed)"],
            }
        return {
            f"flowyard create-to-claim{label}": to_claim,
            f"flowyard create-to-done{label}": to_done,
            **{f"  of which {name}{label}": values for name, values in legs.items()},
        }

    async def drain(self, flow: str) -> Drain:
        tasks_ = self.args.tasks
        assert self.server is not None
        backends = [] if self.srv.pg_pid else await postgres_pids(self.srv.db)
        groups = {
            "workers": lambda: cpu_seconds([w.pid for w in self.workers]),
            "server": lambda: cpu_seconds([self.server.pid]) if self.server else 0.0,
            # the whole cluster when it is ours, else the database's backends of now
            "PostgreSQL": lambda: tree_cpu(self.srv.pg_pid) + cpu_seconds(backends),
            "nats-server": lambda: tree_cpu(self.srv.nats_pid),
        }
        before = {name: read() for name, read in groups.items()}
        async with open_store(self.srv.db, migrate=False) as store:
            ids = await bulk_create(store, tasks_, flow=flow)
            started = time.monotonic()  # the commit happened when bulk_create returned
        self.succeeded += tasks_
        finished = await wait_succeeded(self.srv.db, self.succeeded, 600)
        ms = {name: (read() - before[name]) / tasks_ * 1000 for name, read in groups.items()}
        timings = await phases(self.srv.db, set(ids), self.args.phases)
        if self.args.phases:
            for name, values in timings.items():
                print(
                    f"  {name}: p50 {percentile(values, 0.5):.1f} ms, "
                    f"p99 {percentile(values, 0.99):.1f} ms"
                )
        loaded = timings["created->claimed"]
        return Drain(
            tasks_ / (finished - started),
            ms["workers"],
            ms["server"] + ms["PostgreSQL"] + ms["nats-server"],
            f"server {ms['server']:.2f}, PostgreSQL {ms['PostgreSQL']:.2f}, "
            f"nats-server {ms['nats-server']:.2f} ms; created->claimed under load "
            f"p50 {percentile(loaded, 0.5):.0f} ms, p99 {percentile(loaded, 0.99):.0f} ms",
        )

    async def relay_pending(self) -> object:
        assert self.server is not None
        async with httpx.AsyncClient(
            base_url=self.server.url or "", auth=ADMIN_AUTH, timeout=10
        ) as client:
            health = (await client.get("/api/health")).json()
        return health.get("nats", {}).get("relay", {}).get("pending")


# ---------------------------------------------------------------------- the peer


def drain_peer(
    args: argparse.Namespace, srv: Servers, results: str, samples: int
) -> dict[str, Any]:
    """One taskiq-nats drain (and ``samples`` idle jobs first) in the peers' environment."""
    extra = ["--nats-pid", str(srv.nats_pid)] if srv.nats_pid else []
    return run_peer(
        "taskiq_peer.py",
        [
            "--nats", srv.url, "--tasks", str(args.tasks), "--workers", str(args.workers),
            "--concurrency", str(args.concurrency), "--drains", "1",
            "--samples", str(samples), "--results", results, *extra,
        ],
        timeout=900,
    )  # fmt: skip


# ------------------------------------------------------------------ the bare loop


async def bare_stream(url: str) -> tuple[Any, Any, str, str]:
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
    return publisher, js, stream, subject


async def drain_bare(args: argparse.Namespace, srv: Servers) -> Drain:
    publisher, js, stream, subject = await bare_stream(srv.url)
    received = 0
    done = asyncio.Event()

    async def consume() -> None:
        nonlocal received
        nc = await nats.connect(srv.url)
        try:
            sub = await nc.jetstream().pull_subscribe_bind("bare", stream=stream)
            deadline = time.monotonic() + 300
            while not done.is_set() and time.monotonic() < deadline:
                try:
                    msgs = await sub.fetch(args.concurrency, timeout=0.5)
                except TimeoutError:
                    continue
                for msg in msgs:
                    json.loads(msg.data)
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
    await asyncio.sleep(0.2)  # the consumers are connected and pulling
    servers = [srv.nats_pid] if srv.nats_pid else []
    before = time.process_time(), cpu_seconds(servers)
    started = time.monotonic()
    slots = asyncio.Semaphore(64)
    await asyncio.gather(*(publish_one(i, slots) for i in range(args.tasks)))
    await asyncio.wait_for(done.wait(), 300)
    elapsed = time.monotonic() - started
    after = time.process_time(), cpu_seconds(servers)
    await asyncio.gather(*consumers)
    await js.delete_stream(stream)
    await publisher.close()
    return Drain(
        args.tasks / elapsed,
        (after[0] - before[0]) / args.tasks * 1000,
        (after[1] - before[1]) / args.tasks * 1000,
    )


async def bare_latencies(args: argparse.Namespace, srv: Servers) -> tuple[list[float], list[float]]:
    """One message at a time to one idle pull consumer: ms to fetched and to the acked ack."""
    publisher, js, stream, subject = await bare_stream(srv.url)
    nc = await nats.connect(srv.url)
    seen: asyncio.Queue[tuple[float, float, float]] = asyncio.Queue()
    stop = asyncio.Event()

    async def consume() -> None:
        sub = await nc.jetstream().pull_subscribe_bind("bare", stream=stream)
        while not stop.is_set():
            try:
                msgs = await sub.fetch(1, timeout=1)
            except TimeoutError:
                continue
            for msg in msgs:
                fetched = time.time()
                await msg.ack_sync()
                await seen.put((json.loads(msg.data)["t"], fetched, time.time()))

    consumer = asyncio.create_task(consume())
    await asyncio.sleep(0.3)
    to_fetch: list[float] = []
    to_done: list[float] = []
    try:
        for i in range(args.samples):
            await js.publish(subject, json.dumps({"i": i, "t": time.time()}).encode())
            sent, fetched, acked = await asyncio.wait_for(seen.get(), 10)
            to_fetch.append((fetched - sent) * 1000)
            to_done.append((acked - sent) * 1000)
            await asyncio.sleep(0.25)
    finally:
        stop.set()
        await asyncio.wait_for(consumer, 5)
        await nc.close()
        await js.delete_stream(stream)
        await publisher.close()
    return to_fetch, to_done


# ------------------------------------------------------------------------ main


@dataclass
class Results:
    project: list[Drain] = field(default_factory=list)
    project_thread: list[Drain] = field(default_factory=list)
    peer: dict[str, list[Drain]] = field(default_factory=dict)  # per result backend
    bare: list[Drain] = field(default_factory=list)
    latency: dict[str, list[float]] = field(default_factory=dict)  # milliseconds


async def run(args: argparse.Namespace, srv: Servers, work: Path) -> Results:
    out = Results()
    project = Project(args, srv, work)
    try:
        await project.start()
        out.latency.update(await project.latencies(args.samples))
        for round_ in range(args.repeat):  # alternating, so a change in load hits all
            out.project.append(await project.drain(ASYNC_NOOP))
            out.project_thread.append(await project.drain(THREAD_NOOP))
            for variant in [] if args.no_peer else args.peer_results.split(","):
                result = await asyncio.to_thread(
                    drain_peer, args, srv, variant, args.samples if round_ == 0 else 0
                )
                (d,) = result["drains"]
                out.peer.setdefault(variant, []).append(
                    Drain(
                        d["rate"], d["client_ms"], d["server_ms"], f"kicker {d['kicker_ms']:.2f} ms"
                    )
                )
                if round_ == 0:
                    out.latency[f"taskiq-nats ({variant}) kick-to-start"] = result["to_start_ms"]
                    out.latency[f"taskiq-nats ({variant}) kick-to-done"] = result["to_done_ms"]
            out.bare.append(await drain_bare(args, srv))
        print(f"flowyard relay pending after the runs: {await project.relay_pending()}")
    finally:
        project.stop()
    fetch, acked = await bare_latencies(args, srv)
    out.latency["bare publish-to-fetch"] = fetch
    out.latency["bare publish-to-acked"] = acked
    return out


def describe(name: str, drains: list[Drain], servers: str) -> str:
    rate = statistics.median(d.rate for d in drains)
    client = statistics.median(d.client_ms for d in drains)
    server = statistics.median(d.server_ms for d in drains)
    notes = "".join(f"\n{'':28s}run {i + 1}: {d.note}" for i, d in enumerate(drains) if d.note)
    return (
        f"{name:26s}{rate:7.0f} tasks/s  runs {[round(d.rate) for d in drains]}  "
        f"CPU per task: clients {client:.2f} ms, {servers} {server:.2f} ms{notes}"
    )


def median_rate(drains: list[Drain]) -> float:
    return statistics.median(d.rate for d in drains)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3, help="drains per side (median)")
    parser.add_argument("--samples", type=int, default=40, help="idle latency samples")
    parser.add_argument("--db", help="PostgreSQL URI (default: a throwaway cluster)")
    parser.add_argument("--nats", help="nats:// URL (default: a throwaway nats-server)")
    parser.add_argument("--phases", action="store_true", help="where the project's time went")
    parser.add_argument("--no-peer", action="store_true", help="skip taskiq-nats")
    parser.add_argument(
        "--prefetch", type=int, default=0, help="nats_prefetch: work sent ahead per worker slot"
    )
    parser.add_argument(
        "--peer-results",
        default="none,objectstore",
        help="taskiq-nats's result backends to measure, comma-separated: none, objectstore",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="flowyard-bench-") as tmp:
        work = Path(tmp)
        with servers(args, work) as srv:
            print(
                f"nats-server {srv.url}: {args.tasks} no-op tasks, {args.workers} processes x "
                f"{args.concurrency} slots, nats_prefetch {args.prefetch}, median of "
                f"{args.repeat}; {os.cpu_count()} CPUs, "
                f"load average {os.getloadavg()[0]:.1f}",
                flush=True,
            )
            results = await run(args, srv, work)
            print(f"load average after: {os.getloadavg()[0]:.1f}")

    ours = "server+PostgreSQL+nats-server"
    print(describe("flowyard, AsyncFlow:", results.project, ours))
    print(describe("flowyard, thread flow:", results.project_thread, ours))
    for variant, drains in results.peer.items():
        print(describe(f"taskiq-nats ({variant}):", drains, "nats-server"))
    print(describe("bare JetStream pull loop:", results.bare, "nats-server"))
    print("idle latency, one task at a time:")
    width = max(len(name) for name in results.latency) + 1
    for name, values in results.latency.items():
        print(
            f"  {name + ':':{width}s} p50 {percentile(values, 0.5):6.1f} ms, "
            f"p99 {percentile(values, 0.99):6.1f} ms ({len(values)} tasks)"
        )
    print(f"ratio_to_bare {median_rate(results.project) / median_rate(results.bare):.2f}")
    for variant, drains in results.peer.items():
        if variant != "none":
            print(
                f"ratio_to_peer_{variant} {median_rate(results.project) / median_rate(drains):.2f}"
            )
    if results.peer:
        best = max(median_rate(drains) for drains in results.peer.values())
        print(f"ratio_to_peer_thread {median_rate(results.project_thread) / best:.2f}")
        print(f"ratio_to_peer {median_rate(results.project) / best:.2f}")
    else:
        print("ratio_to_peer n/a (--no-peer)")


if __name__ == "__main__":
    asyncio.run(main())
