"""A pooled connection that died while idle is replaced before use; a busy one is not
tested again before every transaction (PostgreSQL and MariaDB)."""

from __future__ import annotations

import asyncio

import pytest
import sqlalchemy as sa

from flowyard.adapters.sql import engine as engine_module
from flowyard.adapters.sql.engine import make_engine

BACKEND = {
    "postgresql": sa.text("SELECT pg_backend_pid()"),
    "mysql": sa.text("SELECT CONNECTION_ID()"),
}
KILL = {
    "postgresql": "SELECT pg_terminate_backend({})",
    "mysql": "KILL {}",
}


@pytest.fixture(params=["postgresql", "mysql"])
def server_uri(request: pytest.FixtureRequest) -> str:
    if request.param == "postgresql":
        return str(request.getfixturevalue("pg_uri"))
    return str(request.getfixturevalue("mariadb_uri"))


async def test_an_idle_connection_killed_by_the_server_is_replaced(
    server_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine_module, "PING_IDLE_SECONDS", 0.05)
    engine = make_engine(server_uri, pool_size=1)
    other = make_engine(server_uri, pool_size=1, pre_ping=False)
    dialect = engine.dialect.name
    pings: list[object] = []
    ping = engine.dialect.do_ping

    def counted(dbapi_connection: object) -> bool:
        pings.append(dbapi_connection)
        return ping(dbapi_connection)

    monkeypatch.setattr(engine.dialect, "do_ping", counted)
    try:
        async with engine.connect() as conn:
            pid = (await conn.execute(BACKEND[dialect])).scalar()
        async with other.connect() as conn:  # the server drops the pooled connection
            await conn.execute(sa.text(KILL[dialect].format(int(pid))))
            await conn.commit()
        await asyncio.sleep(0.1)  # idle past the threshold: tested at checkout, replaced
        async with engine.connect() as conn:
            assert (await conn.execute(BACKEND[dialect])).scalar() != pid
            used = (await conn.execute(BACKEND[dialect])).scalar()
        assert len(pings) == 1
        async with engine.connect() as conn:  # used a moment ago: the same one, untested
            assert (await conn.execute(BACKEND[dialect])).scalar() == used
        assert len(pings) == 1
    finally:
        await engine.dispose()
        await other.dispose()
