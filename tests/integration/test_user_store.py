"""The users and tokens store on SQLite, PostgreSQL and MariaDB.

Only hashes may reach the database: every test that makes a secret can look
for it in every row of every table. Sign-in answers None without saying why,
the last enabled admin cannot be locked out, and tokens stop working once
revoked, expired or their user is disabled.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import bcrypt
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from argon2 import PasswordHasher

from flowyard.adapters import passwords
from flowyard.adapters.passwords import (
    burn_verify,
    generate_token,
    hash_password,
    nats_password_hash,
    needs_rehash,
    token_digest,
    verify_password,
)
from flowyard.adapters.sql.database import Database
from flowyard.adapters.sql.engine import MIGRATIONS, make_engine, upgrade
from flowyard.adapters.sql.schema import metadata, users, webhooks
from flowyard.adapters.sql.user_store import NatsAccount, SqlUserStore
from flowyard.core.errors import (
    Conflict,
    InvalidInput,
    TokenNotFound,
    UserExists,
    UserNotFound,
    WeakPassword,
)
from flowyard.core.events import utcnow
from flowyard.core.identity import TOKEN_PREFIX, Role, TokenKind, token_id_of

pytestmark = pytest.mark.timeout(120)

PASSWORD = "correct horse battery"
OTHER_PASSWORD = "staple gun 42"


@pytest.fixture
async def db(db_uri: str) -> AsyncIterator[Database]:
    engine = make_engine(db_uri, pool_size=4)
    await upgrade(engine)
    database = Database(engine)
    yield database
    await database.close()


@pytest.fixture
def store(db: Database, monkeypatch: pytest.MonkeyPatch) -> SqlUserStore:
    # bcrypt's cost 11 takes ~0.2 s a hash; the cost itself is tested once, below
    monkeypatch.setattr(passwords, "NATS_BCRYPT_COST", 4)
    return SqlUserStore(db)


async def all_rows_text(db: Database) -> str:
    """Every value of every table, as one string to search a secret in."""
    parts: list[str] = []
    async with db.read() as conn:
        for table in metadata.sorted_tables:
            for row in (await conn.execute(sa.select(table))).all():
                parts.extend(repr(value) for value in row)
    return "\n".join(parts)


# -- hashing helpers --------------------------------------------------------


def test_password_hashes_verify_and_never_raise() -> None:
    stored = hash_password(PASSWORD)
    assert stored.startswith("$argon2id$")
    assert verify_password(stored, PASSWORD)
    assert not verify_password(stored, OTHER_PASSWORD)
    assert not verify_password("not a hash", PASSWORD)
    assert not verify_password("", PASSWORD)
    assert not needs_rehash(stored)
    burn_verify(PASSWORD)  # no error, whatever the password


def test_nats_hash_is_bcrypt_cost_11() -> None:
    stored = nats_password_hash(PASSWORD)
    assert stored.startswith("$2b$11$")
    assert bcrypt.checkpw(PASSWORD.encode(), stored.encode())
    with pytest.raises(ValueError, match="72 bytes"):
        nats_password_hash("x" * 73)


def test_tokens_carry_their_id_and_a_sha256_digest() -> None:
    secret = generate_token("0123456789abcdef")
    assert secret.startswith(f"{TOKEN_PREFIX}0123456789abcdef_")
    assert token_id_of(secret) == "0123456789abcdef"
    assert len(secret) == len(TOKEN_PREFIX) + 16 + 1 + 43
    assert len(token_digest(secret)) == 64
    assert token_digest(secret) != token_digest(generate_token("0123456789abcdef"))


# -- schema -----------------------------------------------------------------


def table_of(diff: Any) -> str | None:
    """The table an alembic autogenerate difference is about."""
    if isinstance(diff, list):  # modify_* come grouped per column
        diff = diff[0]
    op, *rest = diff
    if op in ("add_table", "remove_table"):
        return str(rest[0].name)
    if op.endswith(("_index", "_constraint", "_fk")):
        return str(rest[0].table.name)
    return str(rest[1])  # add_column, remove_column, modify_*: (op, schema, table, ...)


async def test_migration_matches_the_schema_and_goes_down_again(db_uri: str) -> None:
    engine = make_engine(db_uri)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))

    def differences(conn: sa.Connection) -> list[Any]:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        return [
            diff
            for diff in compare_metadata(ctx, metadata)
            if table_of(diff) in {"users", "tokens", "webhooks"}
        ]

    def columns(conn: sa.Connection, table: str) -> set[str]:
        return {c["name"] for c in sa.inspect(conn).get_columns(table)}

    def tables(conn: sa.Connection) -> set[str]:
        return set(sa.inspect(conn).get_table_names())

    def downgrade(conn: sa.Connection) -> None:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0002")

    try:
        await upgrade(engine)
        async with engine.connect() as conn:
            assert await conn.run_sync(differences) == []
            assert {"owner", "all_owners"} <= await conn.run_sync(columns, "webhooks")
        async with engine.begin() as conn:
            await conn.run_sync(downgrade)
        async with engine.connect() as conn:
            assert not {"users", "tokens"} & await conn.run_sync(tables)
            assert not {"owner", "all_owners"} & await conn.run_sync(columns, "webhooks")
        await upgrade(engine)
        async with engine.connect() as conn:
            assert {"users", "tokens"} <= await conn.run_sync(tables)
    finally:
        await engine.dispose()


async def test_existing_webhooks_receive_every_owners_events(db: Database) -> None:
    """A row written without the new columns (as before 0003) defaults to all owners."""
    import uuid

    async with db.write() as tx:
        await tx.conn.execute(
            sa.insert(webhooks).values(
                id=uuid.uuid4(),
                url="http://127.0.0.1:9/",
                events=["task.done"],
                flows=None,
                secret="whsec_x",
                enabled=True,
                created_at=utcnow(),
                consecutive_failures=0,
            )
        )
    async with db.read() as conn:
        row = (await conn.execute(sa.select(webhooks.c.owner, webhooks.c.all_owners))).one()
    assert row.owner is None
    assert row.all_owners is True


# -- users ------------------------------------------------------------------


async def test_create_get_list(store: SqlUserStore) -> None:
    assert not await store.exists_any()
    bob = await store.create("bob", PASSWORD, Role.user)
    alice = await store.create("alice", OTHER_PASSWORD, Role.admin)
    assert await store.exists_any()
    assert (bob.name, bob.role, bob.disabled) == ("bob", Role.user, False)
    assert alice.role is Role.admin
    got = await store.get("alice")
    assert got.name == "alice"
    assert got.role is Role.admin
    assert got.last_login_at is None
    assert got.created_at.tzinfo is not None
    assert abs(got.created_at - alice.created_at) < timedelta(seconds=1)
    assert [u.name for u in await store.list()] == ["alice", "bob"]
    assert await store.count_admins() == 1


async def test_duplicate_name_is_refused(store: SqlUserStore) -> None:
    await store.create("alice", PASSWORD, Role.user)
    with pytest.raises(UserExists, match="user 'alice' exists already"):
        await store.create("alice", OTHER_PASSWORD, Role.admin)
    assert [u.role for u in await store.list()] == [Role.user]


async def test_duplicate_insert_race_becomes_user_exists(store: SqlUserStore) -> None:
    results = await asyncio.gather(
        store.create("carol", PASSWORD, Role.user),
        store.create("carol", PASSWORD, Role.user),
        return_exceptions=True,
    )
    assert sorted(type(r).__name__ for r in results) == ["User", "UserExists"]


async def test_weak_password_and_odd_names_are_refused(store: SqlUserStore) -> None:
    with pytest.raises(WeakPassword):
        await store.create("alice", "short", Role.user)
    with pytest.raises(WeakPassword):
        await store.create("alice", "", Role.user)
    with pytest.raises(WeakPassword, match="too easy"):
        await store.create("alicesmith", "AliceSmith", Role.user)
    for name in ("al ice", "../etc", "a.b", "x" * 65, ""):
        with pytest.raises(InvalidInput) as caught:
            await store.create(name, PASSWORD, Role.user)
        assert caught.value.field == "name"
    assert await store.list() == []


async def test_unknown_user_is_named(store: SqlUserStore) -> None:
    for call in (
        store.get("nobody"),
        store.set_password("nobody", PASSWORD),
        store.set_disabled("nobody", True),
        store.set_role("nobody", Role.admin),
        store.remove("nobody"),
        store.create_token("nobody", name="ci"),
    ):
        with pytest.raises(UserNotFound, match="'nobody'"):
            await call


async def test_check_password(store: SqlUserStore) -> None:
    await store.create("alice", PASSWORD, Role.user)
    await store.create("root", OTHER_PASSWORD, Role.admin)
    signed_in = await store.check_password("alice", PASSWORD)
    assert signed_in is not None
    assert signed_in.name == "alice"
    assert signed_in.last_login_at is not None
    assert (await store.get("alice")).last_login_at is not None
    assert await store.check_password("alice", OTHER_PASSWORD) is None
    assert await store.check_password("alice", "") is None
    assert await store.check_password("nobody", PASSWORD) is None
    await store.set_disabled("alice", True)
    assert await store.check_password("alice", PASSWORD) is None
    await store.set_disabled("alice", False)
    assert await store.check_password("alice", PASSWORD) is not None


async def test_old_hash_is_upgraded_on_sign_in(store: SqlUserStore, db: Database) -> None:
    await store.create("alice", PASSWORD, Role.user)
    weak = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1).hash(PASSWORD)
    assert needs_rehash(weak)
    async with db.write() as tx:
        await tx.conn.execute(
            sa.update(users).where(users.c.name == "alice").values(password_hash=weak)
        )
    assert await store.check_password("alice", PASSWORD) is not None
    async with db.read() as conn:
        stored = (
            await conn.execute(sa.select(users.c.password_hash).where(users.c.name == "alice"))
        ).scalar_one()
    assert stored != weak
    assert not needs_rehash(stored)
    assert verify_password(stored, PASSWORD)


async def test_set_password_replaces_both_hashes(store: SqlUserStore) -> None:
    await store.create("alice", PASSWORD, Role.user)
    with pytest.raises(WeakPassword):
        await store.set_password("alice", "alice")
    await store.set_password("alice", OTHER_PASSWORD)
    assert await store.check_password("alice", PASSWORD) is None
    assert await store.check_password("alice", OTHER_PASSWORD) is not None
    [account] = await store.nats_accounts()
    assert bcrypt.checkpw(OTHER_PASSWORD.encode(), account.password_hash.encode())


async def test_the_last_admin_cannot_be_locked_out(store: SqlUserStore) -> None:
    await store.create("root", PASSWORD, Role.admin)
    await store.create("alice", PASSWORD, Role.user)
    for call in (
        store.set_disabled("root", True),
        store.remove("root"),
        store.set_role("root", Role.user),
    ):
        with pytest.raises(Conflict, match="last admin"):
            await call
    await store.set_disabled("alice", True)  # ordinary users: fine
    await store.remove("alice")

    await store.create("second", PASSWORD, Role.admin)
    assert await store.count_admins() == 2
    disabled = await store.set_disabled("root", True)
    assert disabled.disabled
    assert await store.count_admins() == 1
    with pytest.raises(Conflict, match=r"'second'.*last admin"):
        await store.remove("second")
    await store.set_disabled("root", False)
    await store.remove("second")
    assert [u.name for u in await store.list()] == ["root"]


async def test_roles_change(store: SqlUserStore) -> None:
    await store.create("root", PASSWORD, Role.admin)
    await store.create("alice", PASSWORD, Role.user)
    assert (await store.set_role("alice", Role.admin)).role is Role.admin
    assert await store.count_admins() == 2
    assert (await store.set_role("root", Role.user)).role is Role.user
    assert (await store.get("root")).principal.role is Role.user


async def test_remove_deletes_the_users_tokens(store: SqlUserStore) -> None:
    await store.create("root", PASSWORD, Role.admin)
    await store.create("alice", PASSWORD, Role.user)
    _, secret = await store.create_token("alice", name="ci")
    await store.create_token("root", name="ops")
    await store.remove("alice")
    with pytest.raises(UserNotFound):
        await store.get("alice")
    assert await store.authenticate_token(secret, utcnow()) is None
    assert [t.user for t in await store.tokens(kind=None)] == ["root"]


# -- tokens -----------------------------------------------------------------


async def test_token_create_authenticate_and_not_stored(store: SqlUserStore, db: Database) -> None:
    await store.create("alice", PASSWORD, Role.user)
    token, secret = await store.create_token("alice", name="laptop")
    assert token_id_of(secret) == token.id
    assert (token.user, token.name, token.kind) == ("alice", "laptop", TokenKind.api)
    assert token.last_used_at is None
    assert token.revoked_at is None

    now = utcnow()
    found = await store.authenticate_token(secret, now)
    assert found is not None
    authed, user = found
    assert authed.id == token.id
    assert user.name == "alice"
    assert user.role is Role.user
    assert authed.last_used_at == now

    text = await all_rows_text(db)
    assert secret not in text
    assert secret.split("_", 2)[2] not in text  # not even the random part
    assert PASSWORD not in text
    assert token_digest(secret) in text  # what is stored instead


async def test_last_used_is_written_at_most_once_a_minute(store: SqlUserStore) -> None:
    await store.create("alice", PASSWORD, Role.user)
    _token, secret = await store.create_token("alice", name="ci")
    first = utcnow()
    await store.authenticate_token(secret, first)
    await store.authenticate_token(secret, first + timedelta(seconds=30))
    [listed] = await store.tokens("alice")
    assert listed.last_used_at is not None
    assert abs(listed.last_used_at - first) < timedelta(milliseconds=1)
    later = first + timedelta(seconds=61)
    found = await store.authenticate_token(secret, later)
    assert found is not None
    assert found[0].last_used_at == later
    [listed] = await store.tokens("alice")
    assert listed.last_used_at is not None
    assert abs(listed.last_used_at - later) < timedelta(milliseconds=1)


async def test_wrong_tokens_are_refused(store: SqlUserStore) -> None:
    await store.create("alice", PASSWORD, Role.user)
    token, secret = await store.create_token("alice", name="ci")
    now = utcnow()
    for wrong in (
        "",
        "Bearer " + secret,
        secret[:-1],
        secret + "x",
        generate_token(token.id),  # right id, wrong secret
        PASSWORD,
    ):
        assert await store.authenticate_token(wrong, now) is None


async def test_expired_tokens_are_refused(store: SqlUserStore) -> None:
    await store.create("alice", PASSWORD, Role.user)
    now = utcnow()
    _, secret = await store.create_token("alice", name="short", expires_at=now + timedelta(hours=1))
    assert await store.authenticate_token(secret, now + timedelta(minutes=59)) is not None
    assert await store.authenticate_token(secret, now + timedelta(hours=1)) is None


async def test_revoke(store: SqlUserStore) -> None:
    await store.create("alice", PASSWORD, Role.user)
    await store.create("bob", PASSWORD, Role.user)
    token, secret = await store.create_token("alice", name="ci")
    with pytest.raises(TokenNotFound, match=token.id):
        await store.revoke_token(token.id, user="bob")  # someone else's: looks missing
    with pytest.raises(TokenNotFound, match="'feedfeedfeedfeed'"):
        await store.revoke_token("feedfeedfeedfeed")
    assert await store.authenticate_token(secret, utcnow()) is not None
    revoked = await store.revoke_token(token.id, user="alice")
    assert revoked.revoked_at is not None
    assert await store.authenticate_token(secret, utcnow()) is None
    again = await store.revoke_token(token.id)
    assert again.revoked_at is not None
    assert abs(again.revoked_at - revoked.revoked_at) < timedelta(milliseconds=1)


async def test_disabled_users_tokens_stop_and_resume(store: SqlUserStore) -> None:
    await store.create("alice", PASSWORD, Role.user)
    _, secret = await store.create_token("alice", name="ci")
    await store.set_disabled("alice", True)
    assert await store.authenticate_token(secret, utcnow()) is None
    await store.set_disabled("alice", False)
    assert await store.authenticate_token(secret, utcnow()) is not None


async def test_token_names_are_checked(store: SqlUserStore) -> None:
    await store.create("alice", PASSWORD, Role.user)
    for name in ("", "   ", "x" * 201):
        with pytest.raises(InvalidInput) as caught:
            await store.create_token("alice", name=name)
        assert caught.value.field == "name"
    token, _ = await store.create_token("alice", name="x" * 200)
    assert token.name == "x" * 200


async def test_token_listing_newest_first_by_kind_and_user(store: SqlUserStore) -> None:
    await store.create("alice", PASSWORD, Role.user)
    await store.create("bob", PASSWORD, Role.user)
    first, _ = await store.create_token("alice", name="one")
    second, _ = await store.create_token("bob", name="two")
    third, _ = await store.create_token("alice", name="three")
    session, _ = await store.create_token("alice", name="web", kind=TokenKind.session)
    assert [t.id for t in await store.tokens()] == [third.id, second.id, first.id]
    assert [t.id for t in await store.tokens("alice")] == [third.id, first.id]
    assert [t.id for t in await store.tokens("alice", kind=TokenKind.session)] == [session.id]
    assert len(await store.tokens(kind=None)) == 4


async def test_sessions_expire_and_are_swept(store: SqlUserStore, db: Database) -> None:
    await store.create("alice", PASSWORD, Role.user)
    now = utcnow()
    live, live_secret = await store.create_token(
        "alice", name="web", kind=TokenKind.session, expires_at=now + timedelta(hours=12)
    )
    _old, _ = await store.create_token(
        "alice", name="old", kind=TokenKind.session, expires_at=now - timedelta(seconds=1)
    )
    out, _ = await store.create_token(
        "alice", name="signed out", kind=TokenKind.session, expires_at=now + timedelta(hours=12)
    )
    await store.revoke_token(out.id)
    api, _ = await store.create_token("alice", name="ci", expires_at=now - timedelta(seconds=1))
    found = await store.authenticate_token(live_secret, now)
    assert found is not None
    assert found[0].kind is TokenKind.session
    assert await store.delete_expired_sessions(now) == 2
    remaining = {t.id for t in await store.tokens(kind=None)}
    assert remaining == {live.id, api.id}
    assert await store.delete_expired_sessions(now) == 0
    text = await all_rows_text(db)
    assert live_secret not in text


# -- NATS -------------------------------------------------------------------


async def test_nats_accounts(store: SqlUserStore) -> None:
    await store.create("root", PASSWORD, Role.admin)
    await store.create("alice", OTHER_PASSWORD, Role.user)
    await store.create("mallory", PASSWORD, Role.user)
    now = utcnow()
    ci, ci_secret = await store.create_token("alice", name="ci")
    gone, _ = await store.create_token("alice", name="gone")
    await store.revoke_token(gone.id)
    await store.create_token("alice", name="old", expires_at=now - timedelta(seconds=1))
    await store.create_token("alice", name="web", kind=TokenKind.session)
    await store.create_token("mallory", name="ci")
    await store.set_disabled("mallory", True)

    accounts = await store.nats_accounts()
    by_user = {a.nats_user: a for a in accounts}
    assert set(by_user) == {"root", "alice", f"{TOKEN_PREFIX}{ci.id}"}
    assert by_user["root"] == NatsAccount("root", "root", Role.admin, by_user["root"].password_hash)
    assert by_user["alice"].owner == "alice"
    assert by_user["alice"].role is Role.user
    token = by_user[f"{TOKEN_PREFIX}{ci.id}"]
    assert token.owner == "alice"
    assert token.role is Role.user
    assert bcrypt.checkpw(PASSWORD.encode(), by_user["root"].password_hash.encode())
    assert bcrypt.checkpw(OTHER_PASSWORD.encode(), by_user["alice"].password_hash.encode())
    assert not bcrypt.checkpw(PASSWORD.encode(), by_user["alice"].password_hash.encode())
    assert bcrypt.checkpw(ci_secret.encode(), token.password_hash.encode())
    assert all(a.password_hash.startswith("$2b$") for a in accounts)


async def test_long_passwords_sign_in_but_get_no_nats_hash(store: SqlUserStore) -> None:
    """bcrypt takes 72 bytes; such a user reaches NATS through a token instead."""
    long_password = "correct horse " * 10
    await store.create("alice", long_password, Role.user)
    assert await store.check_password("alice", long_password) is not None
    assert await store.nats_accounts() == []
    token, _ = await store.create_token("alice", name="nats")
    assert [a.nats_user for a in await store.nats_accounts()] == [f"{TOKEN_PREFIX}{token.id}"]
