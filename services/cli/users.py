"""``flowyard users``: manage accounts and API tokens straight in the database.

These commands talk to the database, not to a server, so the first admin can
be made before anyone can sign in. Passwords are read from a hidden prompt or
one line of stdin (``--password-stdin``), never from an argument, which would
end up in shell history and ``ps``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.table import Table
from rich.text import Text

from flowyard.adapters.sql.database import Database
from flowyard.adapters.sql.engine import make_engine, upgrade
from flowyard.adapters.sql.user_store import SqlUserStore
from flowyard.core.errors import InvalidInput, UserExists, UserNotFound
from flowyard.core.events import utcnow
from flowyard.core.identity import ApiToken, Role, User, check_user_name
from flowyard.services import event_loop
from flowyard.services.cli.output import console, err_console, print_json_line, short_time
from flowyard.services.config import load_settings

T = TypeVar("T")

users_app = typer.Typer(
    no_args_is_help=True,
    help="Manage users and their API tokens (works on the database directly).",
)
token_app = typer.Typer(no_args_is_help=True, help="Create, list and revoke API tokens.")
users_app.add_typer(token_app, name="token")

DbOption = Annotated[
    str | None,
    typer.Option(
        "--db",
        envvar="FLOWYARD_DATABASE_URI",
        help="Database URI (default: the SQLite database in --data-dir).",
    ),
]
DataDirOption = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        envvar="FLOWYARD_DATA_DIR",
        help="Data folder of a default-mode server [default: flowyard-data].",
    ),
]
NameArgument = Annotated[str, typer.Argument(metavar="NAME", help="The user's name.")]
PasswordStdinOption = Annotated[
    bool,
    typer.Option("--password-stdin", help="Read the password from one line of stdin."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Raw JSON, one object per line.")]


def _with_store(
    db: str | None, data_dir: Path | None, action: Callable[[SqlUserStore], Awaitable[T]]
) -> T:
    """Run ``action`` on a store over the configured database, its schema brought up to date."""
    logging.getLogger("alembic").setLevel(logging.WARNING)

    async def run() -> T:
        settings = load_settings(None, database_uri=db, data_dir=data_dir)
        engine = make_engine(settings.db_uri, pool_size=2)
        try:
            await upgrade(engine)  # idempotent: a fresh data folder works
            return await action(SqlUserStore(Database(engine)))
        finally:
            await engine.dispose()

    return event_loop.run(run())


def _read_password(from_stdin: bool, prompt: str = "Password") -> str:
    if from_stdin:
        line = sys.stdin.readline()
        return line.removesuffix("\n").removesuffix("\r")
    if not sys.stdin.isatty():
        raise InvalidInput(
            "password: stdin is not a terminal; pipe the password in with --password-stdin",
            field="password",
        )
    return str(typer.prompt(prompt, hide_input=True, confirmation_prompt=True))


def _user_json(user: User) -> dict[str, Any]:
    return {
        "name": user.name,
        "role": user.role.value,
        "disabled": user.disabled,
        "created_at": user.created_at.isoformat(),
        "last_login_at": _iso(user.last_login_at),
    }


def _token_json(token: ApiToken) -> dict[str, Any]:
    return {
        "id": token.id,
        "user": token.user,
        "name": token.name,
        "kind": token.kind.value,
        "created_at": token.created_at.isoformat(),
        "expires_at": _iso(token.expires_at),
        "last_used_at": _iso(token.last_used_at),
        "revoked_at": _iso(token.revoked_at),
    }


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _when(value: datetime | None) -> str:
    return short_time(_iso(value), compact=True)


def _table() -> Table:
    return Table(box=None, pad_edge=False, padding=(0, 1), header_style="bold underline")


# -- users ------------------------------------------------------------------


@users_app.command("create")
def create_user(
    name: NameArgument,
    admin: Annotated[bool, typer.Option("--admin", help="Make the user an admin.")] = False,
    password_stdin: PasswordStdinOption = False,
    db: DbOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Create a user; asks for the password twice (hidden) unless --password-stdin."""
    check_user_name(name)

    async def exists(store: SqlUserStore) -> bool:
        try:
            await store.get(name)
        except UserNotFound:
            return False
        return True

    if not password_stdin and _with_store(db, data_dir, exists):  # before typing a password
        raise UserExists(f"user {name!r} exists already")
    password = _read_password(password_stdin)
    role = Role.admin if admin else Role.user
    user = _with_store(db, data_dir, lambda store: store.create(name, password, role))
    console.print(Text(f"created user {user.name} ({user.role.value})"))


@users_app.command("list")
def list_users(
    json_output: JsonOption = False, db: DbOption = None, data_dir: DataDirOption = None
) -> None:
    """List users: role, whether disabled, when created and last signed in."""
    found = _with_store(db, data_dir, lambda store: store.list())
    if json_output:
        for user in found:
            print_json_line(_user_json(user))
        return
    if not found:
        console.print("no users (create one with 'flowyard users create NAME --admin')")
        return
    table = _table()
    table.add_column("Name", no_wrap=True, overflow="fold")
    table.add_column("Role", no_wrap=True, min_width=5)
    table.add_column("Disabled", no_wrap=True)
    table.add_column("Created", no_wrap=True, min_width=11)
    table.add_column("Last login", no_wrap=True, min_width=11)
    for user in found:
        table.add_row(
            Text(user.name),
            Text(user.role.value, style="bold" if user.role is Role.admin else ""),
            Text("yes", style="red") if user.disabled else Text("no"),
            _when(user.created_at),
            _when(user.last_login_at),
        )
    console.print(table)


@users_app.command("passwd")
def change_password(
    name: NameArgument,
    password_stdin: PasswordStdinOption = False,
    db: DbOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Set a user's password; asks twice (hidden) unless --password-stdin."""
    check_user_name(name)
    if not password_stdin:
        _with_store(db, data_dir, lambda store: store.get(name))  # unknown: say so first
    password = _read_password(password_stdin, "New password")
    _with_store(db, data_dir, lambda store: store.set_password(name, password))
    console.print(Text(f"changed the password of {name}"))


@users_app.command("disable")
def disable_user(name: NameArgument, db: DbOption = None, data_dir: DataDirOption = None) -> None:
    """Stop a user signing in; their tokens stop working too (until enabled again)."""
    user = _with_store(db, data_dir, lambda store: store.set_disabled(name, True))
    console.print(Text(f"disabled user {user.name}"))


@users_app.command("enable")
def enable_user(name: NameArgument, db: DbOption = None, data_dir: DataDirOption = None) -> None:
    """Let a disabled user sign in again."""
    user = _with_store(db, data_dir, lambda store: store.set_disabled(name, False))
    console.print(Text(f"enabled user {user.name}"))


@users_app.command("remove")
def remove_user(
    name: NameArgument,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask to confirm.")] = False,
    db: DbOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Remove a user and their tokens (their tasks are kept)."""
    _with_store(db, data_dir, lambda store: store.get(name))
    if not yes:
        if not sys.stdin.isatty():
            raise InvalidInput("stdin is not a terminal to confirm on: pass --yes", field="yes")
        typer.confirm(f"remove user {name} and all their tokens?", abort=True)
    _with_store(db, data_dir, lambda store: store.remove(name))
    console.print(Text(f"removed user {name}"))


@users_app.command("role")
def set_role(
    name: NameArgument,
    role: Annotated[Role, typer.Argument(metavar="admin|user", help="The new role.")],
    db: DbOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Make a user an admin, or an ordinary user."""
    user = _with_store(db, data_dir, lambda store: store.set_role(name, role))
    console.print(Text(f"{user.name} is now {'an admin' if user.role is Role.admin else 'a user'}"))


# -- tokens -----------------------------------------------------------------


@token_app.command("create")
def create_token(
    name: NameArgument,
    label: Annotated[str, typer.Option("--name", help="What the token is for.")] = "cli",
    expires: Annotated[
        float | None,
        typer.Option("--expires", metavar="DAYS", min=0.001, help="Expire after DAYS days."),
    ] = None,
    db: DbOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Print a new API token for NAME, alone on stdout; it is not shown again."""
    expires_at = None if expires is None else utcnow() + timedelta(days=expires)
    _token, secret = _with_store(
        db, data_dir, lambda store: store.create_token(name, name=label, expires_at=expires_at)
    )
    sys.stdout.write(secret + "\n")
    sys.stdout.flush()
    err_console.print("keep this token now: it is not shown again", style="yellow")


@token_app.command("list")
def list_tokens(
    name: Annotated[
        str | None, typer.Argument(metavar="[NAME]", help="Only this user's tokens.")
    ] = None,
    json_output: JsonOption = False,
    db: DbOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """List API tokens, newest first (never their secrets)."""

    async def fetch(store: SqlUserStore) -> list[ApiToken]:
        if name is not None:
            await store.get(name)
        return await store.tokens(name)

    found = _with_store(db, data_dir, fetch)
    if json_output:
        for token in found:
            print_json_line(_token_json(token))
        return
    if not found:
        console.print("no tokens")
        return
    now = utcnow()
    # fixed columns keep their width (the id whole, so it can be copied); the name gives way
    table = _table()
    table.add_column("ID", no_wrap=True, min_width=16)
    longest = max(len(t.user) for t in found)
    table.add_column("User", no_wrap=True, min_width=min(longest, 20), overflow="ellipsis")
    for column in ("Created", "Expires", "Last used", "Revoked"):
        table.add_column(column, no_wrap=True, min_width=11)
    table.add_column("Name", no_wrap=True, overflow="ellipsis")
    for token in found:
        expires = Text(_when(token.expires_at) if token.expires_at else "never")
        if token.expires_at is not None and token.expires_at <= now:
            expires.stylize("red")
        table.add_row(
            Text(token.id),
            Text(token.user),
            _when(token.created_at),
            expires,
            _when(token.last_used_at),
            Text(_when(token.revoked_at), style="red" if token.revoked_at else ""),
            Text(token.name),
        )
    console.print(table)


@token_app.command("revoke")
def revoke_token(
    token_id: Annotated[str, typer.Argument(metavar="ID", help="The token's id.")],
    db: DbOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Revoke a token: the server refuses it from now on."""
    token = _with_store(db, data_dir, lambda store: store.revoke_token(token_id.strip()))
    console.print(Text(f"revoked token {token.id} of {token.user} ({token.name})"))
