"""``flowyard db``: schema migrations, for operators who migrate before rolling out."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from flowyard.adapters.sql.engine import check_schema, head_revision, make_engine, safe_url, upgrade
from flowyard.core.errors import ConfigError

db_app = typer.Typer(no_args_is_help=True, help="Database schema commands.")

DbOption = Annotated[
    str | None,
    typer.Option("--db", envvar="FLOWYARD_DATABASE_URI", help="Database URI."),
]


def _uri(db: str | None) -> str:
    if not db:
        raise ConfigError("pass --db URI (or set FLOWYARD_DATABASE_URI)")
    return db


@db_app.command("upgrade")
def upgrade_command(db: DbOption = None) -> None:
    """Create or upgrade the flowyard schema (idempotent)."""

    async def run() -> str:
        engine = make_engine(_uri(db))
        try:
            await upgrade(engine)
            return safe_url(engine)
        finally:
            await engine.dispose()

    where = asyncio.run(run())
    typer.echo(f"{where} is at schema revision {head_revision()}")


@db_app.command("check")
def check_command(db: DbOption = None) -> None:
    """Exit 1 unless the database has the current schema."""

    async def run() -> str:
        engine = make_engine(_uri(db))
        try:
            await check_schema(engine)
            return safe_url(engine)
        finally:
            await engine.dispose()

    where = asyncio.run(run())
    typer.echo(f"{where} has the current schema ({head_revision()})")
