"""Credentials of the client commands: precedence, the credentials file, login and logout.

No network: the server is an ``httpx.MockTransport`` that knows one user and the
tokens it issued, and the credentials file lives under ``tmp_path`` through
``XDG_CONFIG_HOME``.
"""

from __future__ import annotations

import base64
import functools
import importlib
import json
import os
import stat
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
import typer
from typer.testing import CliRunner

from flowyard.core.errors import ConfigError, Forbidden, TooManyAttempts, Unauthenticated
from flowyard.services.cli import credentials
from flowyard.services.cli.connect import open_client
from flowyard.services.cli.credentials import (
    StoredToken,
    TokenOption,
    UserOption,
    credentials_path,
    forget_token,
    resolve_auth,
    save_token,
    stored_token,
)
from flowyard.services.client import BearerAuth, Client, error_from_response, normalise_server

SERVER = "http://flowyard.test:8288"
CLIENT = "flowyard.services.cli.connect.Client"
TASK_ID = "3f2b8c1e-4d5a-4b6c-8d7e-9f0a1b2c3d4e"
AUTH_VARIABLES = ("FLOWYARD_TOKEN", "FLOWYARD_USER", "FLOWYARD_PASSWORD", "FLOWYARD_SERVER")
SERVER_SIDE_MODULES = (
    "flowyard.services.cli.serve",
    "flowyard.services.cli.worker",
    "flowyard.services.cli.users",
)


@pytest.fixture(autouse=True)
def config_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private XDG_CONFIG_HOME and none of the credentials the test session exports."""
    for name in AUTH_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "config"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    return home


def _file(config_home: Path) -> Path:
    return config_home / "flowyard" / "credentials.json"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- the credentials file ------------------------------------------------------


def test_path_follows_xdg_and_ignores_a_relative_value(tmp_path: Path) -> None:
    home = Path.home()
    assert credentials_path({"XDG_CONFIG_HOME": str(tmp_path)}) == (
        tmp_path / "flowyard" / "credentials.json"
    )
    assert credentials_path({}) == home / ".config" / "flowyard" / "credentials.json"
    assert credentials_path({"XDG_CONFIG_HOME": "rel/dir"}) == (
        home / ".config" / "flowyard" / "credentials.json"
    )


def test_save_creates_a_private_folder_and_file_whatever_the_umask(config_home: Path) -> None:
    old = os.umask(0)
    try:
        path = save_token(SERVER, StoredToken("fyt_a_b", "tok1", "alice"))
    finally:
        os.umask(old)
    assert path == _file(config_home)
    assert _mode(path.parent) == 0o700
    assert _mode(path) == 0o600
    assert json.loads(path.read_text()) == {
        SERVER: {"token": "fyt_a_b", "token_id": "tok1", "user": "alice"}
    }
    assert [p.name for p in path.parent.iterdir()] == ["credentials.json"]  # no temp file left


@pytest.mark.parametrize(
    "spelling", ["HTTP://Flowyard.TEST:8288/", "http://flowyard.test:8288//", SERVER]
)
def test_servers_are_keyed_by_their_normalised_url(spelling: str) -> None:
    save_token(spelling, StoredToken("fyt_x_y", "id", "alice"))
    assert stored_token(SERVER) == StoredToken("fyt_x_y", "id", "alice")
    assert json.loads(credentials_path().read_text()).keys() == {SERVER}


def test_default_ports_and_paths_normalise() -> None:
    assert normalise_server("http://Host:80/") == "http://host"
    assert normalise_server("https://host:443/prefix/") == "https://host/prefix"
    with pytest.raises(ConfigError, match="user name or password"):
        normalise_server("http://alice:secret@host")


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_a_file_others_can_read_is_refused_with_the_fix(config_home: Path, mode: int) -> None:
    path = save_token(SERVER, StoredToken("fyt_a_b"))
    path.chmod(mode)
    with pytest.raises(ConfigError) as caught:
        stored_token(SERVER)
    message = caught.value.message
    assert f"chmod 600 {path}" in message
    assert "\n" not in message
    with pytest.raises(ConfigError):  # and nothing is written over it either
        save_token(SERVER, StoredToken("fyt_c_d"))


def test_invalid_json_names_the_file(config_home: Path) -> None:
    path = _file(config_home)
    path.parent.mkdir(parents=True)
    path.write_text("{oops")
    path.chmod(0o600)
    with pytest.raises(ConfigError, match="not valid JSON"):
        stored_token(SERVER)


def test_forget_removes_only_that_server() -> None:
    save_token(SERVER, StoredToken("fyt_1_a", "1", "alice"))
    save_token("http://other.test", StoredToken("fyt_2_b", "2", "bob"))
    assert forget_token(SERVER + "/") == StoredToken("fyt_1_a", "1", "alice")
    assert forget_token(SERVER) is None
    assert stored_token(SERVER) is None
    assert stored_token("http://other.test") == StoredToken("fyt_2_b", "2", "bob")
    assert _mode(credentials_path()) == 0o600


# -- resolving -----------------------------------------------------------------


def _basic(auth: httpx.Auth | None) -> tuple[str, str]:
    assert isinstance(auth, httpx.BasicAuth)
    request = next(auth.auth_flow(httpx.Request("GET", SERVER)))
    name, _, password = (
        base64.b64decode(request.headers["authorization"].split()[1]).decode().partition(":")
    )
    return name, password


def test_nothing_given_and_nothing_stored_is_no_auth() -> None:
    assert resolve_auth(SERVER) is None


def test_a_stored_token_is_used_and_marked_stored() -> None:
    save_token(SERVER, StoredToken("fyt_s_t", "id", "alice"))
    auth = resolve_auth(SERVER + "/")
    assert isinstance(auth, BearerAuth)
    assert (auth.token, auth.stored) == ("fyt_s_t", True)


def test_user_beats_a_stored_token_and_takes_the_password_from_env() -> None:
    save_token(SERVER, StoredToken("fyt_s_t"))
    auth = resolve_auth(SERVER, None, "alice", env={"FLOWYARD_PASSWORD": "pw-of-alice"})
    assert _basic(auth) == ("alice", "pw-of-alice")


def test_token_beats_user_and_is_stripped() -> None:
    auth = resolve_auth(SERVER, " fyt_t_u\n", "alice", env={"FLOWYARD_PASSWORD": "pw"})
    assert isinstance(auth, BearerAuth)
    assert (auth.token, auth.stored) == ("fyt_t_u", False)


def test_an_explicit_token_never_reads_a_broken_file(config_home: Path) -> None:
    path = _file(config_home)
    path.parent.mkdir(parents=True)
    path.write_text("{}")
    path.chmod(0o644)
    assert isinstance(resolve_auth(SERVER, "fyt_t_u"), BearerAuth)
    with pytest.raises(ConfigError, match="chmod 600"):
        resolve_auth(SERVER)


def test_a_token_with_blanks_inside_is_refused() -> None:
    with pytest.raises(ConfigError, match="FLOWYARD_TOKEN"):
        resolve_auth(SERVER, "fyt_a b")


def test_user_without_password_and_no_terminal_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(credentials, "interactive", lambda: False)
    with pytest.raises(ConfigError, match="FLOWYARD_PASSWORD"):
        resolve_auth(SERVER, None, "alice", env={})


def test_user_without_password_on_a_terminal_is_asked_hidden(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asked: list[str] = []
    monkeypatch.setattr(credentials, "interactive", lambda: True)
    monkeypatch.setattr(credentials, "prompt_hidden", lambda text: asked.append(text) or "typed")
    assert _basic(resolve_auth(SERVER, None, "alice", env={})) == ("alice", "typed")
    assert asked == [f"Password for alice at {SERVER}"]


def _probe_app(seen: list[httpx.Auth | None]) -> typer.Typer:
    """A command with the shared options, as every client command declares them."""
    app = typer.Typer()

    @app.command()
    def probe(token: TokenOption = None, user: UserOption = None) -> None:
        seen.append(resolve_auth(SERVER, token, user))

    @app.command()
    def other() -> None:
        """Keeps typer from collapsing the app into one command."""

    return app


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        ([], {"FLOWYARD_TOKEN": "fyt_env_tok"}, ("bearer", "fyt_env_tok")),
        (["--token", "fyt_arg_tok"], {"FLOWYARD_TOKEN": "fyt_env_tok"}, ("bearer", "fyt_arg_tok")),
        ([], {"FLOWYARD_USER": "bob", "FLOWYARD_PASSWORD": "pw"}, ("basic", "bob")),
        (
            ["--user", "carol"],
            {"FLOWYARD_USER": "bob", "FLOWYARD_PASSWORD": "pw"},
            ("basic", "carol"),
        ),
        (
            ["--user", "carol"],
            {"FLOWYARD_TOKEN": "fyt_env_tok", "FLOWYARD_PASSWORD": "pw"},
            ("bearer", "fyt_env_tok"),
        ),
        ([], {"FLOWYARD_TOKEN": ""}, ("stored", "fyt_stored")),
    ],
)
def test_options_and_env_vars_follow_the_precedence(
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    env: dict[str, str],
    expected: tuple[str, str],
) -> None:
    save_token(SERVER, StoredToken("fyt_stored", "id", "alice"))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    seen: list[httpx.Auth | None] = []
    result = CliRunner().invoke(_probe_app(seen), ["probe", *args])
    assert result.exit_code == 0, result.output
    auth = seen[0]
    if isinstance(auth, BearerAuth):
        got = ("stored" if auth.stored else "bearer", auth.token)
    else:
        got = ("basic", _basic(auth)[0])
    assert got == expected


# -- the client: sending credentials and explaining refusals -------------------


def _recording(seen: list[httpx.Request]) -> Callable[[httpx.Request], httpx.Response]:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path.endswith("/outputs/out.png") or "elsewhere" in str(request.url):
            return httpx.Response(200, content=b"png")
        if request.url.path == "/api/events/stream":
            return httpx.Response(200, text="", headers={"content-type": "text/event-stream"})
        return httpx.Response(200, json={"items": []})

    return handler


async def test_credentials_go_with_requests_streams_and_downloads_to_the_server_only(
    tmp_path: Path,
) -> None:
    seen: list[httpx.Request] = []
    transport = httpx.MockTransport(_recording(seen))
    async with Client(SERVER, auth=BearerAuth("fyt_a_b"), transport=transport) as api:
        await api.list_flows()
        assert [event async for event in api.stream_events(TASK_ID)] == []
        await api.download_output(TASK_ID, "out.png", tmp_path)
        await api.download_output(TASK_ID, "far.png", tmp_path, url="http://elsewhere.test/far.png")
    assert [r.headers.get("authorization") for r in seen] == ["Bearer fyt_a_b"] * 3 + [None]


def _refusing(status: int, kind: str, detail: str) -> httpx.MockTransport:
    body = {"detail": detail, "field": None, "type": kind}
    return httpx.MockTransport(lambda request: httpx.Response(status, json=body))


@pytest.mark.parametrize(
    ("auth", "words"),
    [
        (None, "needs you to sign in: run"),
        (BearerAuth("fyt_s_t", stored=True), "may have expired or been revoked"),
        (BearerAuth("fyt_s_t"), "the token was refused: invalid or expired token"),
        (httpx.BasicAuth("alice", "pw"), "user name and password were refused"),
    ],
)
async def test_a_401_is_one_line_that_says_how_to_sign_in(
    auth: httpx.Auth | None, words: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    transport = _refusing(401, "Unauthenticated", "invalid or expired token")
    monkeypatch.setattr(CLIENT, functools.partial(Client, transport=transport))
    async with open_client(SERVER, auth) as api:
        with pytest.raises(Unauthenticated) as caught:
            await api.list_tasks()
    message = caught.value.message
    assert type(caught.value) is Unauthenticated
    assert words in message
    assert f"run 'flowyard login {SERVER}'" in message
    assert "--token / set FLOWYARD_TOKEN, or --user with FLOWYARD_PASSWORD" in message
    assert "\n" not in message


async def test_throttling_and_forbidden_keep_the_servers_words() -> None:
    throttled = httpx.MockTransport(
        lambda request: httpx.Response(
            429,
            json={"detail": "too many failed sign-ins", "type": "TooManyAttempts"},
            headers={"Retry-After": "42"},
        )
    )
    async with Client(SERVER, transport=throttled) as api:
        with pytest.raises(TooManyAttempts) as caught:
            await api.list_tasks()
    assert (caught.value.message, caught.value.retry_after) == ("too many failed sign-ins", 42.0)
    async with Client(SERVER, transport=_refusing(403, "Forbidden", "admins only")) as api:
        with pytest.raises(Forbidden, match=r"^admins only$"):
            await api.list_webhooks()


def test_status_table_maps_auth_errors() -> None:
    assert type(error_from_response(401, {"detail": "x"})) is Unauthenticated
    assert type(error_from_response(401, {"detail": "x", "type": "Forbidden"})) is Unauthenticated
    assert type(error_from_response(403, {"detail": "x"})) is Forbidden
    assert type(error_from_response(429, {"detail": "x"})) is TooManyAttempts


# -- commands: a fake server with one user -------------------------------------


class FakeServer:
    """``/api/me``, ``/api/me/tokens`` and ``/api/tasks`` behind Basic or Bearer auth."""

    def __init__(self, password: str = "alice-pw-1") -> None:
        self.password = password
        self.tokens: dict[str, str] = {}  # secret -> id
        self.revoked: list[str] = []
        self.created: list[dict[str, Any]] = []
        self.down = False

    def handle(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            raise httpx.ConnectError("connection refused", request=request)
        if not self._signed_in(request.headers.get("authorization", "")):
            return httpx.Response(
                401, json={"detail": "sign in first", "field": None, "type": "Unauthenticated"}
            )
        path, method = request.url.path, request.method
        if (method, path) == ("GET", "/api/me"):
            return httpx.Response(
                200, json={"name": "alice", "role": "user", "auth_required": True}
            )
        if (method, path) == ("POST", "/api/me/tokens"):
            body = json.loads(request.content)
            self.created.append(body)
            token_id = uuid.uuid4().hex[:16]
            secret = f"fyt_{token_id}_{uuid.uuid4().hex}"
            self.tokens[secret] = token_id
            created = {"id": token_id, "user": "alice", "name": body["name"], "token": secret}
            created |= {"created_at": "2026-03-01T12:00:00Z", "expires_at": None}
            created |= {"last_used_at": None, "revoked_at": None}
            return httpx.Response(201, json=created)
        if method == "DELETE" and path.startswith("/api/me/tokens/"):
            token_id = path.rsplit("/", 1)[1]
            for secret, known in list(self.tokens.items()):
                if known == token_id:
                    del self.tokens[secret]
                    self.revoked.append(token_id)
                    return httpx.Response(204)
            return httpx.Response(404, json={"detail": "no token", "type": "TokenNotFound"})
        if (method, path) == ("GET", "/api/tasks"):
            page = {"items": [], "limit": 50, "offset": 0, "next_offset": None}
            return httpx.Response(200, json=page)
        return httpx.Response(404, json={"detail": "no route"})

    def _signed_in(self, header: str) -> bool:
        scheme, _, value = header.partition(" ")
        if scheme == "Bearer":
            return value in self.tokens
        if scheme == "Basic":
            return base64.b64decode(value).decode() == f"alice:{self.password}"
        return False


def _stub_module(name: str) -> ModuleType:
    module = ModuleType(name)
    module.__getattr__ = lambda attr: lambda: None  # type: ignore[method-assign]
    return module


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeServer:
    """Every command's Client talks to one FakeServer."""
    server = FakeServer()
    transport = httpx.MockTransport(server.handle)
    monkeypatch.setattr(CLIENT, functools.partial(Client, transport=transport))
    return server


@pytest.fixture
def app(monkeypatch: pytest.MonkeyPatch) -> Iterator[typer.Typer]:
    """The client commands, with the server-side command modules stubbed out."""
    for name in SERVER_SIDE_MODULES:
        monkeypatch.setitem(sys.modules, name, _stub_module(name))
    monkeypatch.delitem(sys.modules, "flowyard.services.cli.main", raising=False)
    main = importlib.import_module("flowyard.services.cli.main")
    yield main.build_app(include_server=False)
    sys.modules.pop("flowyard.services.cli.main", None)


def _invoke(app: typer.Typer, *args: str, stdin: str | None = None) -> Any:
    return CliRunner().invoke(app, list(args), input=stdin)


def test_login_stores_a_token_and_commands_use_it(
    app: typer.Typer, fake: FakeServer, config_home: Path
) -> None:
    denied = _invoke(app, "tasks", "list", "--server", SERVER)
    assert denied.exit_code == 1
    assert denied.stderr.splitlines() == [
        f"error: the server at {SERVER} needs you to sign in: run 'flowyard login {SERVER}', "
        "or pass --token / set FLOWYARD_TOKEN, or --user with FLOWYARD_PASSWORD"
    ]
    result = _invoke(
        app, "login", SERVER + "/", "--user", "alice", "--password-stdin", stdin="alice-pw-1\n"
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"signed in to {SERVER} as alice"
    assert fake.created[0]["name"].startswith("cli on ")
    assert fake.created[0]["expires_days"] == 90
    path = _file(config_home)
    assert _mode(path) == 0o600
    entry = json.loads(path.read_text())[SERVER]
    assert entry["user"] == "alice"
    assert fake.tokens == {entry["token"]: entry["token_id"]}
    assert _invoke(app, "tasks", "list", "--server", SERVER).exit_code == 0


def test_login_again_revokes_the_previous_token(app: typer.Typer, fake: FakeServer) -> None:
    for _ in range(2):
        result = _invoke(
            app,
            "login",
            "--server",
            SERVER,
            "--user",
            "alice",
            "--password-stdin",
            stdin="alice-pw-1",
        )
        assert result.exit_code == 0, result.output
    assert len(fake.revoked) == 1
    assert list(fake.tokens.values()) == [stored_token(SERVER).token_id]  # type: ignore[union-attr]


def test_login_with_a_wrong_password_stores_nothing(
    app: typer.Typer, fake: FakeServer, config_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLOWYARD_PASSWORD", "wrong")
    result = _invoke(app, "login", SERVER, "--user", "alice")
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"error: cannot sign in to {SERVER} as alice: sign in first"
    ]
    assert not _file(config_home).exists()
    assert fake.created == []


def test_a_revoked_stored_token_says_it_may_have_expired(
    app: typer.Typer, fake: FakeServer
) -> None:
    _invoke(app, "login", SERVER, "--user", "alice", "--password-stdin", stdin="alice-pw-1")
    fake.tokens.clear()
    result = _invoke(app, "tasks", "list", "--server", SERVER)
    assert result.exit_code == 1
    (line,) = result.stderr.splitlines()
    assert "may have expired or been revoked" in line
    assert f"flowyard login {SERVER}" in line


def test_logout_revokes_and_forgets(app: typer.Typer, fake: FakeServer) -> None:
    _invoke(app, "login", SERVER, "--user", "alice", "--password-stdin", stdin="alice-pw-1")
    token_id = stored_token(SERVER).token_id  # type: ignore[union-attr]
    result = _invoke(app, "logout", "--server", SERVER)
    assert result.exit_code == 0, result.output
    assert "token is revoked" in result.stdout
    assert fake.revoked == [token_id]
    assert stored_token(SERVER) is None
    assert _invoke(app, "logout", SERVER).stdout.strip() == f"not signed in to {SERVER}"


@pytest.mark.parametrize("trouble", ["down", "already revoked"])
def test_logout_forgets_the_token_even_when_the_server_cannot_revoke_it(
    app: typer.Typer, fake: FakeServer, trouble: str
) -> None:
    _invoke(app, "login", SERVER, "--user", "alice", "--password-stdin", stdin="alice-pw-1")
    if trouble == "down":
        fake.down = True
    else:
        fake.tokens.clear()
    result = _invoke(app, "logout", SERVER)
    assert result.exit_code == 0, result.output
    assert stored_token(SERVER) is None
    if trouble == "down":
        assert "could not revoke the token" in result.stderr
        assert "removed it here only" in result.stderr
    else:
        assert "already expired or been revoked; removed it here" in result.stdout
