"""``flowyard serve``: the API, the web UI and (in default mode) the workers, in one process."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Annotated

import typer
import uvicorn

from core.errors import ConfigError
from core.settings import Mode, Settings
from services.api.app import create_app
from services.config import load_settings
from services.runtime import Runtime

log = logging.getLogger("flowyard")


def serve_command(
    host: Annotated[str | None, typer.Option(help="Address to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on (default 8288).")] = None,
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", help="Folder for the SQLite database and files.")
    ] = None,
    workers: Annotated[
        int | None, typer.Option(help="Flows run at once in this process (default mode).")
    ] = None,
    mode: Annotated[
        str | None, typer.Option(help="'default' (all-in-one) or 'server' (no local flows).")
    ] = None,
    db: Annotated[
        str | None, typer.Option("--db", help="Database URI (postgresql://, mysql://, sqlite://).")
    ] = None,
    files: Annotated[
        Path | None, typer.Option("--files", help="Tasks folder (default DATA_DIR/files).")
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="YAML settings file (or FLOWYARD_CONFIG).")
    ] = None,
    lease_seconds: Annotated[
        float | None, typer.Option("--lease-seconds", help="Lease of a claimed task.")
    ] = None,
    nats: Annotated[
        str | None,
        typer.Option("--nats", help="NATS server for LAN workers (nats://host:4222; server mode)."),
    ] = None,
    nats_user: Annotated[str | None, typer.Option("--nats-user", help="NATS user.")] = None,
    nats_password: Annotated[
        str | None, typer.Option("--nats-password", help="NATS password.")
    ] = None,
    nats_creds: Annotated[
        Path | None, typer.Option("--nats-creds", help="NATS credentials file.")
    ] = None,
) -> None:
    """Serve the HTTP API and web UI; in default mode also run flows, on SQLite."""
    settings = load_settings(
        config,
        host=host,
        port=port,
        data_dir=data_dir,
        workers=workers,
        mode=_mode(mode),
        database_uri=db,
        files_dir=files,
        lease_seconds=lease_seconds,
        nats_url=nats,
        nats_user=nats_user,
        nats_password=nats_password,
        nats_creds=nats_creds,
    )
    settings.check_mode()
    if settings.nats_url and settings.mode != "server":
        raise ConfigError("--nats needs --mode server (NATS workers serve a server's database)")
    configure_logging()
    asyncio.run(serve(settings))


def _mode(value: str | None) -> Mode | None:
    if value is None:
        return None
    if value not in ("default", "server"):
        raise typer.BadParameter(f"{value!r}: use 'default' or 'server'", param_hint="--mode")
    return value  # type: ignore[return-value]


def configure_logging() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s"
    )


async def serve(settings: Settings) -> None:
    runtime = await Runtime.open(settings)
    app = create_app(settings, runtime)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level="warning",
        timeout_graceful_shutdown=5,
        lifespan="on",
    )
    server = uvicorn.Server(config)
    where = settings.db_uri if settings.mode == "server" else f"SQLite in {settings.data_dir}"
    log.info(
        "flowyard %s mode on http://%s:%d (%s, files in %s, %d in-process workers)",
        settings.mode,
        settings.host,
        settings.port,
        where.split("@")[-1],
        settings.tasks_dir,
        settings.workers if runtime.worker else 0,
    )
    await server.serve()
