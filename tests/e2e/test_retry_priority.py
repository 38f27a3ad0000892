"""Retry and priority over HTTP, end to end against a real default-mode server.

The in-process worker must pick a retried task up again (it is woken like for
a new task), and every refusal is a 4xx with a message that says why.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.harness import ServeProcess, wait_for_state
from tests.support.processes import flowyard_command

pytestmark = pytest.mark.e2e

MISSING = "00000000-0000-4000-8000-000000000000"


def create(client: httpx.Client, params: dict[str, Any], **kw: Any) -> dict[str, Any]:
    response = client.post("/api/tasks", json={"flow": "debug.sleep", "params": params, **kw})
    assert response.status_code == 201, response.text
    return response.json()


def types(client: httpx.Client, task_id: str) -> list[tuple[str, int]]:
    items = client.get(f"/api/tasks/{task_id}/events").json()["items"]
    return [(e["type"], e["attempt"]) for e in items]


@pytest.fixture
def busy(client: httpx.Client) -> Iterator[list[dict[str, Any]]]:
    """Both worker slots held by long sleeps, so new tasks stay queued; cancelled after."""
    blockers = [create(client, {"seconds": 30, "steps": 300}) for _ in range(2)]
    for blocker in blockers:
        wait_for_state(client, blocker["id"], {"running"})
    yield blockers
    for blocker in blockers:
        client.post(f"/api/tasks/{blocker['id']}/cancel")
        wait_for_state(client, blocker["id"], {"cancelled"})


def test_retry_runs_a_failed_task_again_keeping_its_history(client: httpx.Client) -> None:
    task = create(client, {"seconds": 0, "fail": "out of coffee"})
    failed = wait_for_state(client, task["id"], {"failed"})
    assert failed["attempt"] == 1

    response = client.post(f"/api/tasks/{task['id']}/retry")
    assert response.status_code == 200, response.text
    queued = response.json()
    assert queued["id"] == task["id"]
    assert queued["error"] is None
    assert queued["max_attempts"] == failed["max_attempts"] + 1
    again = wait_for_state(client, task["id"], {"failed"}, timeout=20)
    assert again["attempt"] == 2
    assert again["error"] == "out of coffee"
    steps = [t for t in types(client, task["id"]) if t[0] != "task.progress"]
    assert steps == [
        ("task.created", 0),
        ("task.claimed", 1),
        ("task.done", 1),
        ("task.retried", 1),
        ("task.claimed", 2),
        ("task.done", 2),
    ]


def test_retry_of_a_cancelled_task_succeeds_on_the_next_attempt(
    client: httpx.Client, busy: list[dict[str, Any]]
) -> None:
    task = create(client, {"seconds": 0})
    cancelled = client.post(f"/api/tasks/{task['id']}/cancel").json()
    assert cancelled["state"] == "cancelled"
    assert client.post(f"/api/tasks/{task['id']}/retry").json()["state"] == "queued"
    for blocker in busy:
        client.post(f"/api/tasks/{blocker['id']}/cancel")
    done = wait_for_state(client, task["id"], {"succeeded", "failed"}, timeout=20)
    assert (done["state"], done["attempt"], done["cancelled_at"]) == ("succeeded", 1, None)


def test_retry_refuses_queued_running_and_succeeded(
    client: httpx.Client, busy: list[dict[str, Any]]
) -> None:
    running = busy[0]
    queued = create(client, {"seconds": 0})
    for task, state in ((running, "running"), (queued, "queued")):
        response = client.post(f"/api/tasks/{task['id']}/retry")
        assert response.status_code == 409
        assert response.json()["detail"] == (
            f"task {task['id']} is {state}: only a failed or cancelled task can be retried"
        )
    client.post(f"/api/tasks/{queued['id']}/cancel")
    ok = create(client, {"seconds": 0})
    client.post(f"/api/tasks/{busy[1]['id']}/cancel")
    wait_for_state(client, ok["id"], {"succeeded"}, timeout=20)
    refused = client.post(f"/api/tasks/{ok['id']}/retry")
    assert refused.status_code == 409
    assert "is succeeded: only a failed or cancelled task" in refused.json()["detail"]
    assert client.post(f"/api/tasks/{MISSING}/retry").status_code == 404
    assert client.post("/api/tasks/nope/retry").status_code == 422


def test_priority_of_a_queued_task(client: httpx.Client, busy: list[dict[str, Any]]) -> None:
    low = create(client, {"seconds": 0})
    high = create(client, {"seconds": 0})
    response = client.patch(f"/api/tasks/{low['id']}", json={"priority": 50})
    assert response.status_code == 200, response.text
    assert response.json()["priority"] == 50
    assert ("task.reprioritized", 0) in types(client, low["id"])
    same = client.patch(f"/api/tasks/{low['id']}", json={"priority": 50})
    assert same.status_code == 200
    assert types(client, low["id"]).count(("task.reprioritized", 0)) == 1

    client.post(f"/api/tasks/{busy[0]['id']}/cancel")  # one slot frees: the higher goes first
    first = wait_for_state(client, low["id"], {"succeeded"}, timeout=20)
    second = wait_for_state(client, high["id"], {"succeeded"}, timeout=20)
    assert str(first["claimed_at"]) < str(second["claimed_at"])


def test_priority_refusals(client: httpx.Client, busy: list[dict[str, Any]]) -> None:
    running = busy[0]
    response = client.patch(f"/api/tasks/{running['id']}", json={"priority": 1})
    assert response.status_code == 409
    assert response.json()["detail"] == (
        f"task {running['id']} is running: only a queued task's priority can change"
    )
    queued = create(client, {"seconds": 0})
    for body, field in [
        ({"priority": 1001}, "priority"),
        ({"priority": -1001}, "priority"),
        ({"priority": True}, "priority"),
        ({"priority": "3"}, "priority"),
        ({}, "priority"),
        ({"priority": 1, "flow": "image.blur"}, "flow"),
    ]:
        bad = client.patch(f"/api/tasks/{queued['id']}", json=body)
        assert bad.status_code == 422, (body, bad.text)
        assert bad.json()["field"] == field, body
    assert client.get(f"/api/tasks/{queued['id']}").json()["priority"] == 0
    client.post(f"/api/tasks/{queued['id']}/cancel")
    finished = client.patch(f"/api/tasks/{queued['id']}", json={"priority": 1})
    assert finished.status_code == 409
    assert "is cancelled" in finished.json()["detail"]
    assert client.patch(f"/api/tasks/{MISSING}", json={"priority": 1}).status_code == 404


def test_input_files_can_be_downloaded(client: httpx.Client, photo: Path) -> None:
    with photo.open("rb") as fh:
        response = client.post(
            "/api/tasks",
            data={"flow": "image.blur", "params": "{}"},
            files={"inputs": ("photo.png", fh, "image/png")},
        )
    task = response.json()
    [ref] = task["inputs"]
    assert ref["url"] == f"/api/tasks/{task['id']}/inputs/photo.png"
    got = client.get(ref["url"])
    assert got.status_code == 200
    assert got.content == photo.read_bytes()
    assert got.headers["content-type"] == "image/png"
    assert got.headers["x-content-type-options"] == "nosniff"
    assert client.get(f"/api/tasks/{task['id']}/inputs/other.png").status_code == 404
    wait_for_state(client, task["id"], {"succeeded"})


def test_cli_retry_and_priority(client: httpx.Client, server: ServeProcess) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*flowyard_command(), "tasks", *args, "--server", server.url],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    failed = create(client, {"seconds": 0, "fail": "again"})
    wait_for_state(client, failed["id"], {"failed"})
    retried = cli("retry", failed["id"])
    assert retried.returncode == 0, retried.stderr
    assert failed["id"] in retried.stdout
    wait_for_state(client, failed["id"], {"failed"}, timeout=20)
    assert client.get(f"/api/tasks/{failed['id']}").json()["attempt"] == 2

    refused = cli("priority", failed["id"], "5")
    assert refused.returncode != 0
    assert "only a queued task's priority can change" in refused.stdout + refused.stderr
    out_of_range = cli("priority", failed["id"], "5000")
    assert out_of_range.returncode != 0
