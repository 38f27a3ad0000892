"""Engines per dialect, and the schema migrations that every process relies on.

Per-dialect choices live here and nowhere else: SQLite gets WAL and a busy
timeout (one writer, many readers); MariaDB queue connections run READ
COMMITTED so a long-lived poller sees new rows; PostgreSQL keeps its default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from flowyard.core.errors import SchemaMissing, Unavailable
from flowyard.core.settings import normalise_database_uri

MIGRATIONS = Path(__file__).parent / "migrations"

PG_CONNECT_ARGS: dict[str, int] = {
    "connect_timeout": 5,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 2,
    "tcp_user_timeout": 20_000,
}
"""libpq settings that bound a call on a cut network (silently dropped packets, no RST).

Without them a statement waits out TCP's retransmissions (about 15 minutes):
a worker whose host lost its link would hang in a heartbeat or a report
instead of retrying, and see the network come back minutes late. Unacked data
for 20 s (``tcp_user_timeout``, not a statement timeout: a slow query is
fine) or a silent idle peer for about 20 s closes the connection; the caller
gets ``Unavailable`` and retries.
"""


def make_engine(uri: str, *, pool_size: int = 10, pre_ping: bool = True) -> AsyncEngine:
    """An async engine for any supported URI (``sqlite``, ``postgresql``, ``mysql``/``mariadb``).

    ``pre_ping`` tests each pooled connection before use (one round trip per
    transaction) so the first request after a database restart does not fail;
    processes that retry every call anyway (workers) can leave it off.
    """
    url = make_url(normalise_database_uri(uri))
    kwargs: dict[str, Any] = {"pool_pre_ping": pre_ping}
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        kwargs = {"connect_args": {"timeout": 30}}
    elif url.get_backend_name() in ("mysql", "mariadb"):
        kwargs |= {
            "isolation_level": "READ COMMITTED",
            "pool_size": pool_size,
            "pool_recycle": 3600,
        }
    else:
        kwargs |= {
            "pool_size": pool_size,
            "max_overflow": pool_size,
            "connect_args": dict(PG_CONNECT_ARGS),
        }
    engine = create_async_engine(url, **kwargs)
    if url.get_backend_name() == "sqlite":
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _alembic_config(connection: sa.Connection) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    head = ScriptDirectory.from_config(cfg).get_current_head()
    assert head is not None
    return head


async def upgrade(engine: AsyncEngine) -> None:
    """Bring the schema to the newest revision (idempotent; safe at every start)."""
    try:
        async with engine.begin() as conn:
            await conn.run_sync(lambda sync: command.upgrade(_alembic_config(sync), "head"))
    except (OperationalError, DBAPIError, OSError) as exc:
        raise unavailable(engine, exc) from exc


async def check_schema(engine: AsyncEngine) -> None:
    """Refuse to run against a database without the current schema (workers never migrate)."""
    try:
        async with engine.connect() as conn:
            current = await conn.run_sync(
                lambda sync: MigrationContext.configure(sync).get_current_revision()
            )
    except (OperationalError, DBAPIError, OSError) as exc:
        raise unavailable(engine, exc) from exc
    if current is None:
        raise SchemaMissing(
            f"database {safe_url(engine)} has no flowyard schema: start the server on it "
            "once, or run 'flowyard db upgrade --db URI'"
        )
    if current != head_revision():
        raise SchemaMissing(
            f"database {safe_url(engine)} is at schema revision {current}, this flowyard "
            f"needs {head_revision()}: run 'flowyard db upgrade --db URI'"
        )


def safe_url(engine: AsyncEngine) -> str:
    return engine.url.render_as_string(hide_password=True)


def unavailable(engine: AsyncEngine, exc: BaseException) -> Unavailable:
    """One line that names the database and the driver's reason."""
    reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
    return Unavailable(f"cannot use database {safe_url(engine)}: {reason}")


def dialect_name(engine: AsyncEngine) -> str:
    """``sqlite``, ``postgresql`` or ``mysql`` (MariaDB reports ``mysql`` or ``mariadb``)."""
    name = engine.dialect.name
    return "mysql" if name in ("mysql", "mariadb") else name
