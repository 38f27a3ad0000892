"""Operating a server, in process: CORS, probes, /metrics and the task log lines."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from flowyard.core.events import TaskClaimed, TaskCreated, TaskDone, utcnow
from flowyard.core.settings import Settings
from flowyard.services.api.app import create_app
from flowyard.services.logs import configure_logging
from flowyard.services.metrics import ServerMetrics
from flowyard.services.runtime import Runtime
from tests.support.auth import ADMIN_AUTH, ADMIN_PASSWORD

pytestmark = pytest.mark.timeout(120)

ORIGIN = "https://ui.example"


async def _client(
    settings: Settings, *, start: bool = False, auth: httpx.Auth | None = None
) -> AsyncIterator[tuple[httpx.AsyncClient, Runtime]]:
    runtime = await Runtime.open(settings)
    try:
        app = create_app(runtime.settings, runtime)
        app.state.runtime = runtime  # no lifespan under ASGITransport
        if start:
            await runtime.start()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://flowyard", auth=auth
        ) as client:
            yield client, runtime
    finally:
        await runtime.close()


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of a Prometheus text exposition (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        key, _, value = line.rpartition(" ")
        sample, _, rest = key.partition("{")
        found = ",".join(sorted(rest.rstrip("}").split(","))) if rest else ""
        if sample == name and found == wanted:
            return float(value)
    return 0.0


# ---------------------------------------------------------------------------- CORS


async def test_cors_preflight_is_answered_when_configured(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", workers=0, cors_origins=[ORIGIN])
    async for client, _ in _client(settings):
        preflight = await client.options(
            "/api/tasks",
            headers={
                "Origin": ORIGIN,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
            },
        )
        assert preflight.status_code == 200, preflight.text
        assert preflight.headers["access-control-allow-origin"] == ORIGIN
        assert "POST" in preflight.headers["access-control-allow-methods"]
        assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
        simple = await client.get("/api/flows", headers={"Origin": ORIGIN})
        assert simple.headers["access-control-allow-origin"] == ORIGIN
        other = await client.options(
            "/api/tasks",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        )
        assert other.status_code == 400
        assert "access-control-allow-origin" not in other.headers


async def test_cors_is_off_by_default(tmp_path: Path) -> None:
    async for client, _ in _client(Settings(data_dir=tmp_path / "data", workers=0)):
        preflight = await client.options(
            "/api/tasks", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"}
        )
        assert preflight.status_code == 405
        assert "access-control-allow-origin" not in preflight.headers


# -------------------------------------------------------------------------- probes


async def test_ping_and_ready(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async for client, runtime in _client(Settings(data_dir=tmp_path / "data", workers=0)):
        assert (await client.get("/ping")).json() == {"status": "ok"}
        ready = await client.get("/api/ready")
        assert ready.status_code == 200
        assert ready.json() == {"status": "ready", "checks": {"database": "ok"}}

        def broken() -> Any:
            raise ConnectionRefusedError("database is down")

        monkeypatch.setattr(runtime.db, "read", broken)
        down = await client.get("/api/ready")
        assert down.status_code == 503
        assert down.json()["checks"]["database"] == "ConnectionRefusedError: database is down"
        assert (await client.get("/ping")).status_code == 200  # liveness does no I/O
        spec = (await client.get("/openapi.json")).json()
        assert not {"/ping", "/api/ready", "/metrics"} & set(spec["paths"])


@pytest.mark.postgres
async def test_probes_need_no_credentials_and_metrics_needs_an_admin(
    tmp_path: Path, pg_uri: str
) -> None:
    settings = Settings(
        mode="server",
        database_uri=pg_uri,
        data_dir=tmp_path / "data",
        admin_password=SecretStr(ADMIN_PASSWORD),
    )
    async for client, _ in _client(settings):
        assert (await client.get("/ping")).status_code == 200
        assert (await client.get("/api/ready")).status_code == 200
        assert (await client.get("/metrics")).status_code == 401
        made = await client.post(
            "/api/users", json={"name": "alice", "password": "alice-Secret-9"}, auth=ADMIN_AUTH
        )
        assert made.status_code == 201, made.text
        alice = httpx.BasicAuth("alice", "alice-Secret-9")
        assert (await client.get("/metrics", auth=alice)).status_code == 403
        token = await client.post("/api/me/tokens", json={"name": "prometheus"}, auth=ADMIN_AUTH)
        assert token.status_code == 201, token.text
        bearer = {"Authorization": f"Bearer {token.json()['token']}"}
        scraped = await client.get("/metrics", headers=bearer)
        assert scraped.status_code == 200
        assert scraped.headers["content-type"].startswith("text/plain")
        assert "flowyard_tasks_created_total" in scraped.text


# ------------------------------------------------------------------------- metrics


async def test_metrics_move_when_a_task_runs(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", workers=1)
    async for client, runtime in _client(settings, start=True):
        before = (await client.get("/metrics")).text
        assert metric(before, "flowyard_tasks_created_total", flow="debug.sleep") == 0
        ok = await client.post(
            "/api/tasks", json={"flow": "debug.sleep", "params": {"seconds": 0.8, "steps": 4}}
        )
        bad = await client.post(
            "/api/tasks", json={"flow": "debug.sleep", "params": {"seconds": 0, "fail": "no"}}
        )
        queued = await client.post(
            "/api/tasks", json={"flow": "debug.sleep", "params": {"seconds": 30}}
        )
        assert {ok.status_code, bad.status_code, queued.status_code} == {201}
        for _ in range(200):
            states = [
                (await client.get(f"/api/tasks/{r.json()['id']}")).json()["state"]
                for r in (ok, bad)
            ]
            if states == ["succeeded", "failed"]:
                break
            await asyncio.sleep(0.05)
        assert states == ["succeeded", "failed"]
        await runtime.metrics.refresh(runtime, force=True)
        text = (await client.get("/metrics")).text
        await client.post(f"/api/tasks/{queued.json()['id']}/cancel")
    flow = {"flow": "debug.sleep"}
    assert metric(text, "flowyard_tasks_created_total", **flow) == 3
    assert metric(text, "flowyard_tasks_finished_total", status="succeeded", **flow) == 1
    assert metric(text, "flowyard_tasks_finished_total", status="failed", **flow) == 1
    assert metric(text, "flowyard_task_progress_events_total", **flow) >= 1
    assert metric(text, "flowyard_task_claim_latency_seconds_count", **flow) >= 2
    assert metric(text, "flowyard_task_run_duration_seconds_count", status="succeeded", **flow) == 1
    assert metric(text, "flowyard_task_run_duration_seconds_sum", status="succeeded", **flow) > 0.7
    # one worker slot: the 30 s task is running, or still queued behind nothing else
    running = metric(text, "flowyard_tasks", state="running", **flow)
    waiting = metric(text, "flowyard_tasks", state="queued", **flow)
    assert running + waiting == 1
    assert metric(text, "flowyard_workers_online", transport="inprocess") == 1


def test_an_event_seen_twice_is_counted_once() -> None:
    metrics = ServerMetrics()
    created = TaskCreated(task_id=TaskCreated.model_fields["id"].default_factory(), flow="f")  # type: ignore[misc]
    metrics.tasks.observe([created, created])
    metrics.tasks.observe([created])
    assert metric(metrics.render().decode(), "flowyard_tasks_created_total", flow="f") == 1


# ---------------------------------------------------------------------------- logs


def test_one_json_line_per_transition(tmp_path: Path) -> None:
    log_file = tmp_path / "logs" / "flowyard.log"
    configure_logging("info", "json", log_file)
    try:
        metrics = ServerMetrics()
        created = TaskCreated(task_id=TaskCreated.model_fields["id"].default_factory(), flow="f")  # type: ignore[misc]
        claimed = TaskClaimed(
            task_id=created.task_id,
            flow="f",
            owner=created.owner,
            attempt=1,
            worker_id="gpu-1/w",
            lease_expires_at=utcnow(),
        )
        done = TaskDone(
            task_id=created.task_id, flow="f", attempt=1, status="succeeded", worker_id="gpu-1/w"
        )
        metrics.tasks.observe([created, claimed, done])
        logging.getLogger("httpx").info("HTTP Request: POST https://hook.example 200 OK")
        logging.getLogger("alembic.runtime.migration").info("Running upgrade -> 0001")
        for handler in logging.getLogger().handlers:
            handler.flush()
        lines = [json.loads(line) for line in log_file.read_text().splitlines()]
    finally:
        configure_logging()
    assert [line["event"] for line in lines] == ["task.created", "task.claimed", "task.done"]
    last = lines[-1]
    assert last["task_id"] == str(created.task_id)
    assert (last["flow"], last["owner"], last["attempt"]) == ("f", "admin", 1)
    assert (last["worker"], last["status"], last["level"]) == ("gpu-1/w", "succeeded", "info")
    assert last["duration_s"] >= 0
    assert last["message"] == f"task done {created.task_id}"
