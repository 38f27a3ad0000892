"""Rows of the users and tokens tables as values, and the user checks every writer shares.

The last enabled admin cannot be disabled, demoted or removed: the admin rows are
locked (``FOR UPDATE``; SQLite has one writer anyway) while ``refuse_last_admin``
checks, so two admins disabling each other at once cannot both succeed.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from flowyard.adapters.sql.schema import users
from flowyard.core.errors import Conflict, TokenNotFound, UserNotFound
from flowyard.core.identity import ApiToken, Role, TokenKind, User


def user_from_row(row: sa.Row[Any], prefix: str = "") -> User:
    """A user from its row, or from ``prefix``-labelled columns of a join (``joined_user``)."""
    m = row._mapping
    return User(
        name=m[f"{prefix}name"],
        role=Role(m[f"{prefix}role"]),
        disabled=bool(m[f"{prefix}disabled"]),
        created_at=m[f"{prefix}created_at"],
        last_login_at=m[f"{prefix}last_login_at"],
    )


JOINED = "u_"
"""The label prefix of the user's columns in a tokens-users join."""


def joined_user() -> list[sa.ColumnElement[Any]]:
    """The user columns of a join with ``tokens``, labelled apart from the token's own."""
    return [
        users.c.name.label(f"{JOINED}name"),
        users.c.role.label(f"{JOINED}role"),
        users.c.disabled.label(f"{JOINED}disabled"),
        users.c.created_at.label(f"{JOINED}created_at"),
        users.c.last_login_at.label(f"{JOINED}last_login_at"),
    ]


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


def user_not_found(name: str) -> UserNotFound:
    return UserNotFound(f"no user is named {name!r}")


def token_not_found(token_id: str) -> TokenNotFound:
    return TokenNotFound(f"no token has id {token_id!r}")


async def find_user(conn: AsyncConnection, name: str) -> sa.Row[Any] | None:
    return (await conn.execute(sa.select(users).where(users.c.name == name))).first()


async def locked_user(conn: AsyncConnection, name: str) -> sa.Row[Any]:
    """The user's row, locked for the rest of the transaction; ``UserNotFound`` if none."""
    row = (
        await conn.execute(sa.select(users).where(users.c.name == name).with_for_update())
    ).first()
    if row is None:
        raise user_not_found(name)
    return row


async def refuse_last_admin(conn: AsyncConnection, row: sa.Row[Any], verb: str) -> None:
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
