"""The CLI's own logic: parameter parsing, error mapping, exit codes, event following.

No server runs here: the client is exercised against ``httpx.MockTransport`` so that
its mapping of responses to ``core.errors`` is tested on its own.
"""

from __future__ import annotations

import importlib
import json
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
import typer
from typer.testing import CliRunner

from flowyard.core.errors import (
    Conflict,
    FlowFailed,
    FlowNotFound,
    FlowyardError,
    InvalidInput,
    NotFound,
    OutputNotFound,
    ParamsTooLarge,
    RequestTooLarge,
    TaskFinished,
    TaskNotFound,
    Unavailable,
    UnsafeFileName,
    UnsupportedMediaType,
    UploadTooLarge,
)
from flowyard.core.events import Event, TaskDone, TaskProgress
from flowyard.core.replay import EventFilter, parse_point
from flowyard.services.cli import follow as follow_module
from flowyard.services.cli.events import replay_flags
from flowyard.services.cli.flows import describe_params
from flowyard.services.cli.follow import Follower
from flowyard.services.cli.params import build_params, parse_param, parse_param_value
from flowyard.services.cli.run import check_succeeded
from flowyard.services.cli.tasks import parse_task_id
from flowyard.services.client import Client, TaskOut, error_from_response

TASK_ID = "3f2b8c1e-4d5a-4b6c-8d7e-9f0a1b2c3d4e"
SERVER = "http://flowyard.test"
CLIENT = "flowyard.services.cli.connect.Client"
"""The one name every client command builds its connection with."""


def task_json(**changes: Any) -> dict[str, Any]:
    """A task as ``GET /api/tasks/{id}`` returns it."""
    now = "2026-03-01T12:00:00Z"
    task = {
        "id": TASK_ID, "flow": "image.blur", "owner": "admin", "state": "queued",
        "progress": 0.0, "message": "", "params": {}, "priority": 0, "attempt": 0,
        "max_attempts": 3, "worker_id": None, "cancel_requested": False, "error": None,
        "inputs": [], "outputs": [], "created_at": now, "claimed_at": None,
        "finished_at": None, "cancelled_at": None, "updated_at": now,
    }  # fmt: skip
    return task | changes


def mock_client(handler: Callable[[httpx.Request], httpx.Response]) -> Callable[..., Client]:
    """A stand-in for ``Client`` whose requests go to ``handler``."""

    def build(*args: Any, **kwargs: Any) -> Client:
        return Client(*args, transport=httpx.MockTransport(handler), **kwargs)

    return build


# Modules that main.py imports for the server-side commands (serve, worker). They pull in
# the API, the database and the flows; these tests are about the client side only.
SERVER_SIDE_MODULES = ("flowyard.services.cli.serve", "flowyard.services.cli.worker")


def _stub_command() -> None:
    """Stands in for a server-side command."""


def _stub_module(name: str) -> ModuleType:
    """A module whose every attribute is a stub command, whatever main.py imports from it."""
    module = ModuleType(name)
    module.__getattr__ = lambda attr: _stub_command  # type: ignore[method-assign]
    return module


@pytest.fixture
def cli_main(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """``services.cli.main`` imported with the server-side command modules stubbed."""
    for name in SERVER_SIDE_MODULES:
        monkeypatch.setitem(sys.modules, name, _stub_module(name))
    monkeypatch.delitem(sys.modules, "flowyard.services.cli.main", raising=False)
    yield importlib.import_module("flowyard.services.cli.main")
    sys.modules.pop("flowyard.services.cli.main", None)


@pytest.fixture
def no_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if a command builds a client at all."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the command must not call the server")

    monkeypatch.setattr(CLIENT, refuse)


# -- parameters ----------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("3", 3),
        ("2.5", 2.5),
        ("true", True),
        ("false", False),
        ("[1,2]", [1, 2]),
        ('{"a": 1}', {"a": 1}),
        ("null", None),
        ('"quoted"', "quoted"),
        ("hello", "hello"),
        ("", ""),
        ("NaN", "NaN"),
        ("Infinity", "Infinity"),
        ("1e3", 1000.0),
    ],
)
def test_param_value_is_json_when_it_parses(raw: str, expected: Any) -> None:
    value = parse_param_value(raw)
    assert value == expected
    assert type(value) is type(expected)


def test_param_keys_stay_flat_and_value_keeps_equals() -> None:
    assert parse_param("a.b=1") == ("a.b", 1)
    assert parse_param("expr=x=y") == ("expr", "x=y")


@pytest.mark.parametrize("item", ["radius", "=3"])
def test_bad_param_is_invalid_input(item: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_param(item)
    assert item in caught.value.message
    assert caught.value.field == "--param"


def test_params_json_is_the_base_and_params_override() -> None:
    params = build_params('{"radius": 1, "mode": "fast"}', ["radius=2.5", "extra=[1]"])
    assert params == {"radius": 2.5, "mode": "fast", "extra": [1]}


@pytest.mark.parametrize("text", ["[1, 2]", "{oops", "NaN"])
def test_params_json_must_be_an_object(text: str) -> None:
    with pytest.raises(InvalidInput):
        build_params(text, [])


def test_task_id_must_be_a_uuid() -> None:
    assert parse_task_id(TASK_ID.upper()) == TASK_ID
    with pytest.raises(InvalidInput, match="not-a-uuid"):
        parse_task_id("not-a-uuid")


def test_param_types_from_a_pydantic_schema() -> None:
    schema = {
        "properties": {
            "radius": {"type": "number", "default": 2.0},
            "mode": {"$ref": "#/$defs/Mode"},
            "size": {"anyOf": [{"type": "integer"}, {"type": "null"}], "default": None},
            "sizes": {"type": "array", "items": {"type": "integer"}},
        },
        "required": ["sizes"],
        "$defs": {"Mode": {"enum": ["fast", "best"], "type": "string"}},
    }
    assert describe_params(schema) == [
        "radius: number = 2.0",
        'mode: "fast"|"best"',
        "size: integer | null = null",
        "sizes*: array[integer]",
    ]


# -- commands without a server ---------------------------------------------


def test_param_without_equals_is_a_usage_error(cli_main: ModuleType, no_server: None) -> None:
    app = cli_main.build_app(include_server=False)
    result = CliRunner().invoke(app, ["run", "image.blur", "--param", "radius"])
    assert result.exit_code == 2
    assert "radius" in result.stderr
    assert "Traceback" not in result.output


def test_run_with_missing_input_names_the_path(
    cli_main: ModuleType, no_server: None, tmp_path: Path
) -> None:
    missing = tmp_path / "missing.png"
    app = cli_main.build_app(include_server=False)
    result = CliRunner().invoke(app, ["run", "image.blur", "--input", str(missing)])
    assert result.exit_code == 1
    assert result.stderr.strip() == f"error: input file not found: {missing}"
    assert "Traceback" not in result.output


def test_tasks_show_refuses_a_bad_id(cli_main: ModuleType, no_server: None) -> None:
    app = cli_main.build_app(include_server=False)
    result = CliRunner().invoke(app, ["tasks", "show", "not-a-uuid"])
    assert result.exit_code == 1
    assert "not-a-uuid" in result.stderr
    assert result.stderr.startswith("error: ")
    assert "Traceback" not in result.output


def test_main_turns_a_flowyard_error_into_exit_1(
    cli_main: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    body = {"detail": f"no task {TASK_ID}", "type": "TaskNotFound"}
    monkeypatch.setattr(CLIENT, mock_client(lambda request: httpx.Response(404, json=body)))
    monkeypatch.setattr(sys, "argv", ["flowyard", "tasks", "show", TASK_ID])
    with pytest.raises(SystemExit) as caught:
        cli_main.main()
    assert caught.value.code == 1
    err = capsys.readouterr().err
    assert err.splitlines() == [f"error: no task {TASK_ID}"]


def test_run_cli_handles_errors_outside_the_flowyard_group(
    cli_main: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    plain = typer.Typer()

    @plain.command()
    def boom() -> None:
        raise FlowyardError("it broke")

    @plain.command()
    def other() -> None:
        """A second command so that typer keeps subcommand names."""

    assert cli_main.run_cli(plain, ["boom"]) == 1
    assert capsys.readouterr().err.splitlines() == ["error: it broke"]
    assert cli_main.run_cli(plain, ["nope"]) == 2


def test_unreachable_server_is_one_line(
    cli_main: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    app = cli_main.build_app(include_server=False)
    code = cli_main.run_cli(app, ["flows", "list", "--server", "http://127.0.0.1:9"])
    assert code == 1
    assert capsys.readouterr().err.splitlines() == [
        "error: cannot reach the flowyard server at http://127.0.0.1:9"
        " — is `flowyard serve` running?"
    ]


# -- the client's error mapping --------------------------------------------


def _client(handler: Callable[[httpx.Request], httpx.Response]) -> Client:
    return Client(SERVER, transport=httpx.MockTransport(handler))


def _error(status: int, **body: Any) -> Callable[[httpx.Request], httpx.Response]:
    return lambda request: httpx.Response(status, json=body)


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (404, {"detail": "no task", "type": "TaskNotFound"}, TaskNotFound),
        (404, {"detail": "no flow", "type": "FlowNotFound"}, FlowNotFound),
        (404, {"detail": "no output", "type": "OutputNotFound"}, OutputNotFound),
        (404, {"detail": "gone"}, NotFound),
        (404, {"detail": "odd", "type": "Conflict"}, NotFound),
        (409, {"detail": "already done", "type": "TaskFinished"}, TaskFinished),
        (409, {"detail": "busy"}, Conflict),
        (400, {"detail": "bad name", "type": "UnsafeFileName"}, UnsafeFileName),
        (413, {"detail": "too big"}, RequestTooLarge),
        (413, {"detail": "file too big", "type": "UploadTooLarge"}, UploadTooLarge),
        (413, {"detail": "params too big", "type": "ParamsTooLarge"}, ParamsTooLarge),
        (415, {"detail": "not JSON", "type": "UnsupportedMediaType"}, UnsupportedMediaType),
    ],
)
async def test_error_status_maps_to_core_error(
    status: int, body: dict[str, Any], expected: type[FlowyardError]
) -> None:
    async with _client(_error(status, **body)) as api:
        with pytest.raises(FlowyardError) as caught:
            await api.get_task(TASK_ID)
    assert type(caught.value) is expected
    assert caught.value.message == body["detail"]


async def test_invalid_input_carries_the_field() -> None:
    handler = _error(
        400, detail="params.radius must be >= 0", field="params.radius", type="InvalidInput"
    )
    async with _client(handler) as api:
        with pytest.raises(InvalidInput) as caught:
            await api.create_task("image.blur", {"radius": -1})
    assert type(caught.value) is InvalidInput
    assert caught.value.field == "params.radius"
    assert caught.value.message == "params.radius must be >= 0"


def test_fastapi_validation_list_becomes_invalid_input() -> None:
    body = {"detail": [{"loc": ["body", "params", "radius"], "msg": "too small"}]}
    error = error_from_response(422, body)
    assert type(error) is InvalidInput
    assert error.field == "params.radius"
    assert error.message == "params.radius: too small"


@pytest.mark.parametrize(
    ("status", "expected"), [(500, FlowyardError), (503, Unavailable), (502, Unavailable)]
)
async def test_server_errors(status: int, expected: type[FlowyardError]) -> None:
    async with _client(_error(status, detail="boom")) as api:
        with pytest.raises(FlowyardError) as caught:
            await api.list_flows()
    assert type(caught.value) is expected
    assert caught.value.message == f"server error {status}: boom"


async def test_server_error_without_json_uses_the_text() -> None:
    async with _client(lambda request: httpx.Response(500, text="Internal Server Error")) as api:
        with pytest.raises(FlowyardError, match=r"^server error 500: Internal Server Error$"):
            await api.health()


@pytest.mark.parametrize("server", ["localhost:8288", "ftp://host", "http://"])
def test_server_url_must_be_http(server: str) -> None:
    with pytest.raises(FlowyardError, match=r"--server|server URL"):
        Client(server)


# -- the client's requests -------------------------------------------------


async def test_create_task_streams_files_as_multipart(tmp_path: Path) -> None:
    image = tmp_path / "in.png"
    image.write_bytes(b"\x89PNG-bytes")
    seen: dict[str, Any] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen["content_type"] = request.headers["content-type"]
        seen["body"] = request.content
        return httpx.Response(201, json=task_json())

    async with _client(handler) as api:
        with image.open("rb") as handle:
            task = await api.create_task(
                "image.blur",
                {"radius": 2},
                priority=5,
                inputs=[("in.png", handle, "image/png")],
            )
    assert str(task.id) == TASK_ID
    assert seen["content_type"].startswith("multipart/form-data")
    body: bytes = seen["body"]
    assert b'name="inputs"; filename="in.png"' in body
    assert b"\x89PNG-bytes" in body
    assert b'{"radius": 2}' in body
    assert b'name="priority"\r\n\r\n5' in body
    assert b'name="owner"' not in body


async def test_create_task_without_files_sends_json() -> None:
    seen: dict[str, Any] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen["json"] = json.loads(request.content)
        return httpx.Response(201, json=task_json())

    async with _client(handler) as api:
        await api.create_task("debug.sleep", {"seconds": 1}, owner="ann")
    assert seen["json"] == {"flow": "debug.sleep", "params": {"seconds": 1}, "owner": "ann"}


def _names(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


async def test_download_writes_whole_files_only(tmp_path: Path) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/out.png"):
            return httpx.Response(200, content=b"x" * 200_000)
        return httpx.Response(404, json={"detail": "no output", "type": "OutputNotFound"})

    async with _client(handler) as api:
        path = await api.download_output(
            TASK_ID, "out.png", tmp_path, url=f"/api/tasks/{TASK_ID}/outputs/out.png"
        )
        with pytest.raises(OutputNotFound):
            await api.download_output(TASK_ID, "gone.png", tmp_path)
        with pytest.raises(UnsafeFileName):
            await api.download_output(TASK_ID, "../evil", tmp_path)
    assert path == tmp_path / "out.png"
    assert path.read_bytes() == b"x" * 200_000
    assert _names(tmp_path) == ["out.png"]  # no partial file left behind


async def test_stream_events_skips_keep_alives() -> None:
    task_id = uuid.UUID(TASK_ID)
    progress = TaskProgress(task_id=task_id, flow="image.blur", progress=0.5)
    done = TaskDone(task_id=task_id, flow="image.blur", status="succeeded")
    body = (
        ": keep-alive\n\n"
        f"event: task.progress\nid: {progress.id}\ndata: {progress.to_json()}\n\n"
        ": keep-alive\n\n"
        f"event: task.done\nid: {done.id}\ndata: {done.to_json()}\n\n"
    )

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.params["task"] == TASK_ID
        return httpx.Response(200, text=body, headers={"content-type": "text/event-stream"})

    async with _client(handler) as api:
        events = [event async for event in api.stream_events(TASK_ID)]
    assert events == [progress, done]


async def test_event_stream_error_status_is_mapped() -> None:
    async with _client(_error(404, detail="no task", type="TaskNotFound")) as api:
        with pytest.raises(TaskNotFound):
            async with api.open_event_stream(TASK_ID):
                pass


# -- following a task --------------------------------------------------------


class FakeView:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def show_task(self, task: TaskOut) -> None:
        pass

    def show_event(self, event: Event) -> None:
        self.events.append(event)

    def note(self, text: str) -> None:
        pass


class FakeApi:
    """Fails the first stream like a restarting server, then delivers progress and done."""

    def __init__(self, final_state: str) -> None:
        self.final_state = final_state
        self.opens = 0
        self.gets = 0
        self.done = False

    @asynccontextmanager
    async def open_event_stream(
        self, task_id: str, *, last_event_id: str | None = None
    ) -> AsyncIterator[AsyncIterator[Event]]:
        self.opens += 1
        if self.opens == 1:
            raise httpx.ConnectError("connection refused")
        yield self._events(uuid.UUID(task_id))

    async def _events(self, task_id: uuid.UUID) -> AsyncIterator[Event]:
        yield TaskProgress(task_id=task_id, flow="f", progress=0.5)
        self.done = True
        yield TaskDone(task_id=task_id, flow="f", status=self.final_state)  # type: ignore[arg-type]

    async def get_task(self, task_id: str) -> TaskOut:
        self.gets += 1
        state = self.final_state if self.done else "running"
        return TaskOut.model_validate(task_json(id=task_id, state=state, error="bad pixels"))


@pytest.mark.parametrize("final_state", ["succeeded", "failed"])
async def test_follower_reconnects_and_returns_the_finished_task(
    monkeypatch: pytest.MonkeyPatch, final_state: str
) -> None:
    monkeypatch.setattr(follow_module, "RECONNECT_BASE_SECONDS", 0.0)
    api, view = FakeApi(final_state), FakeView()
    task = await Follower(api, TASK_ID, view).run()  # type: ignore[arg-type]
    assert task.state == final_state
    assert api.opens == 2
    assert [event.type for event in view.events] == ["task.progress", "task.done"]


def test_failed_task_is_a_flow_failed_error() -> None:
    task = TaskOut.model_validate(task_json(state="failed", error="bad pixels"))
    with pytest.raises(FlowFailed, match=f"^task {TASK_ID} failed: bad pixels$"):
        check_succeeded(task)


# -- replay errors name the options ------------------------------------------


def test_replay_field_names_become_the_options() -> None:
    with pytest.raises(InvalidInput) as caught, replay_flags():
        EventFilter(since=5, until=5)
    assert caught.value.message.startswith("--since 5 is not before --until 5")
    assert "(--since is inclusive, --until exclusive)" in caught.value.message
    assert caught.value.field == "--since"
    with pytest.raises(InvalidInput, match=r"^--until: 'soon' is neither"), replay_flags():
        parse_point("soon", "until")
