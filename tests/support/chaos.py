"""A chaos run: drain N tasks through real workers while servers and workers are killed.

Used by ``bench/chaos.py`` (the full run, 10,000 tasks) and by
``tests/chaos/test_chaos_suite.py`` (the small run CI does). Everything is
throwaway: a PostgreSQL cluster (``synchronous_commit=on``, so a commit that
returned survives SIGKILL), a nats-server for the NATS transport, a
``flowyard serve --mode server`` process and worker processes.

Faults, in order, ``gap`` seconds apart, with a worker SIGKILLed every
``kill_every`` seconds in between (each killed worker is replaced at once by a
new one under a new name, as a supervisor would):

    database workers: PostgreSQL fast restart (SIGINT), PostgreSQL SIGKILL
    NATS workers:     PostgreSQL fast restart, nats-server restart (same store),
                      PostgreSQL SIGKILL, nats-server restart with its store deleted

Then no more faults, and the clock runs until every task finished (or the drain
timeout). What is counted comes from the database: task states, the attempts
each task used, and the ``task.done`` events per task in the event log (more
than one is a task finished twice).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import httpx
import psycopg

from tests.support.auth import ADMIN_AUTH, ADMIN_ENV
from tests.support.nats import NatsServer
from tests.support.nats_processes import start_nats_worker
from tests.support.postgres import PostgresCluster
from tests.support.processes import ManagedProcess, ProcessGroup
from tests.support.task_db import create_tasks, open_store

Transport = Literal["db", "nats"]
Fault = Literal["pg-restart", "pg-kill", "nats-restart", "store-wipe"]

FAULTS: dict[Transport, tuple[Fault, ...]] = {
    "db": ("pg-restart", "pg-kill"),
    "nats": ("pg-restart", "nats-restart", "pg-kill", "store-wipe"),
}
FAULT_NAMES: dict[str, str] = {
    "worker-kill": "worker SIGKILL",
    "pg-restart": "PostgreSQL fast restart (SIGINT)",
    "pg-kill": "PostgreSQL SIGKILL",
    "nats-restart": "nats-server restart",
    "store-wipe": "nats-server restart with its JetStream store deleted",
}
WORKER_READY = {"db": r"services\.worker_process: worker ", "nats": r"worker nats:\S+ on nats://"}


@dataclass(frozen=True)
class ChaosConfig:
    transport: Transport
    tasks: int = 500
    workers: int = 3
    concurrency: int = 4
    lease: float = 3.0
    max_attempts: int = 10
    gap: float = 4.0
    """Seconds between two server faults."""
    kill_every: float = 5.0
    """Seconds between worker SIGKILLs while the faults run; 0: one kill per gap, once."""
    seconds: float | None = None
    """Each task's run time; None: enough for the faults to find work in flight."""
    drain_timeout: float = 600.0
    seed: int = 1


@dataclass
class ChaosResult:
    config: ChaosConfig
    seconds_per_task: float
    states: Counter[str]
    twice: int
    attempts: Counter[int]
    faults: list[tuple[float, str]]
    drained_after_last_fault: float | None
    total_seconds: float
    finished_at_last_fault: int = 0
    recovery: dict[str, object] = field(default_factory=dict)

    @property
    def succeeded(self) -> int:
        return self.states.get("succeeded", 0)

    @property
    def failed(self) -> int:
        return self.states.get("failed", 0) + self.states.get("cancelled", 0)

    @property
    def lost(self) -> int:
        return self.states.get("queued", 0) + self.states.get("running", 0)

    def report(self) -> str:
        c = self.config
        kinds = Counter(name for _, name in self.faults)
        faults = ", ".join(f"{FAULT_NAMES[k]} x{n}" for k, n in kinds.items())
        histogram = ", ".join(f"{a}: {n}" for a, n in sorted(self.attempts.items()))
        left = c.tasks - self.finished_at_last_fault
        drained = (
            f"{self.drained_after_last_fault:.1f} s for the {left} tasks left"
            if self.drained_after_last_fault is not None
            else f"not drained within {c.drain_timeout:g} s"
        )
        return "\n".join(
            [
                f"transport {c.transport}: {c.tasks} tasks of {self.seconds_per_task:.3f} s, "
                f"{c.workers} workers x {c.concurrency}, lease {c.lease:g} s, "
                f"max attempts {c.max_attempts}",
                f"faults: {faults}",
                f"succeeded {self.succeeded}  failed {self.failed}  lost {self.lost}  "
                f"finished more than once {self.twice}",
                f"attempts histogram: {histogram}",
                f"time to drain after the last fault: {drained} "
                f"(whole run {self.total_seconds:.1f} s)",
            ]
            + ([f"server recovery counters: {self.recovery}"] if self.recovery else [])
        )


class Chaos:
    """One run: ``with Chaos(config, work_dir) as chaos: result = chaos.run()``."""

    def __init__(self, config: ChaosConfig, work: Path, log: Callable[[str], None] = print):
        self.config = config
        self.work = work
        self.log = log
        self.rng = random.Random(config.seed)
        self.group = ProcessGroup(work / "logs")
        self.cluster = PostgresCluster(work / "pg", settings={"synchronous_commit": "on"})
        self.nats: NatsServer | None = None
        if config.transport == "nats":
            self.nats = NatsServer(work / "nats" / "store")
        self.files = work / "files"
        self.workers: list[ManagedProcess] = []
        self.generation = 0
        self.faults: list[tuple[float, str]] = []
        self.finished_counts: list[int] = []
        self.server: ManagedProcess | None = None

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> Chaos:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.group.stop_all()
        if self.nats is not None:
            self.nats.kill()
        self.cluster.kill()

    @property
    def uri(self) -> str:
        return self.cluster.uri("flowyard")

    def env(self) -> dict[str, str]:
        c = self.config
        return {
            **ADMIN_ENV,
            "FLOWYARD_LEASE_SECONDS": str(c.lease),
            "FLOWYARD_MAX_ATTEMPTS": str(c.max_attempts),
            "FLOWYARD_POLL_INTERVAL": "0.5",
        }

    def start(self) -> None:
        self.cluster.start()
        self.cluster.create_database("flowyard")
        asyncio.run(_migrate(self.uri))
        args = ["--mode", "server", "--db", self.uri, "--files", str(self.files)]
        args += ["--data-dir", str(self.work / "data")]
        if self.nats is not None:
            self.nats.start()
            args += ["--nats", self.nats.url]
        self.server = self.group.start_server(args, self.env())
        self.server.wait_healthy(120)

    def start_workers(self) -> None:
        self.workers = [self._start_worker() for _ in range(self.config.workers)]
        for worker in self.workers:
            worker.wait_for_log(WORKER_READY[self.config.transport], 120)

    def _start_worker(self) -> ManagedProcess:
        c = self.config
        self.generation += 1
        name = f"w{self.generation}"
        slots = ["--flows", "debug.sleep", "--concurrency", str(c.concurrency)]
        if self.nats is not None:
            process, _, _ = start_nats_worker(
                self.group,
                self.work / "nats-workers",
                nats_url=self.nats.url,
                name=name,
                lease_seconds=c.lease,
                extra=slots,
                env=self.env(),
            )
            return process
        return self.group.start_worker(
            ["--db", self.uri, "--files", str(self.files), "--name", name, *slots],
            self.env(),
            name=name,
        )

    # ------------------------------------------------------------------------ run

    def seconds_per_task(self) -> float:
        """Long enough that the work outlasts the faults (plus a third), or as configured."""
        c = self.config
        if c.seconds is not None:
            return c.seconds
        window = (len(FAULTS[c.transport]) + 1) * c.gap
        return round(max(0.0, 1.3 * window * c.workers * c.concurrency / c.tasks), 3)

    def run(self) -> ChaosResult:
        c = self.config
        self.start()
        seconds = self.seconds_per_task()
        asyncio.run(_create(self.uri, self.files, c.tasks, seconds, c.max_attempts))
        self.log(f"{c.tasks} tasks queued ({seconds:.3f} s each); workers start")
        began = time.monotonic()
        self.start_workers()
        self._wait_finished(min(c.tasks, max(1, c.tasks // 20)), 120)
        self.log("faults begin")
        for fault in FAULTS[c.transport]:
            self._kill_workers_for(c.gap)
            self._inject(fault)
        self._kill_workers_for(c.gap)
        self._kill_a_worker()
        last_fault = time.monotonic()
        finished_then = self.finished_counts[-1] if self.finished_counts else 0
        drained = self._wait_drained(c.drain_timeout)
        after = None if drained is None else drained - last_fault
        states, twice, attempts = _tally(self.uri)
        return ChaosResult(
            config=c,
            seconds_per_task=seconds,
            states=states,
            twice=twice,
            attempts=attempts,
            faults=[(t - began, name) for t, name in self.faults],
            drained_after_last_fault=after,
            total_seconds=time.monotonic() - began,
            finished_at_last_fault=finished_then,
            recovery=self._recovery(),
        )

    def _kill_workers_for(self, seconds: float) -> None:
        """Sleep ``seconds``, killing a worker every ``kill_every`` of them."""
        every = self.config.kill_every
        end = time.monotonic() + seconds
        if every <= 0:
            time.sleep(seconds)
            return
        while (left := end - time.monotonic()) > 0:
            time.sleep(min(every, left))
            if time.monotonic() < end:
                self._kill_a_worker()

    def _kill_a_worker(self) -> None:
        alive = [w for w in self.workers if w.alive()]
        if not alive:
            return
        victim = self.rng.choice(alive)
        victim.kill()
        self.workers.remove(victim)
        self.workers.append(self._start_worker())
        self._note("worker-kill", victim.name)

    def _inject(self, fault: Fault) -> None:
        if fault == "pg-restart":
            self.cluster.stop(timeout=30)
            time.sleep(1.0)
            self.cluster.start()
        elif fault == "pg-kill":
            self.cluster.kill()
            time.sleep(1.0)
            self.cluster.start()
        else:
            assert self.nats is not None
            self.nats.stop()
            if fault == "store-wipe":
                shutil.rmtree(self.nats.store_dir)
            time.sleep(1.0)
            self.nats.start()
        self._note(fault)

    def _note(self, fault: str, detail: str = "") -> None:
        self.faults.append((time.monotonic(), fault))
        done = _count_finished(self.uri)
        self.finished_counts.append(done or 0)
        where = f" ({detail})" if detail else ""
        self.log(f"  {FAULT_NAMES[fault]}{where}; {done if done is not None else '?'} finished")

    def _wait_finished(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while (_count_finished(self.uri) or 0) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"fewer than {count} tasks finished\n{self.group.tails()}")
            time.sleep(0.2)

    def _wait_drained(self, timeout: float) -> float | None:
        """When the last task finished (monotonic clock); None if some never did."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if _count_finished(self.uri) == self.config.tasks:
                return time.monotonic()
            time.sleep(0.2)
        return None

    def _recovery(self) -> dict[str, object]:
        """The NATS server's recovery counters (store losses, re-sent work), from its health."""
        if self.server is None or self.server.url is None or self.nats is None:
            return {}
        with contextlib.suppress(httpx.HTTPError, KeyError, ValueError):
            url = f"{self.server.url}/api/health"
            health = httpx.get(url, auth=ADMIN_AUTH, timeout=5).json()
            recovery: dict[str, object] = health["nats"]["recovery"]
            return recovery
        return {}


async def _migrate(uri: str) -> None:
    async with open_store(uri):
        pass


async def _create(uri: str, files: Path, count: int, seconds: float, max_attempts: int) -> None:
    async with open_store(uri, migrate=False) as store:
        await create_tasks(
            store,
            files,
            count,
            params={"seconds": seconds, "steps": 1},
            max_attempts=max_attempts,
            batch=500,
        )


def _rows(uri: str, query: str) -> list[tuple[object, ...]]:
    with psycopg.connect(uri, autocommit=True, connect_timeout=2) as conn:
        return conn.execute(query).fetchall()


def _count_finished(uri: str) -> int | None:
    """Tasks that ended; None while the database cannot be reached."""
    query = "SELECT count(*) FROM tasks WHERE state IN ('succeeded', 'failed', 'cancelled')"
    try:
        [(count,)] = _rows(uri, query)
    except psycopg.Error:
        return None
    return int(str(count))


def _tally(uri: str) -> tuple[Counter[str], int, Counter[int]]:
    """States, tasks with more than one ``task.done``, and attempts used per task."""
    states = Counter(
        {str(s): int(str(n)) for s, n in _rows(uri, "SELECT state, count(*) FROM tasks GROUP BY 1")}
    )
    [(twice,)] = _rows(
        uri,
        "SELECT count(*) FROM (SELECT task_id FROM events WHERE type = 'task.done' "
        "GROUP BY task_id HAVING count(*) > 1) AS twice",
    )
    attempts = Counter(
        {
            int(str(a)): int(str(n))
            for a, n in _rows(uri, "SELECT attempt, count(*) FROM tasks GROUP BY 1")
        }
    )
    return states, int(str(twice)), attempts
