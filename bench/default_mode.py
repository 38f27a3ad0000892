"""Default-mode benchmark: ``flowyard serve`` on SQLite with in-process workers, over HTTP.

    .venv/bin/python bench/default_mode.py [--creates 1000] [--clients 1,8] [--tasks 2000]
                                           [--samples 40] [--slots 2] [--repeat 3]

It starts one ``flowyard serve`` in default mode on 127.0.0.1 with a fresh
data folder (SQLite, ``--slots`` in-process workers: ``--workers`` of serve)
and measures, talking HTTP/JSON to it (httpx; the create phases a lean client):

- idle latency: ``--samples`` no-op tasks (``debug.async_sleep`` seconds=0, one
  step: an ``AsyncFlow``, awaited on the worker's event loop)
  created one at a time with ``POST /api/tasks``, each after the previous one
  finished: the POST's round trip, ``claimed_at - created_at`` and
  ``finished_at - created_at``;
- HTTP create throughput with each number of ``--clients`` (one keep-alive
  connection and one request at a time each, all in this process, with the lean
  client of ``bench/http_load.py``: httpx's own CPU per POST was as much as the
  server's): ``--creates`` POSTs, creates per second and the POST's p50/p99 (the
  in-process workers run the tasks meanwhile, as they would), then the time until
  all of them finished;
- drain throughput: ``--tasks`` tasks in one ``POST /api/tasks/batch`` (one
  transaction; ``max_batch_tasks`` raised to fit), timed from its response
  until none is queued or running, and also counting the batch's own time;
  once with that no-op and once with ``debug.sleep``, its twin run in a thread
  as a torch flow is.

CPU per task: the server process (API and workers are one process) and this
client process. Throughputs are the median of ``--repeat`` runs, alternating.
Every loop is bounded in count and time; traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.db_queue import ASYNC_NOOP, THREAD_NOOP  # noqa: E402
from bench.http_load import KeepAliveClient  # noqa: E402
from tests.support.processes import ManagedProcess, ProcessGroup  # noqa: E402

NOOP: dict[str, Any] = {"flow": ASYNC_NOOP, "params": {"seconds": 0, "steps": 1}}
THREAD_TASK: dict[str, Any] = {"flow": THREAD_NOOP, "params": {"seconds": 0, "steps": 1}}
WARMUP = 20


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def cpu_seconds(pid: int) -> float:
    with contextlib.suppress(psutil.Error):
        times = psutil.Process(pid).cpu_times()
        return times.user + times.system
    return 0.0


def parse_time(value: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(value).timestamp()


async def unfinished(client: httpx.AsyncClient) -> int:
    """Queued plus running tasks (at most 1 + 1 counted)."""
    total = 0
    for state in ("queued", "running"):
        response = await client.get("/api/tasks", params={"state": state, "limit": 1})
        response.raise_for_status()
        total += len(response.json()["items"])
    return total


async def wait_drained(client: httpx.AsyncClient, limit: float) -> float:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if await unfinished(client) == 0:
            return time.monotonic()
        await asyncio.sleep(0.05)
    raise TimeoutError(f"tasks still queued or running after {limit:.0f}s")


@dataclass
class Phase:
    rate: float  # per second
    server_ms: float  # server CPU per task
    client_ms: float  # this process's CPU per task
    extra: dict[str, float] = field(default_factory=dict)


class Bench:
    def __init__(self, server: ManagedProcess, args: argparse.Namespace) -> None:
        self.server, self.args = server, args
        self.url = server.url or ""

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=30)

    async def latencies(self) -> dict[str, list[float]]:
        post: list[float] = []
        to_claim: list[float] = []
        to_done: list[float] = []
        async with self.client() as client:
            for _ in range(self.args.samples):
                sent = time.monotonic()
                response = await client.post("/api/tasks", json=NOOP)
                post.append((time.monotonic() - sent) * 1000)
                response.raise_for_status()
                task_id = response.json()["id"]
                body: dict[str, Any] = {}
                for _ in range(1000):
                    body = (await client.get(f"/api/tasks/{task_id}")).json()
                    if body.get("finished_at"):
                        break
                    await asyncio.sleep(0.005)
                if not body.get("claimed_at") or not body.get("finished_at"):
                    raise TimeoutError(f"task {task_id} not finished within 5 s: {body}")
                created = parse_time(body["created_at"])
                to_claim.append((parse_time(body["claimed_at"]) - created) * 1000)
                to_done.append((parse_time(body["finished_at"]) - created) * 1000)
                await asyncio.sleep(0.25)  # the workers go idle again
        return {"POST /api/tasks": post, "create-to-claim": to_claim, "create-to-done": to_done}

    async def creates(self, clients: int) -> Phase:
        """``--creates`` POSTs from ``clients`` clients, then until all of them finished."""
        count = self.args.creates
        per_client = [count // clients + (1 if i < count % clients else 0) for i in range(clients)]
        latencies: list[float] = []

        async def one_client(n: int) -> None:
            async with KeepAliveClient(self.url) as client:
                for _ in range(n):
                    sent = time.monotonic()
                    status, body = await client.post_json("/api/tasks", NOOP)
                    latencies.append((time.monotonic() - sent) * 1000)
                    if status != 201:
                        raise RuntimeError(f"POST /api/tasks answered {status}: {body[:200]!r}")

        server_before, client_before = cpu_seconds(self.server.pid), time.process_time()
        started = time.monotonic()
        await asyncio.wait_for(asyncio.gather(*(one_client(n) for n in per_client)), 600)
        created = time.monotonic()
        client_cpu = time.process_time() - client_before
        async with self.client() as client:
            finished = await wait_drained(client, 600)
        server_cpu = cpu_seconds(self.server.pid) - server_before
        return Phase(
            count / (created - started),
            server_cpu / count * 1000,
            client_cpu / count * 1000,
            {
                "post_p50": percentile(latencies, 0.5),
                "post_p99": percentile(latencies, 0.99),
                "all_done_rate": count / (finished - started),
            },
        )

    async def drain(self, task: dict[str, Any]) -> Phase:
        count = self.args.tasks
        async with self.client() as client:
            server_before, client_before = cpu_seconds(self.server.pid), time.process_time()
            sent = time.monotonic()
            response = await client.post("/api/tasks/batch", json={"task": task, "count": count})
            committed = time.monotonic()
            response.raise_for_status()
            finished = await wait_drained(client, 600)
            server_cpu = cpu_seconds(self.server.pid) - server_before
            client_cpu = time.process_time() - client_before
        return Phase(
            count / (finished - committed),
            server_cpu / count * 1000,
            client_cpu / count * 1000,
            {"with_batch_rate": count / (finished - sent), "batch_s": committed - sent},
        )


async def measure(
    bench: Bench, args: argparse.Namespace
) -> tuple[dict[str, list[float]], dict[str, list[Phase]]]:
    async with bench.client() as client:
        for _ in range(WARMUP):
            (await client.post("/api/tasks", json=NOOP)).raise_for_status()
        await wait_drained(client, 120)
    latency = await bench.latencies()
    phases: dict[str, list[Phase]] = {}
    for _ in range(args.repeat):  # alternating, so a change in load hits every phase
        for clients in args.clients:
            phases.setdefault(f"create, {clients} client(s)", []).append(
                await bench.creates(clients)
            )
        phases.setdefault("drain", []).append(await bench.drain(NOOP))
        phases.setdefault("drain, thread flow", []).append(await bench.drain(THREAD_TASK))
    return latency, phases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--creates", type=int, default=1000, help="POSTs per create phase")
    parser.add_argument(
        "--clients",
        type=lambda v: [int(x) for x in v.split(",")],
        default=[1, 8],
        help="concurrent clients, comma-separated",
    )
    parser.add_argument("--tasks", type=int, default=2000, help="tasks in the drain's batch")
    parser.add_argument("--samples", type=int, default=40, help="idle latency samples")
    parser.add_argument("--slots", type=int, default=2, help="in-process workers (serve's)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per phase (median)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="flowyard-bench-default-") as tmp:
        work = Path(tmp)
        group = ProcessGroup(work / "logs")
        for name in ("FLOWYARD_CONFIG", "FLOWYARD_DATABASE_URI", "FLOWYARD_FILES_DIR"):
            os.environ.pop(name, None)  # a fresh data folder and nothing else
        try:
            server = group.start_server(
                [
                    "--data-dir", str(work / "data"), "--workers", str(args.slots),
                    "--set", f"max_batch_tasks={max(args.tasks, 100)}",
                ]
            )  # fmt: skip
            server.wait_healthy(120)
            print(
                f"flowyard serve (default mode, SQLite, {args.slots} in-process workers) on "
                f"{server.url}: {args.creates} creates per phase, drains of {args.tasks}, "
                f"median of {args.repeat}; {os.cpu_count()} CPUs, "
                f"load average {os.getloadavg()[0]:.1f}",
                flush=True,
            )
            latency, phases = asyncio.run(measure(Bench(server, args), args))
            print(f"load average after: {os.getloadavg()[0]:.1f}")
        finally:
            group.stop_all()

    for name, runs in phases.items():
        rate = statistics.median(p.rate for p in runs)
        server_ms = statistics.median(p.server_ms for p in runs)
        client_ms = statistics.median(p.client_ms for p in runs)
        extra = {k: statistics.median(p.extra[k] for p in runs) for k in runs[0].extra}
        unit = "creates/s" if name.startswith("create") else "tasks/s"
        line = (
            f"{name + ':':22s}{rate:7.0f} {unit:9s} runs {[round(p.rate) for p in runs]}  "
            f"CPU per task: server {server_ms:.2f} ms, client {client_ms:.2f} ms"
        )
        if name.startswith("create"):
            line += (
                f"\n{'':22s}POST p50 {extra['post_p50']:.1f} ms, p99 {extra['post_p99']:.1f} ms;"
                f" created and run: {extra['all_done_rate']:.0f} tasks/s"
            )
        else:
            line += (
                f"\n{'':22s}the batch itself took {extra['batch_s']:.2f} s; counting it: "
                f"{extra['with_batch_rate']:.0f} tasks/s"
            )
        print(line)
    print("idle latency, one task at a time:")
    for name, values in latency.items():
        print(
            f"  {name + ':':22s} p50 {percentile(values, 0.5):6.1f} ms, "
            f"p99 {percentile(values, 0.99):6.1f} ms ({len(values)} tasks)"
        )


if __name__ == "__main__":
    main()
