"""CLI start-up times and server memory at rest.

    .venv/bin/python bench/cli_startup.py [--runs 11] [--rest 5] [--db postgresql://…]

Times (median, min and max of ``--runs`` subprocess runs, wall clock from spawn
to exit) of ``flowyard --help`` and ``flowyard tasks list`` against a running
default-mode server with a few tasks; then the resident set size (psutil, RSS
of the server process) of ``flowyard serve`` at rest, ``--rest`` seconds after
it answered its health check: default mode (SQLite, two in-process workers, no
flow run yet), server mode (PostgreSQL), and server mode with ``--nats``.
Without --db it starts a throwaway PostgreSQL; the nats-server is throwaway.
Aims (issue 14): ``--help`` under 0.3 s, ``tasks list`` under 0.5 s, a server
at rest under 120 MB.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.auth import ADMIN_ENV  # noqa: E402
from tests.support.nats import NatsServer  # noqa: E402
from tests.support.postgres import PostgresCluster  # noqa: E402
from tests.support.processes import ProcessGroup, flowyard_command  # noqa: E402

MB = 1024 * 1024


Timing = tuple[list[float], list[float]]


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def time_command(argv: Sequence[str], runs: int, env: dict[str, str]) -> Timing:
    """Wall-clock and CPU seconds of ``runs`` runs of ``argv``; each must exit 0.

    CPU time (user + system of the child) hardly moves with the machine's load,
    so it is printed beside the wall clock, which does.
    """
    walls, cpus = [], []
    for _ in range(runs):
        cpu = _children_cpu()
        start = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, env=env, check=False)
        walls.append(time.perf_counter() - start)
        cpus.append(_children_cpu() - cpu)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed: {done.stderr.decode()[-500:]}")
    return walls, cpus


def show_times(label: str, timing: Timing, aim: float) -> None:
    walls, cpus = timing
    median = statistics.median(walls)
    verdict = "ok" if median < aim else "over"
    print(
        f"{label:<34} median {median:.3f} s  min {min(walls):.3f}  max {max(walls):.3f}"
        f"  cpu {statistics.median(cpus):.3f} s  (aim < {aim} s: {verdict})"
    )


def rss_at_rest(pid: int, rest: float) -> float:
    time.sleep(rest)
    return psutil.Process(pid).memory_info().rss / MB


def show_rss(label: str, rss: float) -> None:
    print(f"{label:<34} {rss:6.1f} MB  (aim < 120 MB: {'ok' if rss < 120 else 'over'})")


@contextlib.contextmanager
def postgres(db: str | None, work: Path) -> Iterator[str]:
    if db is not None:
        yield db
        return
    cluster = PostgresCluster(work / "pg")
    cluster.start()
    try:
        name = f"bench_{uuid.uuid4().hex[:8]}"
        cluster.create_database(name)
        yield cluster.uri(name)
    finally:
        cluster.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=11)
    parser.add_argument("--rest", type=float, default=5.0, help="seconds idle before RSS")
    parser.add_argument("--db", help="PostgreSQL URI for server mode (default: throwaway)")
    args = parser.parse_args()
    env = {**os.environ, **ADMIN_ENV}
    flowyard = flowyard_command()
    with tempfile.TemporaryDirectory(prefix="flowyard-bench-") as tmp:
        work = Path(tmp)
        group = ProcessGroup(work / "logs")
        try:
            server = group.start_server(["--data-dir", str(work / "data")], env=env)
            server.wait_healthy(timeout=60)
            default_rss = rss_at_rest(server.pid, args.rest)
            with httpx.Client(base_url=server.url, timeout=10) as client:
                for _ in range(5):
                    client.post(
                        "/api/tasks", json={"flow": "debug.sleep", "params": {"seconds": 0}}
                    ).raise_for_status()
            env_client = {**env, "FLOWYARD_SERVER": server.url}
            help_times = time_command([*flowyard, "--help"], args.runs, env_client)
            list_times = time_command([*flowyard, "tasks", "list"], args.runs, env_client)
            server.terminate()

            with postgres(args.db, work) as db:
                server_args = ["--mode", "server", "--db", db, "--files", str(work / "tasks")]
                server = group.start_server(
                    server_args,
                    env=env,
                    name="server-mode",
                )
                server.wait_healthy(timeout=60)
                server_rss = rss_at_rest(server.pid, args.rest)
                server.terminate()
                nats = NatsServer(work / "nats" / "store")
                nats.start()
                try:
                    server = group.start_server(
                        [*server_args, "--nats", nats.url],
                        env=env,
                        name="server-mode-nats",
                    )
                    server.wait_healthy(timeout=60)
                    nats_rss = rss_at_rest(server.pid, args.rest)
                    server.terminate()
                finally:
                    nats.stop()
        except BaseException:
            print(group.tails(), file=sys.stderr)
            raise
        finally:
            group.stop_all()

    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores, {args.runs} runs")
    show_times("flowyard --help", help_times, 0.3)
    show_times("flowyard tasks list (5 tasks)", list_times, 0.5)
    show_rss("serve (default mode) RSS at rest", default_rss)
    show_rss("serve --mode server RSS at rest", server_rss)
    show_rss("serve --mode server --nats RSS", nats_rss)


if __name__ == "__main__":
    main()
