"""Cancel-to-stopped latency of a database worker on PostgreSQL (NOTIFY, heartbeat as fallback).

    .venv/bin/python bench/cancel_latency.py [--cancels 20] [--lease 30] [--db postgresql://…]

A ``flowyard serve --mode server`` process and one ``flowyard worker --db``
(one slot) on a throwaway PostgreSQL (or ``--db``). One long ``debug.sleep``
task at a time: once it runs, ``POST /api/tasks/{id}/cancel``, and the clock
runs until the task reads ``cancelled`` (polled every 10 ms). With lease 30 s
the heartbeat comes every 10 s, which is what a worker without the cancel
NOTIFY waits. Prints every latency, then the median on its last line.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.auth import ADMIN_AUTH, ADMIN_ENV  # noqa: E402
from tests.support.postgres import PostgresCluster  # noqa: E402
from tests.support.processes import ProcessGroup  # noqa: E402

WORKER_READY = r"services\.worker_process: worker "


def wait_state(client: httpx.Client, task_id: uuid.UUID, state: str, within: float) -> None:
    deadline = time.monotonic() + within
    while client.get(f"/api/tasks/{task_id}").json()["state"] != state:
        if time.monotonic() > deadline:
            raise TimeoutError(f"task {task_id} not {state} after {within:.0f}s")
        time.sleep(0.01)


def measure(base_url: str, cancels: int) -> list[float]:
    latencies = []
    with httpx.Client(auth=ADMIN_AUTH, base_url=base_url, timeout=10) as client:
        for _ in range(cancels):
            body = {"flow": "debug.sleep", "params": {"seconds": 300, "steps": 1}}
            task_id = uuid.UUID(client.post("/api/tasks", json=body).json()["id"])
            wait_state(client, task_id, "running", 60)
            time.sleep(0.2)
            started = time.monotonic()
            client.post(f"/api/tasks/{task_id}/cancel").raise_for_status()
            wait_state(client, task_id, "cancelled", 60)
            latencies.append(time.monotonic() - started)
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cancels", type=int, default=20)
    parser.add_argument("--lease", type=float, default=30.0)
    parser.add_argument("--db", help="PostgreSQL URI (default: a throwaway cluster)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="flowyard-cancel-") as tmp:
        work = Path(tmp)
        cluster = None
        group = ProcessGroup(work / "logs")
        try:
            db = args.db
            if db is None:
                cluster = PostgresCluster(work / "pg")
                cluster.start()
                cluster.create_database("bench")
                db = cluster.uri("bench")
            env = {**ADMIN_ENV, "FLOWYARD_LEASE_SECONDS": str(args.lease)}
            files = work / "files"
            server = group.start_server(
                ["--mode", "server", "--db", db, "--files", str(files),
                 "--data-dir", str(work / "data")],
                env,
            )  # fmt: skip
            server.wait_healthy(120)
            worker = group.start_worker(
                ["--db", db, "--files", str(files), "--name", "bench", "--concurrency", "1"], env
            )
            worker.wait_for_log(WORKER_READY, 120)
            latencies = measure(server.url or "", args.cancels)
        finally:
            group.stop_all()
            if cluster is not None:
                cluster.stop()
    ms = sorted(x * 1000 for x in latencies)
    print("latencies (ms): " + ", ".join(f"{x:.0f}" for x in ms))
    print(
        f"lease {args.lease:g}s (heartbeat every {args.lease / 3:g}s), {len(ms)} cancels: "
        f"max {ms[-1]:.0f} ms; median {statistics.median(ms):.0f} ms"
    )


if __name__ == "__main__":
    main()
