"""NATS enforces ownership with the config ``flowyard nats auth-config`` generates.

Users alice and bob (role user) and root (admin) are made with
``SqlUserStore``; the nats-server config is the command's output, run by a
real nats-server. A worker logged in as alice (``FLOWYARD_WORKER_AUTH``, no
``--owner``: the server tells it) runs alice's tasks end to end, never bob's,
and a plain nats-py client logged in as alice is refused by the server when it
reaches for bob's work, bob's objects or bob's event subjects.

The helpers here are shared with tests/integration/test_nats_identity.py.
"""

from __future__ import annotations

import asyncio
import io
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import nats
import nats.errors
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from PIL import Image

from flowyard.adapters.sql.database import Database
from flowyard.adapters.sql.engine import make_engine, upgrade
from flowyard.adapters.sql.user_store import SqlUserStore
from flowyard.bus.nats.streams import work_stream
from flowyard.bus.nats.subjects import subject_for
from flowyard.core.events import TaskDone
from flowyard.core.identity import Role
from tests.support.nats import NatsServer
from tests.support.nats_processes import start_nats_server, start_nats_worker, wait_worker_ready
from tests.support.processes import (
    ManagedProcess,
    ProcessError,
    ProcessGroup,
    flowyard_command,
    wait_until,
)

pytestmark = [pytest.mark.nats, pytest.mark.postgres, pytest.mark.e2e, pytest.mark.timeout(120)]

SERVER_USER = "flowyard-server"
SERVER_PASSWORD = "server-Secret-1"
PASSWORDS = {"alice": "alice-Secret-1", "bob": "bob-Secret-12", "root": "root-Secret-1"}
ROLES = {"alice": Role.user, "bob": Role.user, "root": Role.admin}
T = TypeVar("T")


# --------------------------------------------------------------------------- helpers


@dataclass
class Stack:
    """A nats-server running the generated config, and a flowyard server on it."""

    nats: NatsServer
    server: ManagedProcess
    db_uri: str


async def _with_store(
    db_uri: str, action: Callable[[SqlUserStore], Awaitable[T]], *, migrate: bool
) -> T:
    engine = make_engine(db_uri, pool_size=1)
    try:
        if migrate:  # the server would, but the NATS config is needed before it starts
            await upgrade(engine)
        return await action(SqlUserStore(Database(engine)))
    finally:
        await engine.dispose()


def on_users(
    db_uri: str, action: Callable[[SqlUserStore], Awaitable[T]], *, migrate: bool = False
) -> T:
    """Run ``action(store)`` against the test database, from this (synchronous) test."""
    return asyncio.run(_with_store(db_uri, action, migrate=migrate))


def create_users(db_uri: str) -> None:
    async def create(store: SqlUserStore) -> None:
        for name, password in PASSWORDS.items():
            await store.create(name, password, ROLES[name])

    on_users(db_uri, create, migrate=True)


def auth_config(db_uri: str) -> str:
    """``flowyard nats auth-config``'s stdout (the server password piped in)."""
    result = subprocess.run(
        [*flowyard_command(), "nats", "auth-config", "--db", db_uri, "--password-stdin"],
        input=SERVER_PASSWORD + "\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert SERVER_PASSWORD not in result.stdout
    return result.stdout


def reload_config(nats_server: NatsServer, db_uri: str) -> None:
    """Regenerate the config and SIGHUP nats-server (``nats-server --signal reload``)."""
    before = nats_server.log_path.read_text().count("Reloaded server configuration")
    nats_server.config_path.write_text(auth_config(db_uri))
    assert nats_server.pid is not None
    os.kill(nats_server.pid, signal.SIGHUP)
    wait_until(
        lambda: nats_server.log_path.read_text().count("Reloaded server configuration") > before,
        20,
        "nats-server to reload its configuration",
    )


def start_stack(
    nats_server_factory: Callable[..., NatsServer],
    db_uri: str,
    tmp_path: Path,
    group: ProcessGroup,
) -> Stack:
    create_users(db_uri)
    nats_server = nats_server_factory(
        config=auth_config(db_uri),
        connect_options={"user": SERVER_USER, "password": SERVER_PASSWORD},
    )
    server = start_nats_server(
        group,
        db_uri=db_uri,
        files=tmp_path / "tasks",
        nats_url=nats_server.url,
        extra=["--nats-user", SERVER_USER],
        env={"FLOWYARD_NATS_PASSWORD": SERVER_PASSWORD},
    )
    server.wait_healthy(60)
    return Stack(nats_server, server, db_uri)


def start_worker(
    stack: Stack,
    group: ProcessGroup,
    tmp_path: Path,
    name: str,
    *,
    extra: list[str] | None = None,
    env: dict[str, str] | None = None,
    flows: str = "debug.sleep",
) -> ManagedProcess:
    worker, _, _ = start_nats_worker(
        group,
        tmp_path,
        nats_url=stack.nats.url,
        name=name,
        extra=["--flows", flows, *(extra or [])],
        env=env,
    )
    return worker


@contextmanager
def client(stack: Stack, user: str = "root") -> Iterator[httpx.Client]:
    assert stack.server.url is not None
    with httpx.Client(
        base_url=stack.server.url, auth=(user, PASSWORDS[user]), timeout=10.0
    ) as http:
        yield http


def create_task(stack: Stack, owner: str, *, seconds: float = 0.0) -> uuid.UUID:
    """A debug.sleep task of ``owner``'s, created by the admin on their behalf."""
    with client(stack) as http:
        response = http.post(
            "/api/tasks",
            json={"flow": "debug.sleep", "params": {"seconds": seconds}, "owner": owner},
        )
    assert response.status_code == 201, response.text
    return uuid.UUID(response.json()["id"])


def get_task(stack: Stack, task_id: uuid.UUID) -> dict[str, Any]:
    with client(stack) as http:
        response = http.get(f"/api/tasks/{task_id}")
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    return body


def wait_done(
    stack: Stack, task_id: uuid.UUID, group: ProcessGroup, timeout: float = 60
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    found = get_task(stack, task_id)
    while found["state"] not in ("succeeded", "failed", "cancelled"):
        if time.monotonic() > deadline:
            raise ProcessError(f"task {task_id} still {found['state']}\n{group.tails()}")
        time.sleep(0.1)
        found = get_task(stack, task_id)
    return found


def relayed(stack: Stack) -> bool:
    with client(stack) as http:
        body = http.get("/api/health").json()
    return bool(body["nats"]["relay"]["pending"] == 0)


class Refusals:
    """A raw nats-py client's permission violations, as the server reported them."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    async def record(self, exc: Exception) -> None:
        self.errors.append(str(exc).lower())

    def about(self, text: str) -> list[str]:
        """The refusals that name ``text`` (nats-py lowercases the server's message)."""
        return [e for e in self.errors if "permissions violation" in e and text.lower() in e]


async def connect_as(url: str, user: str, password: str, refusals: Refusals) -> Client:
    """A plain client (no reconnects), with the inbox a login may read: ``_INBOX_<user>``."""
    nc = Client()
    try:
        await nc.connect(
            url,
            user=user,
            password=password,
            inbox_prefix=f"_INBOX_{user}",
            error_cb=refusals.record,
            allow_reconnect=False,
            max_reconnect_attempts=1,
            connect_timeout=2,
        )
    except BaseException:
        await nc.close()
        raise
    return nc


def png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 40, 40)).save(out, format="PNG")
    return out.getvalue()


# ----------------------------------------------------------------------------- test


def test_a_users_worker_runs_its_owners_tasks_and_cannot_touch_another_users(
    nats_server_factory: Callable[..., NatsServer],
    pg_uri: str,
    tmp_path: Path,
    flowyard_processes: ProcessGroup,
) -> None:
    stack = start_stack(nats_server_factory, pg_uri, tmp_path, flowyard_processes)
    worker = start_worker(
        stack,
        flowyard_processes,
        tmp_path,
        "alice-gpu",
        flows="image.blur,debug.sleep",
        env={"FLOWYARD_WORKER_AUTH": f"alice:{PASSWORDS['alice']}"},
    )
    wait_worker_ready(worker)
    assert "NATS user alice is alice's (a user): serving alice's tasks" in worker.log_text()

    ids = {}
    with client(stack) as http:
        for owner in ("alice", "bob"):
            response = http.post(
                "/api/tasks",
                data={"flow": "image.blur", "params": '{"radius": 1}', "owner": owner},
                files={"inputs": ("in.png", png(), "image/png")},
            )
            assert response.status_code == 201, response.text
            ids[owner] = uuid.UUID(response.json()["id"])
    done = wait_done(stack, ids["alice"], flowyard_processes)
    assert done["state"] == "succeeded", done
    with client(stack, "alice") as http:
        assert http.get(f"/api/tasks/{ids['alice']}/outputs/output.png").status_code == 200
        workers = http.get("/api/workers").json()["items"]
    assert any(
        w["name"] == "alice-gpu" and w["transport"] == "nats" and w["owner"] == "alice"
        for w in workers
    ), workers
    # bob's task waits for a worker of bob's; its input is in bob's bucket by now
    wait_until(lambda: relayed(stack), 20, "bob's task to be relayed", group=flowyard_processes)

    bob_task = ids["bob"]
    refusals = asyncio.run(reach_for_bobs_things(stack.nats.url, bob_task))
    assert refusals.about("OBJ_flowyard_files_bob"), refusals.errors
    assert refusals.about(work_stream("bob")), refusals.errors
    assert refusals.about("flowyard.events.done.bob.image_blur"), refusals.errors
    log = stack.nats.log_path.read_text()
    assert "user:alice" in log
    assert 'Subject "$JS.API.STREAM.INFO.OBJ_flowyard_files_bob"' in log
    # nothing alice tried reached bob's task, and her worker never took it
    time.sleep(1.0)
    bob = get_task(stack, bob_task)
    assert bob["state"] == "queued", bob
    assert bob["attempt"] == 0, bob
    assert worker.alive()


async def _read_object(js: JetStreamContext, bucket: str, name: str) -> None:
    store = await js.object_store(bucket)
    await store.get(name, writeinto=io.BytesIO())


async def _pull(js: JetStreamContext, stream: str, consumer: str) -> None:
    sub = await js.pull_subscribe_bind(consumer, stream=stream)
    await sub.fetch(1, timeout=2)


async def reach_for_bobs_things(url: str, bob_task: uuid.UUID) -> Refusals:
    """As alice: read bob's input, pull bob's work, publish a result for bob's task."""
    refusals = Refusals()
    nc = await connect_as(url, "alice", PASSWORDS["alice"], refusals)
    try:
        js = nc.jetstream(timeout=2)
        await js.object_store("flowyard_files_alice")  # her own bucket is hers to open
        with pytest.raises((nats.errors.Error, asyncio.TimeoutError)):
            await _read_object(js, "flowyard_files_bob", f"{bob_task}/inputs/in.png")
        with pytest.raises((nats.errors.Error, asyncio.TimeoutError)):
            await _pull(js, work_stream("bob"), "image_blur")
        forged = TaskDone(
            task_id=bob_task, flow="image.blur", owner="bob", attempt=1, status="failed"
        )
        with pytest.raises((nats.errors.Error, asyncio.TimeoutError)):
            await js.publish(subject_for(forged), forged.to_json().encode(), timeout=2)
        await nc.flush(timeout=2)  # the -ERR lines come before the PONG
        await nc.flush(timeout=2)  # (nats-py's PING can overtake queued commands)
    finally:
        await nc.close()
    return refusals
