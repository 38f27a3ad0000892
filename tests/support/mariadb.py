"""Throwaway databases on the machine's MariaDB (we do not start our own)."""

from __future__ import annotations

import uuid
from urllib.parse import urlsplit

import asyncmy
import asyncmy.errors

from tests.support.ports import port_accepts, run_coroutine_in_thread

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 3306
DEFAULT_USER = "root"
DATABASE_PREFIX = "flowyard_test_"


async def _execute(host: str, port: int, statement: str | None, connect_timeout: float) -> None:
    conn = await asyncmy.connect(
        host=host, port=port, user=DEFAULT_USER, password="", connect_timeout=connect_timeout
    )
    try:
        if statement is not None:
            async with conn.cursor() as cur:
                await cur.execute(statement)
    finally:
        await conn.ensure_closed()


def mariadb_reachable(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> bool:
    """Something listens on host:port (says nothing about credentials)."""
    return port_accepts(port, host, timeout=1.0)


def mariadb_available(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> bool:
    """The server is up and root with an empty password can log in."""
    if not mariadb_reachable(host, port):
        return False
    try:
        run_coroutine_in_thread(lambda: _execute(host, port, None, 2.0), timeout=5.0)
    except (OSError, asyncmy.errors.MySQLError):
        return False
    return True


def database_name(uri: str) -> str:
    """The database part of a mysql://.../<name> URI."""
    return urlsplit(uri).path.lstrip("/")


def create_database(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> str:
    """Create ``flowyard_test_<hex>`` and return ``mysql://root@host:port/<name>``."""
    name = f"{DATABASE_PREFIX}{uuid.uuid4().hex[:16]}"
    statement = f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
    run_coroutine_in_thread(lambda: _execute(host, port, statement, 5.0), timeout=30.0)
    return f"mysql://{DEFAULT_USER}@{host}:{port}/{name}"


def drop_database(name: str, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> None:
    """Drop a database made by create_database (refuses other names)."""
    if not name.startswith(DATABASE_PREFIX) or "`" in name:
        raise ValueError(f"refusing to drop {name!r}: not a throwaway test database")
    statement = f"DROP DATABASE IF EXISTS `{name}`"
    run_coroutine_in_thread(lambda: _execute(host, port, statement, 5.0), timeout=30.0)
