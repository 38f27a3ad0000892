"""``flowyard worker``: run flows for a server, over the database or over NATS."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Annotated

import typer

from core.errors import ConfigError
from services.cli.serve import configure_logging
from services.config import load_settings


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
    config: Annotated[Path | None, typer.Option(help="YAML settings file.")] = None,
    nats: Annotated[
        str | None,
        typer.Option("--nats", help="Take work over NATS instead (nats://host:4222; LAN workers)."),
    ] = None,
    user: Annotated[str | None, typer.Option("--user", help="NATS user.")] = None,
    password: Annotated[str | None, typer.Option("--password", help="NATS password.")] = None,
    creds: Annotated[
        Path | None, typer.Option("--creds", help="NATS credentials file (JWT + nkey seed).")
    ] = None,
) -> None:
    """Claim tasks of the installed flows and run them until SIGTERM."""
    settings = load_settings(
        config,
        database_uri=db,
        files_dir=files,
        lease_seconds=lease_seconds,
        poll_interval=poll_interval,
        nats_url=nats,
        nats_user=user,
        nats_password=password,
        nats_creds=creds,
    )
    wanted = [f.strip() for f in flows.split(",") if f.strip()] if flows else None
    if settings.nats_url is not None:
        if db is not None or files is not None:
            raise ConfigError(
                "give either --db (database worker) or --nats (NATS worker), not both; "
                "a NATS worker needs no database and no --files"
            )
        from services.nats_worker import run_nats_worker

        configure_logging()
        asyncio.run(
            run_nats_worker(settings, name=name, flows=wanted, concurrency=concurrency, owner=owner)
        )
        return
    from services.db_worker import run_db_worker

    if settings.database_uri is None:
        raise ConfigError(
            "pass --db URI (the server's database) or --nats URL (its NATS server); "
            "or set FLOWYARD_DATABASE_URI / FLOWYARD_NATS_URL"
        )
    configure_logging()
    # the schema check would log alembic's banner before every start, or before its one error
    logging.getLogger("alembic.runtime.migration").setLevel(logging.WARNING)
    asyncio.run(
        run_db_worker(settings, name=name, flows=wanted, concurrency=concurrency, owner=owner)
    )
