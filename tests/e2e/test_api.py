"""The HTTP API end to end, against a real ``flowyard serve`` on SQLite."""

from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.e2e.conftest import UPLOAD_LIMIT
from tests.e2e.harness import ServeProcess, wait_for_state

pytestmark = pytest.mark.e2e


def create(client: httpx.Client, flow: str, params: dict[str, Any], **kw: Any) -> dict[str, Any]:
    response = client.post("/api/tasks", json={"flow": flow, "params": params, **kw})
    assert response.status_code == 201, response.text
    return response.json()


def upload(
    client: httpx.Client, flow: str, params: dict[str, Any], path: Path, name: str | None = None
) -> httpx.Response:
    with path.open("rb") as fh:
        return client.post(
            "/api/tasks",
            data={"flow": flow, "params": json.dumps(params)},
            files={"inputs": (name or path.name, fh, "image/png")},
        )


def task_dirs(server: ServeProcess) -> set[str]:
    root = server.data_dir / "files"
    return {p.name for p in root.iterdir()} if root.exists() else set()


def task_count(client: httpx.Client) -> int:
    return len(client.get("/api/tasks", params={"limit": 500}).json()["items"])


@pytest.mark.parametrize(
    ("flow", "params", "size"),
    [
        ("image.blur", {"radius": 3}, (64, 48)),
        ("image.edges", {}, (64, 48)),
        ("image.resize", {"scale": 0.5}, (32, 24)),
        ("image.resize", {"width": 16}, (16, 12)),
    ],
)
def test_image_flows_end_to_end(
    client: httpx.Client,
    photo: Path,
    flow: str,
    params: dict[str, Any],
    size: tuple[int, int],
) -> None:
    response = upload(client, flow, params, photo)
    assert response.status_code == 201, response.text
    task = response.json()
    assert task["state"] == "queued"
    assert task["inputs"][0]["name"] == "photo.png"
    done = wait_for_state(client, task["id"], {"succeeded", "failed"})
    assert done["state"] == "succeeded", done
    assert done["attempt"] == 1
    assert done["progress"] == 1.0
    for stamp in ("created_at", "claimed_at", "finished_at"):
        assert done[stamp] is not None
    [output] = done["outputs"]  # type: ignore[misc]
    assert output["name"] == "output.png"
    image = client.get(output["url"])
    assert image.status_code == 200
    assert image.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(image.content)).size == size
    assert int(output["size"]) == len(image.content)


def test_events_of_a_task_in_order(client: httpx.Client) -> None:
    task = create(client, "debug.sleep", {"seconds": 0.3, "steps": 3})
    wait_for_state(client, task["id"], {"succeeded"})
    events = client.get(f"/api/tasks/{task['id']}/events").json()["items"]
    types = [e["type"] for e in events]
    assert types[0] == "task.created"
    assert types[1] == "task.claimed"
    assert types[-1] == "task.done"
    assert set(types[2:-1]) <= {"task.progress"}
    assert all(e["task_id"] == task["id"] for e in events)
    assert [e["attempt"] for e in events[1:]] == [1] * (len(events) - 1)


def test_list_filters_and_pagination(client: httpx.Client) -> None:
    ids = [create(client, "debug.sleep", {"seconds": 0})["id"] for _ in range(3)]
    for task_id in ids:
        wait_for_state(client, task_id, {"succeeded"})
    page = client.get("/api/tasks", params={"flow": "debug.sleep", "limit": 2}).json()
    assert len(page["items"]) == 2
    assert page["next_offset"] == 2
    newest_first = [t["created_at"] for t in page["items"]]
    assert newest_first == sorted(newest_first, reverse=True)
    assert page["items"][0]["id"] == ids[-1]
    succeeded = client.get("/api/tasks", params={"state": "succeeded", "limit": 500}).json()
    assert {t["state"] for t in succeeded["items"]} == {"succeeded"}
    bad = client.get("/api/tasks", params={"state": "sleeping"})
    assert bad.status_code == 422
    assert bad.json()["field"] == "state"


def test_delete_removes_task_and_files(
    client: httpx.Client, server: ServeProcess, photo: Path
) -> None:
    task = upload(client, "image.edges", {}, photo).json()
    wait_for_state(client, task["id"], {"succeeded"})
    assert task["id"] in task_dirs(server)
    assert client.delete(f"/api/tasks/{task['id']}").status_code == 204
    assert task["id"] not in task_dirs(server)
    assert client.get(f"/api/tasks/{task['id']}").status_code == 404


def test_cancel_running_task(client: httpx.Client) -> None:
    task = create(client, "debug.sleep", {"seconds": 30, "steps": 300})
    wait_for_state(client, task["id"], {"running"})
    started = time.monotonic()
    response = client.post(f"/api/tasks/{task['id']}/cancel")
    assert response.status_code == 200
    assert response.json()["cancel_requested"] is True
    done = wait_for_state(client, task["id"], {"cancelled", "succeeded", "failed"}, timeout=10)
    assert done["state"] == "cancelled"
    assert done["cancelled_at"] is not None
    assert time.monotonic() - started < 5


def test_cancel_queued_task_is_immediate(client: httpx.Client) -> None:
    blockers = [create(client, "debug.sleep", {"seconds": 5, "steps": 50}) for _ in range(2)]
    for blocker in blockers:
        wait_for_state(client, blocker["id"], {"running"})
    queued = create(client, "debug.sleep", {"seconds": 0})
    response = client.post(f"/api/tasks/{queued['id']}/cancel")
    assert response.status_code == 200
    assert response.json()["state"] == "cancelled"
    for blocker in blockers:
        client.post(f"/api/tasks/{blocker['id']}/cancel")
        wait_for_state(client, blocker["id"], {"cancelled"})


def test_failed_flow_reports_its_error(client: httpx.Client) -> None:
    task = create(client, "debug.sleep", {"seconds": 0, "fail": "the model ran out of coffee"})
    done = wait_for_state(client, task["id"], {"failed", "succeeded"})
    assert done["state"] == "failed"
    assert done["error"] == "the model ran out of coffee"


def test_not_an_image_fails_the_task_and_server_stays_up(
    client: httpx.Client, tmp_path: Path
) -> None:
    fake = tmp_path / "notes.png"
    fake.write_text("this is not an image")
    response = upload(client, "image.blur", {"radius": 2}, fake)
    assert response.status_code == 201
    done = wait_for_state(client, response.json()["id"], {"failed", "succeeded"})
    assert done["state"] == "failed"
    assert "not a PNG or JPEG image" in str(done["error"])
    assert client.get("/api/health").json()["status"] == "ok"


def test_flows_workers_health(client: httpx.Client) -> None:
    flows = {f["name"]: f for f in client.get("/api/flows").json()["items"]}
    assert {"image.blur", "image.edges", "image.resize", "debug.sleep"} <= set(flows)
    assert flows["image.blur"]["params_schema"]["properties"]["radius"]["type"] == "number"
    assert flows["image.blur"]["inputs"][0]["name"] == "image"
    workers = client.get("/api/workers").json()["items"]
    assert any(w["transport"] == "inprocess" and w["online"] for w in workers)
    assert client.get("/api/health").json()["mode"] == "default"
    assert "flowyard" in client.get("/").text


def test_sse_stream_delivers_live_events(client: httpx.Client, server: ServeProcess) -> None:
    received: list[dict[str, Any]] = []
    subscribed = threading.Event()

    def listen() -> None:
        with (
            httpx.Client(base_url=server.url, timeout=httpx.Timeout(10, read=20)) as c,
            c.stream("GET", "/api/events/stream") as stream,
        ):
            event_type = None
            for line in stream.iter_lines():
                if line.startswith(": subscribed"):
                    subscribed.set()
                elif line.startswith("event: "):
                    event_type = line.removeprefix("event: ")
                elif line.startswith("data: "):
                    data = json.loads(line.removeprefix("data: "))
                    assert data["type"] == event_type
                    received.append(data)
                    if data["type"] == "task.done" and data["task_id"] == task_id.get("id"):
                        return

    task_id: dict[str, str] = {}
    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    assert subscribed.wait(10)
    task_id["id"] = create(client, "debug.sleep", {"seconds": 0.5, "steps": 5})["id"]
    thread.join(20)
    mine = [e["type"] for e in received if e["task_id"] == task_id["id"]]
    assert mine[0] == "task.created"
    assert mine[1] == "task.claimed"
    assert "task.progress" in mine
    assert mine[-1] == "task.done"


BAD_JSON_REQUESTS: list[tuple[str, dict[str, Any], str, str]] = [
    ("unknown flow", {"flow": "image.nope"}, "flow", "unknown flow 'image.nope'"),
    ("wrong type", {"flow": "debug.sleep", "params": {"seconds": "soon"}}, "params.seconds", ""),
    ("out of range", {"flow": "debug.sleep", "params": {"steps": 0}}, "params.steps", ""),
    ("unknown param", {"flow": "debug.sleep", "params": {"colour": 1}}, "params.colour", ""),
    ("missing input", {"flow": "image.blur", "params": {}}, "inputs", "needs 1 input"),
    ("params not object", {"flow": "debug.sleep", "params": [1]}, "params", ""),
    ("no flow", {"params": {}}, "flow", "required"),
    ("priority", {"flow": "debug.sleep", "priority": 5000}, "priority", ""),
]


@pytest.mark.parametrize(
    ("case", "body", "field", "words"), BAD_JSON_REQUESTS, ids=[c[0] for c in BAD_JSON_REQUESTS]
)
def test_bad_json_requests(
    client: httpx.Client,
    server: ServeProcess,
    case: str,
    body: dict[str, Any],
    field: str,
    words: str,
) -> None:
    before = (task_count(client), task_dirs(server))
    response = client.post("/api/tasks", json=body)
    assert response.status_code == 422, response.text
    error = response.json()
    assert error["field"] == field
    assert error["detail"].startswith(field)
    assert words in error["detail"]
    assert (task_count(client), task_dirs(server)) == before


def test_bad_multipart_requests(client: httpx.Client, server: ServeProcess, photo: Path) -> None:
    before = (task_count(client), task_dirs(server))
    cases: list[tuple[httpx.Response, int, str, str]] = [
        (upload(client, "image.blur", {}, photo, name="../../etc/passwd"), 422, "inputs", "path"),
        (upload(client, "image.blur", {}, photo, name="/etc/passwd"), 422, "inputs", "absolute"),
        (
            client.post("/api/tasks", data={"flow": "debug.sleep", "params": "{not json"}),
            422,
            "params",
            "not valid JSON",
        ),
        (
            client.post("/api/tasks", data={"flow": "debug.sleep", "priority": "high"}),
            422,
            "priority",
            "integer",
        ),
        (
            client.post("/api/tasks", data={"flow": "image.blur", "params": '{"radius": -1}'}),
            422,
            "params.radius",
            "greater than 0",
        ),
        (
            client.post("/api/tasks", content=b"flow=x", headers={"content-type": "text/plain"}),
            415,
            "content-type",
            "multipart",
        ),
    ]
    for response, status, field, words in cases:
        assert response.status_code == status, response.text
        assert response.json()["field"] == field
        assert words in response.json()["detail"]
    assert (task_count(client), task_dirs(server)) == before


def test_upload_over_the_limit_is_refused(
    client: httpx.Client, server: ServeProcess, tmp_path: Path
) -> None:
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG" + b"0" * (UPLOAD_LIMIT + 10))
    before = (task_count(client), task_dirs(server))
    response = upload(client, "image.blur", {}, big)
    assert response.status_code == 413
    assert response.json()["field"] == "inputs"
    assert "larger than the limit" in response.json()["detail"]
    assert (task_count(client), task_dirs(server)) == before


def test_unknown_ids_and_finished_tasks(client: httpx.Client) -> None:
    missing = "00000000-0000-4000-8000-000000000000"
    for method, path in [
        ("GET", f"/api/tasks/{missing}"),
        ("POST", f"/api/tasks/{missing}/cancel"),
        ("DELETE", f"/api/tasks/{missing}"),
        ("GET", f"/api/tasks/{missing}/events"),
        ("GET", f"/api/tasks/{missing}/outputs/output.png"),
    ]:
        response = client.request(method, path)
        assert response.status_code == 404, (method, path)
        assert missing in response.json()["detail"]
    bad = client.get("/api/tasks/not-a-uuid")
    assert bad.status_code == 422
    assert bad.json()["field"] == "task_id"
    task = create(client, "debug.sleep", {"seconds": 0})
    wait_for_state(client, task["id"], {"succeeded"})
    response = client.post(f"/api/tasks/{task['id']}/cancel")
    assert response.status_code == 409
    assert "already succeeded" in response.json()["detail"]
    assert client.get(f"/api/tasks/{task['id']}").json()["state"] == "succeeded"
    nothing = client.get(f"/api/tasks/{task['id']}/outputs/output.png")
    assert nothing.status_code == 404
