"""``flowyard db``: schema migrations, for operators who migrate before rolling out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

import typer
from sqlalchemy.ext.asyncio import AsyncEngine

from flowyard.adapters.sql.engine import check_schema, head_revision, make_engine, safe_url, upgrade
from flowyard.core.errors import ConfigError
from flowyard.services.cli.aio import async_command

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
@async_command
async def upgrade_command(db: DbOption = None) -> None:
    """Create or upgrade the flowyard schema (idempotent)."""
    async with _engine(db) as engine:
        await upgrade(engine)
        where = safe_url(engine)
    typer.echo(f"{where} is at schema revision {head_revision()}")


@db_app.command("check")
@async_command
async def check_command(db: DbOption = None) -> None:
    """Exit 1 unless the database has the current schema."""
    async with _engine(db) as engine:
        await check_schema(engine)
        where = safe_url(engine)
    typer.echo(f"{where} has the current schema ({head_revision()})")


@asynccontextmanager
async def _engine(db: str | None) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(_uri(db))
    try:
        yield engine
    finally:
        await engine.dispose()
