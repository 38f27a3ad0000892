"""Server mode over HTTP with two users and an admin: credentials, isolation, attacks.

One real ``flowyard serve --mode server`` on a fresh PostgreSQL database for
the module (the admin is bootstrapped from FLOWYARD_ADMIN_PASSWORD), with a
real database worker so tasks finish and have outputs. Alice and Bob must see
and act on only their own tasks, outputs, events, live stream, webhooks and
workers; someone else's object answers 404 exactly as a missing one.
"""

from __future__ import annotations

import io
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from flowyard.adapters.sql.webhook_store import CACHE_SECONDS
from tests.support.auth import ADMIN_AUTH
from tests.support.postgres import PostgresCluster
from tests.support.processes import ManagedProcess, ProcessGroup, wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.e2e, pytest.mark.timeout(120)]

ALICE = httpx.BasicAuth("alice", "alice-Secret-1")
BOB = httpx.BasicAuth("bob", "bob-Secret-22")
NO_SUCH = "00000000-0000-4000-8000-000000000000"


class Stack:
    def __init__(self, server: ManagedProcess, root: Path) -> None:
        self.server = server
        self.url = server.url or ""
        self.root = root

    def client(self, auth: httpx.Auth | None = None) -> httpx.Client:
        return httpx.Client(base_url=self.url, auth=auth, timeout=20)


@pytest.fixture(scope="module")
def stack(
    postgres_cluster: PostgresCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("auth")
    database = f"auth_{uuid.uuid4().hex[:12]}"
    postgres_cluster.create_database(database)
    uri = postgres_cluster.uri(database)
    group = ProcessGroup(root / "logs")
    files = root / "files"
    env = {"FLOWYARD_WEBHOOKS_ALLOW_PRIVATE": "true", "FLOWYARD_POLL_INTERVAL": "0.5"}
    try:
        server = group.start_server(
            ["--mode", "server", "--db", uri, "--files", str(files), "--data-dir", str(root)], env
        )
        server.wait_healthy(60)
        group.start_worker(["--db", uri, "--files", str(files), "--name", "everyone"], env)
        group.start_worker(
            ["--db", uri, "--files", str(files), "--name", "bobs", "--owner", "bob"], env
        )
        stack = Stack(server, root)
        with stack.client(ADMIN_AUTH) as admin:
            for auth, role in ((ALICE, "user"), (BOB, "user")):
                name, password = _basic(auth)
                created = admin.post(
                    "/api/users", json={"name": name, "password": password, "role": role}
                )
                assert created.status_code == 201, created.text
        yield stack
    finally:
        group.stop_all()
        print(group.tails())
        postgres_cluster.drop_database(database)


def _basic(auth: httpx.BasicAuth) -> tuple[str, str]:
    import base64

    header = auth._auth_header  # "Basic <b64>"
    name, _, password = base64.b64decode(header.split()[1]).decode().partition(":")
    return name, password


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (24, 16), (10, 200, 90)).save(out, format="PNG")
    return out.getvalue()


def _blur(client: httpx.Client) -> dict[str, Any]:
    response = client.post(
        "/api/tasks",
        data={"flow": "image.blur", "params": '{"radius": 1}'},
        files={"inputs": ("in.png", _png(), "image/png")},
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def _finished(client: httpx.Client, task_id: str) -> dict[str, Any]:
    found: dict[str, Any] = {}

    def done() -> bool:
        found.update(client.get(f"/api/tasks/{task_id}").json())
        return found.get("state") in ("succeeded", "failed", "cancelled")

    wait_until(done, 60, f"task {task_id} to finish")
    return found


# ----------------------------------------------------------------- no credentials


def test_every_route_but_health_needs_credentials(stack: Stack) -> None:
    with stack.client() as anonymous:
        spec = anonymous.get("/openapi.json").json()
        checked = []
        for path, operations in spec["paths"].items():
            concrete = path
            for name in ("task_id", "webhook_id"):
                concrete = concrete.replace("{" + name + "}", NO_SUCH)
            concrete = concrete.replace("{name}", "output.png").replace("{token_id}", "x" * 16)
            for method in operations:
                response = anonymous.request(method.upper(), concrete)
                checked.append((method, path, response.status_code))
        assert checked, "the OpenAPI document lists no routes"
        for method, path, status in checked:
            expected = 200 if (method, path) == ("get", "/api/health") else 401
            assert status == expected, f"{method.upper()} {path} answered {status}"
        assert len(checked) > 20
        page = anonymous.get("/login")
        assert page.status_code == 200
        assert "Sign in" in page.text


def test_a_401_says_how_to_sign_in(stack: Stack) -> None:
    with stack.client() as anonymous:
        response = anonymous.get("/api/tasks")
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.json()["type"] == "Unauthenticated"
    assert "Bearer" in response.json()["detail"]


# ------------------------------------------------------------------- isolation


def test_tasks_outputs_and_events_are_their_owners(stack: Stack) -> None:
    with stack.client(ALICE) as alice, stack.client(BOB) as bob, stack.client(ADMIN_AUTH) as admin:
        mine = _blur(alice)
        theirs = _blur(bob)
        assert mine["owner"] == "alice"
        assert theirs["owner"] == "bob"
        mine, theirs = _finished(alice, mine["id"]), _finished(bob, theirs["id"])
        assert mine["state"] == theirs["state"] == "succeeded", (mine, theirs)
        output = theirs["outputs"][0]["url"]

        listed = {t["id"] for t in alice.get("/api/tasks").json()["items"]}
        assert mine["id"] in listed
        assert theirs["id"] not in listed
        assert alice.get("/api/tasks", params={"owner": "bob"}).json()["items"] == []
        for request in (
            ("GET", f"/api/tasks/{theirs['id']}"),
            ("GET", f"/api/tasks/{theirs['id']}/events"),
            ("GET", output),
            ("POST", f"/api/tasks/{theirs['id']}/cancel"),
            ("DELETE", f"/api/tasks/{theirs['id']}"),
        ):
            response = alice.request(*request)
            missing = alice.request(request[0], request[1].replace(theirs["id"], NO_SUCH))
            assert response.status_code == missing.status_code == 404, request
            assert response.json()["detail"] == missing.json()["detail"].replace(
                NO_SUCH, theirs["id"]
            )
        assert bob.get(output).content[:4] == b"\x89PNG"  # still there: nothing changed
        assert alice.get(mine["outputs"][0]["url"]).status_code == 200

        everything = {t["id"] for t in admin.get("/api/tasks").json()["items"]}
        assert {mine["id"], theirs["id"]} <= everything
        assert admin.get(f"/api/tasks/{theirs['id']}/events").status_code == 200


def test_owner_comes_from_identity(stack: Stack) -> None:
    with stack.client(ALICE) as alice, stack.client(ADMIN_AUTH) as admin:
        body = {"flow": "debug.sleep", "params": {"seconds": 0}, "owner": "bob"}
        refused = alice.post("/api/tasks", json=body)
        assert refused.status_code == 403
        assert "owner" in refused.json()["detail"]
        form = alice.post("/api/tasks", data={"flow": "debug.sleep", "owner": "bob"})
        assert form.status_code == 403
        assert alice.get("/api/tasks", params={"owner": "bob"}).json()["items"] == []
        on_behalf = admin.post("/api/tasks", json=body)
        assert on_behalf.status_code == 201
        assert on_behalf.json()["owner"] == "bob"


def test_the_live_stream_carries_only_the_callers_events(stack: Stack) -> None:
    seen: list[str] = []
    ready = threading.Event()

    def listen() -> None:
        with (
            stack.client(ALICE) as alice,
            alice.stream("GET", "/api/events/stream", timeout=httpx.Timeout(20)) as stream,
        ):
            for line in stream.iter_lines():
                if line.startswith(": subscribed"):
                    ready.set()
                if line.startswith("data: "):
                    seen.append(line)
                    if '"marker-alice"' in line:
                        return

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    assert ready.wait(20), "the stream never said it was subscribed"
    with stack.client(ALICE) as alice, stack.client(BOB) as bob:
        bobs = bob.post("/api/tasks", json={"flow": "debug.sleep", "params": {"fail": "bob-x"}})
        alices = alice.post(
            "/api/tasks", json={"flow": "debug.sleep", "params": {"fail": "marker-alice"}}
        )
        assert bobs.status_code == alices.status_code == 201
    listener.join(30)
    assert not listener.is_alive(), "alice's stream never delivered her own event"
    assert any(alices.json()["id"] in line for line in seen)
    assert not any(bobs.json()["id"] in line for line in seen)


def test_webhooks_and_their_deliveries_are_their_owners(stack: Stack) -> None:
    with stack.client(ALICE) as alice, stack.client(BOB) as bob, stack.client(ADMIN_AUTH) as admin:
        hook = alice.post("/api/webhooks", json={"url": "http://127.0.0.1:9/alice"})
        assert hook.status_code == 201, hook.text
        hook_id = hook.json()["id"]
        assert hook.json()["owner"] == "alice"
        assert hook.json()["all_owners"] is False
        stolen = alice.post(
            "/api/webhooks", json={"url": "http://127.0.0.1:9/steal", "owner": "bob"}
        )
        assert stolen.status_code == 403
        assert [w["id"] for w in alice.get("/api/webhooks").json()["items"]] == [hook_id]
        assert bob.get("/api/webhooks").json()["items"] == []
        for method, path in (
            ("GET", f"/api/webhooks/{hook_id}"),
            ("GET", f"/api/webhooks/{hook_id}/deliveries"),
            ("POST", f"/api/webhooks/{hook_id}/enable"),
            ("DELETE", f"/api/webhooks/{hook_id}"),
        ):
            assert bob.request(method, path).status_code == 404, path
        assert admin.get(f"/api/webhooks/{hook_id}").status_code == 200
        time.sleep(CACHE_SECONDS + 0.5)  # the workers' cached subscription lists now hold it

        bobs = bob.post("/api/tasks", json={"flow": "debug.sleep", "params": {"seconds": 0}})
        alices = alice.post("/api/tasks", json={"flow": "debug.sleep", "params": {"seconds": 0}})
        _finished(bob, bobs.json()["id"])
        _finished(alice, alices.json()["id"])

        def delivered_tasks() -> set[str]:
            rows = alice.get(f"/api/webhooks/{hook_id}/deliveries").json()["items"]
            return {row["task_id"] for row in rows}

        wait_until(lambda: alices.json()["id"] in delivered_tasks(), 30, "alice's delivery")
        assert bobs.json()["id"] not in delivered_tasks()
        assert alice.delete(f"/api/webhooks/{hook_id}").status_code == 204


def test_workers_listed_are_those_that_can_serve_the_caller(stack: Stack) -> None:
    with stack.client(ALICE) as alice, stack.client(BOB) as bob, stack.client(ADMIN_AUTH) as admin:
        wait_until(lambda: len(admin.get("/api/workers").json()["items"]) >= 2, 30, "both workers")
        names = {w["name"]: w["owner"] for w in admin.get("/api/workers").json()["items"]}
        assert names == {"everyone": None, "bobs": "bob"}
        assert {w["name"] for w in alice.get("/api/workers").json()["items"]} == {"everyone"}
        assert {w["name"] for w in bob.get("/api/workers").json()["items"]} == {"everyone", "bobs"}


# ------------------------------------------------------------ credentials and attacks


def test_tokens_sessions_and_csrf(stack: Stack) -> None:
    with stack.client(ALICE) as alice, stack.client() as anonymous:
        created = alice.post("/api/me/tokens", json={"name": "script"})
        assert created.status_code == 201
        token = created.json()["token"]
        bearer = {"Authorization": f"Bearer {token}"}
        assert anonymous.get("/api/me", headers=bearer).json()["name"] == "alice"
        assert token not in alice.get("/api/me/tokens").text  # the secret is shown once
        assert alice.delete(f"/api/me/tokens/{created.json()['id']}").status_code == 204
        revoked = anonymous.get("/api/tasks", headers=bearer)
        assert revoked.status_code == 401
        assert "revoked" in revoked.json()["detail"]

        short = alice.post("/api/me/tokens", json={"name": "brief", "expires_days": 0.00002})
        time.sleep(2.0)
        expired = anonymous.get(
            "/api/me", headers={"Authorization": f"Bearer {short.json()['token']}"}
        )
        assert expired.status_code == 401
        forged = anonymous.get(
            "/api/me", headers={"Authorization": "Bearer fyt_0123456789abcdef_x"}
        )
        assert forged.status_code == 401

    with stack.client() as browser:
        login = browser.post("/api/login", json={"name": "alice", "password": "alice-Secret-1"})
        assert login.status_code == 200
        cookie = login.headers["set-cookie"].lower()
        assert "httponly" in cookie
        assert "samesite=lax" in cookie
        csrf = login.json()["csrf_token"]
        assert browser.get("/api/me").json()["name"] == "alice"
        body = {"flow": "debug.sleep", "params": {"seconds": 0}}
        cross_site = browser.post("/api/tasks", json=body)
        assert cross_site.status_code == 403
        assert "CSRF" in cross_site.json()["detail"]
        wrong = browser.post("/api/tasks", json=body, headers={"X-CSRF-Token": "0" * 64})
        assert wrong.status_code == 403
        same_site = browser.post("/api/tasks", json=body, headers={"X-CSRF-Token": csrf})
        assert same_site.status_code == 201
        assert same_site.json()["owner"] == "alice"
        assert browser.post("/api/logout", headers={"X-CSRF-Token": csrf}).status_code == 204
    with stack.client() as attacker:
        attacker.cookies.set("flowyard_session", login.cookies["flowyard_session"])
        assert attacker.get("/api/me").status_code == 401  # ended by the logout
        attacker.cookies.set("flowyard_session", "fyt_0123456789abcdef_forged")
        assert attacker.get("/api/me").status_code == 401


def test_wrong_disabled_and_odd_credentials(stack: Stack) -> None:
    with stack.client(ADMIN_AUTH) as admin, stack.client() as anonymous:
        made = admin.post("/api/users", json={"name": "carol", "password": "carol-Secret-3"})
        assert made.status_code == 201
        carol = httpx.BasicAuth("carol", "carol-Secret-3")
        assert anonymous.get("/api/me", auth=carol).status_code == 200
        wrong = anonymous.get("/api/me", auth=httpx.BasicAuth("carol", "nope-nope-1"))
        assert wrong.status_code == 401
        assert wrong.json()["detail"] == "wrong user name or password"
        odd = anonymous.get("/api/me", auth=httpx.BasicAuth("x' OR 1=1 --\u00e9", "p"))
        assert odd.status_code == 401
        garbage = anonymous.get("/api/me", headers={"Authorization": "Basic !!!"})
        assert garbage.status_code == 401
        bad_name = admin.post("/api/users", json={"name": "a b/c", "password": "good-Secret-4"})
        assert bad_name.status_code == 422
        assert bad_name.json()["field"] == "name"
        weak = admin.post("/api/users", json={"name": "dave", "password": "short"})
        assert weak.status_code == 422
        assert weak.json()["field"] == "password"
        duplicate = admin.post("/api/users", json={"name": "carol", "password": "carol-Secret-3"})
        assert duplicate.status_code == 409
        with stack.client(carol) as as_carol:
            assert as_carol.get("/api/users").status_code == 403
        disabled = admin.patch("/api/users/carol", json={"disabled": True})
        assert disabled.status_code == 200
        assert disabled.json()["disabled"] is True
        refused = anonymous.get("/api/me", auth=carol)  # remembered, but disabled now
        assert refused.status_code == 401
        assert admin.delete("/api/users/carol").status_code == 204
        assert admin.get("/api/users/carol").status_code == 404


def test_retry_and_priority_are_their_owners(stack: Stack) -> None:
    """Someone else's task is 404 for retry and priority too; the owner's retry runs again.

    In server mode a retry skips attempt numbers (NATS workers could still hold a
    leftover work message of the failed attempt): a database worker runs it as 1 + 5.
    """
    with stack.client(ALICE) as alice, stack.client(BOB) as bob:
        body = {"flow": "debug.sleep", "params": {"seconds": 0, "fail": "alice-retry"}}
        task = alice.post("/api/tasks", json=body).json()
        assert _finished(alice, task["id"])["state"] == "failed"
        for method, path, extra in (
            ("POST", f"/api/tasks/{task['id']}/retry", {}),
            ("PATCH", f"/api/tasks/{task['id']}", {"json": {"priority": 5}}),
        ):
            theirs = bob.request(method, path, **extra)
            missing = bob.request(method, path.replace(task["id"], NO_SUCH), **extra)
            assert theirs.status_code == missing.status_code == 404, (method, theirs.text)
        assert alice.get(f"/api/tasks/{task['id']}").json()["state"] == "failed"

        retried = alice.post(f"/api/tasks/{task['id']}/retry")
        assert retried.status_code == 200, retried.text
        assert retried.json()["state"] == "queued"
        assert retried.json()["attempt"] == 5
        again = _finished(alice, task["id"])
        assert (again["state"], again["attempt"], again["error"]) == ("failed", 6, "alice-retry")
