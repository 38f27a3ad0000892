"""pytest plugin: real PostgreSQL, NATS and MariaDB for integration tests.

Shared servers are session-scoped (isolation comes from a fresh database per
test, or unique stream names); chaos tests ask for a ``*_private`` server they
may kill and restart. Every teardown is bounded and falls back to SIGKILL, and
anything still running at session end (or interpreter exit) is killed.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.mariadb import create_database as create_mariadb_database
from tests.support.mariadb import database_name, mariadb_reachable
from tests.support.mariadb import drop_database as drop_mariadb_database
from tests.support.nats import NatsServer
from tests.support.ports import kill_all_tracked
from tests.support.postgres import PostgresCluster, initdb

PG_TEMPLATE_DATABASE = "flowyard_template"


def _dispose_cluster(cluster: PostgresCluster) -> None:
    """Stop (bounded, SIGKILL fallback) and drop the data dir; keep the log."""
    try:
        cluster.stop(timeout=10)
    finally:
        cluster.kill()  # no-op unless stop() raised half-way
        shutil.rmtree(cluster.data_dir, ignore_errors=True)


def _dispose_nats(server: NatsServer) -> None:
    try:
        server.stop(timeout=10)
    finally:
        server.kill()


# ---------------------------------------------------------------------- PostgreSQL


@pytest.fixture(scope="session")
def pg_initdb_template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A pristine, never-started data dir: clusters copy it instead of running initdb."""
    path = tmp_path_factory.mktemp("pg-initdb") / "data"
    initdb(path)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_cluster(
    tmp_path_factory: pytest.TempPathFactory, pg_initdb_template: Path
) -> Iterator[PostgresCluster]:
    """The session's shared cluster. Do not kill it; use pg_cluster_private for that."""
    cluster = PostgresCluster(tmp_path_factory.mktemp("pg-shared"), initdb_from=pg_initdb_template)
    cluster.start()
    try:
        yield cluster
    finally:
        _dispose_cluster(cluster)


@pytest.fixture(scope="session")
def pg_template_database(postgres_cluster: PostgresCluster) -> str:
    """Name of the database every per-test database is cloned from.

    Override it (session scope) to pre-apply a schema once; close every
    connection to it afterwards, since CREATE DATABASE ... TEMPLATE refuses a
    template that has sessions.
    """
    postgres_cluster.create_database(PG_TEMPLATE_DATABASE)
    return PG_TEMPLATE_DATABASE


@pytest.fixture
def pg_database_factory(
    postgres_cluster: PostgresCluster, pg_template_database: str
) -> Iterator[Callable[[], str]]:
    """Callable returning the URI of yet another fresh database; all dropped after."""
    created: list[str] = []

    def make() -> str:
        name = f"t_{uuid.uuid4().hex[:16]}"
        postgres_cluster.create_database(name, template=pg_template_database)
        created.append(name)
        return postgres_cluster.uri(name)

    yield make
    if postgres_cluster.is_running():
        for name in created:
            postgres_cluster.drop_database(name)


@pytest.fixture
def pg_uri(pg_database_factory: Callable[[], str]) -> str:
    """``postgresql://postgres@127.0.0.1:PORT/t_<hex>``: a fresh database for this test."""
    return pg_database_factory()


@pytest.fixture
def pg_cluster_private(tmp_path: Path, pg_initdb_template: Path) -> Iterator[PostgresCluster]:
    """A cluster of this test's own, free to kill -9 and restart.

    Unlike the shared one it runs with synchronous_commit=on, so a commit that
    returned survives SIGKILL, as in production (fsync stays off: only a
    kernel crash could lose it).
    """
    cluster = PostgresCluster(
        tmp_path / "pg",
        initdb_from=pg_initdb_template,
        settings={"synchronous_commit": "on"},
    )
    cluster.start()
    try:
        yield cluster
    finally:
        _dispose_cluster(cluster)


# ---------------------------------------------------------------------------- NATS


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """The session's shared JetStream server; use unique stream/subject names."""
    server = NatsServer(tmp_path_factory.mktemp("nats-shared") / "store")
    server.start()
    try:
        yield server
    finally:
        _dispose_nats(server)


@pytest.fixture
def nats_server_private(tmp_path: Path) -> Iterator[NatsServer]:
    """A JetStream server of this test's own, free to stop, kill and restart."""
    server = NatsServer(tmp_path / "nats" / "store")
    server.start()
    try:
        yield server
    finally:
        _dispose_nats(server)


@pytest.fixture
def nats_server_factory(tmp_path: Path) -> Iterator[Callable[..., NatsServer]]:
    """Start extra servers, e.g. with auth config: ``factory(config=..., connect_options=...)``."""
    servers: list[NatsServer] = []

    def make(config: str | None = None, **kwargs: Any) -> NatsServer:
        server = NatsServer(tmp_path / f"nats-{len(servers)}" / "store", config=config, **kwargs)
        servers.append(server)
        server.start()
        return server

    try:
        yield make
    finally:
        for server in servers:
            _dispose_nats(server)


# ------------------------------------------------------------------------- MariaDB


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mariadb", marks=pytest.mark.mariadb),
    ]
)
def db_uri(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """One fresh database per dialect: the contract suites run against every store."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'flowyard.db'}"
    fixture = "pg_uri" if request.param == "postgres" else "mariadb_uri"
    return str(request.getfixturevalue(fixture))


@pytest.fixture
def mariadb_uri() -> Iterator[str]:
    """``mysql://root@127.0.0.1:3306/flowyard_test_<hex>``, dropped after the test.

    Skips only when nothing listens on 3306; a server that is up but refuses
    root is an error, not a skip.
    """
    if not mariadb_reachable():
        pytest.skip("MariaDB is not running on 127.0.0.1:3306")
    uri = create_mariadb_database()
    try:
        yield uri
    finally:
        drop_mariadb_database(database_name(uri))


# --------------------------------------------------------------------- safety net


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Kill any server a fixture failed to stop (atexit does it again at exit)."""
    kill_all_tracked()
