"""When authentication is on, and what a brute force meets.

The default mode on loopback needs no login; asked to listen on any other
address it needs an admin exactly as server mode does. Failed sign-ins are
throttled per user and per address, with 4xx answers only.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from flowyard.core.errors import ConfigError
from flowyard.core.settings import Settings
from flowyard.services.api.app import create_app
from flowyard.services.runtime import Runtime
from tests.support.auth import ADMIN_AUTH, ADMIN_PASSWORD
from tests.support.processes import ProcessGroup

pytestmark = pytest.mark.timeout(120)


async def _client(runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(runtime.settings, runtime)
    app.state.runtime = runtime  # no lifespan under ASGITransport: nothing runs in the background
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://flowyard") as client:
        yield client


@pytest.fixture
async def networked(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """Default mode on SQLite, configured for a non-loopback address (nothing is bound)."""
    settings = Settings(
        host="0.0.0.0", data_dir=tmp_path, workers=0, admin_password=SecretStr(ADMIN_PASSWORD)
    )
    runtime = await Runtime.open(settings)
    try:
        async for client in _client(runtime):
            yield client
    finally:
        await runtime.close()


async def test_default_mode_on_loopback_needs_no_login(tmp_path: Path) -> None:
    runtime = await Runtime.open(Settings(data_dir=tmp_path, workers=0, admin_password=None))
    try:
        async for client in _client(runtime):
            me = (await client.get("/api/me")).json()
            assert me == {
                "name": "admin",
                "role": "admin",
                "auth_required": False,
                "csrf_token": None,
            }
            created = await client.post("/api/tasks", json={"flow": "debug.sleep"})
            assert created.status_code == 201
            assert created.json()["owner"] == "admin"
    finally:
        await runtime.close()


async def test_default_mode_on_a_network_address_refuses_without_an_admin(
    tmp_path: Path,
) -> None:
    settings = Settings(host="0.0.0.0", data_dir=tmp_path, workers=0, admin_password=None)
    with pytest.raises(ConfigError, match="flowyard users create NAME --admin"):
        await Runtime.open(settings)


async def test_default_mode_on_a_network_address_requires_sign_in(
    networked: httpx.AsyncClient,
) -> None:
    assert (await networked.get("/api/tasks")).status_code == 401
    assert (await networked.get("/api/health")).status_code == 200
    signed_in = await networked.get("/api/tasks", auth=ADMIN_AUTH)
    assert signed_in.status_code == 200
    me = (await networked.get("/api/me", auth=ADMIN_AUTH)).json()
    assert me["auth_required"] is True


async def test_admin_manages_users_and_their_tokens(networked: httpx.AsyncClient) -> None:
    made = await networked.post(
        "/api/users", json={"name": "erin", "password": "erin-Secret-5"}, auth=ADMIN_AUTH
    )
    assert made.status_code == 201
    assert made.json()["role"] == "user"
    token = await networked.post(
        "/api/users/erin/tokens", json={"name": "ci", "expires_days": 30}, auth=ADMIN_AUTH
    )
    assert token.status_code == 201
    secret = token.json()["token"]
    assert secret.startswith("fyt_")
    as_erin = {"Authorization": f"Bearer {secret}"}
    assert (await networked.get("/api/me", headers=as_erin)).json()["name"] == "erin"
    assert (await networked.get("/api/users", headers=as_erin)).status_code == 403
    listed = (await networked.get("/api/users/erin/tokens", auth=ADMIN_AUTH)).json()["items"]
    assert [t["name"] for t in listed] == ["ci"]
    assert secret not in str(listed)
    revoked = await networked.delete(f"/api/users/erin/tokens/{listed[0]['id']}", auth=ADMIN_AUTH)
    assert revoked.status_code == 204
    assert (await networked.get("/api/me", headers=as_erin)).status_code == 401
    promoted = await networked.patch("/api/users/erin", json={"role": "admin"}, auth=ADMIN_AUTH)
    assert promoted.json()["role"] == "admin"
    unknown = await networked.get("/api/users/nobody", auth=ADMIN_AUTH)
    assert unknown.status_code == 404
    odd = await networked.get("/api/users/bad%20name", auth=ADMIN_AUTH)
    assert odd.status_code == 422


@pytest.mark.postgres
@pytest.mark.e2e
def test_fifty_wrong_passwords_are_throttled_with_4xx_only(
    flowyard_processes: ProcessGroup, pg_uri: str, tmp_path: Path
) -> None:
    server = flowyard_processes.start_server(
        ["--mode", "server", "--db", pg_uri, "--files", str(tmp_path / "files")],
        {"FLOWYARD_LOGIN_ATTEMPTS": "5"},
    )
    server.wait_healthy(60)
    statuses = []
    with httpx.Client(base_url=server.url or "", timeout=20) as client:
        token = client.post("/api/me/tokens", json={"name": "t"}, auth=ADMIN_AUTH).json()["token"]
        for i in range(50):
            wrong = httpx.BasicAuth("admin", f"wrong-password-{i}")
            response = client.get("/api/tasks", auth=wrong)
            statuses.append(response.status_code)
            if response.status_code == 429:
                assert int(response.headers["retry-after"]) >= 1
                assert "too many failed sign-ins" in response.json()["detail"]
        assert set(statuses) <= {401, 429}, statuses
        assert statuses[:5] == [401] * 5
        assert statuses[5:] == [429] * 45
        # the right password is refused too while the user is throttled
        assert client.get("/api/tasks", auth=ADMIN_AUTH).status_code == 429
        # and so is a token from the same address; other addresses are unaffected
        bearer = {"Authorization": f"Bearer {token}"}
        assert client.get("/api/tasks", headers=bearer).status_code == 429
    assert server.alive()
    assert "Traceback" not in server.log_text()
