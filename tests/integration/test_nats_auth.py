"""NATS accounts as docs/nats.md configures them: a user's worker gets its owner's work only.

The nats-server config below is the one in docs/nats.md ("Security"), with test
passwords. A worker that logs in as ``alice`` runs alice's tasks end to end
(work, events, heartbeats, her bucket) and is refused, by the real server, when
it reaches for bob's objects or bob's work.
"""

from __future__ import annotations

import asyncio
import io
import uuid
from collections.abc import Callable
from pathlib import Path

import nats
import nats.errors
import pytest
from nats.js import JetStreamContext
from PIL import Image

from bus.nats.streams import work_stream
from tests.support.nats import NatsServer
from tests.support.nats_processes import (
    api,
    health,
    start_nats_server,
    start_nats_worker,
    wait_state,
    wait_worker_ready,
)
from tests.support.processes import ManagedProcess, ProcessGroup, wait_until

pytestmark = [pytest.mark.nats, pytest.mark.postgres, pytest.mark.e2e, pytest.mark.timeout(120)]

DOCS = Path(__file__).resolve().parents[2] / "docs" / "nats.md"


def docs_config() -> str:
    """The ``nats-server.conf`` block of docs/nats.md, with passwords from the environment."""
    text = DOCS.read_text()
    start = text.index("```conf\n") + len("```conf\n")
    return text[start : text.index("```", start)]


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 40, 40)).save(out, format="PNG")
    return out.getvalue()


def test_a_users_worker_runs_its_owners_tasks_and_cannot_touch_another_users(
    nats_server_factory: Callable[..., NatsServer],
    pg_uri: str,
    tmp_path: Path,
    flowyard_processes: ProcessGroup,
) -> None:
    config = (
        docs_config()
        .replace("$SERVER_PASSWORD", "server-secret")
        .replace("$ADMIN_WORKER_PASSWORD", "admin-secret")
        .replace("$ALICE_PASSWORD", "alice-secret")
        .replace("$BOB_PASSWORD", "bob-secret")
    )
    nats_server = nats_server_factory(
        config=config, connect_options={"user": "flowyard-server", "password": "server-secret"}
    )
    url = nats_server.url
    server = start_nats_server(
        flowyard_processes,
        db_uri=pg_uri,
        files=tmp_path / "tasks",
        nats_url=url,
        extra=["--nats-user", "flowyard-server", "--nats-password", "server-secret"],
    )
    server.wait_healthy(60)
    worker, _, _ = start_nats_worker(
        flowyard_processes,
        tmp_path,
        nats_url=url,
        name="alice-gpu",
        extra=[
            "--flows", "image.blur,debug.sleep", "--owner", "alice",
            "--user", "alice", "--password", "alice-secret",
        ],
    )  # fmt: skip
    wait_worker_ready(worker)

    ids = {}
    with api(server) as client:
        for owner in ("alice", "bob"):
            response = client.post(
                "/api/tasks",
                data={"flow": "image.blur", "params": '{"radius": 1}', "owner": owner},
                files={"inputs": ("in.png", _png(), "image/png")},
            )
            assert response.status_code == 201, response.text
            ids[owner] = uuid.UUID(response.json()["id"])
    done = wait_state(server, ids["alice"], {"succeeded", "failed"}, 60, flowyard_processes)
    assert done["state"] == "succeeded", done
    with api(server) as client:
        assert client.get(f"/api/tasks/{ids['alice']}/outputs/output.png").status_code == 200
        workers = client.get("/api/workers").json()["items"]
    assert any(w["name"] == "alice-gpu" and w["transport"] == "nats" for w in workers)
    # bob's task waits for a worker of bob's; its input is in bob's bucket by now
    wait_until(lambda: _relayed(server), 20, "bob's task to be relayed", group=flowyard_processes)
    with api(server) as client:
        assert client.get(f"/api/tasks/{ids['bob']}").json()["state"] == "queued"

    violations = asyncio.run(_reach_for_bobs_things(url, ids["bob"]))
    assert any("bob" in v and "permissions violation" in v.lower() for v in violations), violations
    log = nats_server.log_path.read_text()
    assert "user:alice" in log
    assert 'Subject "$JS.API.STREAM.INFO.OBJ_flowyard_files_bob"' in log


def _relayed(server: ManagedProcess) -> bool:
    return bool(health(server)["nats"]["relay"]["pending"] == 0)


async def _read_object(js: JetStreamContext, bucket: str, name: str) -> None:
    store = await js.object_store(bucket)
    await store.get(name, writeinto=io.BytesIO())


async def _pull(js: JetStreamContext, stream: str, consumer: str) -> None:
    sub = await js.pull_subscribe_bind(consumer, stream=stream)
    await sub.fetch(1, timeout=2)


async def _reach_for_bobs_things(url: str, bob_task: uuid.UUID) -> list[str]:
    """As alice: read bob's input object, pull bob's work. Returns the server's refusals."""
    errors: list[str] = []

    async def record(exc: Exception) -> None:
        errors.append(str(exc))

    nc = await nats.connect(
        url,
        user="alice",
        password="alice-secret",
        inbox_prefix="_INBOX_alice",
        error_cb=record,
        allow_reconnect=False,
    )
    try:
        js = nc.jetstream(timeout=2)
        # alice's own bucket is hers to read
        await js.object_store("flowyard_files_alice")
        with pytest.raises((nats.errors.Error, asyncio.TimeoutError)):
            await _read_object(js, "flowyard_files_bob", f"{bob_task}/inputs/in.png")
        with pytest.raises((nats.errors.Error, asyncio.TimeoutError)):
            await _pull(js, work_stream("bob"), "image_blur")
        await asyncio.sleep(0.5)  # the -ERR lines arrive asynchronously
    finally:
        await nc.close()
    return errors
