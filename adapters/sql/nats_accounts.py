"""Who may connect to nats-server: enabled users, and their usable API tokens.

nats-server checks the passwords itself, so each entry carries a bcrypt hash
(argon2id, which flowyard signs in with, is unknown to it).
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from flowyard.adapters.sql.database import Database
from flowyard.adapters.sql.schema import tokens, users
from flowyard.core.events import utcnow
from flowyard.core.identity import TOKEN_PREFIX, Role, TokenKind


@dataclass(frozen=True)
class NatsAccount:
    """One entry of nats-server's users list: a flowyard user or one of their API tokens."""

    nats_user: str
    """The user's name, or ``fyt_<token id>`` for a token (whose password is the token)."""
    owner: str
    role: Role
    password_hash: str
    """bcrypt, which nats-server verifies itself."""


async def nats_accounts(db: Database) -> list[NatsAccount]:
    """Enabled users with a NATS hash, then their API tokens that are usable now."""
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
    async with db.read() as conn:
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
