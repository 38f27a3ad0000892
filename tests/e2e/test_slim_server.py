"""The server process does not load torch: flows' metadata is readable without it.

Checked from outside, on the running process (``/proc/<pid>/maps``), so the API
exposes nothing new for it. In default mode the in-process workers load torch
only when a flow that needs it runs.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.support.auth import ADMIN_AUTH
from tests.support.processes import ProcessGroup, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

HEAVY_LIBRARIES = ("libtorch", "numpy/_core", "numpy/core", "PIL/_imaging")


def heavy_libraries(pid: int) -> set[str]:
    """Shared objects of torch, numpy or Pillow mapped into process ``pid``."""
    maps = Path(f"/proc/{pid}/maps").read_text()
    return {lib for lib in HEAVY_LIBRARIES if lib in maps}


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 6), (200, 10, 10)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_server_mode_runs_without_torch(
    flowyard_processes: ProcessGroup, pg_uri: str, tmp_path: Path
) -> None:
    server = flowyard_processes.start_server(
        ["--mode", "server", "--db", pg_uri, "--files", str(tmp_path / "tasks")]
    )
    server.wait_healthy()
    with httpx.Client(base_url=server.url, auth=ADMIN_AUTH, timeout=10) as client:
        flows = {f["name"]: f for f in client.get("/api/flows").json()["items"]}
        assert flows["image.blur"]["params_schema"]["properties"]["radius"]["maximum"] == 100
        assert flows["image.resize"]["inputs"][0]["name"] == "image"
        bad = client.post(
            "/api/tasks",
            data={"flow": "image.blur", "params": json.dumps({"radius": 500})},
            files={"inputs": ("in.png", png(), "image/png")},
        )
        assert bad.status_code == 422, bad.text
        assert "radius" in bad.text
        good = client.post(
            "/api/tasks",
            data={"flow": "image.blur", "params": json.dumps({"radius": 1})},
            files={"inputs": ("in.png", png(), "image/png")},
        )
        assert good.status_code == 201, good.text
    assert heavy_libraries(server.pid) == set()


def test_default_mode_loads_torch_only_to_run_an_image_flow(
    flowyard_processes: ProcessGroup, tmp_path: Path
) -> None:
    server = flowyard_processes.start_server(["--data-dir", str(tmp_path / "data")])
    server.wait_healthy()
    assert heavy_libraries(server.pid) == set()
    with httpx.Client(base_url=server.url, timeout=30) as client:

        def done(task_id: str) -> bool:
            return client.get(f"/api/tasks/{task_id}").json()["state"] == "succeeded"

        sleep = client.post("/api/tasks", json={"flow": "debug.sleep", "params": {"seconds": 0}})
        assert sleep.status_code == 201, sleep.text
        wait_until(lambda: done(sleep.json()["id"]), 30, "debug.sleep to succeed")
        assert "libtorch" not in heavy_libraries(server.pid)  # a flow without torch ran
        blur = client.post(
            "/api/tasks",
            data={"flow": "image.blur", "params": json.dumps({"radius": 1})},
            files={"inputs": ("in.png", png(), "image/png")},
        )
        assert blur.status_code == 201, blur.text
        wait_until(lambda: done(blur.json()["id"]), 60, "image.blur to succeed")
    assert "libtorch" in heavy_libraries(server.pid)


def test_flow_modules_import_without_torch() -> None:
    """What the server imports for flows (the registry, every built-in flow) leaves torch out."""
    code = (
        "import sys; from flows.registry import installed_flows; r = installed_flows(); "
        "[f.describe() for f in r.flows.values()]; "
        "print(sorted(m for m in ('torch', 'numpy', 'PIL') if m in sys.modules), r.broken)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[] {}"
