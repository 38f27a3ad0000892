"""The test-server plumbing itself: real PostgreSQL, NATS and MariaDB round trips."""

from __future__ import annotations

import shutil
import socket
import uuid
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import asyncmy
import nats
import nats.errors
import psutil
import psycopg
import pytest
from nats.aio.client import Client as NatsClient
from nats.js.api import StorageType

from tests.support.nats import NatsServer
from tests.support.postgres import PostgresCluster, PostgresStartError

pytestmark = pytest.mark.timeout(60)


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# ---------------------------------------------------------------------- PostgreSQL


@pytest.mark.postgres
async def test_pg_uri_serves_async_queries(pg_uri: str) -> None:
    assert pg_uri.startswith("postgresql://postgres@127.0.0.1:")
    async with await psycopg.AsyncConnection.connect(pg_uri) as conn:
        cur = await conn.execute("SELECT current_database(), 1 + 1, current_setting('fsync')")
        row = await cur.fetchone()
    assert row == (urlsplit(pg_uri).path.lstrip("/"), 2, "off")


@pytest.mark.postgres
async def test_pg_databases_are_isolated(pg_database_factory: Callable[[], str]) -> None:
    first, second = pg_database_factory(), pg_database_factory()
    assert first != second
    async with await psycopg.AsyncConnection.connect(first, autocommit=True) as conn:
        await conn.execute("CREATE TABLE only_here (v int)")
        await conn.execute("INSERT INTO only_here VALUES (1)")
    async with await psycopg.AsyncConnection.connect(second) as conn:
        cur = await conn.execute("SELECT to_regclass('only_here')")
        assert await cur.fetchone() == (None,)


@pytest.mark.postgres
@pytest.mark.chaos
async def test_pg_private_cluster_survives_kill_9(pg_cluster_private: PostgresCluster) -> None:
    cluster = pg_cluster_private
    port, postmaster = cluster.port, cluster.pid
    assert postmaster is not None
    async with await psycopg.AsyncConnection.connect(cluster.uri(), autocommit=True) as conn:
        await conn.execute("CREATE TABLE survivors (v text)")
        await conn.execute("INSERT INTO survivors VALUES ('committed before the crash')")

    victim = await psycopg.AsyncConnection.connect(cluster.uri())
    try:
        backends = [p.pid for p in psutil.Process(postmaster).children(recursive=True)]
        assert backends
        cluster.kill()
        assert not cluster.is_running()
        assert all(_gone(pid) for pid in [postmaster, *backends])
        with pytest.raises(psycopg.OperationalError):
            await victim.execute("SELECT 1")
    finally:
        await victim.close()

    cluster.start()  # crash recovery on the same data dir and port
    assert cluster.port == port
    async with await psycopg.AsyncConnection.connect(cluster.uri()) as conn:
        cur = await conn.execute("SELECT v FROM survivors")
        assert await cur.fetchall() == [("committed before the crash",)]

    cluster.restart()
    assert cluster.port == port
    assert cluster.is_running()


@pytest.mark.postgres
def test_pg_start_failure_reports_log_tail(tmp_path: Path, pg_initdb_template: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        cluster = PostgresCluster(tmp_path / "pg", port=port, initdb_from=pg_initdb_template)
        with pytest.raises(PostgresStartError, match="already in use"):
            cluster.start()
    assert not cluster.is_running()
    shutil.rmtree(cluster.data_dir)


# ---------------------------------------------------------------------------- NATS


async def _publish(url: str, stream: str, subject: str, payloads: list[bytes]) -> None:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        await js.add_stream(name=stream, subjects=[subject], storage=StorageType.FILE)
        for payload in payloads:
            await js.publish(subject, payload)
    finally:
        await nc.close()


async def _read_all(url: str, stream: str, subject: str) -> list[bytes]:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        count = (await js.stream_info(stream)).state.messages
        sub = await js.pull_subscribe(subject, durable=f"reader-{uuid.uuid4().hex[:8]}")
        try:
            msgs = await sub.fetch(count, timeout=5) if count else []
            for msg in msgs:
                await msg.ack()
            return [msg.data for msg in msgs]
        finally:
            await sub.unsubscribe()
    finally:
        await nc.close()


@pytest.mark.nats
async def test_nats_jetstream_round_trip(nats_server: NatsServer) -> None:
    stream, subject = f"T{uuid.uuid4().hex[:12]}", f"test.{uuid.uuid4().hex[:12]}"
    await _publish(nats_server.url, stream, subject, [b"one", b"two"])
    assert await _read_all(nats_server.url, stream, subject) == [b"one", b"two"]


@pytest.mark.nats
@pytest.mark.chaos
async def test_nats_private_restart_keeps_stream(nats_server_private: NatsServer) -> None:
    server = nats_server_private
    url = server.url
    await _publish(url, "KEEP", "keep.it", [b"a", b"b", b"c"])

    server.restart()  # SIGTERM + start: same port, same file store
    assert server.url == url
    await _publish(url, "KEEP", "keep.it", [b"d"])

    server.kill()  # acked messages are already in the OS page cache
    assert not server.is_running()
    server.start()
    assert await _read_all(url, "KEEP", "keep.it") == [b"a", b"b", b"c", b"d"]


@pytest.mark.nats
async def test_nats_config_enables_auth(nats_server_factory: Callable[..., NatsServer]) -> None:
    server = nats_server_factory(
        config='authorization { user: "flow", password: "yard" }',
        connect_options={"user": "flow", "password": "yard"},
    )
    nc = await nats.connect(server.url, user="flow", password="yard")
    await nc.close()

    async def ignore(_exc: Exception) -> None:
        pass

    anonymous = NatsClient()  # not nats.connect(): that leaks the socket when it fails
    try:
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            await anonymous.connect(
                server.url, allow_reconnect=False, connect_timeout=2, error_cb=ignore
            )
    finally:
        await anonymous.close()


# ------------------------------------------------------------------------- MariaDB


@pytest.mark.mariadb
async def test_mariadb_round_trip(mariadb_uri: str) -> None:
    parts = urlsplit(mariadb_uri)
    conn = await asyncmy.connect(
        host=parts.hostname,
        port=parts.port,
        user=parts.username,
        password="",
        database=parts.path.lstrip("/"),
        autocommit=True,
    )
    try:
        async with conn.cursor() as cur:
            await cur.execute("CREATE TABLE items (id INT PRIMARY KEY, name VARCHAR(50))")
            await cur.execute("INSERT INTO items VALUES (%s, %s)", (1, "ünïcode"))
            await cur.execute("SELECT id, name FROM items")
            assert await cur.fetchall() == ((1, "ünïcode"),)
    finally:
        await conn.ensure_closed()
