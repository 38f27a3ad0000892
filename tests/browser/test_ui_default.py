"""Journeys through the web UI of a default-mode ``flowyard serve`` (no sign-in).

One real server (SQLite, two in-process workers, a small upload limit) and one
Chromium for the module. Every check is on what a person sees: text, a badge,
an image that loaded (``naturalWidth > 0``), a file that downloaded.
"""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Browser, Page, expect

from tests.browser.conftest import no_horizontal_scroll, shot
from tests.e2e.harness import ServeProcess, wait_for_state

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.timeout(120)]

UPLOAD_LIMIT = 200_000
TASK_URL = re.compile(r"/tasks/([0-9a-f-]{36})$")
expect.set_options(timeout=15_000)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    data = tmp_path_factory.mktemp("ui") / "data"
    env = {
        "FLOWYARD_MAX_UPLOAD_BYTES": str(UPLOAD_LIMIT),
        "FLOWYARD_WEBHOOKS_ALLOW_PRIVATE": "true",  # the subscription below points at 127.0.0.1
    }
    proc = ServeProcess(data, env=env, workers=2).start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def api(server: ServeProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=20) as client:
        yield client


def png(width: int, height: int, *, noise: bool = False) -> bytes:
    """A picture with edges worth blurring (or incompressible noise, to exceed a limit)."""
    if noise:
        pixels = np.random.default_rng(3).integers(0, 256, (height, width, 3), dtype=np.uint8)
    else:
        y, x = np.mgrid[0:height, 0:width]
        pixels = np.stack([(x * 4) % 256, (y * 4) % 256, ((x // 16 + y // 16) % 2) * 255], -1)
    out = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(out, "PNG")
    return out.getvalue()


def drop_file(page: Page, selector: str, name: str, data: bytes, media_type: str) -> None:
    """Drag and drop as a person does: a DataTransfer with the file, built in the page."""
    page.locator(selector).evaluate(
        """(zone, [b64, name, type]) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], name, { type }));
            for (const kind of ["dragenter", "dragover", "drop"]) {
                const init = { bubbles: true, cancelable: true, dataTransfer: transfer };
                zone.dispatchEvent(new DragEvent(kind, init));
            }
        }""",
        [base64.b64encode(data).decode(), name, media_type],
    )


def image_loaded(page: Page, selector: str) -> None:
    page.wait_for_function(
        "(s) => { const i = document.querySelector(s); return !!i && i.complete"
        " && i.naturalWidth > 0; }",
        arg=selector,
        timeout=15_000,
    )


def open_flow(page: Page, base: str, name: str) -> None:
    page.goto(f"{base}/flows")
    page.get_by_role("link", name=f"Run {name}").click()
    expect(page.get_by_role("heading", level=1)).to_have_text(name)


def task_id(page: Page) -> str:
    page.wait_for_url(TASK_URL)
    found = TASK_URL.search(page.url)
    assert found is not None
    return found.group(1)


def badge(page: Page) -> Any:
    return page.locator(".page-head .badge")


def test_blur_a_dropped_image_and_download_the_result(
    page: Page, server: ServeProcess, tmp_path: Path
) -> None:
    open_flow(page, server.url, "image.blur")
    expect(page.get_by_text("Drop an image here")).to_be_visible()
    page.get_by_label("Radius", exact=True).fill("4")
    drop_file(page, ".drop", "photo.png", png(160, 120), "image/png")
    expect(page.get_by_text("photo.png")).to_be_visible()
    image_loaded(page, ".drop-preview img")
    shot(page, tmp_path, "form")
    page.get_by_role("button", name="Run", exact=True).click()

    task_id(page)
    expect(badge(page)).to_have_text("succeeded")
    expect(page.locator(".progress.big .pct")).to_have_text("100 %")
    expect(page.get_by_text("radius")).to_be_visible()
    image_loaded(page, "img[alt='input photo.png']")
    image_loaded(page, "img[alt='output output.png']")
    expect(page.locator(".timeline")).to_contain_text("Succeeded on attempt 1")
    shot(page, tmp_path, "task")

    with page.expect_download() as info:
        page.locator("#outputs").get_by_role("link", name="Download").click()
    saved = tmp_path / "output.png"
    info.value.save_as(saved)
    with Image.open(saved) as result:
        assert result.size == (160, 120)


def test_sleep_has_no_file_input_and_cancels_while_running(
    page: Page, server: ServeProcess, tmp_path: Path
) -> None:
    open_flow(page, server.url, "debug.sleep")
    expect(page.get_by_text("This flow takes no input files")).to_have_count(0)
    assert page.locator("input[type=file]").count() == 0
    page.get_by_label("Seconds", exact=True).fill("30")
    page.get_by_label("Steps", exact=True).fill("300")
    page.get_by_role("button", name="Run", exact=True).click()

    task_id(page)
    expect(badge(page)).to_have_text("running")
    expect(page.locator(".progress.big .pct")).not_to_have_text("0 %")
    page.get_by_role("button", name="Cancel", exact=True).click()
    expect(badge(page)).to_have_text("cancelled")
    expect(page.locator(".timeline")).to_contain_text("Cancel requested")
    expect(page.locator(".timeline")).to_contain_text("Cancelled on attempt 1")
    shot(page, tmp_path, "cancelled")


def test_retry_a_failed_task(page: Page, server: ServeProcess, tmp_path: Path) -> None:
    open_flow(page, server.url, "debug.sleep")
    page.get_by_label("Seconds", exact=True).fill("0")
    page.get_by_label("Fail", exact=True).fill("the model ran out of coffee")
    page.get_by_role("button", name="Run", exact=True).click()

    task_id(page)
    expect(badge(page)).to_have_text("failed")
    expect(page.locator("pre.failure")).to_have_text("the model ran out of coffee")
    page.get_by_role("button", name="Retry", exact=True).click()
    expect(page.locator(".timeline")).to_contain_text("Failed on attempt 2")
    expect(badge(page)).to_have_text("failed")
    expect(page.locator(".timeline")).to_contain_text("Retried")
    expect(page.locator("#summary-h + dl")).to_contain_text("Attempt2 of 4")
    shot(page, tmp_path, "retried")


def test_invalid_params_are_shown_next_to_their_field(
    page: Page, server: ServeProcess, tmp_path: Path
) -> None:
    open_flow(page, server.url, "image.blur")
    radius = page.get_by_label("Radius", exact=True)
    radius.fill("0")
    radius.press("Tab")
    field = page.locator(".field[data-field=radius]")
    expect(field.locator(".error")).to_have_text("Must be greater than 0.")
    page.get_by_role("button", name="Run", exact=True).click()
    expect(page.get_by_text("Fix the fields marked above.")).to_be_visible()
    expect(page.locator(".field[data-field='inputs.image'] .error")).to_have_text(
        "Required: PNG or JPEG."
    )
    assert "/flows/image.blur" in page.url  # nothing was sent

    # the server's own field errors: an upload over its limit, next to the drop zone
    radius.fill("2")
    drop_file(page, ".drop", "huge.png", png(400, 400, noise=True), "image/png")
    page.get_by_role("button", name="Run", exact=True).click()
    expect(page.locator(".field[data-field='inputs.image'] .error")).to_contain_text(
        f"larger than the limit of {UPLOAD_LIMIT} bytes"
    )
    expect(field.locator(".error")).to_have_text("")
    shot(page, tmp_path, "invalid")

    # and a params error that only the server knows (resize needs scale, width or height)
    page.get_by_label("Switch flow").select_option("image.resize")
    expect(page.get_by_role("heading", level=1)).to_have_text("image.resize")
    expect(page.get_by_label("Radius", exact=True)).to_have_count(0)  # a fresh form
    drop_file(page, ".drop", "photo.png", png(32, 24), "image/png")
    page.get_by_role("button", name="Run", exact=True).click()
    expect(page.locator(".params-error")).to_have_text("give scale or width or height")


def test_add_a_webhook_see_its_secret_once_and_remove_it(
    page: Page, server: ServeProcess, tmp_path: Path
) -> None:
    page.goto(f"{server.url}/webhooks")
    expect(page.get_by_text("No subscriptions yet.")).to_be_visible()
    page.get_by_label("URL").fill("ftp://nope")
    page.get_by_role("button", name="Add subscription").click()
    expect(page.get_by_text("Enter an http:// or https:// URL.")).to_be_visible()
    page.get_by_label("URL").fill("http://127.0.0.1:9/flowyard")
    page.get_by_label("task.created").check()
    page.get_by_label("image.blur").check()
    page.get_by_role("button", name="Add subscription").click()
    expect(page.locator("#webhook-secret")).to_contain_text("whsec_")
    card = page.locator("article[data-webhook]")
    expect(card).to_contain_text("http://127.0.0.1:9/flowyard")
    expect(card).to_contain_text("task.created")
    expect(card).to_contain_text("image.blur")
    card.locator("summary", has_text="Recent deliveries").click()
    expect(card.get_by_text("No deliveries yet.")).to_be_visible()
    shot(page, tmp_path, "webhooks")
    page.reload()
    expect(page.locator("#webhook-secret")).to_have_count(0)  # shown once only
    remove = page.locator("article[data-webhook]").get_by_role("button", name="Remove")
    remove.click()
    page.get_by_role("button", name="Really remove?").click()
    expect(page.get_by_text("No subscriptions yet.")).to_be_visible()


def test_docs_work_offline(page: Page, server: ServeProcess) -> None:
    outside: list[str] = []

    def only_local(route: Any) -> None:
        if route.request.url.startswith(server.url):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    page.route("**/*", only_local)
    page.goto(f"{server.url}/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("flowyard 0.1.0")
    expect(page.get_by_text("/api/tasks/{task_id}/retry").first).to_be_visible()
    assert outside == []


def test_phone_viewport_has_no_horizontal_scroll(
    browser: Browser, server: ServeProcess, api: httpx.Client, tmp_path: Path
) -> None:
    context = browser.new_context(
        viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True
    )
    try:
        page = context.new_page()
        some = api.get("/api/tasks", params={"limit": 1}).json()["items"]
        paths = ["/", "/flows", "/flows/image.blur", "/workers", "/webhooks", "/login"]
        paths += [f"/tasks/{t['id']}" for t in some]
        for path in paths:
            page.goto(f"{server.url}{path}")
            expect(page.locator("h1").first).to_be_visible()
            page.wait_for_load_state("networkidle")
            assert no_horizontal_scroll(page) == 0, f"{path} scrolls sideways at 390 px"
            shot(page, tmp_path, "phone" + path.replace("/", "-"))
    finally:
        context.close()


def test_change_the_priority_of_a_queued_task_in_the_queue(
    page: Page, server: ServeProcess, api: httpx.Client, tmp_path: Path
) -> None:
    def create(params: dict[str, Any]) -> dict[str, Any]:
        response = api.post("/api/tasks", json={"flow": "debug.sleep", "params": params})
        assert response.status_code == 201, response.text
        body: dict[str, Any] = response.json()
        return body

    blockers = [create({"seconds": 60, "steps": 600}) for _ in range(2)]
    for blocker in blockers:
        wait_for_state(api, blocker["id"], {"running"})
    queued = create({"seconds": 1})
    try:
        page.goto(server.url)
        row = page.locator(f"tr[data-id='{queued['id']}']")
        expect(row.locator(".badge")).to_have_text("queued")
        expect(page.locator("tr[data-state=running]")).to_have_count(2)
        expect(page.locator("#live")).to_have_text("live")  # the stream's first reload is done
        priority = row.get_by_label(f"Priority of task {queued['id'][:8]}")
        priority.fill("7")
        row.get_by_role("button", name="Set priority").click()
        expect(row).to_contain_text("priority 7")
        assert api.get(f"/api/tasks/{queued['id']}").json()["priority"] == 7
        expect(page.locator("#live")).to_have_text("live")
        page.wait_for_timeout(700)  # a few progress reports move the bars
        shot(page, tmp_path, "queue")
    finally:
        for task in (*blockers, queued):
            api.post(f"/api/tasks/{task['id']}/cancel")
