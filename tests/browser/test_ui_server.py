"""Journeys through the web UI of ``flowyard serve --mode server``: sign-in, isolation, workers.

One real server on a fresh PostgreSQL database (its admin bootstrapped from
FLOWYARD_ADMIN_PASSWORD) and one real database worker for the module; alice
and bob are created through the admin API.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import shot
from tests.support.auth import ADMIN_AUTH, ADMIN_NAME, ADMIN_PASSWORD
from tests.support.postgres import PostgresCluster
from tests.support.processes import ProcessGroup, wait_until

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.postgres, pytest.mark.timeout(120)]

ALICE = ("alice", "alice-Secret-1")
BOB = ("bob", "bob-Secret-22")
WORKER = "gpu-box-1"
expect.set_options(timeout=15_000)


class Stack:
    def __init__(self, url: str) -> None:
        self.url = url

    def client(self, auth: tuple[str, str] | httpx.Auth) -> httpx.Client:
        return httpx.Client(base_url=self.url, auth=auth, timeout=20)


@pytest.fixture(scope="module")
def stack(
    postgres_cluster: PostgresCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("ui-server")
    database = f"ui_{uuid.uuid4().hex[:12]}"
    postgres_cluster.create_database(database)
    uri = postgres_cluster.uri(database)
    group = ProcessGroup(root / "logs")
    files = root / "files"
    env = {"FLOWYARD_POLL_INTERVAL": "0.5"}
    try:
        server = group.start_server(
            ["--mode", "server", "--db", uri, "--files", str(files), "--data-dir", str(root)], env
        )
        server.wait_healthy(60)
        group.start_worker(["--db", uri, "--files", str(files), "--name", WORKER], env)
        stack = Stack(server.url or "")
        with stack.client(ADMIN_AUTH) as admin:
            for name, password in (ALICE, BOB):
                created = admin.post(
                    "/api/users", json={"name": name, "password": password, "role": "user"}
                )
                assert created.status_code == 201, created.text
        yield stack
    finally:
        group.stop_all()
        print(group.tails())
        postgres_cluster.drop_database(database)


def sign_in(page: Page, stack: Stack, name: str, password: str, *, start: str = "/") -> None:
    page.goto(f"{stack.url}{start}")
    page.wait_for_url("**/login?next=*")
    expect(page.get_by_role("heading", name="Sign in to flowyard")).to_be_visible()
    page.get_by_label("User name").fill(name)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#me-name")).to_have_text(name)


def test_sign_in_and_see_only_your_own_tasks(page: Page, stack: Stack, tmp_path: Path) -> None:
    with stack.client(BOB) as bob:
        response = bob.post("/api/tasks", json={"flow": "debug.sleep", "params": {"seconds": 0}})
        assert response.status_code == 201, response.text
        bobs: dict[str, Any] = response.json()

    page.goto(f"{stack.url}/login")
    page.get_by_label("User name").fill("alice")
    page.get_by_label("Password").fill("not her password")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("wrong")
    shot(page, tmp_path, "login-refused")

    sign_in(page, stack, *ALICE, start="/flows/debug.sleep")
    expect(page.get_by_role("heading", level=1)).to_have_text("debug.sleep")  # back where she was
    expect(page.get_by_role("link", name="Users")).to_be_hidden()
    page.get_by_label("Seconds", exact=True).fill("0")
    page.get_by_role("button", name="Run", exact=True).click()
    page.wait_for_url("**/tasks/*")
    expect(page.locator(".page-head .badge")).to_have_text("succeeded")
    expect(page.locator("#summary-h + dl")).to_contain_text("Owneralice")
    mine = page.url.rsplit("/", 1)[1]

    page.get_by_role("link", name="Tasks", exact=True).click()
    expect(page.locator(f"tr[data-id='{mine}']")).to_be_visible()
    expect(page.locator(f"tr[data-id='{bobs['id']}']")).to_have_count(0)
    expect(page.locator("tbody tr")).to_have_count(1)
    shot(page, tmp_path, "alice-queue")

    page.goto(f"{stack.url}/tasks/{bobs['id']}")
    expect(page.get_by_text("No such task.")).to_be_visible()

    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url("**/login")
    page.goto(f"{stack.url}/")
    page.wait_for_url("**/login?next=*")


def test_admin_manages_users(page: Page, stack: Stack, tmp_path: Path) -> None:
    sign_in(page, stack, ADMIN_NAME, ADMIN_PASSWORD)
    page.get_by_role("link", name="Users").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Users")
    page.locator("#user-name").fill("carol")
    page.locator("#user-password").fill("carol-Secret-3")
    page.get_by_role("button", name="Add user").click()
    row = page.locator("tr[data-user=carol]")
    expect(row).to_contain_text("active")
    row.get_by_role("button", name="Disable").click()
    expect(row.locator(".badge")).to_have_text("disabled")
    row.locator("summary", has_text="Tokens").click()
    row.get_by_role("button", name="Create token").click()
    expect(row.locator(".token-secret")).to_contain_text("fyt_")
    shot(page, tmp_path, "users")
    with stack.client(ADMIN_AUTH) as admin:
        carol = admin.get("/api/users/carol").json()
    assert carol["disabled"] is True


def test_workers_page_lists_the_database_worker(page: Page, stack: Stack, tmp_path: Path) -> None:
    with stack.client(ADMIN_AUTH) as admin:

        def registered() -> bool:
            return any(w["name"] == WORKER for w in admin.get("/api/workers").json()["items"])

        wait_until(registered, 30, f"worker {WORKER} to register")
        response = admin.post(
            "/api/tasks", json={"flow": "debug.sleep", "params": {"seconds": 20, "steps": 200}}
        )
        busy = response.json()
    try:
        sign_in(page, stack, ADMIN_NAME, ADMIN_PASSWORD, start="/workers")
        row = page.locator(f"tr[data-worker='{WORKER}']")
        expect(row.locator(".badge")).to_have_text("online")
        expect(row).to_contain_text("database")
        expect(row).to_contain_text("debug.sleep")
        expect(row.get_by_role("link", name=f"debug.sleep {busy['id'][:8]}")).to_be_visible()
        expect(row).to_contain_text("1 of")
        expect(row.locator("td[data-label='Device']")).to_contain_text("host")
        shot(page, tmp_path, "workers")
    finally:
        with stack.client(ADMIN_AUTH) as admin:
            admin.post(f"/api/tasks/{busy['id']}/cancel")
