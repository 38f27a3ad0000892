"""Task operations (issue 13) on every transport: in-process, database workers, NATS workers.

One stack per transport for the whole module (starting servers dominates the
cost), each test on its own tasks: a default-mode server on SQLite with its
in-process worker; a server-mode server on PostgreSQL with a ``flowyard worker
--db``; a server-mode server on PostgreSQL with NATS and a ``flowyard worker
--nats``. Leases are short and flows take no time, so every test is bounded.
``FLOWYARD_NATS_DISPATCH=fifo`` runs the NATS stack the old way: everything but the
priority test still passes (that one then fails, as it should).
"""

from __future__ import annotations

import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.support.auth import ADMIN_AUTH
from tests.support.nats import NatsServer
from tests.support.nats_processes import start_nats_server, start_nats_worker, wait_worker_ready
from tests.support.postgres import PostgresCluster
from tests.support.processes import ProcessGroup, flowyard_command

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]


@dataclass
class Stack:
    transport: str
    client: httpx.Client
    group: ProcessGroup
    db: str

    def create(self, params: dict[str, Any] | None = None, **body: Any) -> dict[str, Any]:
        response = self.client.post(
            "/api/tasks", json={"flow": "debug.sleep", "params": params or {"seconds": 0}, **body}
        )
        assert response.status_code == 201, response.text
        return dict(response.json())

    def get(self, task_id: str) -> dict[str, Any]:
        return dict(self.client.get(f"/api/tasks/{task_id}").json())

    def events(self, task_id: str) -> list[dict[str, Any]]:
        items = self.client.get(f"/api/tasks/{task_id}/events").json()["items"]
        return [e for e in items if e["type"] != "task.progress"]

    def wait(self, task_id: str, states: set[str], timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        task = self.get(task_id)
        while task["state"] not in states:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.transport}: task {task_id} still {task['state']}")
            time.sleep(0.1)
            task = self.get(task_id)
        return task

    def count(self) -> int:
        return len(self.client.get("/api/tasks", params={"limit": 500}).json()["items"])


ONE_TRANSPORT = pytest.mark.parametrize("stack", ["default"], indirect=True)
"""For checks whose code is the same on every transport (validation, the CLI, SQL)."""


@pytest.fixture(
    scope="module",
    params=[
        "default",
        pytest.param("database", marks=pytest.mark.postgres),
        pytest.param("nats", marks=[pytest.mark.postgres, pytest.mark.nats]),
    ],
)
def stack(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    transport = str(request.param)
    root = tmp_path_factory.mktemp(f"ops-{transport}")
    group = ProcessGroup(root / "logs")
    nats: NatsServer | None = None
    db = f"sqlite:///{root / 'data' / 'flowyard.db'}"
    try:
        if transport == "default":
            server = group.start_server(
                ["--data-dir", str(root / "data"), "--workers", "2", "--lease-seconds", "2"],
                env={"FLOWYARD_POLL_INTERVAL": "0.5"},
            )
        else:
            cluster: PostgresCluster = request.getfixturevalue("postgres_cluster")
            name = f"t_{uuid.uuid4().hex[:16]}"
            cluster.create_database(name)
            db = cluster.uri(name)
            files = root / "files"
            if transport == "database":
                server = group.start_server(
                    ["--mode", "server", "--db", db, "--files", str(files)],
                    env={"FLOWYARD_POLL_INTERVAL": "0.5", "FLOWYARD_LEASE_SECONDS": "2"},
                )
            else:
                nats = NatsServer(root / "nats" / "store")
                nats.start()
                server = start_nats_server(group, db_uri=db, files=files, nats_url=nats.url)
        server.wait_healthy(60)
        if transport == "database":
            group.start_worker(
                ["--db", db, "--files", str(files), "--name", "ops-db", "--concurrency", "2"],
                {"FLOWYARD_POLL_INTERVAL": "0.5", "FLOWYARD_LEASE_SECONDS": "2"},
                name="ops-db",
            )
        elif transport == "nats":
            assert nats is not None
            worker, _, _ = start_nats_worker(
                group, root, nats_url=nats.url, name="ops-nats", extra=["--concurrency", "2"]
            )
            wait_worker_ready(worker)
        assert server.url is not None
        with httpx.Client(auth=ADMIN_AUTH, base_url=server.url, timeout=30) as client:
            yield Stack(transport, client, group, db)
    finally:
        group.stop_all()
        if nats is not None:
            nats.stop(timeout=10)
            nats.kill()


def kinds(events: list[dict[str, Any]]) -> list[tuple[str, int]]:
    return [(e["type"], e["attempt"]) for e in events]


def at(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


# ------------------------------------------------------------------ 1. retries with backoff


def test_a_retryable_failure_runs_again_after_its_backoff(stack: Stack) -> None:
    task = stack.create({"seconds": 0, "transient": "flaky"}, max_attempts=3)
    assert task["max_attempts"] == 3
    done = stack.wait(task["id"], {"failed", "succeeded"})
    assert (done["state"], done["attempt"], done["error"]) == ("failed", 3, "flaky")
    events = stack.events(task["id"])
    assert kinds(events) == [
        ("task.created", 0),
        ("task.claimed", 1),
        ("task.requeued", 1),
        ("task.claimed", 2),
        ("task.requeued", 2),
        ("task.claimed", 3),
        ("task.done", 3),
    ]
    for requeued, claim in ((events[2], events[3]), (events[4], events[5])):
        assert requeued["error"] == "flaky"
        assert "retrying in" in requeued["reason"]
        assert at(claim["at"]) >= at(requeued["not_before"])


def test_not_retried_a_plain_failure_or_a_task_with_one_attempt(stack: Stack) -> None:
    plain = stack.create({"seconds": 0, "fail": "fatal"})
    once = stack.create({"seconds": 0, "transient": "flaky"}, max_attempts=1)
    for task in (plain, once):
        done = stack.wait(task["id"], {"failed", "succeeded"})
        assert (done["state"], done["attempt"]) == ("failed", 1)
        assert "task.requeued" not in [e["type"] for e in stack.events(task["id"])]


# --------------------------------------------------------------------------- 2. scheduling


def test_a_delayed_task_waits_until_it_is_due(stack: Stack) -> None:
    task = stack.create(delay_seconds=2)
    not_before = at(task["not_before"])
    assert task["state"] == "queued"
    time.sleep(1.0)
    assert stack.get(task["id"])["state"] == "queued"
    done = stack.wait(task["id"], {"succeeded"}, timeout=30)
    assert at(done["claimed_at"]) >= not_before
    run_at = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
    later = stack.create(run_at=run_at)
    assert at(later["not_before"]) == at(run_at)
    assert at(stack.wait(later["id"], {"succeeded"}, timeout=30)["claimed_at"]) >= at(run_at)


@ONE_TRANSPORT  # validation is the same code on every transport
def test_scheduling_refusals_store_nothing(stack: Stack) -> None:
    before = stack.count()
    past = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    for body, field in [
        ({"run_at": past}, "run_at"),
        ({"run_at": "tomorrow"}, "run_at"),
        ({"run_at": 1767225600}, "run_at"),
        ({"delay_seconds": -1}, "delay_seconds"),
        ({"delay_seconds": "5"}, "delay_seconds"),
        ({"run_at": past, "delay_seconds": 1}, "run_at"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_attempts": 101}, "max_attempts"),
    ]:
        response = stack.client.post(
            "/api/tasks", json={"flow": "debug.sleep", "params": {"seconds": 0}, **body}
        )
        assert response.status_code == 422, (body, response.text)
        assert response.json()["field"] == field, (body, response.json())
        assert response.json()["detail"].startswith(field), response.json()
    assert stack.count() == before
    just_past = (datetime.now(UTC) - timedelta(seconds=5)).isoformat()
    now = stack.create(run_at=just_past)  # within the tolerance: runs at once
    assert now["not_before"] is None


def cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*flowyard_command(), *args, "--server", str(stack.client.base_url)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@ONE_TRANSPORT  # the CLI speaks HTTP: one transport is enough
def test_cli_run_in_and_at(stack: Stack) -> None:
    later = cli(
        stack, "run", "debug.sleep", "-p", "seconds=0", "--in", "30s", "--max-attempts", "2"
    )
    assert later.returncode == 0, later.stderr
    task = stack.get(later.stdout.split()[0])
    assert (task["state"], task["max_attempts"]) == ("queued", 2)
    assert 25 < (at(task["not_before"]) - datetime.now(UTC)).total_seconds() <= 30
    when = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    scheduled = cli(stack, "run", "debug.sleep", "--at", when)
    assert scheduled.returncode == 0, scheduled.stderr
    assert at(stack.get(scheduled.stdout.split()[0])["not_before"]) == at(when)
    for bad, field in ((["--in", "soon"], "--in"), (["--at", "noon"], "run_at")):
        refused = cli(stack, "run", "debug.sleep", *bad)
        assert refused.returncode != 0
        assert field in refused.stderr + refused.stdout


# ---------------------------------------------------------------------- 3. create and wait


def test_create_and_wait_answers_200_when_done_and_202_when_not(stack: Stack) -> None:
    body = {"flow": "debug.sleep", "params": {"seconds": 0.2, "steps": 2}}
    done = stack.client.post("/api/tasks", params={"wait": 20}, json=body)
    assert done.status_code == 200, done.text
    assert done.json()["state"] == "succeeded"
    failed = stack.client.post(
        "/api/tasks", params={"wait": 20}, json={**body, "params": {"seconds": 0, "fail": "x"}}
    )
    assert (failed.status_code, failed.json()["state"]) == (200, "failed")
    slow = stack.client.post(
        "/api/tasks", params={"wait": 0.5}, json={**body, "params": {"seconds": 3}}
    )
    assert slow.status_code == 202, slow.text
    assert slow.json()["state"] in ("queued", "running")
    assert stack.wait(slow.json()["id"], {"succeeded"})["state"] == "succeeded"


def test_a_client_that_leaves_cancels_its_task_with_the_stage(stack: Stack) -> None:
    body = {"flow": "debug.sleep", "params": {"seconds": 30, "steps": 300}}
    with pytest.raises(httpx.ReadTimeout):
        stack.client.post(
            "/api/tasks",
            params={"wait": 60, "cancel_on_disconnect": "true"},
            json=body,
            timeout=httpx.Timeout(30, read=2.5),
        )
    newest = stack.client.get("/api/tasks", params={"limit": 1}).json()["items"][0]
    task = stack.wait(newest["id"], {"cancelled", "failed", "succeeded"}, timeout=30)
    assert task["state"] == "cancelled"
    assert task["interrupted_at"] is not None
    assert task["interrupted_stage"].startswith(("running", "queued")), task
    [request] = [e for e in stack.events(task["id"]) if e["type"] == "task.cancel_requested"]
    assert request["reason"] == "the client disconnected"
    assert request["stage"] == task["interrupted_stage"]


@ONE_TRANSPORT  # validation is the same code on every transport
def test_wait_refusals(stack: Stack) -> None:
    before = stack.count()
    body = {"flow": "debug.sleep", "params": {"seconds": 0}}
    for params, field in [
        ({"wait": 0}, "wait"),
        ({"wait": -1}, "wait"),
        ({"wait": "soon"}, "wait"),
        ({"wait": 100000}, "wait"),
        ({"cancel_on_disconnect": "true"}, "cancel_on_disconnect"),
    ]:
        response = stack.client.post("/api/tasks", params=params, json=body)
        assert response.status_code == 422, (params, response.text)
        assert response.json()["field"] == field, (params, response.json())
    assert stack.count() == before


@ONE_TRANSPORT  # the CLI speaks HTTP: one transport is enough
def test_cli_run_wait_cancel_on_exit(stack: Stack) -> None:
    quick = cli(stack, "run", "debug.sleep", "-p", "seconds=0", "--wait", "--cancel-on-exit")
    assert quick.returncode == 0, quick.stderr
    argv = [*flowyard_command(), "run", "debug.sleep", "-p", "seconds=30"]
    argv += ["--wait", "--cancel-on-exit", "--server", str(stack.client.base_url)]
    # Ctrl-C as a terminal sends it: a job started in the background (a CI runner's
    # `cmd &`) hands its children SIGINT ignored, which Python then keeps ignoring
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 30
        newest: dict[str, Any] = {}
        while time.monotonic() < deadline:
            items = stack.client.get("/api/tasks", params={"limit": 1}).json()["items"]
            newest = items[0] if items else {}
            if newest.get("state") == "running" and newest["params"]["seconds"] == 30:
                break
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    finally:
        proc.kill()
        proc.communicate()
    task = stack.wait(newest["id"], {"cancelled", "succeeded", "failed"}, timeout=30)
    assert task["state"] == "cancelled"
    assert task["interrupted_stage"].startswith("running")


# ------------------------------------------------------------------------ 4. batch create


def test_a_batch_is_created_in_one_go_and_runs(stack: Stack) -> None:
    specs = [
        {"flow": "debug.sleep", "params": {"seconds": 0}, "priority": 3},
        {"flow": "debug.sleep", "params": {"seconds": 0, "fail": "no"}},
        {"flow": "debug.sleep", "params": {"seconds": 0}, "delay_seconds": 1},
    ]
    response = stack.client.post("/api/tasks/batch", json={"tasks": specs})
    assert response.status_code == 201, response.text
    body = response.json()
    assert len(body["ids"]) == 3
    assert [t["id"] for t in body["items"]] == body["ids"]
    assert body["items"][0]["priority"] == 3
    assert body["items"][2]["not_before"] is not None
    states = [stack.wait(i, {"succeeded", "failed"})["state"] for i in body["ids"]]
    assert states == ["succeeded", "failed", "succeeded"]
    copies = stack.client.post(
        "/api/tasks/batch",
        json={"task": {"flow": "debug.sleep", "params": {"seconds": 0}}, "count": 4},
    )
    assert copies.status_code == 201, copies.text
    ids = copies.json()["ids"]
    assert len(set(ids)) == 4
    for task_id in ids:
        assert stack.wait(task_id, {"succeeded", "failed"})["state"] == "succeeded"


@ONE_TRANSPORT  # validation is the same code on every transport
def test_a_bad_batch_stores_nothing(stack: Stack) -> None:
    before = stack.count()
    good = {"flow": "debug.sleep", "params": {"seconds": 0}}
    for body, field in [
        ({"tasks": [good, {**good, "params": {"seconds": -1}}]}, "tasks[1].params.seconds"),
        ({"tasks": [good, {**good, "flow": "no.such"}]}, "tasks[1].flow"),
        ({"tasks": [good, good, {"flow": "image.blur"}]}, "tasks[2].inputs"),
        ({"tasks": [{**good, "priority": "3"}]}, "tasks[0].priority"),
        ({"tasks": [good] * 101}, "tasks"),
        ({"task": good, "count": 101}, "count"),
        ({"task": good, "count": 0}, "count"),
        ({"task": good}, "count"),
        ({"tasks": []}, "tasks"),
        ({}, "tasks"),
        ({"tasks": [good], "task": good, "count": 2}, "tasks"),
    ]:
        response = stack.client.post("/api/tasks/batch", json=body)
        assert response.status_code == 422, (field, response.text)
        assert response.json()["field"] == field, (field, response.json())
        assert response.json()["detail"].startswith(field), response.json()
    assert stack.count() == before
    cli_made = cli(stack, "run", "debug.sleep", "-p", "seconds=0", "--count", "3")
    assert cli_made.returncode == 0, cli_made.stderr
    assert len(cli_made.stdout.split("\n")) >= 3
    assert stack.count() == before + 3


# ------------------------------------------------------------------------- 5. idempotency


def test_an_idempotency_key_returns_the_first_task(stack: Stack) -> None:
    key = {"Idempotency-Key": f"order-{uuid.uuid4()}"}
    body = {"flow": "debug.sleep", "params": {"seconds": 0}}
    before = stack.count()
    first = stack.client.post("/api/tasks", json=body, headers=key)
    assert first.status_code == 201, first.text
    again = stack.client.post("/api/tasks", json=body, headers=key)
    assert again.status_code == 200, again.text
    assert again.json()["id"] == first.json()["id"]
    field = stack.client.post(
        "/api/tasks", json={**body, "idempotency_key": key["Idempotency-Key"]}
    )
    assert (field.status_code, field.json()["id"]) == (200, first.json()["id"])
    other = stack.client.post("/api/tasks", json={**body, "params": {"seconds": 1}}, headers=key)
    assert other.status_code == 409, other.text
    assert other.json()["detail"].startswith("Idempotency-Key:")
    assert stack.count() == before + 1
    for bad in ("has space", "x" * 201):
        refused = stack.client.post("/api/tasks", json=body, headers={"Idempotency-Key": bad})
        assert refused.status_code == 422, refused.text
        assert refused.json()["field"] == "Idempotency-Key"
    assert stack.count() == before + 1
    assert stack.wait(first.json()["id"], {"succeeded"})["state"] == "succeeded"


# ---------------------------------------------------------------------------- 6. timeouts


def test_a_task_past_its_timeout_is_stopped_and_fails(stack: Stack) -> None:
    task = stack.create({"seconds": 20, "steps": 200}, timeout_seconds=0.5, max_attempts=1)
    assert task["timeout_seconds"] == 0.5
    done = stack.wait(task["id"], {"failed", "succeeded", "cancelled"}, timeout=30)
    assert (done["state"], done["error"]) == ("failed", "timed out after 0.5 s")
    assert at(done["finished_at"]) - at(done["claimed_at"]) < timedelta(seconds=10)
    if stack.transport == "default":
        before = stack.count()
        for value in (-1, 0, "5", True):
            refused = stack.client.post(
                "/api/tasks",
                json={"flow": "debug.sleep", "params": {}, "timeout_seconds": value},
            )
            assert refused.status_code == 422, (value, refused.text)
            assert refused.json()["field"] == "timeout_seconds"
        assert stack.count() == before


# ------------------------------------------------------------------------------ 7. chains


def png() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (16, 12), (200, 10, 10)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_follow_ups_are_created_when_the_parent_succeeds(stack: Stack) -> None:
    then = [
        {"flow": "debug.sleep", "params": {"seconds": 0}},
        {"flow": "debug.sleep", "params": {"seconds": 0}, "then": [{"flow": "debug.sleep"}]},
    ]
    parent = stack.create({"seconds": 0}, then=then)
    assert stack.wait(parent["id"], {"succeeded"})["state"] == "succeeded"
    deadline = time.monotonic() + 30
    while len(stack.get(parent["id"])["children"]) < 2:
        assert time.monotonic() < deadline, stack.get(parent["id"])
        time.sleep(0.1)
    children = stack.get(parent["id"])["children"]
    second = stack.wait(children[1], {"succeeded"})
    assert second["parent_id"] == parent["id"]
    [created] = [e for e in stack.events(children[1]) if e["type"] == "task.created"]
    assert created["parent_id"] == parent["id"]
    while not stack.get(children[1])["children"]:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    [grandchild] = stack.get(children[1])["children"]
    assert stack.wait(grandchild, {"succeeded"})["parent_id"] == children[1]
    failed = stack.create({"seconds": 0, "fail": "no"}, then=[{"flow": "debug.sleep"}])
    stack.wait(failed["id"], {"failed"})
    time.sleep(0.5)
    assert stack.get(failed["id"])["children"] == []


def test_a_parent_output_becomes_the_child_input(stack: Stack) -> None:
    then = '[{"flow": "image.edges", "params": {}}]'
    response = stack.client.post(
        "/api/tasks",
        data={"flow": "image.blur", "params": "{}", "then": then},
        files={"inputs": ("photo.png", png(), "image/png")},
    )
    assert response.status_code == 201, response.text
    parent = stack.wait(response.json()["id"], {"succeeded", "failed"})
    assert parent["state"] == "succeeded", parent
    deadline = time.monotonic() + 30
    while not stack.get(parent["id"])["children"]:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    [child_id] = stack.get(parent["id"])["children"]
    child = stack.wait(child_id, {"succeeded", "failed"})
    assert child["state"] == "succeeded", child
    assert [i["name"] for i in child["inputs"]] == ["output.png"]
    assert [o["name"] for o in child["outputs"]] == ["output.png"]


@ONE_TRANSPORT  # validation is the same code on every transport
def test_a_chain_is_checked_at_create(stack: Stack) -> None:
    before = stack.count()
    for then, field in [
        ([{"flow": "no.such"}], "then[0].flow"),
        (
            [{"flow": "debug.sleep"}, {"flow": "debug.sleep", "params": {"seconds": -1}}],
            "then[1].params.seconds",
        ),
        ([{"flow": "image.blur"}], "then[0].flow"),  # debug.sleep makes no image
        ([{"flow": "debug.sleep", "then": [{"flow": "nope"}]}], "then[0].then[0].flow"),
    ]:
        response = stack.client.post(
            "/api/tasks", json={"flow": "debug.sleep", "params": {}, "then": then}
        )
        assert response.status_code == 422, (then, response.text)
        assert response.json()["field"] == field, (then, response.json())
    assert stack.count() == before


# ---------------------------------------------------------------------------- 9. retention


@ONE_TRANSPORT  # the same SQL on every transport (tests/integration/test_task_ops_store.py)
def test_admins_prune_old_tasks_over_http_and_the_cli(stack: Stack) -> None:
    task = stack.create()
    stack.wait(task["id"], {"succeeded"})
    dry = stack.client.post("/api/tasks/prune", params={"older_than_days": 0, "dry_run": "true"})
    assert dry.status_code == 200, dry.text
    assert dry.json()["dry_run"] is True
    assert dry.json()["tasks"] >= 1
    assert stack.get(task["id"])["state"] == "succeeded"
    listed = cli(stack, "tasks", "prune", "--older-than", "0", "--dry-run")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.startswith("would remove ")
    for bad in ({"older_than_days": -1}, {"older_than_days": "x"}, {}):
        refused = stack.client.post("/api/tasks/prune", params=bad)
        assert refused.status_code == 422, refused.text
        assert refused.json()["field"] == "older_than_days"
    pruned = cli(stack, "tasks", "prune", "--older-than", "0")
    assert pruned.returncode == 0, pruned.stderr
    assert pruned.stdout.startswith("removed ")
    assert stack.client.get(f"/api/tasks/{task['id']}").status_code == 404


# ------------------------------------------------------------------ 8. priority everywhere


def test_higher_priority_first_and_fifo_within_a_priority(stack: Stack) -> None:
    short = stack.create({"seconds": 1.5, "steps": 3})
    long = stack.create({"seconds": 5, "steps": 10})
    for blocker in (short, long):
        stack.wait(blocker["id"], {"running"})
    quick = {"seconds": 0.2, "steps": 1}
    low_a = stack.create(quick, priority=0)
    low_b = stack.create(quick, priority=0)
    mid = stack.create(quick, priority=5)
    high = stack.create(quick, priority=10)
    order = [high, mid, low_a, low_b]
    claimed = [at(stack.wait(t["id"], {"succeeded"})["claimed_at"]) for t in order]
    assert claimed == sorted(claimed), [t["priority"] for t in order]
    stack.wait(long["id"], {"succeeded"})


# ----------------------------------------------------------------- the log stays the truth


def test_every_row_is_rebuilt_from_its_events(stack: Stack) -> None:
    """Runs last for each transport: all of the above left a log that rebuilds every row."""
    result = subprocess.run(
        [*flowyard_command(), "events", "replay", "--rebuild", "--db", stack.db],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
