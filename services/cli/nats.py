"""``flowyard nats``: nats-server's authorization, generated from the users table.

``flowyard nats auth-config > users.conf`` writes the accounts block that
``bus/nats/auth_config.py`` renders: one NATS user per enabled flowyard user
and per usable API token (bcrypt hashes, which nats-server verifies itself),
with per-owner permissions, plus the flowyard server's own user. Run it again
after ``flowyard users …`` changes and reload nats-server; see docs/nats.md.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from flowyard.adapters.passwords import nats_hashable, nats_password_hash
from flowyard.adapters.sql.database import Database
from flowyard.adapters.sql.engine import check_schema, make_engine
from flowyard.adapters.sql.user_store import NatsAccount, SqlUserStore
from flowyard.bus.nats.auth_config import DEFAULT_SERVER_USER, render_auth_config
from flowyard.bus.nats.object_store import bucket_name
from flowyard.core.errors import ConfigError
from flowyard.services.cli.aio import async_command
from flowyard.services.cli.output import err_console
from flowyard.services.config import load_settings

nats_app = typer.Typer(
    no_args_is_help=True, help="NATS commands: nats-server's users and permissions."
)

SERVER_PASSWORD_ENV = "FLOWYARD_NATS_PASSWORD"


async def read_accounts(uri: str) -> list[NatsAccount]:
    """The enabled users and usable tokens; the schema must be current (this never migrates)."""
    engine = make_engine(uri, pool_size=1)
    try:
        await check_schema(engine)
        return await SqlUserStore(Database(engine)).nats_accounts()
    finally:
        await engine.dispose()


def server_password(from_stdin: bool, configured: str | None) -> str:
    """The server's NATS password, from one line of stdin or FLOWYARD_NATS_PASSWORD."""
    if from_stdin:
        password = sys.stdin.readline().removesuffix("\n").removesuffix("\r")
        if not password:
            raise ConfigError("--password-stdin: stdin gave no password")
    elif configured:
        password = configured
    else:
        raise ConfigError(
            "the flowyard server's NATS password is needed (it goes into the file as a bcrypt "
            f"hash): pipe it in with --password-stdin, or set {SERVER_PASSWORD_ENV}"
        )
    if not nats_hashable(password):
        raise ConfigError("the server's NATS password is longer than bcrypt takes (72 bytes)")
    return password


@nats_app.command("auth-config")
@async_command
async def auth_config_command(
    db: Annotated[
        str | None,
        typer.Option(
            "--db",
            envvar="FLOWYARD_DATABASE_URI",
            help="Database URI (default: the SQLite database in --data-dir).",
        ),
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            envvar="FLOWYARD_DATA_DIR",
            help="Data folder of a default-mode server (default: flowyard-data).",
        ),
    ] = None,
    server_user: Annotated[
        str | None,
        typer.Option(
            "--nats-user",
            help=f"The flowyard server's NATS user, as on 'flowyard serve' (default: "
            f"FLOWYARD_NATS_USER or {DEFAULT_SERVER_USER}).",
        ),
    ] = None,
    server_password_stdin: Annotated[
        bool,
        typer.Option(
            "--password-stdin",
            help=f"Read the server's NATS password from stdin (else {SERVER_PASSWORD_ENV}).",
        ),
    ] = False,
) -> None:
    """Print nats-server's accounts block (users, per-owner permissions) for `include`.

    Regenerate after `flowyard users …` changes, then `nats-server --signal reload`.
    """
    settings = load_settings(None, database_uri=db, data_dir=data_dir)
    user = server_user or settings.nats_user or DEFAULT_SERVER_USER
    password = server_password(server_password_stdin, settings.nats_password)
    accounts = await read_accounts(settings.db_uri)
    text = render_auth_config(
        accounts,
        server_user=user,
        server_password_hash=nats_password_hash(password),
        bucket_name=bucket_name,
    )
    sys.stdout.write(text)
    sys.stdout.flush()
    tokens = sum(1 for a in accounts if a.nats_user != a.owner)
    err_console.print(
        f"{len(accounts) - tokens} users, {tokens} API tokens and the server user {user}; "
        "reload with: nats-server --signal reload",
        soft_wrap=True,
    )
