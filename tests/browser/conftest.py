"""Headless Chromium for the web UI journeys: Debian's /usr/bin/chromium driven by Playwright.

No browser is downloaded (``playwright install`` is never run): Playwright's
Python package drives the system Chromium through ``executable_path``. A
missing Chromium fails the tests instead of skipping them (``.ci/run`` installs
it). One browser per module keeps the suite fast; each test gets a fresh
context (cookies, storage) and page.

``shot(page, tmp_path, name)`` saves a screenshot under the test's tmp folder;
with ``FLOWYARD_UPDATE_SCREENSHOTS=1`` the queue and task pages are also copied
to ``docs/img/`` for the README.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Playwright, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DOCS_IMG = Path(__file__).resolve().parents[2] / "docs" / "img"
README_SHOTS = {"queue", "task"}
WAIT_MS = 15_000


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    assert CHROMIUM.exists(), (
        f"{CHROMIUM} is missing: install Debian's chromium "
        "(apt-get install -y chromium; .ci/run does it)"
    )
    with sync_playwright() as pw:
        yield pw


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
    try:
        yield browser
    finally:
        browser.close()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    context.set_default_timeout(WAIT_MS)
    try:
        yield context
    finally:
        context.close()


@pytest.fixture
def page(context: BrowserContext) -> Iterator[Page]:
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    assert not errors, f"JavaScript errors on the page: {errors}"


def shot(page: Page, tmp_path: Path, name: str) -> Path:
    """Save what the person sees; the README's screenshots are refreshed on request."""
    path = tmp_path / f"{name}.png"
    page.screenshot(path=path, full_page=True)
    if os.environ.get("FLOWYARD_UPDATE_SCREENSHOTS") == "1" and name in README_SHOTS:
        DOCS_IMG.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, DOCS_IMG / f"{name}.png")
    return path


def no_horizontal_scroll(page: Page) -> int:
    """The page's scroll width beyond the viewport, in CSS pixels (0 means none)."""
    extra: int = page.evaluate(
        "document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    return extra
