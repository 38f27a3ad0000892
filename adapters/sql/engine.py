"""Engines per dialect, and the schema migrations that every process relies on.

Per-dialect choices live here and nowhere else: SQLite gets WAL and a busy
timeout (one writer, many readers); MariaDB queue connections run READ
COMMITTED so a long-lived poller sees new rows; PostgreSQL keeps its default.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from flowyard.adapters.sql import inline_sqlite
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


IDLE_IN_TRANSACTION_SECONDS = 30
"""The database ends a session that sits this long inside a transaction without a statement.

Such a session is a client that froze, or whose host lost its link, in the middle
of a write: its row locks would outlive its lease, and the reaper's ``SKIP
LOCKED`` would pass over its task until the server's TCP noticed (about two
hours by default). No flowyard transaction waits on anything but the database,
so a healthy one is never idle this long. PostgreSQL also probes a silent
client as the client probes it (``PG_CONNECT_ARGS``), which frees a cut-off
session after about 20 s.
"""

PG_SESSION_SETTINGS: dict[str, str] = {
    f"tcp_{name}": str(PG_CONNECT_ARGS[name])
    for name in ("keepalives_idle", "keepalives_interval", "keepalives_count")
}
"""The server probes its client with the client's own keepalive timings."""


PING_IDLE_SECONDS = 1.0
"""A pooled connection unused for longer than this is tested before use."""


def make_engine(
    uri: str,
    *,
    pool_size: int = 10,
    pre_ping: bool = True,
    idle_in_transaction_seconds: int = IDLE_IN_TRANSACTION_SECONDS,
) -> AsyncEngine:
    """An async engine for any supported URI (``sqlite``, ``postgresql``, ``mysql``/``mariadb``).

    ``pre_ping`` tests a pooled connection before use when it sat idle for more than
    ``PING_IDLE_SECONDS``, so the first request after a database restart does not
    fail; one used a moment ago is not tested again (a test is a round trip, and
    every transaction paid it). Processes that retry every call anyway (workers)
    leave it off. ``idle_in_transaction_seconds`` is for tests that wait it out.
    """
    url = make_url(normalise_database_uri(uri))
    kwargs: dict[str, Any] = {}
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        kwargs = {"connect_args": {"timeout": 30, "async_creator_fn": inline_sqlite.connect}}
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
    _end_idle_transactions(engine.sync_engine, idle_in_transaction_seconds)
    if pre_ping:
        _ping_when_idle(engine.sync_engine, PING_IDLE_SECONDS)
    return engine


def _end_idle_transactions(engine: sa.Engine, seconds: int) -> None:
    """Each new connection asks the server to end it when idle in a transaction (see above).

    Session settings, not startup options, so a connection pooler in between
    does not refuse them. MySQL has no such setting; MariaDB (10.3+) does.
    """
    dialect = engine.dialect

    def connected(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        if dialect.name == "postgresql":
            settings = {"idle_in_transaction_session_timeout": f"{seconds}s"}
            settings |= PG_SESSION_SETTINGS
            calls = ", ".join("set_config(%s, %s, false)" for _ in settings)
            cursor.execute(f"SELECT {calls}", [v for kv in settings.items() for v in kv])
        elif getattr(dialect, "is_mariadb", False):
            cursor.execute(f"SET SESSION idle_transaction_timeout = {int(seconds)}")
        cursor.close()
        dbapi_connection.commit()  # a rolled-back SET would be undone on PostgreSQL

    event.listen(engine, "connect", connected)


def _ping_when_idle(engine: sa.Engine, after: float) -> None:
    """SQLAlchemy's pre-ping, only for connections idle longer than ``after`` seconds.

    A failed test raises ``DisconnectionError`` from the checkout, which makes the
    pool drop that connection and hand out a new one (SQLAlchemy's documented way).
    """
    dialect = engine.dialect
    driver_error: type[BaseException] = dialect.loaded_dbapi.Error

    def returned(_dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    def taken(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        since = record.info.pop("idle_since", None)
        if since is None or time.monotonic() - since < after:
            return  # new, or used a moment ago
        try:
            dialect.do_ping(dbapi_connection)
        except driver_error as exc:
            raise DisconnectionError(f"pooled connection is dead: {exc}") from exc

    event.listen(engine, "checkin", returned)
    event.listen(engine, "checkout", taken)


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
    with driver_errors_as_unavailable(engine, connection_only=False):
        async with engine.begin() as conn:
            await conn.run_sync(lambda sync: command.upgrade(_alembic_config(sync), "head"))


async def check_schema(engine: AsyncEngine) -> None:
    """Refuse to run against a database without the current schema (workers never migrate)."""
    with driver_errors_as_unavailable(engine, connection_only=False):
        async with engine.connect() as conn:
            current = await conn.run_sync(
                lambda sync: MigrationContext.configure(sync).get_current_revision()
            )
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


DRIVER_ERRORS = (DBAPIError, OSError)
"""What a driver raises when the database cannot be used (``ConnectionError`` is an ``OSError``)."""


def is_connection_error(exc: DBAPIError) -> bool:
    """A lost or refused connection, as opposed to a statement the database refused."""
    return bool(exc.connection_invalidated) or isinstance(exc, OperationalError)


@contextlib.contextmanager
def driver_errors_as_unavailable(
    engine: AsyncEngine,
    *,
    connection_only: bool = True,
    on_outage: Callable[[], None] | None = None,
) -> Iterator[None]:
    """Translate the driver's errors inside the block into ``Unavailable`` (one edge for all).

    ``connection_only`` lets a statement error (an ``IntegrityError``, say) through
    unchanged, since retrying would not mend it; migrations translate every driver
    error. ``on_outage`` is told of each translated failure before it is raised.
    """
    try:
        yield
    except DRIVER_ERRORS as exc:
        if connection_only and isinstance(exc, DBAPIError) and not is_connection_error(exc):
            raise
        if on_outage is not None:
            on_outage()
        raise unavailable(engine, exc) from exc


def dialect_name(engine: AsyncEngine) -> str:
    """``sqlite``, ``postgresql`` or ``mysql`` (MariaDB reports ``mysql`` or ``mariadb``)."""
    name = engine.dialect.name
    return "mysql" if name in ("mysql", "mariadb") else name
