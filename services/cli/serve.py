"""``flowyard serve``: the API, the web UI and (in default mode) the workers, in one process."""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import Annotated

import typer
import uvicorn

from flowyard.core.errors import ConfigError
from flowyard.core.settings import Mode, Settings
from flowyard.services.api.app import create_app
from flowyard.services.cli.aio import async_command
from flowyard.services.cli.options import (
    ConfigOption,
    NatsCredsOption,
    NatsPasswordOption,
    NatsUserOption,
    SetOption,
)
from flowyard.services.config import load_settings
from flowyard.services.runtime import Runtime

log = logging.getLogger("flowyard")

GRACEFUL_HTTP_SECONDS = 3
"""On SIGTERM, how long requests still in flight (an upload, a download) may take.

Live event streams end at once (``FlowyardServer.shutdown``); flows get their own
grace period afterwards, in the runtime's close, not here.
"""


class FlowyardServer(uvicorn.Server):
    """uvicorn waits for open responses *before* the app's shutdown runs, so a live
    event stream would hold the server until ``timeout_graceful_shutdown`` and then be
    cancelled with a traceback. Ending the streams when shutdown begins lets it stop
    at once and cleanly.
    """

    def __init__(self, config: uvicorn.Config, runtime: Runtime) -> None:
        super().__init__(config)
        self.runtime = runtime

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.runtime.hub.close()
        await super().shutdown(sockets)


@async_command
async def serve_command(
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
    config: ConfigOption = None,
    lease_seconds: Annotated[
        float | None, typer.Option("--lease-seconds", help="Lease of a claimed task.")
    ] = None,
    nats: Annotated[
        str | None,
        typer.Option("--nats", help="NATS server for LAN workers (nats://host:4222; server mode)."),
    ] = None,
    nats_user: NatsUserOption = None,
    nats_password: NatsPasswordOption = None,
    nats_creds: NatsCredsOption = None,
    assignments: SetOption = None,
) -> None:
    """Serve the HTTP API and web UI; in default mode also run flows, on SQLite."""
    settings = load_settings(
        config,
        assignments=assignments or [],
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
    check_tls(settings)
    configure_logging(settings)
    await serve(settings)


def _mode(value: str | None) -> Mode | None:
    if value is None:
        return None
    if value not in ("default", "server"):
        raise typer.BadParameter(f"{value!r}: use 'default' or 'server'", param_hint="--mode")
    return value  # type: ignore[return-value]


def configure_logging(settings: Settings | None = None) -> None:
    """The settings' log level, format and file (defaults before settings are loaded)."""
    from flowyard.services import logs

    if settings is None:
        logs.configure_logging()
    else:
        logs.configure_logging(settings.log_level, settings.log_format, settings.log_file)


def check_tls(settings: Settings) -> None:
    """Load the certificate and key now: a bad file is one line, not uvicorn's traceback."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return
    import ssl

    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
            settings.tls_cert_file, settings.tls_key_file
        )
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"setting tls_cert_file/tls_key_file: cannot load {settings.tls_cert_file} with "
            f"{settings.tls_key_file}: {exc.strerror or exc}"
        ) from None


async def serve(settings: Settings) -> None:
    runtime = await Runtime.open(settings)
    app = create_app(settings, runtime)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level="warning",
        log_config=None,  # our handlers and format (services/logs.py), JSON included
        timeout_graceful_shutdown=GRACEFUL_HTTP_SECONDS,
        lifespan="on",
        ssl_certfile=settings.tls_cert_file,
        ssl_keyfile=settings.tls_key_file,
        proxy_headers=settings.proxy_headers,
        forwarded_allow_ips=settings.forwarded_allow_ips,
    )
    server = FlowyardServer(config, runtime)
    where = settings.db_uri if settings.mode == "server" else f"SQLite in {settings.data_dir}"
    log.info(
        "flowyard %s mode on %s://%s:%d (%s, files in %s, %d in-process workers)",
        settings.mode,
        "https" if settings.tls_enabled else "http",
        settings.host,
        settings.port,
        where.split("@")[-1],
        settings.tasks_dir,
        settings.workers if runtime.worker else 0,
    )
    await server.serve()
