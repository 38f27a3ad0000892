"""``flowyard users`` as an operator types it, against SQLite, PostgreSQL and MariaDB.

Each command is the real console script in a subprocess: passwords come on
stdin or from a (pseudo) terminal, never as arguments; a token is printed alone
on stdout so ``$(flowyard users token create NAME)`` works; every expected
failure is one ``error:`` line with exit 1 and no traceback. What the commands
wrote is checked through the store itself.
"""

from __future__ import annotations

import asyncio
import json
import os
import pty
import select
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from flowyard.adapters.sql.database import Database
from flowyard.adapters.sql.engine import make_engine
from flowyard.adapters.sql.user_store import SqlUserStore
from flowyard.core.events import utcnow
from flowyard.core.identity import TOKEN_PREFIX, Role, token_id_of
from flowyard.services.config import load_settings
from tests.support.processes import flowyard_command

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

PASSWORD = "correct horse battery"
NEW_PASSWORD = "staple gun 42"
T = TypeVar("T")


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without FLOWYARD_* settings (the test's own would leak in)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWYARD_")}
    return env | {"NO_COLOR": "1"} | extra


@dataclass
class Target:
    """Where the commands point: flags and environment, and the URI to check the result in."""

    uri: str
    args: list[str]
    env: dict[str, str] = field(default_factory=dict)

    def run(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*flowyard_command(), "users", *args, *self.args],
            input=stdin,
            stdin=subprocess.DEVNULL if stdin is None else None,
            capture_output=True,
            text=True,
            env=clean_env(COLUMNS="200", **self.env),
            timeout=60,
        )

    def store(self, action: Callable[[SqlUserStore], Awaitable[T]]) -> T:
        """Run ``action`` on a store over this database (in this process)."""

        async def run() -> T:
            database = Database(make_engine(self.uri, pool_size=2))
            try:
                return await action(SqlUserStore(database))
            finally:
                await database.close()

        return asyncio.run(run())


def sqlite_in(folder: Path) -> Target:
    return Target(load_settings(None, data_dir=folder).db_uri, ["--data-dir", str(folder)])


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mariadb", marks=pytest.mark.mariadb),
    ]
)
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Target:
    """SQLite through --data-dir, PostgreSQL through --db, MariaDB through the environment."""
    if request.param == "sqlite":
        return sqlite_in(tmp_path / "data")
    if request.param == "postgres":
        uri = str(request.getfixturevalue("pg_uri"))
        return Target(uri, ["--db", uri])
    uri = str(request.getfixturevalue("mariadb_uri"))
    return Target(uri, [], {"FLOWYARD_DATABASE_URI": uri})


@pytest.fixture
def sqlite_target(tmp_path: Path) -> Target:
    return sqlite_in(tmp_path / "data")


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result.stdout


def fails(result: subprocess.CompletedProcess[str], words: str) -> None:
    """Exit 1 with one ``error:`` line that says ``words``."""
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert words in lines[0]


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def signs_in(target: Target, name: str, password: str) -> bool:
    return target.store(lambda s: s.check_password(name, password)) is not None


def token_works(target: Target, secret: str) -> bool:
    return target.store(lambda s: s.authenticate_token(secret, utcnow())) is not None


def test_users_and_tokens_round_trip(target: Target) -> None:
    out = ok(target.run("create", "root", "--admin", "--password-stdin", stdin=PASSWORD + "\n"))
    assert out.strip() == "created user root (admin)"
    out = ok(target.run("create", "alice", "--password-stdin", stdin=PASSWORD + "\n"))
    assert out.strip() == "created user alice (user)"
    fails(
        target.run("create", "alice", "--password-stdin", stdin=PASSWORD + "\n"),
        "user 'alice' exists already",
    )
    fails(target.run("create", "bob", "--password-stdin", stdin="short\n"), "too short")
    users = json_lines(ok(target.run("list", "--json")))
    assert [(u["name"], u["role"], u["disabled"]) for u in users] == [
        ("alice", "user", False),
        ("root", "admin", False),
    ]

    ok(target.run("passwd", "alice", "--password-stdin", stdin=NEW_PASSWORD + "\n"))
    assert not signs_in(target, "alice", PASSWORD)
    assert signs_in(target, "alice", NEW_PASSWORD)

    created = target.run("token", "create", "alice", "--name", "ci", "--expires", "7")
    secret = ok(created).strip()
    assert created.stdout == secret + "\n"  # alone, for $(...)
    assert secret.startswith(TOKEN_PREFIX)
    assert "not shown again" in created.stderr
    token_id = token_id_of(secret)
    assert token_id is not None
    assert token_works(target, secret)
    listed = ok(target.run("token", "list", "--json"))
    assert secret not in listed
    [token] = json_lines(listed)
    assert (token["id"], token["user"], token["name"], token["revoked_at"]) == (
        token_id,
        "alice",
        "ci",
        None,
    )
    assert token["expires_at"] is not None

    assert ok(target.run("disable", "alice")).strip() == "disabled user alice"
    assert not signs_in(target, "alice", NEW_PASSWORD)
    assert not token_works(target, secret)

    assert token_id in ok(target.run("token", "revoke", token_id))
    target.store(lambda s: s.set_disabled("alice", False))
    assert not token_works(target, secret)  # revoked, even with alice enabled again

    ok(target.run("remove", "alice", "--yes"))
    assert [u["name"] for u in json_lines(ok(target.run("list", "--json")))] == ["root"]
    assert target.store(lambda s: s.tokens(kind=None)) == []


def test_the_other_commands(sqlite_target: Target) -> None:
    target = sqlite_target
    ok(target.run("create", "root", "--admin", "--password-stdin", stdin=PASSWORD + "\n"))
    target.store(lambda s: s.create("alice", PASSWORD, Role.user))
    _, secret = target.store(lambda s: s.create_token("alice", name="laptop"))
    token_id = token_id_of(secret)
    assert token_id is not None

    table = ok(target.run("list"))
    assert table.splitlines()[0].split() == ["Name", "Role", "Disabled", "Created", "Last", "login"]
    assert "alice" in table
    assert "root" in table
    table = ok(target.run("token", "list", "alice"))
    assert token_id in table
    assert "laptop" in table
    assert secret not in table

    fails(target.run("disable", "root"), "last admin")
    fails(target.run("role", "root", "user"), "last admin")
    assert ok(target.run("role", "alice", "admin")).strip() == "alice is now an admin"
    ok(target.run("disable", "root"))  # alice is an admin too now
    assert ok(target.run("enable", "root")).strip() == "enabled user root"
    assert ok(target.run("role", "alice", "user")).strip() == "alice is now a user"
    assert [u.role for u in target.store(lambda s: s.list())] == [Role.user, Role.admin]

    fails(target.run("remove", "alice"), "--yes")  # no terminal to confirm on
    ok(target.run("token", "revoke", token_id))
    ok(target.run("token", "revoke", token_id))  # again: fine
    [token] = json_lines(ok(target.run("token", "list", "alice", "--json")))
    assert token["revoked_at"] is not None


@pytest.mark.parametrize(
    ("args", "stdin", "words"),
    [
        (["create", "b@d", "--password-stdin"], PASSWORD + "\n", "is not a valid user name"),
        (["create", "../etc", "--password-stdin"], PASSWORD + "\n", "is not a valid user name"),
        (["create", "bob", "--password-stdin"], "\n", "must not be empty"),
        (["create", "bob", "--password-stdin"], "", "must not be empty"),
        (["create", "bobsmith", "--password-stdin"], "BobSmith\n", "too easy"),
        (["create", "bob"], None, "--password-stdin"),  # no terminal to prompt on
        (["passwd", "bob"], None, "no user is named 'bob'"),
        (["token", "create", "nobody"], None, "no user is named 'nobody'"),
        (["token", "create", "root", "--name", ""], None, "token name"),
        (["token", "list", "nobody"], None, "no user is named 'nobody'"),
        (["token", "revoke", "feedfeedfeedfeed"], None, "no token has id 'feedfeedfeedfeed'"),
        (["role", "nobody", "admin"], None, "no user is named 'nobody'"),
        (["remove", "nobody", "--yes"], None, "no user is named 'nobody'"),
    ],
)
def test_errors_are_one_line(
    sqlite_target: Target, args: list[str], stdin: str | None, words: str
) -> None:
    fails(sqlite_target.run(*args, stdin=stdin), words)


def test_a_fresh_folder_works_and_a_password_is_no_argument(sqlite_target: Target) -> None:
    assert "no users" in ok(sqlite_target.run("list"))
    result = sqlite_target.run("create", "bob", PASSWORD)
    assert result.returncode == 2  # a usage error: there is no password argument
    assert "Traceback" not in result.stderr
    assert sqlite_target.store(lambda s: s.list()) == []


def test_a_bad_database_uri_is_one_line() -> None:
    fails(Target("", ["--db", "oracle://nowhere/db"]).run("list"), "oracle")


def read_until(fd: int, words: str, timeout: float = 30.0) -> str:
    """Read a pseudo terminal until ``words`` appear (bounded)."""
    seen = b""
    deadline = time.monotonic() + timeout
    while words.encode() not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"waited for {words!r}, saw {seen!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                chunk = os.read(fd, 1024)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
    return seen.decode(errors="replace")


def test_the_password_prompt_asks_twice_and_echoes_nothing(sqlite_target: Target) -> None:
    main, child = pty.openpty()
    try:
        proc = subprocess.Popen(
            [*flowyard_command(), "users", "create", "dave", *sqlite_target.args],
            stdin=child,
            stdout=child,
            stderr=child,
            env=clean_env(TERM="dumb"),
            start_new_session=True,  # no controlling terminal: the prompt uses this one
        )
        try:
            # the space after the colon is written once echo is off
            shown = read_until(main, "Password: ")
            os.write(main, PASSWORD.encode() + b"\n")
            shown += read_until(main, "confirmation: ")
            os.write(main, PASSWORD.encode() + b"\n")
            shown += read_until(main, "created user dave (user)")
            assert proc.wait(timeout=30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
    finally:
        os.close(child)
        os.close(main)
    assert PASSWORD not in shown
    assert signs_in(sqlite_target, "dave", PASSWORD)
