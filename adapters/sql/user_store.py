"""Users and their API and session tokens in the SQL database.

Only hashes are stored (see ``adapters/passwords.py``): a token's secret is
returned once by ``create_token`` and can never be read back. Hashing runs in
a thread so a sign-in does not stall the event loop for everyone else.

The last enabled admin cannot be disabled, demoted or removed: the admin rows
are locked (``FOR UPDATE``; SQLite has one writer anyway) while this is
checked, so two admins disabling each other at once cannot both succeed.
"""

from __future__ import annotations

import asyncio
import builtins
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from flowyard.adapters.passwords import (
    burn_verify,
    generate_token,
    hash_password,
    nats_hashable,
    nats_password_hash,
    needs_rehash,
    token_digest,
    verify_password,
)
from flowyard.adapters.sql.database import Database
from flowyard.adapters.sql.schema import tokens, users
from flowyard.core.errors import Conflict, InvalidInput, TokenNotFound, UserExists, UserNotFound
from flowyard.core.events import utcnow
from flowyard.core.identity import (
    TOKEN_PREFIX,
    ApiToken,
    Role,
    TokenKind,
    User,
    check_password,
    check_user_name,
    new_token_id,
    token_id_of,
)

LAST_USED_RESOLUTION = timedelta(seconds=60)
"""``last_used_at`` is written at most this often per token: not one write per request."""
MAX_TOKEN_NAME = 200


@dataclass(frozen=True)
class NatsAccount:
    """One entry of nats-server's users list: a flowyard user or one of their API tokens."""

    nats_user: str
    """The user's name, or ``fyt_<token id>`` for a token (whose password is the token)."""
    owner: str
    role: Role
    password_hash: str
    """bcrypt, which nats-server verifies itself."""


def user_from_row(row: sa.Row[Any]) -> User:
    m = row._mapping
    return User(
        name=m["name"],
        role=Role(m["role"]),
        disabled=bool(m["disabled"]),
        created_at=m["created_at"],
        last_login_at=m["last_login_at"],
    )


def token_from_row(row: sa.Row[Any]) -> ApiToken:
    m = row._mapping
    return ApiToken(
        id=m["id"],
        user=m["user_name"],
        name=m["name"],
        kind=TokenKind(m["kind"]),
        created_at=m["created_at"],
        expires_at=m["expires_at"],
        last_used_at=m["last_used_at"],
        revoked_at=m["revoked_at"],
    )


def _not_found(name: str) -> UserNotFound:
    return UserNotFound(f"no user is named {name!r}")


def _token_not_found(token_id: str) -> TokenNotFound:
    return TokenNotFound(f"no token has id {token_id!r}")


async def _hashes(password: str) -> tuple[str, str | None]:
    """argon2id for sign-in and bcrypt for NATS (None when bcrypt cannot take it)."""
    if not nats_hashable(password):
        return await asyncio.to_thread(hash_password, password), None
    argon, nats = await asyncio.gather(
        asyncio.to_thread(hash_password, password),
        asyncio.to_thread(nats_password_hash, password),
    )
    return argon, nats


class SqlUserStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- users --------------------------------------------------------------

    async def create(self, name: str, password: str, role: Role) -> User:
        check_user_name(name)
        check_password(password, user=name)
        if await self._find(name) is not None:  # before hashing: a quick, clear answer
            raise UserExists(f"user {name!r} exists already")
        password_hash, nats_hash = await _hashes(password)
        now = utcnow()
        try:
            async with self.db.write() as tx:
                await tx.conn.execute(
                    sa.insert(users).values(
                        name=name,
                        password_hash=password_hash,
                        nats_password_hash=nats_hash,
                        role=Role(role).value,
                        disabled=False,
                        created_at=now,
                        last_login_at=None,
                        updated_at=now,
                    )
                )
        except IntegrityError:  # created by someone else meanwhile
            raise UserExists(f"user {name!r} exists already") from None
        return User(name=name, role=Role(role), disabled=False, created_at=now)

    async def get(self, name: str) -> User:
        row = await self._find(name)
        if row is None:
            raise _not_found(name)
        return user_from_row(row)

    async def list(self) -> builtins.list[User]:
        async with self.db.read() as conn:
            rows = (await conn.execute(sa.select(users).order_by(users.c.name))).all()
        return [user_from_row(r) for r in rows]

    async def count_admins(self) -> int:
        """Enabled admins: those who can still sign in and manage the others."""
        query = sa.select(sa.func.count()).where(
            (users.c.role == Role.admin.value) & sa.not_(users.c.disabled)
        )
        async with self.db.read() as conn:
            return int((await conn.execute(query)).scalar_one())

    async def exists_any(self) -> bool:
        async with self.db.read() as conn:
            return (await conn.execute(sa.select(users.c.name).limit(1))).first() is not None

    async def set_password(self, name: str, password: str) -> None:
        check_password(password, user=name)
        await self.get(name)  # an unknown user is told before the slow hashing
        password_hash, nats_hash = await _hashes(password)
        async with self.db.write() as tx:
            await self._locked_user(tx.conn, name)
            await tx.conn.execute(
                sa.update(users)
                .where(users.c.name == name)
                .values(
                    password_hash=password_hash, nats_password_hash=nats_hash, updated_at=utcnow()
                )
            )

    async def set_disabled(self, name: str, disabled: bool) -> User:
        async with self.db.write() as tx:
            row = await self._locked_user(tx.conn, name)
            if disabled:
                await self._refuse_last_admin(tx.conn, row, "disable")
            await tx.conn.execute(
                sa.update(users)
                .where(users.c.name == name)
                .values(disabled=disabled, updated_at=utcnow())
            )
        return await self.get(name)

    async def set_role(self, name: str, role: Role) -> User:
        role = Role(role)
        async with self.db.write() as tx:
            row = await self._locked_user(tx.conn, name)
            if role is not Role.admin:
                await self._refuse_last_admin(tx.conn, row, "demote")
            await tx.conn.execute(
                sa.update(users)
                .where(users.c.name == name)
                .values(role=role.value, updated_at=utcnow())
            )
        return await self.get(name)

    async def remove(self, name: str) -> None:
        """Remove the user and every token of theirs (their tasks stay, owned by the name)."""
        async with self.db.write() as tx:
            row = await self._locked_user(tx.conn, name)
            await self._refuse_last_admin(tx.conn, row, "remove")
            await tx.conn.execute(sa.delete(tokens).where(tokens.c.user_name == name))
            await tx.conn.execute(sa.delete(users).where(users.c.name == name))

    async def check_password(self, name: str, password: str) -> User | None:
        """The user when the password is right and they are enabled, else None (no reason given).

        Every path costs one argon2 verification, so timing does not tell an
        unknown user from a wrong password.
        """
        row = await self._find(name)
        if row is None:
            await asyncio.to_thread(burn_verify, password)
            return None
        stored = row._mapping["password_hash"]
        if not await asyncio.to_thread(verify_password, stored, password):
            return None
        if row._mapping["disabled"]:
            return None
        now = utcnow()
        values: dict[str, Any] = {"last_login_at": now}
        if needs_rehash(stored):
            values["password_hash"] = await asyncio.to_thread(hash_password, password)
        async with self.db.write() as tx:
            await tx.conn.execute(sa.update(users).where(users.c.name == name).values(**values))
        user = user_from_row(row)
        return User(user.name, user.role, user.disabled, user.created_at, now)

    # -- tokens -------------------------------------------------------------

    async def create_token(
        self,
        user: str,
        *,
        name: str,
        kind: TokenKind = TokenKind.api,
        expires_at: datetime | None = None,
    ) -> tuple[ApiToken, str]:
        """The new token's metadata and its secret, which is shown this once and never stored."""
        if not 1 <= len(name) <= MAX_TOKEN_NAME or not name.strip():
            raise InvalidInput(
                f"name: a token name has 1 to {MAX_TOKEN_NAME} characters", field="name"
            )
        kind = TokenKind(kind)
        await self.get(user)
        token_id = new_token_id()
        secret = generate_token(token_id)
        nats_hash = (
            await asyncio.to_thread(nats_password_hash, secret) if kind is TokenKind.api else None
        )
        now = utcnow()
        async with self.db.write() as tx:
            await self._locked_user(tx.conn, user)  # removed meanwhile: no orphan token
            await tx.conn.execute(
                sa.insert(tokens).values(
                    id=token_id,
                    user_name=user,
                    name=name,
                    kind=kind.value,
                    digest=token_digest(secret),
                    nats_password_hash=nats_hash,
                    created_at=now,
                    expires_at=expires_at,
                    last_used_at=None,
                    revoked_at=None,
                )
            )
        return ApiToken(token_id, user, name, kind, now, expires_at), secret

    async def authenticate_token(self, secret: str, now: datetime) -> tuple[ApiToken, User] | None:
        """The token and its user, or None: unknown, revoked, expired, or the user is disabled."""
        if token_id_of(secret) is None:
            return None
        query = (
            sa.select(tokens, *_user_columns())
            .select_from(tokens.join(users, users.c.name == tokens.c.user_name))
            .where(tokens.c.digest == token_digest(secret))
        )
        async with self.db.read() as conn:
            row = (await conn.execute(query)).first()
        if row is None:
            return None
        token = token_from_row(row)
        m = row._mapping
        user = User(
            name=m["u_name"],
            role=Role(m["u_role"]),
            disabled=bool(m["u_disabled"]),
            created_at=m["u_created_at"],
            last_login_at=m["u_last_login_at"],
        )
        if user.disabled or not token.usable(now):
            return None
        if token.last_used_at is None or now - token.last_used_at >= LAST_USED_RESOLUTION:
            async with self.db.write() as tx:
                await tx.conn.execute(
                    sa.update(tokens).where(tokens.c.id == token.id).values(last_used_at=now)
                )
            token = ApiToken(
                token.id,
                token.user,
                token.name,
                token.kind,
                token.created_at,
                token.expires_at,
                now,
                token.revoked_at,
            )
        return token, user

    async def tokens(
        self, user: str | None = None, *, kind: TokenKind | None = TokenKind.api
    ) -> builtins.list[ApiToken]:
        """Tokens newest first, of one user or all, of one kind or (``kind=None``) both."""
        query = sa.select(tokens).order_by(tokens.c.created_at.desc(), tokens.c.id.desc())
        if user is not None:
            query = query.where(tokens.c.user_name == user)
        if kind is not None:
            query = query.where(tokens.c.kind == TokenKind(kind).value)
        async with self.db.read() as conn:
            rows = (await conn.execute(query)).all()
        return [token_from_row(r) for r in rows]

    async def revoke_token(self, token_id: str, *, user: str | None = None) -> ApiToken:
        """Revoke a token (again is fine); with ``user``, someone else's is reported as missing."""
        async with self.db.write() as tx:
            row = (await tx.conn.execute(sa.select(tokens).where(tokens.c.id == token_id))).first()
            if row is None or (user is not None and row._mapping["user_name"] != user):
                raise _token_not_found(token_id)
            token = token_from_row(row)
            if token.revoked_at is None:
                now = utcnow()
                await tx.conn.execute(
                    sa.update(tokens).where(tokens.c.id == token_id).values(revoked_at=now)
                )
                token = ApiToken(
                    token.id,
                    token.user,
                    token.name,
                    token.kind,
                    token.created_at,
                    token.expires_at,
                    token.last_used_at,
                    now,
                )
        return token

    async def delete_expired_sessions(self, now: datetime) -> int:
        """Delete session tokens that expired or were revoked (signed out); API tokens stay."""
        async with self.db.write() as tx:
            result = await tx.conn.execute(
                sa.delete(tokens).where(
                    (tokens.c.kind == TokenKind.session.value)
                    & (tokens.c.revoked_at.is_not(None) | (tokens.c.expires_at <= now))
                )
            )
        return int(result.rowcount or 0)

    # -- NATS ---------------------------------------------------------------

    async def nats_accounts(self) -> builtins.list[NatsAccount]:
        """Who may connect to nats-server: enabled users, and their usable API tokens."""
        now = utcnow()
        enabled = sa.not_(users.c.disabled)
        user_query = (
            sa.select(users.c.name, users.c.role, users.c.nats_password_hash)
            .where(enabled & users.c.nats_password_hash.is_not(None))
            .order_by(users.c.name)
        )
        token_query = (
            sa.select(tokens.c.id, users.c.name, users.c.role, tokens.c.nats_password_hash)
            .select_from(tokens.join(users, users.c.name == tokens.c.user_name))
            .where(
                enabled
                & (tokens.c.kind == TokenKind.api.value)
                & tokens.c.nats_password_hash.is_not(None)
                & tokens.c.revoked_at.is_(None)
                & (tokens.c.expires_at.is_(None) | (tokens.c.expires_at > now))
            )
            .order_by(users.c.name, tokens.c.created_at, tokens.c.id)
        )
        async with self.db.read() as conn:
            user_rows = (await conn.execute(user_query)).all()
            token_rows = (await conn.execute(token_query)).all()
        accounts = [
            NatsAccount(name, name, Role(role), password_hash)
            for name, role, password_hash in user_rows
        ]
        accounts += [
            NatsAccount(f"{TOKEN_PREFIX}{token_id}", name, Role(role), password_hash)
            for token_id, name, role, password_hash in token_rows
        ]
        return accounts

    # -- helpers ------------------------------------------------------------

    async def _find(self, name: str) -> sa.Row[Any] | None:
        async with self.db.read() as conn:
            return (await conn.execute(sa.select(users).where(users.c.name == name))).first()

    async def _locked_user(self, conn: AsyncConnection, name: str) -> sa.Row[Any]:
        row = (
            await conn.execute(sa.select(users).where(users.c.name == name).with_for_update())
        ).first()
        if row is None:
            raise _not_found(name)
        return row

    async def _refuse_last_admin(self, conn: AsyncConnection, row: sa.Row[Any], verb: str) -> None:
        """Conflict when ``row`` is the only enabled admin: nobody could manage users after."""
        m = row._mapping
        if m["role"] != Role.admin.value or m["disabled"]:
            return
        others = (
            await conn.execute(
                sa.select(users.c.name)
                .where(
                    (users.c.role == Role.admin.value)
                    & sa.not_(users.c.disabled)
                    & (users.c.name != m["name"])
                )
                .with_for_update()
            )
        ).all()
        if not others:
            raise Conflict(
                f"cannot {verb} {m['name']!r}: they are the last admin; "
                "make another user an admin first"
            )


def _user_columns() -> builtins.list[sa.ColumnElement[Any]]:
    return [
        users.c.name.label("u_name"),
        users.c.role.label("u_role"),
        users.c.disabled.label("u_disabled"),
        users.c.created_at.label("u_created_at"),
        users.c.last_login_at.label("u_last_login_at"),
    ]
