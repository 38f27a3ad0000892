"""Signing the CLI in to a real server-mode server: env credentials, login, stored token, logout.

One PostgreSQL database, one ``flowyard serve --mode server`` on 127.0.0.1 that
bootstraps ``admin``, one worker over the same database and files, and a user
``alice`` made with ``flowyard users create``. The whole story is one test so the
processes start once (the CI machine has two cores).
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from flowyard.core.errors import Unauthenticated
from flowyard.services.client import BearerAuth, Client, TaskOut, TaskPage
from tests.support.auth import ADMIN_PASSWORD, without_credentials
from tests.support.processes import ProcessGroup, flowyard_command

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

ALICE = "alice"
ALICE_PASSWORD = "alice-Secret-pw-2"
WORKER_READY = r"services\.worker_process: worker "
SIGN_IN_HINT = "or pass --token / set FLOWYARD_TOKEN, or --user with FLOWYARD_PASSWORD"


def _cli(
    env: dict[str, str], *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*flowyard_command(), *args],
        capture_output=True,
        text=True,
        env=env,
        input=stdin,
        timeout=120,
    )


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single ``error:`` line of a failed command (exit 1, no traceback)."""
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def test_cli_signs_in_with_env_and_login_and_logout_revokes(
    flowyard_processes: ProcessGroup, pg_uri: str, tmp_path: Path, photo: Path
) -> None:
    files = tmp_path / "files"
    server = flowyard_processes.start_server(
        ["--mode", "server", "--db", pg_uri, "--files", str(files), "--data-dir", str(tmp_path)],
        {"FLOWYARD_ADMIN_PASSWORD": ADMIN_PASSWORD},
    )
    url = server.url
    config = tmp_path / "config"
    env = {
        **without_credentials(dict(os.environ)),
        "FLOWYARD_SERVER": url,
        "XDG_CONFIG_HOME": str(config),
        "COLUMNS": "200",
    }
    server.wait_healthy(60)
    created = _cli(
        env,
        "users",
        "create",
        ALICE,
        "--password-stdin",
        "--db",
        pg_uri,
        stdin=ALICE_PASSWORD + "\n",
    )
    assert created.returncode == 0, created.stderr
    worker = flowyard_processes.start_worker(
        ["--db", pg_uri, "--files", str(files), "--name", "w1"],
        without_credentials(dict(os.environ)),
    )

    # No credentials: one line that says how to sign in.
    line = _one_error_line(_cli(env, "tasks", "list"))
    assert f"needs you to sign in: run 'flowyard login {url}'" in line
    assert SIGN_IN_HINT in line

    # A user and password from the environment.
    as_alice = {**env, "FLOWYARD_USER": ALICE, "FLOWYARD_PASSWORD": ALICE_PASSWORD}
    listed = _cli(as_alice, "tasks", "list")
    assert listed.returncode == 0, listed.stderr
    assert "no tasks" in listed.stdout
    wrong = _one_error_line(
        _cli({**as_alice, "FLOWYARD_PASSWORD": "not-her-password"}, "tasks", "list")
    )
    assert "user name and password were refused" in wrong
    assert "flowyard login" in wrong

    # Login stores a token (0600) that every later command uses.
    login = _cli(env, "login", "--user", ALICE, "--password-stdin", stdin=ALICE_PASSWORD + "\n")
    assert login.returncode == 0, login.stderr
    assert login.stdout.strip() == f"signed in to {url} as {ALICE}"
    path = config / "flowyard" / "credentials.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    entry = json.loads(path.read_text())[url]
    assert entry["user"] == ALICE
    assert entry["token"].startswith("fyt_")
    token = entry["token"]

    worker.wait_for_log(WORKER_READY, 90)
    out = tmp_path / "out"
    ran = _cli(env, "run", "image.blur", "--input", str(photo), "--wait", "--out", str(out))
    assert ran.returncode == 0, ran.stderr
    assert (out / "output.png").is_file()  # upload, event stream and download all signed in
    tasks = _cli(env, "tasks", "list", "--json")
    assert tasks.returncode == 0, tasks.stderr
    owners = [TaskOut.model_validate_json(item).owner for item in tasks.stdout.splitlines() if item]
    assert owners == [ALICE]

    # Logout revokes the token on the server and forgets it here.
    logout = _cli(env, "logout")
    assert logout.returncode == 0, logout.stderr
    assert "revoked" in logout.stdout
    assert url not in json.loads(path.read_text())
    with pytest.raises(Unauthenticated):  # the server's 401, read back by the typed client
        asyncio.run(_tasks_as(url, token))

    # The revoked token passed explicitly: the same one line, for requests and the stream.
    for args in (["tasks", "list"], ["events", "tail"]):
        line = _one_error_line(_cli(env, *args, "--token", token))
        assert "the token was refused" in line
        assert f"flowyard login {url}" in line
    line = _one_error_line(_cli({**env, "FLOWYARD_TOKEN": token}, "flows", "list"))
    assert "the token was refused" in line


async def _tasks_as(url: str, token: str) -> TaskPage:
    async with Client(url, auth=BearerAuth(token)) as api:
        return await api.list_tasks()
