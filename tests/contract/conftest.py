"""One set of ports per implementation: in memory, SQLite, PostgreSQL, MariaDB.

Each contract test takes ``ports`` and runs once per implementation, so a
behaviour one store has and another lacks shows up as a failing parameter
(River's driver test suite is the model). The SQL ones are wired as the server
wires them: wake-ups after each commit, delivery rows in the event's transaction.

Each SQL backend is migrated once per session and every test gets it clean
(``tests/support/migrated_db.py``): a copy of a migrated SQLite file, or the
session's PostgreSQL / MariaDB database with every table truncated.
"""

from __future__ import annotations

import gc
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from flowyard.adapters.memory import MemoryTaskStore, MemoryWebhookStore, MemoryWorkQueue
from flowyard.adapters.sql.database import Database
from flowyard.adapters.sql.engine import make_engine
from flowyard.adapters.sql.task_store import SqlTaskStore
from flowyard.adapters.sql.webhook_store import DeliveryRecorder, SqlWebhookStore
from flowyard.adapters.sql.work_queue import SqlWorkQueue
from flowyard.bus.inprocess import LocalWaker
from flowyard.core.events import Event, TaskCreated
from flowyard.core.ports import WorkerIdentity
from flowyard.core.task import Task
from tests.support.mariadb import create_database as create_mariadb_database
from tests.support.mariadb import database_name, mariadb_reachable
from tests.support.mariadb import drop_database as drop_mariadb_database
from tests.support.migrated_db import copy_sqlite, migrate, truncate_all
from tests.support.postgres import PostgresCluster

LEASE_SECONDS = 30.0


@dataclass
class Ports:
    """The implementations under test, plus how to record through them."""

    kind: str
    store: Any
    """``TaskStore`` and ``ChainStore``."""
    queue: Any
    """``WorkQueue`` (with ``reap``)."""
    webhooks: Any
    """``WebhookStore`` and ``DeliveryQueue``."""
    invalidate: Callable[[], None] = field(default=lambda: None)
    """After a subscription changes: the SQL recorder's cache must forget it."""

    async def record(self, event: Event) -> Task:
        task: Task = await self.store.record(event)
        return task

    async def create(self, **fields: Any) -> Task:
        values: dict[str, Any] = {"flow": "debug.sleep", "owner": "alice", "params": {}}
        return await self.record(TaskCreated(task_id=uuid.uuid4(), **(values | fields)))


def worker(
    name: str = "w1", *, owner: str | None = None, flows: tuple[str, ...] = ()
) -> WorkerIdentity:
    return WorkerIdentity(
        id=f"worker-{name}", name=name, host="test", flows=flows or ("debug.sleep",), owner=owner
    )


def _memory() -> Ports:
    store = MemoryTaskStore()
    webhooks = MemoryWebhookStore()
    store.on_commit(webhooks.record_events)
    return Ports("memory", store, MemoryWorkQueue(store, lease_seconds=LEASE_SECONDS), webhooks)


async def _sql(kind: str, uri: str) -> tuple[Ports, Database]:
    """Ports on an already migrated database."""
    engine = make_engine(uri, pool_size=4)
    db = Database(engine)
    waker = LocalWaker()
    db.on_commit(waker.on_commit)
    recorder = DeliveryRecorder(db.dialect)
    db.in_transaction(recorder)
    store = SqlTaskStore(db)
    queue = SqlWorkQueue(store, waker, lease_seconds=LEASE_SECONDS)
    return Ports(kind, store, queue, SqlWebhookStore(db), recorder.invalidate), db


@pytest.fixture(scope="module", autouse=True)
def _frozen_heap() -> Iterator[None]:
    """Keep the root conftest's per-test ``gc.collect()`` to what the test made.

    Without this each collection walks every object of the imported libraries
    (~0.2-0.5 s a test on a loaded 2-core box: most of this suite's run time).
    What a test leaks is still collected, and warns, in that test.
    """
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


@pytest.fixture(scope="session")
def sqlite_migrated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated, closed SQLite file that each test copies."""
    path = tmp_path_factory.mktemp("contract-sqlite") / "migrated.db"
    migrate(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def postgres_migrated(postgres_cluster: PostgresCluster) -> Iterator[tuple[str, list[str]]]:
    """One migrated database on the session's cluster, and its tables to truncate."""
    name = f"contract_{uuid.uuid4().hex[:16]}"
    postgres_cluster.create_database(name)
    try:
        uri = postgres_cluster.uri(name)
        yield uri, migrate(uri)
    finally:
        if postgres_cluster.is_running():
            postgres_cluster.drop_database(name)


@pytest.fixture(scope="session")
def mariadb_migrated() -> Iterator[tuple[str, list[str]]]:
    """One migrated MariaDB database for the session, and its tables to truncate."""
    if not mariadb_reachable():
        pytest.skip("MariaDB is not running on 127.0.0.1:3306")
    uri = create_mariadb_database()
    try:
        yield uri, migrate(uri)
    finally:
        drop_mariadb_database(database_name(uri))


@pytest.fixture(
    params=[
        "memory",
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mariadb", marks=pytest.mark.mariadb),
    ]
)
async def ports(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Ports]:
    kind = str(request.param)
    if kind == "memory":
        yield _memory()
        return
    tables: list[str] = []
    if kind == "sqlite":
        uri = copy_sqlite(request.getfixturevalue("sqlite_migrated"), tmp_path / "flowyard.db")
    else:
        uri, tables = request.getfixturevalue(f"{kind}_migrated")
    made, db = await _sql(kind, uri)
    try:
        if tables:
            await truncate_all(db.engine, tables)
        yield made
    finally:
        await made.queue.close()
        await db.close()
