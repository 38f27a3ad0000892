"""API tokens and web sessions of users in the SQL database.

Only digests are stored (see ``adapters/passwords.py``): a token's secret is
returned once by ``create_token`` and can never be read back.
"""

from __future__ import annotations

import asyncio
import builtins
import dataclasses
from datetime import datetime, timedelta

import sqlalchemy as sa

from flowyard.adapters.passwords import generate_token, nats_password_hash, token_digest
from flowyard.adapters.sql.database import Database
from flowyard.adapters.sql.schema import tokens, users
from flowyard.adapters.sql.user_rows import (
    JOINED,
    find_user,
    joined_user,
    locked_user,
    token_from_row,
    token_not_found,
    user_from_row,
    user_not_found,
)
from flowyard.core.errors import InvalidInput
from flowyard.core.events import utcnow
from flowyard.core.identity import ApiToken, TokenKind, User, new_token_id, token_id_of

LAST_USED_RESOLUTION = timedelta(seconds=60)
"""``last_used_at`` is written at most this often per token: not one write per request."""
MAX_TOKEN_NAME = 200


class SqlTokenStore:
    """Tokens: made, checked, listed, revoked; expired sessions swept."""

    def __init__(self, db: Database) -> None:
        self.db = db

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
        async with self.db.read() as conn:
            if await find_user(conn, user) is None:
                raise user_not_found(user)
        token_id = new_token_id()
        secret = generate_token(token_id)
        nats_hash = (
            await asyncio.to_thread(nats_password_hash, secret) if kind is TokenKind.api else None
        )
        now = utcnow()
        async with self.db.write() as tx:
            await locked_user(tx.conn, user)  # removed meanwhile: no orphan token
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
            sa.select(tokens, *joined_user())
            .select_from(tokens.join(users, users.c.name == tokens.c.user_name))
            .where(tokens.c.digest == token_digest(secret))
        )
        async with self.db.read() as conn:
            row = (await conn.execute(query)).first()
        if row is None:
            return None
        token = token_from_row(row)
        user = user_from_row(row, JOINED)
        if user.disabled or not token.usable(now):
            return None
        if token.last_used_at is None or now - token.last_used_at >= LAST_USED_RESOLUTION:
            async with self.db.write() as tx:
                await tx.conn.execute(
                    sa.update(tokens).where(tokens.c.id == token.id).values(last_used_at=now)
                )
            token = dataclasses.replace(token, last_used_at=now)
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
                raise token_not_found(token_id)
            token = token_from_row(row)
            if token.revoked_at is None:
                now = utcnow()
                await tx.conn.execute(
                    sa.update(tokens).where(tokens.c.id == token_id).values(revoked_at=now)
                )
                token = dataclasses.replace(token, revoked_at=now)
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
