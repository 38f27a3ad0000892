"""The ``flowyard`` command: one app, one place where errors become exit codes.

Exit codes: 0 ok, 1 an error the user can act on (printed as one ``error:`` line),
2 a usage error, 130 interrupted. Expected failures never show a traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

import httpx
import typer
from typer import rich_utils
from typer.core import TyperGroup

from core.errors import FlowyardError
from services.cli.client import DEFAULT_SERVER, SERVER_ENVVAR
from services.cli.events import events_app
from services.cli.flows import flows_app
from services.cli.login import login_command, logout_command
from services.cli.output import print_error
from services.cli.run import run_command
from services.cli.tasks import tasks_app
from services.cli.webhooks import webhooks_app

HELP = "Run torch flows as tasks on a flowyard server, and follow them."


def report_error(exc: FlowyardError | httpx.TransportError) -> int:
    """Print the one line for an expected failure; return its exit code."""
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
    try:
        url = exc.request.url
    except RuntimeError:  # raised before a request existed
        return os.environ.get(SERVER_ENVVAR, DEFAULT_SERVER)
    return f"{url.scheme}://{url.netloc.decode('ascii', 'replace')}"


class FlowyardGroup(TyperGroup):
    """Turns expected errors into one line and an exit code inside the app itself.

    Doing it here rather than only in ``main`` means ``CliRunner`` and any other
    caller of the app see the same output as a user does.
    """

    def invoke(self, ctx: typer.Context) -> Any:  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except (FlowyardError, httpx.TransportError) as exc:
            raise typer.Exit(report_error(exc)) from exc


def build_app(*, include_server: bool = True) -> typer.Typer:
    """The whole CLI; ``include_server=False`` leaves out the server-side commands."""
    app = typer.Typer(
        name="flowyard",
        cls=FlowyardGroup,
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        help=HELP,
    )
    app.add_typer(flows_app, name="flows")
    app.add_typer(tasks_app, name="tasks")
    app.add_typer(webhooks_app, name="webhooks")
    app.add_typer(events_app, name="events")
    app.command("run")(run_command)
    app.command("login")(login_command)
    app.command("logout")(logout_command)
    if include_server:
        _register_server_commands(app)
    return app


def _register_server_commands(app: typer.Typer) -> None:
    """Server commands pull in the API and the database; imported here, not at the top."""
    from services.cli.asyncapi import asyncapi_command
    from services.cli.db import db_app
    from services.cli.nats import nats_app
    from services.cli.serve import serve_command
    from services.cli.users import users_app
    from services.cli.worker import worker_command

    app.command("serve")(serve_command)
    app.command("worker")(worker_command)
    app.command("asyncapi")(asyncapi_command)
    app.add_typer(db_app, name="db")
    app.add_typer(nats_app, name="nats")
    app.add_typer(users_app, name="users")


def run_cli(app: typer.Typer, args: Sequence[str] | None = None) -> int:
    """Run ``app`` on ``args`` (default ``sys.argv[1:]``) and return the exit code."""
    try:
        result = app(args=args, prog_name="flowyard", standalone_mode=False)
    except typer.TyperException as exc:  # click-style usage errors (typer vendors click)
        rich_utils.rich_format_error(exc)  # type: ignore[arg-type]
        return exc.exit_code
    except typer.Abort as exc:
        if isinstance(exc.__cause__, KeyboardInterrupt):
            return 130
        print_error("aborted")
        return 1
    except KeyboardInterrupt:
        return 130
    except (FlowyardError, httpx.TransportError) as exc:
        return report_error(exc)
    if isinstance(result, int) and not isinstance(result, bool):
        return result
    return 0


def main() -> None:
    """Console-script entry point (``flowyard = services.cli.main:main``)."""
    sys.exit(run_cli(app))


app = build_app()
