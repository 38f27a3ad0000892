"""Who a NATS worker is: the server says (whoami), NATS enforces, tokens follow revocation.

Same setup as tests/integration/test_nats_auth.py (users alice, bob and root,
the config from ``flowyard nats auth-config``, real nats-server, PostgreSQL
and flowyard processes). An admin's worker without ``--owner`` serves every
owner; a user's worker asking for another owner is refused by NATS and exits
with one line; a token-authenticated worker serves its user, and after the
token is revoked and nats-server reloads the regenerated config, the token no
longer connects.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import nats.errors
import pytest

from flowyard.bus.nats.auth_config import WhoAmIReply, whoami_subject
from flowyard.core.identity import token_id_of
from tests.integration.test_nats_auth import (
    PASSWORDS,
    Refusals,
    connect_as,
    create_task,
    on_users,
    reload_config,
    start_stack,
    start_worker,
    wait_done,
)
from tests.support.nats import NatsServer
from tests.support.nats_processes import wait_worker_ready
from tests.support.processes import ProcessGroup

pytestmark = [pytest.mark.nats, pytest.mark.postgres, pytest.mark.e2e, pytest.mark.timeout(120)]


def test_an_admins_worker_serves_every_owner_and_a_user_may_not_serve_another(
    nats_server_factory: Callable[..., NatsServer],
    pg_uri: str,
    tmp_path: Path,
    flowyard_processes: ProcessGroup,
) -> None:
    stack = start_stack(nats_server_factory, pg_uri, tmp_path, flowyard_processes)
    # alice asks for bob's tasks (--nats-password, shown in ps, still works)
    intruder = start_worker(
        stack,
        flowyard_processes,
        tmp_path,
        "alice-as-bob",
        extra=["--nats-user", "alice", "--nats-password", PASSWORDS["alice"], "--owner", "bob"],
    )
    admin = start_worker(
        stack,
        flowyard_processes,
        tmp_path,
        "root-gpu",
        env={"FLOWYARD_WORKER_AUTH": f"root:{PASSWORDS['root']}"},
    )
    assert intruder.wait(60) == 1
    log = intruder.log_text()
    errors = [line for line in log.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, log
    assert "NATS refused user 'alice' the subjects of owner 'bob'" in errors[0], log
    assert "permissions violation" in errors[0], log
    assert "Traceback" not in log

    wait_worker_ready(admin)
    assert "NATS user root is an admin: serving every owner's tasks" in admin.log_text()
    assert "owner (all)" in admin.log_text()
    tasks = [create_task(stack, owner) for owner in ("alice", "bob")]
    for task_id in tasks:
        done = wait_done(stack, task_id, flowyard_processes)
        assert done["state"] == "succeeded", done
        assert done["worker_id"].endswith("/root-gpu"), done


def test_a_token_worker_serves_its_user_until_the_token_is_revoked_and_nats_reloads(
    nats_server_factory: Callable[..., NatsServer],
    pg_uri: str,
    tmp_path: Path,
    flowyard_processes: ProcessGroup,
) -> None:
    stack = start_stack(nats_server_factory, pg_uri, tmp_path, flowyard_processes)
    _, token = on_users(pg_uri, lambda store: store.create_token("alice", name="gpu-1"))
    token_id = token_id_of(token)
    assert token_id is not None
    login = f"fyt_{token_id}"
    reload_config(stack.nats, pg_uri)  # a new token: regenerate, reload

    worker = start_worker(
        stack, flowyard_processes, tmp_path, "alice-token", env={"FLOWYARD_TOKEN": token}
    )
    wait_worker_ready(worker)
    assert f"NATS user {login} is alice's (a user): serving alice's tasks" in worker.log_text()
    task_id = create_task(stack, "alice")
    done = wait_done(stack, task_id, flowyard_processes)
    assert done["state"] == "succeeded", done
    assert done["worker_id"].endswith("/alice-token"), done

    on_users(pg_uri, lambda store: store.revoke_token(token_id))
    on_users(pg_uri, lambda store: store.set_disabled("bob", True))
    # until the reload NATS still accepts the token, but the server no longer vouches for it
    reply = asyncio.run(_whoami(stack.nats.url, login, token))
    assert reply.owner is None, reply
    assert reply.role is None, reply
    assert "revoked" in reply.error, reply

    reload_config(stack.nats, pg_uri)
    for user, password in ((login, token), ("bob", PASSWORDS["bob"])):
        with pytest.raises(nats.errors.Error, match=r"(?i)authorization violation"):
            asyncio.run(_connect_and_close(stack.nats.url, user, password))
    asyncio.run(_connect_and_close(stack.nats.url, "alice", PASSWORDS["alice"]))
    log = stack.nats.log_path.read_text()
    assert f'authentication error - User "{login}"' in log
    # the reload dropped the running worker's connection, and it may not come back: it stops
    assert worker.wait(30) == 1
    errors = [line for line in worker.log_text().splitlines() if line.startswith("error:")]
    assert len(errors) == 1, worker.log_text()
    assert f"no longer accepts user {login!r}" in errors[0]


async def _whoami(url: str, user: str, password: str) -> WhoAmIReply:
    nc = await connect_as(url, user, password, Refusals())
    try:
        msg = await nc.request(whoami_subject(user), b"", timeout=5)
    finally:
        await nc.close()
    return WhoAmIReply.model_validate_json(msg.data)


async def _connect_and_close(url: str, user: str, password: str) -> None:
    nc = await connect_as(url, user, password, Refusals())
    await nc.close()
