"""NATS server-mode processes for tests: a server with ``--nats``, workers that see only NATS.

A NATS worker is started through ``env -u … -C <empty dir>``: no database URI or
files folder in its environment, an empty working directory, and ``TMPDIR``
pointed at a folder of the test's, so a test can prove it touched neither the
database nor any shared folder and left no temporary files behind.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from flowyard.adapters.sql.rows import task_values
from flowyard.adapters.sql.schema import tasks
from flowyard.adapters.sql.task_store import SqlTaskStore, append_events
from flowyard.core.events import TaskCreated
from flowyard.core.task import apply
from tests.support.auth import ADMIN_AUTH
from tests.support.processes import ManagedProcess, ProcessError, ProcessGroup, flowyard_command

DB_ENV = ("FLOWYARD_DATABASE_URI", "FLOWYARD_FILES_DIR", "FLOWYARD_DATA_DIR", "FLOWYARD_CONFIG")


def start_nats_server(
    group: ProcessGroup,
    *,
    db_uri: str,
    files: Path,
    nats_url: str,
    lease_seconds: float = 2.0,
    extra: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> ManagedProcess:
    args = [
        "--mode",
        "server",
        "--db",
        db_uri,
        "--files",
        str(files),
        "--nats",
        nats_url,
        "--lease-seconds",
        str(lease_seconds),
        *extra,
    ]
    return group.start_server(args, env={"FLOWYARD_POLL_INTERVAL": "0.5", **(env or {})})


def start_nats_worker(
    group: ProcessGroup,
    root: Path,
    *,
    nats_url: str,
    name: str,
    lease_seconds: float = 2.0,
    extra: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> tuple[ManagedProcess, Path, Path]:
    """A worker with no database in reach; returns it, its (empty) cwd and its TMPDIR."""
    cwd = root / f"{name}-cwd"
    tmp = root / f"{name}-tmp"
    cwd.mkdir(parents=True)
    tmp.mkdir(parents=True)
    unset = [arg for var in DB_ENV for arg in ("-u", var)]
    argv = [
        "env",
        *unset,
        "-C",
        str(cwd),
        *flowyard_command(),
        "worker",
        "--nats",
        nats_url,
        "--name",
        name,
        "--lease-seconds",
        str(lease_seconds),
        *extra,
    ]
    process = group.start(
        name, argv, env={"TMPDIR": str(tmp), "FLOWYARD_POLL_INTERVAL": "1", **(env or {})}
    )
    return process, cwd, tmp


def wait_worker_ready(process: ManagedProcess, timeout: float = 60.0) -> None:
    process.wait_for_log(r"worker nats:\S+ on nats://", timeout=timeout)


def api(server: ManagedProcess) -> httpx.Client:
    assert server.url is not None
    return httpx.Client(auth=ADMIN_AUTH, base_url=server.url, timeout=10.0)


def create(server: ManagedProcess, flow: str, params: dict[str, Any], **extra: Any) -> uuid.UUID:
    with api(server) as client:
        response = client.post("/api/tasks", json={"flow": flow, "params": params, **extra})
        response.raise_for_status()
        return uuid.UUID(response.json()["id"])


def task(server: ManagedProcess, task_id: uuid.UUID) -> dict[str, Any]:
    with api(server) as client:
        response = client.get(f"/api/tasks/{task_id}")
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body


def events_of(server: ManagedProcess, task_id: uuid.UUID) -> list[dict[str, Any]]:
    with api(server) as client:
        response = client.get(f"/api/tasks/{task_id}/events")
        response.raise_for_status()
        items: list[dict[str, Any]] = response.json()["items"]
        return items


def wait_state(
    server: ManagedProcess,
    task_id: uuid.UUID,
    states: set[str],
    timeout: float,
    group: ProcessGroup | None = None,
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        last = task(server, task_id)
        if last["state"] in states:
            return last
        time.sleep(0.1)
    logs = group.tails() if group is not None else ""
    raise ProcessError(f"task {task_id} still {last.get('state')} after {timeout}s\n{logs}")


def health(server: ManagedProcess) -> dict[str, Any]:
    with api(server) as client:
        response = client.get("/api/health")
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body


async def bulk_create(
    store: SqlTaskStore,
    count: int,
    *,
    flow: str = "debug.sleep",
    params: dict[str, Any] | None = None,
    owners: Sequence[str] = ("admin",),
) -> list[uuid.UUID]:
    """``count`` queued tasks in one transaction: their rows, and their outbox events.

    Two inserts, whatever the count, with the commit hooks of ``append_events``
    (NOTIFY wakes the server's tailer, which kicks its relay): exactly what the
    API writes per task, minus the per-request cost. NATS workers need no task
    folder, so none is made.
    """
    created = [
        TaskCreated(
            task_id=uuid.uuid4(),
            flow=flow,
            owner=owners[i % len(owners)],
            params=params if params is not None else {"seconds": 0.0, "steps": 1},
        )
        for i in range(count)
    ]
    async with store.db.write() as tx:
        await tx.conn.execute(sa.insert(tasks), [task_values(apply(None, e)) for e in created])
        await append_events(tx, created)
    return [event.task_id for event in created]


def left_behind(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))
