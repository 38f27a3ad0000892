"""``flowyard worker``: run flows for a server, over the database or over NATS."""

from __future__ import annotations

import asyncio
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
    config: Annotated[Path | None, typer.Option(help="YAML settings file.")] = None,
) -> None:
    """Claim tasks of the installed flows and run them until SIGTERM."""
    from services.db_worker import run_db_worker

    settings = load_settings(config, database_uri=db, files_dir=files, lease_seconds=lease_seconds)
    if settings.database_uri is None:
        raise ConfigError("pass --db URI (or FLOWYARD_DATABASE_URI): the server's database")
    wanted = [f.strip() for f in flows.split(",") if f.strip()] if flows else None
    configure_logging()
    asyncio.run(
        run_db_worker(settings, name=name, flows=wanted, concurrency=concurrency, owner=owner)
    )
