"""Webhooks end to end: real ``flowyard serve`` processes and a real receiver on 127.0.0.1.

One default-mode server is shared by the module (each test has its own
subscription and receiver, removed at the end); the SSRF and crash tests start
servers of their own.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from flowyard.adapters.webhook_sender import generate_secret, verify
from flowyard.services.cli.main import build_app, run_cli
from tests.support.auth import ADMIN_AUTH
from tests.support.ports import free_port
from tests.support.processes import (
    ManagedProcess,
    ProcessGroup,
    flowyard_command,
    wait_all_finished,
    wait_until,
)
from tests.support.webhook_receiver import Received, WebhookReceiver

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

SERVER_ENV = {
    "FLOWYARD_WEBHOOKS_ALLOW_PRIVATE": "true",
    "FLOWYARD_WEBHOOK_BACKOFF_BASE": "0.2",
    "FLOWYARD_WEBHOOK_TIMEOUT": "1.5",
    "FLOWYARD_POLL_INTERVAL": "0.5",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedProcess]:
    """A default-mode server that allows private webhook targets (the receiver is local)."""
    root = tmp_path_factory.mktemp("webhooks-server")
    group = ProcessGroup(root / "logs")
    try:
        process = group.start_server(["--data-dir", str(root / "data")], SERVER_ENV)
        process.wait_healthy(60)
        yield process
    finally:
        group.stop_all()
        print(group.tails())


@pytest.fixture
def api(server: ManagedProcess) -> Iterator[httpx.Client]:
    with httpx.Client(auth=ADMIN_AUTH, base_url=server.url or "", timeout=10.0) as client:
        yield client


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    started = WebhookReceiver().start()
    yield started
    started.stop()


def cli(server: ManagedProcess | str, *args: str) -> subprocess.CompletedProcess[str]:
    url = server if isinstance(server, str) else server.url or ""
    return subprocess.run(
        [*flowyard_command(), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "FLOWYARD_SERVER": url},
        check=False,
    )


@dataclass(frozen=True)
class Ran:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def flowyard(capsys: pytest.CaptureFixture[str]) -> Callable[..., Ran]:
    """The CLI in this process (``flowyard(server, *args)``): no start-up cost per call."""
    app = build_app()

    def run(server: ManagedProcess, *args: str) -> Ran:
        capsys.readouterr()
        code = run_cli(app, [*args[:2], "--server", server.url or "", *args[2:]])
        out = capsys.readouterr()
        return Ran(code, out.out, out.err)

    return run


def subscribe(api: httpx.Client, url: str, **body: Any) -> dict[str, Any]:
    response = api.post("/api/webhooks", json={"url": url, **body})
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def sleep_task(api: httpx.Client, seconds: float = 0.0, **params: Any) -> str:
    body = {"flow": "debug.sleep", "params": {"seconds": seconds, "steps": 1, **params}}
    response = api.post("/api/tasks", json=body)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def task_events(api: httpx.Client, task_id: str) -> list[dict[str, Any]]:
    response = api.get(f"/api/tasks/{task_id}/events")
    response.raise_for_status()
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def done_event(api: httpx.Client, task_id: str) -> dict[str, Any]:
    (done,) = [e for e in task_events(api, task_id) if e["type"] == "task.done"]
    return done


def deliveries(api: httpx.Client, webhook_id: str) -> list[dict[str, Any]]:
    response = api.get(f"/api/webhooks/{webhook_id}/deliveries", params={"limit": 500})
    response.raise_for_status()
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def by_id(received: list[Received]) -> dict[str, set[bytes]]:
    """Every webhook id with the distinct bodies sent under it."""
    seen: dict[str, set[bytes]] = {}
    for request in received:
        seen.setdefault(request.webhook_id, set()).add(request.body)
    return seen


def test_cli_subscription_receives_a_signed_task_done_with_download_urls(
    server: ManagedProcess,
    api: httpx.Client,
    receiver: WebhookReceiver,
    flowyard: Callable[..., Ran],
) -> None:
    added = cli(server, "webhooks", "add", receiver.url, "--flow", "image.blur", "--json")
    assert added.returncode == 0, added.stderr
    created = json.loads(added.stdout)
    secret, webhook_id = created["secret"], created["id"]
    assert secret.startswith("whsec_")
    assert created["events"] == ["task.done"]
    try:
        sleep_task(api)  # another flow: filtered out
        response = api.post(
            "/api/tasks",
            data={"flow": "image.blur", "params": json.dumps({"radius": 1})},
            files={"inputs": ("in.png", png_bytes(), "image/png")},
        )
        assert response.status_code == 201, response.text
        task_id = response.json()["id"]
        (got,) = receiver.wait_for(lambda r: len(r) >= 1, 30, "the task.done delivery")

        done = done_event(api, task_id)
        assert got.method == "POST"
        assert got.webhook_id == done["id"]
        assert got.headers["content-type"] == "application/json"
        assert verify(secret, got.headers, got.body)
        assert not verify(generate_secret(), got.headers, got.body)  # a wrong secret fails
        body = got.json()
        assert (body["type"], body["task_id"], body["status"]) == (
            "task.done",
            task_id,
            "succeeded",
        )
        assert body["error"] is None
        (output,) = body["outputs"]
        assert output["name"] == "output.png"
        download = api.get(output["url"])
        assert download.status_code == 200
        assert download.content.startswith(b"\x89PNG")

        listed = flowyard(server, "webhooks", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        (mine,) = [json.loads(line) for line in listed.stdout.splitlines() if webhook_id in line]
        assert "secret" not in mine
        assert mine["flows"] == ["image.blur"]
        # the attempt is recorded just after the receiver answered: wait for that write
        wait_until(
            lambda: [d["status"] for d in deliveries(api, webhook_id)] == ["delivered"],
            10,
            "the delivery to be recorded",
        )
        history = flowyard(server, "webhooks", "deliveries", webhook_id, "--json")
        assert history.returncode == 0, history.stderr
        (delivery,) = [json.loads(line) for line in history.stdout.splitlines()]
        assert delivery["status"] == "delivered"
        assert [a["status_code"] for a in delivery["attempt_log"]] == [200]
        assert flowyard(server, "webhooks", "deliveries", webhook_id).returncode == 0  # the table
    finally:
        removed = flowyard(server, "webhooks", "remove", webhook_id)
        assert removed.returncode == 0, removed.stderr
    assert api.get(f"/api/webhooks/{webhook_id}").status_code == 404


def test_receiver_down_then_up_gets_every_event_after_retries(
    server: ManagedProcess, api: httpx.Client
) -> None:
    receiver = WebhookReceiver()  # not started: connections are refused
    sub = subscribe(api, receiver.url, events=["task.created", "task.done"], flows=["debug.sleep"])
    try:
        task_ids = [sleep_task(api) for _ in range(4)]
        wait_all_finished(server.url or "", 30)
        expected = {
            e["id"]: e
            for task_id in task_ids
            for e in task_events(api, task_id)
            if e["type"] in ("task.created", "task.done")
        }
        assert len(expected) == 8
        wait_until(
            lambda: sum(d["attempts"] >= 2 for d in deliveries(api, sub["id"])) == 8,
            30,
            "every delivery to fail at least twice",
        )
        assert all(d["status"] == "pending" for d in deliveries(api, sub["id"]))

        receiver.start()
        got = receiver.wait_for(
            lambda r: set(expected) <= {x.webhook_id for x in r}, 30, "all 8 events"
        )
        seen = by_id(got)
        assert set(seen) == set(expected)  # nothing else, and every event
        for event_id, bodies in seen.items():
            assert len(bodies) == 1  # a repeat (at-least-once) is the same message
            body = json.loads(next(iter(bodies)))
            assert body["id"] == event_id
            assert body["type"] == expected[event_id]["type"]
        for request in got:
            assert verify(sub["secret"], request.headers, request.body)
        wait_until(
            lambda: all(d["status"] == "delivered" for d in deliveries(api, sub["id"])),
            10,
            "deliveries to show delivered",
        )
        attempts = [d["attempt_log"] for d in deliveries(api, sub["id"])]
        assert all(log[-1]["status_code"] == 200 for log in attempts)
        assert all(log[0]["error"] and log[0]["status_code"] is None for log in attempts)
    finally:
        receiver.stop()
        api.delete(f"/api/webhooks/{sub['id']}")


def test_one_slow_subscriber_holds_back_neither_others_nor_tasks(
    server: ManagedProcess, api: httpx.Client, receiver: WebhookReceiver
) -> None:
    slow = WebhookReceiver(delay=30).start()  # far beyond the 1.5 s delivery timeout
    slow_sub = subscribe(api, slow.url, flows=["debug.sleep"])
    fast_sub = subscribe(api, receiver.url, flows=["debug.sleep"])
    try:
        started = time.monotonic()
        task_ids = [sleep_task(api) for _ in range(6)]
        wait_all_finished(server.url or "", 20)
        finished = time.monotonic() - started
        got = receiver.wait_for(lambda r: len(by_id(r)) >= 6, 15, "six task.done deliveries")
        delivered = time.monotonic() - started
        assert {done_event(api, t)["id"] for t in task_ids} == set(by_id(got))
        assert finished < 10, f"tasks took {finished:.1f}s next to a hanging subscriber"
        assert delivered < 12, f"the fast subscriber waited {delivered:.1f}s"

        def slow_attempts() -> list[dict[str, Any]]:
            return [a for d in deliveries(api, slow_sub["id"]) for a in d["attempt_log"]]

        wait_until(lambda: len(slow_attempts()) >= 4, 15, "the slow subscriber's timeouts")
        assert all("timed out after 1.5s" in (a["error"] or "") for a in slow_attempts())
        assert all(d["status"] == "pending" for d in deliveries(api, slow_sub["id"]))
    finally:
        api.delete(f"/api/webhooks/{slow_sub['id']}")
        api.delete(f"/api/webhooks/{fast_sub['id']}")
        slow.stop()


def test_410_gone_disables_the_subscription_and_shows_why(
    server: ManagedProcess,
    api: httpx.Client,
    receiver: WebhookReceiver,
    flowyard: Callable[..., Ran],
) -> None:
    receiver.responder = lambda _request: (410, 0.0)
    sub = subscribe(api, receiver.url, flows=["debug.sleep"])
    try:
        sleep_task(api)
        wait_until(
            lambda: not api.get(f"/api/webhooks/{sub['id']}").json()["enabled"],
            20,
            "the subscription to be disabled",
        )
        shown = api.get(f"/api/webhooks/{sub['id']}").json()
        assert "410 Gone" in shown["disabled_reason"]
        (delivery,) = deliveries(api, sub["id"])
        assert delivery["status"] == "failed"
        assert delivery["last_status_code"] == 410
        listed = flowyard(server, "webhooks", "list")
        assert listed.returncode == 0, listed.stderr
        assert f"{sub['id']} disabled: the receiver answered 410 Gone" in listed.stdout
        sleep_task(api)  # a disabled subscription gets no new deliveries
        wait_all_finished(server.url or "", 20)
        assert len(deliveries(api, sub["id"])) == 1
        assert len(receiver.received) == 1
    finally:
        api.delete(f"/api/webhooks/{sub['id']}")


def test_bad_requests_name_the_field(
    server: ManagedProcess, api: httpx.Client, flowyard: Callable[..., Ran]
) -> None:
    response = api.post("/api/webhooks", json={"url": "http://127.0.0.1:9/", "events": ["task.x"]})
    assert response.status_code == 422
    body = response.json()
    assert body["field"] == "events"
    assert "'task.x'" in body["detail"]
    assert "task.created" in body["detail"]
    assert "task.done" in body["detail"]

    response = api.post("/api/webhooks", json={"url": "http://127.0.0.1:9/", "secret": "hunter2"})
    assert (response.status_code, response.json()["field"]) == (422, "secret")
    response = api.post("/api/webhooks", json={"url": "ftp://127.0.0.1/"})
    assert (response.status_code, response.json()["field"]) == (422, "url")
    response = api.post("/api/webhooks", json={"events": ["task.done"]})
    assert (response.status_code, response.json()["field"]) == (422, "url")

    secret = generate_secret()
    sub = subscribe(api, "http://127.0.0.1:9/", secret=secret, events=["task.done", "task.done"])
    assert sub["secret"] == secret
    assert sub["events"] == ["task.done"]
    assert "secret" not in api.get(f"/api/webhooks/{sub['id']}").json()
    assert api.delete(f"/api/webhooks/{sub['id']}").status_code == 204

    unknown = uuid.uuid4()
    for method, path in [
        ("GET", f"/api/webhooks/{unknown}"),
        ("DELETE", f"/api/webhooks/{unknown}"),
        ("GET", f"/api/webhooks/{unknown}/deliveries"),
        ("POST", f"/api/webhooks/{unknown}/enable"),
    ]:
        response = api.request(method, path)
        assert response.status_code == 404, (method, path)
        assert response.json()["type"] == "WebhookNotFound"

    result = flowyard(server, "webhooks", "remove", "not-a-uuid")
    assert result.returncode == 1
    assert "error: 'not-a-uuid' is not a webhook id" in result.stderr
    result = flowyard(server, "webhooks", "remove", str(unknown))
    assert result.returncode == 1
    assert f"error: no webhook subscription has id {unknown}" in result.stderr


def test_ssrf_guard_refuses_private_targets_without_the_flag(
    flowyard_processes: ProcessGroup, tmp_path: Path, flowyard: Callable[..., Ran]
) -> None:
    strict = flowyard_processes.start_server(
        ["--data-dir", str(tmp_path / "data"), "--workers", "0"]
    )
    strict.wait_healthy(60)
    with httpx.Client(auth=ADMIN_AUTH, base_url=strict.url or "", timeout=10) as client:
        for url in [
            "http://127.0.0.1:8080/hook",
            "http://localhost/hook",
            "http://[::1]/hook",
            "http://10.0.0.7/hook",
            "http://192.168.1.20/hook",
            "http://169.254.169.254/latest/meta-data/",
            "http://[fd00:ec2::254]/",
            "http://[::ffff:127.0.0.1]/",
        ]:
            response = client.post("/api/webhooks", json={"url": url})
            assert response.status_code == 422, url
            body = response.json()
            assert body["field"] == "url"
            assert "loopback/private targets are refused" in body["detail"], url
            assert "FLOWYARD_WEBHOOKS_ALLOW_PRIVATE=true" in body["detail"]
        assert client.get("/api/webhooks").json()["items"] == []
    result = flowyard(strict, "webhooks", "add", "http://127.0.0.1:9/hook")
    assert result.returncode == 1
    assert result.stderr.startswith("error: url: loopback/private targets are refused")


@pytest.mark.chaos
def test_pending_deliveries_resume_after_the_server_is_killed(
    flowyard_processes: ProcessGroup, tmp_path: Path
) -> None:
    port = free_port()
    args = ["--data-dir", str(tmp_path / "data"), "--port", str(port)]
    env = SERVER_ENV | {"FLOWYARD_WEBHOOK_BACKOFF_BASE": "0.05"}  # retries stay close
    first = flowyard_processes.start_server(args, env, name="before-kill")
    first.wait_healthy(60)
    receiver = WebhookReceiver()  # down while the tasks finish
    with httpx.Client(auth=ADMIN_AUTH, base_url=first.url or "", timeout=10) as api:
        sub = subscribe(api, receiver.url)
        task_ids = [sleep_task(api) for _ in range(3)]
        wait_all_finished(first.url or "", 30)
        expected = {done_event(api, t)["id"] for t in task_ids}
        wait_until(
            lambda: sum(d["attempts"] >= 1 for d in deliveries(api, sub["id"])) == 3,
            20,
            "every delivery to be tried once",
        )
    first.kill()  # SIGKILL: no shutdown code runs

    receiver.start()
    try:
        second = flowyard_processes.start_server(args, env, name="after-restart")
        second.wait_healthy(60)
        got = receiver.wait_for(
            lambda r: expected <= {x.webhook_id for x in r}, 40, "the resumed deliveries"
        )
        assert set(by_id(got)) == expected
        assert all(verify(sub["secret"], r.headers, r.body) for r in got)
    finally:
        receiver.stop()


@pytest.mark.postgres
def test_events_of_database_workers_are_delivered_too(
    flowyard_processes: ProcessGroup, tmp_path: Path, pg_uri: str
) -> None:
    """Server mode: a ``flowyard worker --db`` process writes task.done; its own transaction
    creates the delivery row, which the server's dispatcher sends."""
    files = tmp_path / "files"
    server = flowyard_processes.start_server(
        ["--mode", "server", "--db", pg_uri, "--files", str(files), "--data-dir", str(tmp_path)],
        SERVER_ENV,
    )
    server.wait_healthy(60)
    receiver = WebhookReceiver().start()
    try:
        with httpx.Client(auth=ADMIN_AUTH, base_url=server.url or "", timeout=10) as api:
            sub = subscribe(api, receiver.url)
            worker = flowyard_processes.start_worker(
                ["--db", pg_uri, "--files", str(files), "--name", "dbw"], SERVER_ENV
            )
            worker.wait_for_log(r"services\.worker_process: worker ", 60)
            task_ids = [sleep_task(api) for _ in range(3)]
            wait_all_finished(server.url or "", 30)
            expected = {done_event(api, t)["id"] for t in task_ids}
            got = receiver.wait_for(
                lambda r: expected <= {x.webhook_id for x in r}, 20, "three task.done"
            )
            assert {r.webhook_id for r in got} == expected
            assert all(verify(sub["secret"], r.headers, r.body) for r in got)
            wait_until(
                lambda: {d["status"] for d in deliveries(api, sub["id"])} == {"delivered"},
                10,
                "the deliveries to be recorded",
            )
    finally:
        receiver.stop()


def test_events_tail_prints_live_events_as_json_lines(
    server: ManagedProcess, api: httpx.Client, flowyard_processes: ProcessGroup
) -> None:
    tail = flowyard_processes.start(
        "tail",
        [
            *flowyard_command(),
            "events",
            "tail",
            "--server",
            server.url or "",
            "--type",
            "task.done",
        ],
    )
    started: list[str] = []

    def printed() -> list[dict[str, Any]]:
        if len(started) < 40:  # the stream may not be open yet: keep finishing tasks
            started.append(sleep_task(api))
        return [json.loads(line) for line in tail.log_text().splitlines() if line.startswith("{")]

    wait_until(lambda: any(e["task_id"] in started for e in printed()), 20, "a tailed event")
    events = printed()
    assert {e["type"] for e in events} == {"task.done"}
    assert all(e["task_id"] in started for e in events)
    tail.terminate()
    wait_all_finished(server.url or "", 30)  # leave no task behind for other tests
