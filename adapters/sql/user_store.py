"""Users in the SQL database: accounts, roles, passwords, sign-in.

Only hashes are stored (see ``adapters/passwords.py``). Hashing runs in a thread
so a sign-in does not stall the event loop for everyone else. Tokens are
``SqlTokenStore`` (``token_store.py``), whose methods ``SqlUserStore`` has too;
the row conversions and the last-admin check are in ``user_rows.py``.
"""

from __future__ import annotations

import asyncio
import builtins
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from flowyard.adapters.passwords import (
    burn_verify,
    hash_password,
    nats_hashable,
    nats_password_hash,
    needs_rehash,
    verify_password,
)
from flowyard.adapters.sql.nats_accounts import NatsAccount, nats_accounts
from flowyard.adapters.sql.schema import tokens, users
from flowyard.adapters.sql.token_store import SqlTokenStore
from flowyard.adapters.sql.user_rows import (
    find_user,
    locked_user,
    refuse_last_admin,
    user_from_row,
    user_not_found,
)
from flowyard.core.errors import UserExists
from flowyard.core.events import utcnow
from flowyard.core.identity import Role, User, check_password, check_user_name

__all__ = ["NatsAccount", "SqlUserStore"]


async def _hashes(password: str) -> tuple[str, str | None]:
    """argon2id for sign-in and bcrypt for NATS (None when bcrypt cannot take it)."""
    if not nats_hashable(password):
        return await asyncio.to_thread(hash_password, password), None
    argon, nats = await asyncio.gather(
        asyncio.to_thread(hash_password, password),
        asyncio.to_thread(nats_password_hash, password),
    )
    return argon, nats


class SqlUserStore(SqlTokenStore):
    """Users (this class) and their tokens (the base class) on one database."""

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
            raise user_not_found(name)
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
            await locked_user(tx.conn, name)
            await tx.conn.execute(
                sa.update(users)
                .where(users.c.name == name)
                .values(
                    password_hash=password_hash, nats_password_hash=nats_hash, updated_at=utcnow()
                )
            )

    async def set_disabled(self, name: str, disabled: bool) -> User:
        async with self.db.write() as tx:
            row = await locked_user(tx.conn, name)
            if disabled:
                await refuse_last_admin(tx.conn, row, "disable")
            await tx.conn.execute(
                sa.update(users)
                .where(users.c.name == name)
                .values(disabled=disabled, updated_at=utcnow())
            )
        return await self.get(name)

    async def set_role(self, name: str, role: Role) -> User:
        role = Role(role)
        async with self.db.write() as tx:
            row = await locked_user(tx.conn, name)
            if role is not Role.admin:
                await refuse_last_admin(tx.conn, row, "demote")
            await tx.conn.execute(
                sa.update(users)
                .where(users.c.name == name)
                .values(role=role.value, updated_at=utcnow())
            )
        return await self.get(name)

    async def remove(self, name: str) -> None:
        """Remove the user and every token of theirs (their tasks stay, owned by the name)."""
        async with self.db.write() as tx:
            row = await locked_user(tx.conn, name)
            await refuse_last_admin(tx.conn, row, "remove")
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

    async def nats_accounts(self) -> builtins.list[NatsAccount]:
        """Who may connect to nats-server: enabled users, and their usable API tokens."""
        return await nats_accounts(self.db)

    async def _find(self, name: str) -> sa.Row[Any] | None:
        async with self.db.read() as conn:
            return await find_user(conn, name)
