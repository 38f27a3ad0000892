"""``flowyard worker``: run flows for a server, over the database or over NATS.

A NATS worker logs in as a flowyard user or with one of their API tokens,
without a secret on its command line: ``FLOWYARD_WORKER_AUTH=name:password``
or ``FLOWYARD_WORKER_AUTH=<token>``, ``FLOWYARD_TOKEN``, or ``--password-stdin``
(``--nats-password`` still works, but shows in ``ps``). The NATS options are named
as on ``flowyard serve``: ``--nats``, ``--nats-user``, ``--nats-password``,
``--nats-creds``. A token logs in to NATS as
``fyt_<token id>`` with the token as its password.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated

import typer

from flowyard.core.errors import ConfigError
from flowyard.core.identity import TOKEN_PREFIX, token_id_of
from flowyard.services import event_loop
from flowyard.services.cli.options import ConfigOption, NatsCredsOption, NatsUserOption, SetOption
from flowyard.services.config import load_settings
from flowyard.services.logs import configure_logging

WORKER_AUTH_ENV = "FLOWYARD_WORKER_AUTH"
TOKEN_ENV = "FLOWYARD_TOKEN"


def token_login(token: str, *, source: str) -> tuple[str, str]:
    """NATS user and password of an API token: ``fyt_<token id>`` and the token itself."""
    token_id = token_id_of(token.strip())
    if token_id is None:
        raise ConfigError(f"{source}: not a flowyard API token (fyt_<id>_<secret>)")
    return f"{TOKEN_PREFIX}{token_id}", token.strip()


def parse_worker_auth(value: str) -> tuple[str, str]:
    """``name:password`` or a token, as FLOWYARD_WORKER_AUTH holds them."""
    if token_id_of(value.strip()) is not None:
        return token_login(value, source=WORKER_AUTH_ENV)
    name, sep, password = value.partition(":")
    if not sep or not name or not password:
        raise ConfigError(f"{WORKER_AUTH_ENV}: give name:password or an API token (fyt_…)")
    return name, password


def worker_login(
    user: str | None,
    password: str | None,
    token: str | None,
    password_stdin: bool,
    *,
    env: Mapping[str, str],
    read_line: Callable[[], str],
    configured: tuple[str | None, str | None] = (None, None),
    creds: bool = False,
) -> tuple[str | None, str | None]:
    """The NATS user and password: flags, FLOWYARD_WORKER_AUTH, settings, FLOWYARD_TOKEN.

    ``configured`` is the settings' ``nats_user``/``nats_password``
    (FLOWYARD_NATS_*, the YAML file); FLOWYARD_TOKEN, which the HTTP commands
    share, comes last. ``--password-stdin`` reads a password with ``--nats-user``,
    else a token. ``(None, None)``: no login.
    """
    given = [
        flag
        for flag, on in (
            ("--token", token is not None),
            ("--nats-password", password is not None),
            ("--password-stdin", password_stdin),
        )
        if on
    ]
    if len(given) > 1:
        raise ConfigError(f"give one of {' and '.join(given)}, not both")
    if token is not None:
        if user is not None:
            raise ConfigError("a token names its user: give --token or --nats-user, not both")
        return token_login(token, source="--token")
    if password_stdin:
        line = read_line().removesuffix("\n").removesuffix("\r")
        if not line:
            raise ConfigError("--password-stdin: stdin gave no password")
        return (user, line) if user is not None else token_login(line, source="--password-stdin")
    if password is not None:
        return user, password
    raw = env.get(WORKER_AUTH_ENV)
    if raw:
        name, secret = parse_worker_auth(raw)
        if user is not None and user != name:
            raise ConfigError(f"--nats-user {user} but {WORKER_AUTH_ENV} logs in as {name}")
        return name, secret
    if user is not None:
        return user, configured[1]
    if configured != (None, None) or creds:
        return configured
    raw = env.get(TOKEN_ENV)
    return token_login(raw, source=TOKEN_ENV) if raw else (None, None)


def worker_command(
    db: Annotated[
        str | None, typer.Option("--db", help="The server's database (postgresql://, mysql://).")
    ] = None,
    files: Annotated[
        Path | None, typer.Option("--files", help="The server's tasks folder, mounted here.")
    ] = None,
    flows: Annotated[
        str | None, typer.Option(help="Comma-separated flows to take (default: all installed).")
    ] = None,
    concurrency: Annotated[int, typer.Option(min=1, help="Flows run at once.")] = 1,
    name: Annotated[
        str | None, typer.Option(help="Stable worker name (default: host-pid).")
    ] = None,
    owner: Annotated[
        str | None, typer.Option(help="Take only this user's tasks (default: every user's).")
    ] = None,
    lease_seconds: Annotated[
        float | None, typer.Option("--lease-seconds", help="Lease of a claimed task.")
    ] = None,
    poll_interval: Annotated[
        float | None,
        typer.Option(
            "--poll-interval",
            help="Longest idle poll in seconds (MariaDB; the fallback under LISTEN on PostgreSQL).",
        ),
    ] = None,
    config: ConfigOption = None,
    nats: Annotated[
        str | None,
        typer.Option("--nats", help="Take work over NATS instead (nats://host:4222; LAN workers)."),
    ] = None,
    user: NatsUserOption = None,
    password: Annotated[
        str | None,
        typer.Option(
            "--nats-password",
            help="NATS password (shows in ps: prefer FLOWYARD_WORKER_AUTH=name:password "
            "or --password-stdin).",
        ),
    ] = None,
    password_stdin: Annotated[
        bool,
        typer.Option(
            "--password-stdin",
            help="Read the password (with --nats-user) or a token from stdin.",
        ),
    ] = False,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            help="Log in to NATS with this API token (or FLOWYARD_TOKEN, FLOWYARD_WORKER_AUTH).",
        ),
    ] = None,
    creds: NatsCredsOption = None,
    assignments: SetOption = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            "--metrics-port", help="Serve this worker's Prometheus /metrics on this port."
        ),
    ] = None,
    gpus: Annotated[
        str | None,
        typer.Option(
            "--gpus",
            help="Start one worker per GPU: 'all' or device numbers such as 0,2 "
            "(each gets its own CUDA_VISIBLE_DEVICES).",
        ),
    ] = None,
) -> None:
    """Claim tasks of the installed flows and run them until SIGTERM.

    Over NATS with a login and no --owner, the server says whose tasks it may
    take: an admin's worker every owner's, a user's worker that user's.
    """
    if gpus is not None:
        from flowyard.services.gpu_workers import gpu_list, run_per_gpu

        devices = gpu_list(gpus)
        configure_logging()
        raise typer.Exit(run_per_gpu(_own_arguments(), devices, name))
    settings = load_settings(
        config,
        assignments=assignments or [],
        database_uri=db,
        files_dir=files,
        lease_seconds=lease_seconds,
        poll_interval=poll_interval,
        nats_url=nats,
        nats_creds=creds,
        metrics_port=metrics_port,
    )
    if settings.nats_url is not None:
        nats_user, nats_password = worker_login(
            user,
            password,
            token,
            password_stdin,
            env=os.environ,
            read_line=sys.stdin.readline,
            configured=(settings.nats_user, settings.nats_password),
            creds=settings.nats_creds is not None,
        )
        settings = settings.model_copy(
            update={"nats_user": nats_user, "nats_password": nats_password}
        )
    wanted = [f.strip() for f in flows.split(",") if f.strip()] if flows else None
    if settings.nats_url is not None:
        if db is not None or files is not None:
            raise ConfigError(
                "give either --db (database worker) or --nats (NATS worker), not both; "
                "a NATS worker needs no database and no --files"
            )
        from flowyard.services.composition.nats_worker import run_nats_worker

        configure_logging(settings.log_level, settings.log_format, settings.log_file)
        event_loop.run(
            run_nats_worker(settings, name=name, flows=wanted, concurrency=concurrency, owner=owner)
        )
        return
    from flowyard.services.composition.db_worker import run_db_worker

    if settings.database_uri is None:
        raise ConfigError(
            "pass --db URI (the server's database) or --nats URL (its NATS server); "
            "or set FLOWYARD_DATABASE_URI / FLOWYARD_NATS_URL"
        )
    configure_logging(settings.log_level, settings.log_format, settings.log_file)
    # the schema check would log alembic's banner before every start, or before its one error
    logging.getLogger("alembic.runtime.migration").setLevel(logging.WARNING)
    event_loop.run(
        run_db_worker(settings, name=name, flows=wanted, concurrency=concurrency, owner=owner)
    )


def _own_arguments() -> list[str]:
    """This command's arguments as typed (after ``worker``), for the per-GPU children."""
    argv = sys.argv[1:]
    return argv[argv.index("worker") + 1 :] if "worker" in argv else argv
