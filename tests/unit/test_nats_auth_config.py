"""The nats-server authorization that ``flowyard nats auth-config`` renders, and worker logins.

Pure: no nats-server here (tests/integration/test_nats_auth.py runs the
rendered file). Permissions are checked with NATS's own matching rules
(``*`` one token, ``>`` the rest) against subjects built by the same helpers
the server and the workers use.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from flowyard.bus.nats.auth_config import (
    WHOAMI_SUBJECTS,
    admin_permissions,
    inbox_prefix,
    quote,
    render_auth_config,
    user_permissions,
    whoami_login,
    whoami_subject,
)
from flowyard.bus.nats.object_store import bucket_name
from flowyard.bus.nats.streams import work_stream
from flowyard.bus.nats.subjects import (
    cancel_subject,
    event_subject,
    lease_subject,
    wake_subject,
    workers_subject,
)
from flowyard.core.errors import ConfigError
from flowyard.core.identity import Role
from flowyard.services.cli.worker import parse_worker_auth, worker_login

HASH = "$2b$11$" + "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ./"[:53]
SERVER_HASH = "$2b$11$" + "S" * 53
TOKEN_ID = "0123456789abcdef"
TOKEN = f"fyt_{TOKEN_ID}_{'s' * 43}"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "nats.md"


@dataclass(frozen=True)
class Login:
    nats_user: str
    owner: str
    role: Role
    password_hash: str = HASH


ALICE = Login("alice", "alice", Role.user)
ALICE_TOKEN = Login(f"fyt_{TOKEN_ID}", "alice", Role.user)
BOB = Login("bob", "bob", Role.user)
ROOT = Login("root", "root", Role.admin)


def render(*logins: Login, server_user: str = "flowyard-server") -> str:
    return render_auth_config(
        logins, server_user=server_user, server_password_hash=SERVER_HASH, bucket_name=bucket_name
    )


def matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: ``*`` is one token, a final ``>`` one or more."""
    want, have = pattern.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(have) > i
        if i >= len(have) or (token != "*" and token != have[i]):
            return False
    return len(want) == len(have)


def allowed(patterns: tuple[str, ...], subject: str) -> bool:
    return any(matches(p, subject) for p in patterns)


# ----------------------------------------------------------------------- permissions


def test_a_users_login_reaches_its_owners_work_and_nobody_elses() -> None:
    perms = user_permissions("alice", "alice", bucket_name)
    mine = [
        event_subject("task.claimed", "alice", "image.blur"),
        event_subject("task.done", "alice", "image.blur"),
        event_subject("task.progress", "alice", "debug.sleep"),
        event_subject("task.requeued", "alice", "debug.sleep"),
        lease_subject("alice", "image.blur"),
        workers_subject("alice"),
        f"$JS.API.CONSUMER.MSG.NEXT.{work_stream('alice')}.image_blur",
        f"$JS.ACK.{work_stream('alice')}.image_blur.1.2.3.4.5",
        "$JS.API.STREAM.INFO.OBJ_flowyard_files_alice",
        "$O.flowyard_files_alice.C.nuid",
        whoami_subject("alice"),
    ]
    theirs = [
        event_subject("task.done", "bob", "image.blur"),
        event_subject("task.created", "alice", "image.blur"),  # only the server creates
        event_subject("task.cancel_requested", "alice", "image.blur"),
        lease_subject("bob", "image.blur"),
        workers_subject("bob"),
        workers_subject(None),
        f"$JS.API.CONSUMER.MSG.NEXT.{work_stream('bob')}.image_blur",
        "$JS.API.CONSUMER.MSG.NEXT.FLOWYARD_EVENTS.flowyard_server",
        f"$JS.ACK.{work_stream('bob')}.image_blur.1.2.3.4.5",
        "$JS.API.STREAM.INFO.OBJ_flowyard_files_bob",
        "$JS.API.STREAM.PURGE.FLOWYARD_EVENTS",
        "$JS.API.STREAM.LIST",
        "$O.flowyard_files_bob.C.nuid",
        whoami_subject("bob"),
        whoami_subject("root"),
    ]
    assert [s for s in mine if not allowed(perms.publish, s)] == []
    assert [s for s in theirs if allowed(perms.publish, s)] == []
    assert allowed(perms.subscribe, cancel_subject("alice", "image.blur"))
    assert allowed(perms.subscribe, wake_subject("alice", "image_blur"))
    assert allowed(perms.subscribe, f"{inbox_prefix('alice')}.nuid.1")
    for subject in (
        cancel_subject("bob", "image.blur"),
        cancel_subject(None, "image.blur"),
        wake_subject("bob", "image_blur"),
        "_INBOX.nuid.1",
        f"{inbox_prefix('bob')}.nuid.1",
        "flowyard.events.done.alice.image_blur",
    ):
        assert not allowed(perms.subscribe, subject), subject


def test_a_token_login_has_its_owners_work_and_an_inbox_of_its_own() -> None:
    perms = user_permissions(f"fyt_{TOKEN_ID}", "alice", bucket_name)
    assert allowed(perms.publish, f"$JS.API.CONSUMER.MSG.NEXT.{work_stream('alice')}.x")
    assert allowed(perms.publish, whoami_subject(f"fyt_{TOKEN_ID}"))
    assert not allowed(perms.publish, whoami_subject("alice"))
    assert allowed(perms.subscribe, f"_INBOX_fyt_{TOKEN_ID}.nuid.1")
    assert allowed(perms.subscribe, "_INBOX_alice.nuid.1")  # the owner's worker inbox


def test_an_admins_login_takes_every_owners_work_but_asks_only_as_itself() -> None:
    perms = admin_permissions("root")
    for owner in ("alice", "bob"):
        assert allowed(perms.publish, event_subject("task.done", owner, "image.blur"))
        assert allowed(perms.publish, lease_subject(owner, "image.blur"))
        assert allowed(perms.publish, f"$JS.API.CONSUMER.MSG.NEXT.{work_stream(owner)}.x")
        assert allowed(perms.subscribe, cancel_subject(owner, "image.blur"))
    assert allowed(perms.publish, workers_subject(None))
    assert allowed(perms.publish, "$JS.API.STREAM.LIST")
    assert allowed(perms.subscribe, cancel_subject(None, "image.blur"))
    assert allowed(perms.subscribe, "_INBOX.nuid.1")
    assert allowed(perms.subscribe, "_INBOX_root.nuid.1")
    assert not allowed(perms.publish, event_subject("task.created", "alice", "image.blur"))
    assert [s for s in perms.publish if s.startswith("flowyard.rpc.whoami")] == [
        whoami_subject("root")
    ]


def test_whoami_subjects_name_the_login_in_one_token() -> None:
    assert whoami_subject("alice") == "flowyard.rpc.whoami.alice"
    assert WHOAMI_SUBJECTS == "flowyard.rpc.whoami.*"
    assert whoami_login(whoami_subject(f"fyt_{TOKEN_ID}")) == f"fyt_{TOKEN_ID}"
    assert whoami_login("flowyard.rpc.lease.alice") is None
    assert whoami_login("flowyard.rpc.whoami.alice.extra") is None
    assert inbox_prefix(None) == "_INBOX"
    assert inbox_prefix("alice") == "_INBOX_alice"


# ---------------------------------------------------------------------------- render


def test_render_quotes_every_string_and_keeps_dollars_literal() -> None:
    assert quote("$2b$11$x") == '"$2b$11$x"'
    assert quote('a"b\\c') == '"a\\"b\\\\c"'
    with pytest.raises(ConfigError):
        quote("line\nbreak")
    text = render(ALICE)
    assert f'password: "{HASH}"' in text
    assert f'password: "{SERVER_HASH}"' in text
    assert 'user: "alice"' in text
    assert '"$JS.API.CONSUMER.MSG.NEXT.FLOWYARD_WORK_alice.*"' in text
    # every value is quoted: no bare $ (a variable reference to nats-server) anywhere
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        assert "$" not in re.sub(r'"[^"]*"', "", line), line


def test_render_is_one_account_with_the_server_unrestricted_and_each_login_scoped() -> None:
    text = render(BOB, ROOT, ALICE)
    assert text.count("accounts {") == 1
    assert "FLOWYARD {" in text
    assert "jetstream: enabled" in text
    server_block = text.split('user: "flowyard-server"', 1)[1].split("}", 1)[0]
    assert "permissions" not in server_block
    assert text.count("permissions: {") == 3
    for login in ("alice", "bob", "root"):
        assert text.count(f'"{whoami_subject(login)}"') == 1
    bob_block = text.split('user: "bob"', 1)[1].split('user: "', 1)[0]
    assert "alice" not in bob_block
    assert "FLOWYARD_WORK_bob" in bob_block


def test_render_is_deterministic_whatever_the_order_of_the_rows() -> None:
    logins = [ALICE, ALICE_TOKEN, BOB, ROOT]
    first = render(*logins)
    for seed in range(5):
        shuffled = logins[:]
        random.Random(seed).shuffle(shuffled)
        assert render(*shuffled) == first
    users = re.findall(r'user: "([^"]+)"', first)
    assert users == ["flowyard-server", "alice", f"fyt_{TOKEN_ID}", "bob", "root"]


@pytest.mark.parametrize(
    ("logins", "server_user", "message"),
    [
        ((Login("alice", "alice", Role.user, "plain-password"),), "flowyard-server", "bcrypt"),
        ((ALICE, ALICE), "flowyard-server", "twice"),
        ((ALICE,), "alice", "twice"),
        ((Login('al"ice', "alice", Role.user),), "flowyard-server", "NATS user"),
        ((Login("alice", "al ice", Role.user),), "flowyard-server", "owner"),
        ((), "flowyard server", "server"),
    ],
)
def test_render_refuses_what_it_cannot_write_safely(
    logins: tuple[Login, ...], server_user: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        render(*logins, server_user=server_user)


def test_docs_show_the_config_as_rendered() -> None:
    """docs/nats.md ("Security") shows this exact output, hashes elided."""
    text = DOCS.read_text()
    start = text.index("```conf\n") + len("```conf\n")
    shown = text[start : text.index("```", start)]
    rendered = re.sub(
        r'"\$2b\$11\$[./A-Za-z0-9]{53}"', '"$2b$11$…"', render(ROOT, ALICE, ALICE_TOKEN)
    )
    assert shown == rendered


# ---------------------------------------------------------------------- worker login


def _login(
    *,
    user: str | None = None,
    password: str | None = None,
    token: str | None = None,
    password_stdin: bool = False,
    env: dict[str, str] | None = None,
    stdin: str = "",
    configured: tuple[str | None, str | None] = (None, None),
    creds: bool = False,
) -> tuple[str | None, str | None]:
    return worker_login(
        user,
        password,
        token,
        password_stdin,
        env=env or {},
        read_line=lambda: stdin,
        configured=configured,
        creds=creds,
    )


def test_a_token_logs_in_as_its_id_with_itself_as_the_password() -> None:
    assert _login(token=TOKEN) == (f"fyt_{TOKEN_ID}", TOKEN)
    assert _login(env={"FLOWYARD_TOKEN": TOKEN}) == (f"fyt_{TOKEN_ID}", TOKEN)
    assert _login(env={"FLOWYARD_WORKER_AUTH": TOKEN}) == (f"fyt_{TOKEN_ID}", TOKEN)
    assert _login(password_stdin=True, stdin=TOKEN + "\n") == (f"fyt_{TOKEN_ID}", TOKEN)


def test_worker_auth_sources_in_order() -> None:
    env = {"FLOWYARD_WORKER_AUTH": "alice:pa:ss", "FLOWYARD_TOKEN": TOKEN}
    assert parse_worker_auth("alice:pa:ss") == ("alice", "pa:ss")
    assert _login(env=env) == ("alice", "pa:ss")
    assert _login(user="bob", password="pw", env=env) == ("bob", "pw")
    assert _login(user="alice", env=env) == ("alice", "pa:ss")
    assert _login(user="bob", password_stdin=True, stdin="from-stdin\n", env=env) == (
        "bob",
        "from-stdin",
    )
    # FLOWYARD_NATS_USER/PASSWORD (settings) beat FLOWYARD_TOKEN, which the HTTP CLI shares
    assert _login(env={"FLOWYARD_TOKEN": TOKEN}, configured=("carol", "pw")) == ("carol", "pw")
    assert _login(env={"FLOWYARD_TOKEN": TOKEN}, creds=True) == (None, None)
    assert _login(user="carol", configured=(None, "pw")) == ("carol", "pw")
    assert _login() == (None, None)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"token": "not-a-token"}, "not a flowyard API token"),
        ({"token": TOKEN, "user": "alice"}, "not both"),
        ({"token": TOKEN, "password": "pw"}, "not both"),
        ({"password_stdin": True, "stdin": "\n", "user": "alice"}, "no password"),
        ({"env": {"FLOWYARD_WORKER_AUTH": "just-a-name"}}, "name:password"),
        ({"env": {"FLOWYARD_WORKER_AUTH": "alice:pw"}, "user": "bob"}, "logs in as alice"),
        ({"env": {"FLOWYARD_TOKEN": "fyt_short_x"}}, "FLOWYARD_TOKEN"),
    ],
)
def test_worker_auth_mistakes_are_one_clear_error(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _login(**kwargs)  # type: ignore[arg-type]
