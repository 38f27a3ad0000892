"""SQL databases migrated once per session and handed out clean to each test.

Migrating is the slow part of a fresh database (alembic loads every revision,
then runs its DDL), so a suite that wants a clean schema per test migrates one
database per backend and resets it instead: SQLite copies a migrated file;
PostgreSQL and MariaDB truncate every table, which also restarts the
identity/``AUTO_INCREMENT`` counters, so a test sees what a fresh migration
leaves. (Cloning a PostgreSQL template per test, as Procrastinate does, was
measured at ~5x the cost of one ``TRUNCATE`` here.)
"""

from __future__ import annotations

import shutil
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from flowyard.adapters.sql.engine import make_engine, upgrade
from tests.support.ports import run_coroutine_in_thread

ALEMBIC_TABLE = "alembic_version"


async def _migrate(uri: str) -> list[str]:
    engine = make_engine(uri, pool_size=1)
    try:
        await upgrade(engine)
        async with engine.connect() as conn:
            names = await conn.run_sync(lambda sync: sa.inspect(sync).get_table_names())
            tables = sorted(str(n) for n in names if n != ALEMBIC_TABLE)
            for table in tables:
                rows = await conn.scalar(sa.select(sa.func.count()).select_from(sa.table(table)))
                # Emptying the tables must give back exactly what a fresh migration gives.
                assert rows == 0, f"migrations seed {rows} rows into {table}: TRUNCATE is no reset"
    finally:
        await engine.dispose()
    return tables


def migrate(uri: str) -> list[str]:
    """Bring ``uri`` to the newest schema (from any thread or loop); return its tables."""
    return run_coroutine_in_thread(lambda: _migrate(uri), timeout=120.0)


def copy_sqlite(migrated: Path, target: Path) -> str:
    """A fresh SQLite database at ``target``, copied from a migrated, closed file.

    Closing the last connection checkpoints the WAL into the file; a sidecar
    left anyway (``-wal``, ``-shm``) is copied with it.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(migrated, target)
    for suffix in ("-wal", "-shm"):
        sidecar = migrated.with_name(migrated.name + suffix)
        if sidecar.exists():
            shutil.copyfile(sidecar, target.with_name(target.name + suffix))
    return f"sqlite:///{target}"


async def truncate_all(engine: AsyncEngine, tables: list[str]) -> None:
    """Empty every table of a migrated PostgreSQL or MariaDB database, foreign keys and all."""
    async with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            names = ", ".join(f'"{table}"' for table in tables)
            await conn.exec_driver_sql(f"TRUNCATE {names} RESTART IDENTITY")
            await conn.commit()
            return
        # MariaDB truncates one table per statement, and only with the checks off.
        await conn.exec_driver_sql("SET FOREIGN_KEY_CHECKS = 0")
        try:
            for table in tables:
                await conn.exec_driver_sql(f"TRUNCATE TABLE `{table}`")
        finally:
            await conn.exec_driver_sql("SET FOREIGN_KEY_CHECKS = 1")
