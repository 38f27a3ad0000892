"""The ``flowyard`` command: one app, one place where errors become exit codes.

Exit codes: 0 ok, 1 an error the user can act on (printed as one ``error:`` line),
2 a usage error, 130 interrupted. Expected failures never show a traceback.

Start-up time matters (``flowyard --help`` under 0.3 s, ``tasks list`` under
0.5 s): this module imports only typer. Each command's module, and with it
httpx, SQLAlchemy, FastAPI or torch, is imported when that command runs; the
help listing is drawn from ``COMMANDS``, whose help lines a test keeps equal to
the commands' own. ``bench/cli_startup.py`` measures it.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TypeGuard

import typer
from typer import _click
from typer.core import TyperCommand, TyperGroup

from flowyard.core.errors import FlowyardError

if TYPE_CHECKING:
    import httpx

HELP = "Run torch flows as tasks on a flowyard server, and follow them."


@dataclass(frozen=True)
class LazyCommand:
    """A command known by name and help line; its module is imported only to run it."""

    module: str
    attr: str
    help: str
    server: bool = False
    """Server-side (database, API, workers): left out by ``build_app(include_server=False)``."""

    def load(self, name: str) -> _click.Command:
        obj = getattr(importlib.import_module(self.module), self.attr)
        if isinstance(obj, typer.Typer):
            command: _click.Command = typer.main.get_group(obj)
        else:
            single = typer.Typer()
            single.command(name)(obj)
            command = typer.main.get_group(single).commands[name]
        command.name = name
        return command


COMMANDS: dict[str, LazyCommand] = {
    "run": LazyCommand(
        "flowyard.services.cli.run",
        "run_command",
        "Submit a task to a flow; with --wait follow it and download its outputs.",
    ),
    "login": LazyCommand(
        "flowyard.services.cli.login",
        "login_command",
        "Sign in with a password and save an API token for the server (the password is not kept).",
    ),
    "logout": LazyCommand(
        "flowyard.services.cli.login",
        "logout_command",
        "Revoke the saved token on the server and forget it here.",
    ),
    "serve": LazyCommand(
        "flowyard.services.cli.serve",
        "serve_command",
        "Serve the HTTP API and web UI; in default mode also run flows, on SQLite.",
        server=True,
    ),
    "worker": LazyCommand(
        "flowyard.services.cli.worker",
        "worker_command",
        "Claim tasks of the installed flows and run them until SIGTERM.",
        server=True,
    ),
    "asyncapi": LazyCommand(
        "flowyard.services.cli.asyncapi",
        "asyncapi_command",
        "Print the AsyncAPI 3 description of the NATS subjects (YAML); docs/asyncapi.yaml is one.",
        server=True,
    ),
    "flows": LazyCommand("flowyard.services.cli.flows", "flows_app", "Flows the server can run."),
    "tasks": LazyCommand(
        "flowyard.services.cli.tasks",
        "tasks_app",
        "List, inspect, cancel, retry and reprioritize tasks.",
    ),
    "webhooks": LazyCommand(
        "flowyard.services.cli.webhooks",
        "webhooks_app",
        "Send events to URLs (signed, retried): add, list, remove, deliveries.",
    ),
    "events": LazyCommand(
        "flowyard.services.cli.events",
        "events_app",
        "Follow live events, or replay the event log (admin).",
    ),
    "db": LazyCommand(
        "flowyard.services.cli.db", "db_app", "Database schema commands.", server=True
    ),
    "nats": LazyCommand(
        "flowyard.services.cli.nats",
        "nats_app",
        "NATS commands: nats-server's users and permissions.",
        server=True,
    ),
    "users": LazyCommand(
        "flowyard.services.cli.users",
        "users_app",
        "Manage users and their API tokens (works on the database directly).",
        server=True,
    ),
    "config": LazyCommand(
        "flowyard.services.cli.config",
        "config_app",
        "Write a commented settings file, show the effective settings, or document them.",
        server=True,
    ),
}


class _Placeholder(TyperCommand):
    """Stands for a lazy command in listings (help, completion) without importing it."""

    def __init__(self, name: str, spec: LazyCommand) -> None:
        super().__init__(name, help=spec.help)
        self.spec = spec


def expected_error(exc: BaseException) -> TypeGuard[FlowyardError | httpx.TransportError]:
    """A FlowyardError, or httpx's transport errors (looked up only if httpx was loaded)."""
    if isinstance(exc, FlowyardError):
        return True
    httpx_module = sys.modules.get("httpx")
    return httpx_module is not None and isinstance(exc, httpx_module.TransportError)


def report_error(exc: FlowyardError | httpx.TransportError) -> int:
    """Print the one line for an expected failure; return its exit code."""
    import httpx

    from flowyard.services.cli.output import print_error

    if isinstance(exc, FlowyardError):
        print_error(exc.message)
    elif isinstance(exc, httpx.ConnectError | httpx.TimeoutException):
        print_error(
            f"cannot reach the flowyard server at {_server_of(exc)} — is `flowyard serve` running?"
        )
    else:
        detail = str(exc) or type(exc).__name__
        print_error(f"connection to the flowyard server at {_server_of(exc)} failed: {detail}")
    return 1


def _server_of(exc: httpx.TransportError) -> str:
    from flowyard.services.cli.connect import DEFAULT_SERVER, SERVER_ENVVAR

    try:
        url = exc.request.url
    except RuntimeError:  # raised before a request existed
        return os.environ.get(SERVER_ENVVAR, DEFAULT_SERVER)
    return f"{url.scheme}://{url.netloc.decode('ascii', 'replace')}"


class FlowyardGroup(TyperGroup):
    """Turns expected errors into one line and an exit code inside the app itself.

    Doing it here rather than only in ``main`` means ``CliRunner`` and any other
    caller of the app see the same output as a user does. It also holds the lazy
    commands: placeholders until one is resolved to run.
    """

    lazy: ClassVar[dict[str, LazyCommand]] = {}

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        for name, spec in self.lazy.items():
            self.commands.setdefault(name, _Placeholder(name, spec))

    def resolve_command(
        self, ctx: _click.Context, args: list[str]
    ) -> tuple[str | None, _click.Command | None, list[str]]:
        name, command, rest = super().resolve_command(ctx, args)
        if name is not None and isinstance(command, _Placeholder):
            command = self.commands[name] = command.spec.load(name)
        return name, command, rest

    def invoke(self, ctx: typer.Context) -> Any:  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except Exception as exc:
            if expected_error(exc):
                raise typer.Exit(report_error(exc)) from exc
            raise


def build_app(*, include_server: bool = True) -> typer.Typer:
    """The whole CLI; ``include_server=False`` leaves out the server-side commands."""
    lazy = {n: c for n, c in COMMANDS.items() if include_server or not c.server}
    group = type("FlowyardCommands", (FlowyardGroup,), {"lazy": lazy})
    app = typer.Typer(
        name="flowyard",
        cls=group,
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        help=HELP,
    )
    app.callback()(_root)  # a group even though every command is added lazily
    return app


def _root() -> None:
    """Run torch flows as tasks on a flowyard server, and follow them."""


def run_cli(app: typer.Typer, args: Sequence[str] | None = None) -> int:
    """Run ``app`` on ``args`` (default ``sys.argv[1:]``) and return the exit code."""
    try:
        result = app(args=args, prog_name="flowyard", standalone_mode=False)
    except typer.TyperException as exc:  # click-style usage errors (typer vendors click)
        from typer import rich_utils

        rich_utils.rich_format_error(exc)  # type: ignore[arg-type]
        return exc.exit_code
    except typer.Abort as exc:
        if isinstance(exc.__cause__, KeyboardInterrupt):
            return 130
        from flowyard.services.cli.output import print_error

        print_error("aborted")
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if expected_error(exc):
            return report_error(exc)
        raise
    if isinstance(result, int) and not isinstance(result, bool):
        return result
    return 0


def main() -> None:
    """Console-script entry point (``flowyard = services.cli.main:main``)."""
    sys.exit(run_cli(app))


app = build_app()
