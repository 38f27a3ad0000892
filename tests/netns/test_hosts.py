"""Workers on separate simulated hosts: what a network does and a process kill does not.

Each worker runs in a network namespace of its own (``tests/support/netns.py``)
and reaches PostgreSQL or nats-server only over its veth link to the bridge;
the server and the test stay on the machine. Cutting a link leaves the worker
alive and busy, and it comes back later with a result for an attempt that is
no longer its own: that result must be refused (one ``task.done`` per task).
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.integration.test_db_workers import WORKER_READY, start_server
from tests.support.nats import NatsServer
from tests.support.nats_processes import (
    create,
    events_of,
    start_nats_server,
    task,
    wait_state,
)
from tests.support.netns import Host, Network
from tests.support.postgres import PostgresCluster
from tests.support.processes import (
    ManagedProcess,
    ProcessGroup,
    flowyard_command,
    wait_all_finished,
    wait_until,
)
from tests.support.task_db import create_tasks, open_store, read_log, task_states

pytestmark = [pytest.mark.netns, pytest.mark.e2e, pytest.mark.timeout(240)]

LEASE = 4.0
NATS_READY = r"worker nats:\S+ on nats://"


def env(**extra: str) -> dict[str, str]:
    return {"FLOWYARD_LEASE_SECONDS": str(LEASE), "FLOWYARD_POLL_INTERVAL": "0.5", **extra}


def db_worker(
    group: ProcessGroup, host: Host, uri: str, files: Path, *extra: str
) -> ManagedProcess:
    """``flowyard worker --db`` inside ``host``'s namespace, named after the host."""
    argv = [*flowyard_command(), "worker", "--db", uri, "--files", str(files)]
    argv += ["--name", host.name, "--flows", "debug.sleep", *extra]
    return group.start(host.name, host.command(argv), env())


def nats_worker(group: ProcessGroup, host: Host, url: str, *extra: str) -> ManagedProcess:
    argv = [*flowyard_command(), "worker", "--nats", url, "--name", host.name]
    argv += ["--flows", "debug.sleep", "--lease-seconds", str(LEASE), *extra]
    return group.start(host.name, host.command(argv), env())


def dones(server: ManagedProcess, task_id: uuid.UUID) -> list[dict[str, object]]:
    return [e for e in events_of(server, task_id) if e["type"] == "task.done"]


def claims(server: ManagedProcess, task_id: uuid.UUID) -> list[tuple[int, str]]:
    return [
        (int(str(e["attempt"])), str(e["worker_id"]).rsplit("/", 1)[-1])
        for e in events_of(server, task_id)
        if e["type"] == "task.claimed"
    ]


def run_until_cut(
    group: ProcessGroup, server: ManagedProcess, host: Host, seconds: float
) -> uuid.UUID:
    """A task running on ``host``, with progress made; then ``host`` loses its link."""
    task_id = create(server, "debug.sleep", {"seconds": seconds, "steps": int(seconds * 4)})
    wait_until(
        lambda: task(server, task_id)["progress"] > 0.05,
        30,
        f"the task to make progress on {host.name}",
        group=group,
    )
    assert str(task(server, task_id)["worker_id"]).endswith(f"/{host.name}")
    host.cut()
    return task_id


# ------------------------------------------------------------------- database workers


async def test_a_cut_off_database_worker_loses_its_task_and_its_late_result_is_refused(
    network: Network,
    pg_on_network: PostgresCluster,
    tmp_path: Path,
    flowyard_processes: ProcessGroup,
) -> None:
    cut_off, rescuer = network.add_host("cutoff"), network.add_host("rescuer")
    pg_on_network.create_database("flowyard")
    async with open_store(pg_on_network.uri("flowyard")):  # the schema, before workers check it
        pass
    over_link = pg_on_network.uri("flowyard", host=network.gateway)
    files = tmp_path / "files"
    server = start_server(flowyard_processes, pg_on_network.uri("flowyard"), tmp_path, env())
    server.wait_healthy(60)
    first = db_worker(flowyard_processes, cut_off, over_link, files, "--concurrency", "1")
    first.wait_for_log(WORKER_READY, 60)

    task_id = run_until_cut(flowyard_processes, server, cut_off, seconds=6)
    second = db_worker(flowyard_processes, rescuer, over_link, files, "--concurrency", "1")
    second.wait_for_log(WORKER_READY, 60)
    # the lease runs out (no heartbeat gets through), the rescuer reaps and finishes it
    finished = wait_state(server, task_id, {"succeeded", "failed"}, 60, flowyard_processes)
    assert finished["state"] == "succeeded", finished
    assert str(finished["worker_id"]).endswith("/rescuer")
    assert first.alive(), "the cut-off worker must still be running: only its link went"

    cut_off.restore()
    first.wait_for_log(rf"task {task_id}: result of task {task_id} refused", timeout=120)
    assert claims(server, task_id) == [(1, "cutoff"), (2, "rescuer")]
    [done] = dones(server, task_id)
    assert done["attempt"] == 2
    assert task(server, task_id)["state"] == "succeeded"
    assert first.alive()
    assert "Traceback" not in first.log_text()


# ----------------------------------------------------------------------- NATS workers


@pytest.mark.nats
@pytest.mark.postgres
async def test_a_cut_off_nats_worker_loses_its_task_and_its_late_result_is_refused(
    network: Network,
    nats_on_network: NatsServer,
    pg_uri: str,
    tmp_path: Path,
    flowyard_processes: ProcessGroup,
) -> None:
    cut_off, rescuer = network.add_host("cutoff"), network.add_host("rescuer")
    url = nats_on_network.url  # the gateway: the server, too, reaches NATS over the bridge
    server = start_nats_server(
        flowyard_processes,
        db_uri=pg_uri,
        files=tmp_path / "tasks",
        nats_url=url,
        lease_seconds=LEASE,
    )
    server.wait_healthy(60)
    first = nats_worker(flowyard_processes, cut_off, url, "--concurrency", "1")
    first.wait_for_log(NATS_READY, 60)
    # only the cut-off worker runs when the task is sent: it must be the one to take it
    task_id = run_until_cut(flowyard_processes, server, cut_off, seconds=8)
    second = nats_worker(flowyard_processes, rescuer, url, "--concurrency", "1")
    second.wait_for_log(NATS_READY, 60)
    # no +WPI gets through: JetStream redelivers after the ack wait, to the rescuer
    finished = wait_state(server, task_id, {"succeeded", "failed"}, 90, flowyard_processes)
    assert finished["state"] == "succeeded", finished
    assert str(finished["worker_id"]).endswith("/rescuer")
    assert first.alive()

    cut_off.restore()
    # the cut-off worker reconnects and publishes its result for attempt 1: refused
    server.wait_for_log(rf"refused task\.done \S+ of task {task_id}", timeout=120)
    assert [c[1] for c in claims(server, task_id)] == ["cutoff", "rescuer"]
    [done] = dones(server, task_id)
    assert done["attempt"] == 2
    assert task(server, task_id)["state"] == "succeeded"


# ------------------------------------------------------------------------- latency

DELAY_MS = 20
TASKS = 200


def slow_links(network: Network, hosts: Sequence[Host], target: tuple[str, int]) -> int:
    """Delay every host's link by ``DELAY_MS``: the port to reach ``target`` through.

    tc netem where the kernel has it (then the target's own port); otherwise a
    relay on the gateway that holds every chunk back as long, each way.
    """
    if all(network.netem_delay(host, DELAY_MS) for host in hosts):
        print(f"tc netem: {DELAY_MS} ms on each link, both ways")
        return target[1]
    print(f"no sch_netem in this kernel: a relay adds {DELAY_MS} ms each way")
    return network.relay(target[0], target[1], DELAY_MS)


@pytest.mark.postgres
async def test_database_workers_behind_slow_links_finish_everything_once(
    network: Network,
    pg_on_network: PostgresCluster,
    tmp_path: Path,
    flowyard_processes: ProcessGroup,
) -> None:
    hosts = [network.add_host(f"slow{i}") for i in range(2)]
    pg_on_network.create_database("flowyard")
    local = pg_on_network.uri("flowyard")
    port = slow_links(network, hosts, ("127.0.0.1", pg_on_network.port))
    over_link = f"postgresql://postgres@{network.gateway}:{port}/flowyard"
    files = tmp_path / "files"
    async with open_store(local) as store:
        server = start_server(flowyard_processes, local, tmp_path, env())
        server.wait_healthy(60)
        workers = [
            db_worker(flowyard_processes, h, over_link, files, "--concurrency", "4") for h in hosts
        ]
        for worker in workers:
            worker.wait_for_log(WORKER_READY, 60)
        started = time.monotonic()
        ids = await create_tasks(store, files, TASKS, params={"seconds": 0.0})
        wait_all_finished(server.url or "", 120, group=flowyard_processes)
        elapsed = time.monotonic() - started
        log = await read_log(store)
        states = await task_states(store)
    print(f"{TASKS} tasks over {DELAY_MS} ms links: {TASKS / elapsed:.0f} tasks/s")
    assert states == Counter({"succeeded": TASKS})
    assert log.count("task.done") == Counter(dict.fromkeys(ids, 1))
    assert {c.worker_id.rsplit("/", 1)[-1] for c in log.claims()} == {h.name for h in hosts}


@pytest.mark.nats
@pytest.mark.postgres
async def test_nats_workers_behind_slow_links_finish_everything_once(
    network: Network,
    nats_on_network: NatsServer,
    pg_uri: str,
    tmp_path: Path,
    flowyard_processes: ProcessGroup,
) -> None:
    hosts = [network.add_host(f"slow{i}") for i in range(2)]
    port = slow_links(network, hosts, (network.gateway, nats_on_network.port))
    over_link = f"nats://{network.gateway}:{port}"
    files = tmp_path / "tasks"
    server = start_nats_server(
        flowyard_processes,
        db_uri=pg_uri,
        files=files,
        nats_url=nats_on_network.url,
        lease_seconds=LEASE,
    )
    server.wait_healthy(60)
    workers = [nats_worker(flowyard_processes, h, over_link, "--concurrency", "4") for h in hosts]
    for worker in workers:
        worker.wait_for_log(NATS_READY, 60)
    async with open_store(pg_uri, migrate=False) as store:
        started = time.monotonic()
        ids = await create_tasks(store, files, TASKS, params={"seconds": 0.0})
        wait_all_finished(server.url or "", 120, group=flowyard_processes)
        elapsed = time.monotonic() - started
        log = await read_log(store)
        states = await task_states(store)
    print(f"{TASKS} tasks over {DELAY_MS} ms links: {TASKS / elapsed:.0f} tasks/s")
    assert states == Counter({"succeeded": TASKS})
    assert log.count("task.done") == Counter(dict.fromkeys(ids, 1))
