"""The web UI's files and page routes, without a browser (tests/browser drives it)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from flowyard.core.events import EVENT_TYPES
from flowyard.core.settings import Settings
from flowyard.services.api.app import create_app
from flowyard.services.api.pages import STATIC, UI_PATHS


def test_the_ui_knows_every_event_type() -> None:
    listed = re.findall(r'"(task\.[a-z_]+)"', (STATIC / "js" / "events.js").read_text())
    assert listed == list(EVENT_TYPES)


def test_every_module_import_resolves() -> None:
    modules = sorted((STATIC / "js").rglob("*.js"))
    assert len(modules) > 10
    for module in modules:
        for target in re.findall(r'from "(\.[^"]+)"', module.read_text()):
            assert (module.parent / target).resolve().is_file(), f"{module.name} imports {target}"


def test_pages_load_only_our_own_files() -> None:
    for page in ("app.html", "login.html"):
        html = (STATIC / page).read_text()
        for url in re.findall(r'(?:src|href)="([^"]+)"', html):
            assert not url.startswith(("http:", "https:", "//")), f"{page} loads {url}"
            if url.startswith("/static/"):
                assert (STATIC / url.removeprefix("/static/")).is_file(), url


@pytest.fixture
def client(tmp_path: Path) -> TestClient:
    # no lifespan: the pages need no runtime
    return TestClient(create_app(Settings(data_dir=tmp_path)))


@pytest.mark.parametrize(
    "path", [p.replace("{task_id}", "0" * 8 + "-0000-4000-8000-" + "0" * 12) for p in UI_PATHS]
)
def test_every_ui_path_answers_the_app_shell(client: TestClient, path: str) -> None:
    response = client.get(path.replace("{name}", "image.blur"))
    assert response.status_code == 200
    assert '<script type="module" src="/static/js/main.js">' in response.text
    assert "default-src 'self'" in response.headers["content-security-policy"]


def test_login_docs_and_assets_are_served_locally(client: TestClient) -> None:
    assert "Sign in" in client.get("/login").text
    docs = client.get("/docs").text
    assert "/docs/assets/swagger-ui-bundle.js" in docs
    assert "cdn." not in docs
    assert client.get("/docs/assets/swagger-ui-bundle.js").status_code == 200
    assert "/docs/assets/redoc.standalone.js" in client.get("/redoc").text
    script = client.get("/static/js/main.js")
    assert script.headers["content-type"].startswith(("text/javascript", "application/javascript"))
    assert script.headers["cache-control"] == "no-cache"
