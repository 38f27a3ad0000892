"""The ``flowyard`` command against a real server, as a user types it."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest
from PIL import Image

from flowyard.services.client import TaskOut
from tests.e2e.harness import FLOWYARD, ServeProcess

pytestmark = pytest.mark.e2e


def flowyard(
    server: ServeProcess, *args: str, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FLOWYARD_SERVER": server.url}
    return subprocess.run(
        [str(FLOWYARD), *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=120
    )


def test_run_wait_downloads_blurred_output(
    server: ServeProcess, photo: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    result = flowyard(
        server,
        "run",
        "image.blur",
        "--param",
        "radius=3",
        "--input",
        str(photo),
        "--wait",
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    written = out / "output.png"
    assert written.is_file()
    with Image.open(written) as blurred, Image.open(photo) as original:
        assert blurred.size == original.size
        assert blurred.tobytes() != original.convert(blurred.mode).tobytes()


def test_failed_task_exits_1_with_its_error(server: ServeProcess) -> None:
    result = flowyard(
        server, "run", "debug.sleep", "--param", "seconds=0", "--param", "fail=boom", "--wait"
    )
    assert result.returncode == 1
    assert "boom" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["run", "image.nope"], "unknown flow 'image.nope'"),
        (["run", "debug.sleep", "--param", "steps=0"], "params.steps"),
        (["run", "image.blur", "--input", "/nonexistent/photo.png"], "/nonexistent/photo.png"),
        (["tasks", "show", "not-a-uuid"], "not-a-uuid"),
        (["tasks", "show", "00000000-0000-4000-8000-000000000000"], "no task has id"),
    ],
)
def test_errors_are_one_line_without_traceback(
    server: ServeProcess, args: list[str], words: str
) -> None:
    result = flowyard(server, *args)
    assert result.returncode == 1, result.stdout
    assert words in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 2


def test_unreachable_server_is_explained(tmp_path: Path) -> None:
    env = {**os.environ, "FLOWYARD_SERVER": "http://127.0.0.1:9"}
    result = subprocess.run(
        [str(FLOWYARD), "tasks", "list"], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 1
    assert "cannot reach the flowyard server" in result.stderr
    assert "Traceback" not in result.stderr


def test_list_show_cancel(server: ServeProcess) -> None:
    started = flowyard(
        server, "run", "debug.sleep", "--param", "seconds=20", "--param", "steps=200"
    )
    assert started.returncode == 0, started.stderr
    task_id = next(w for w in started.stdout.split() if w.count("-") == 4)
    listed = flowyard(server, "tasks", "list", "--json")
    listed_ids = {
        TaskOut.model_validate_json(line).id for line in listed.stdout.splitlines() if line
    }
    assert uuid.UUID(task_id) in listed_ids
    cancelled = flowyard(server, "tasks", "cancel", task_id)
    assert cancelled.returncode == 0, cancelled.stderr
    shown = flowyard(server, "tasks", "show", task_id, "--json")
    assert str(TaskOut.model_validate_json(shown.stdout).id) == task_id


def test_flows_list(server: ServeProcess) -> None:
    result = flowyard(server, "flows", "list")
    assert result.returncode == 0
    for name in ("image.blur", "image.edges", "image.resize", "debug.sleep"):
        assert name in result.stdout


def test_serve_refuses_sqlite_in_server_mode(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(FLOWYARD), "serve", "--mode", "server", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "server mode needs PostgreSQL or MariaDB" in result.stderr
    assert "Traceback" not in result.stderr
