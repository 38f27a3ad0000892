"""``flowyard login`` and ``flowyard logout``: keep an API token per server.

Login signs in once with the password and trades it for a token (``POST
/api/me/tokens``), so the password is never stored and the token can be revoked
on its own. Logout revokes the token on the server and always forgets it here,
even when the server cannot be asked.
"""

from __future__ import annotations

import socket
import sys
from contextlib import suppress
from typing import Annotated

import httpx
import typer
from rich.text import Text

from flowyard.core.errors import (
    ConfigError,
    FlowyardError,
    NotFound,
    TooManyAttempts,
    Unauthenticated,
)
from flowyard.services.cli.aio import async_command
from flowyard.services.cli.connect import DEFAULT_SERVER, ServerOption, open_client
from flowyard.services.cli.credentials import (
    USER_ENVVAR,
    StoredToken,
    UserOption,
    forget_token,
    interactive,
    read_password,
    save_token,
    server_url,
    stored_token,
)
from flowyard.services.cli.output import console, err_console
from flowyard.services.client import BearerAuth, MeOut, TokenCreated

DEFAULT_EXPIRES_DAYS = 90

ServerArgument = Annotated[
    str | None,
    typer.Argument(
        metavar="SERVER",
        show_default=False,
        help=f"Server URL (default: --server, FLOWYARD_SERVER or {DEFAULT_SERVER}).",
    ),
]


@async_command
async def login_command(
    target: ServerArgument = None,
    user: UserOption = None,
    password_stdin: Annotated[
        bool,
        typer.Option("--password-stdin", help="Read the password from stdin (for scripts)."),
    ] = False,
    expires: Annotated[
        int,
        typer.Option(
            "--expires", metavar="DAYS", min=1, max=3650, help="Days until the token expires."
        ),
    ] = DEFAULT_EXPIRES_DAYS,
    server: ServerOption = DEFAULT_SERVER,
) -> None:
    """Sign in with a password and save an API token for the server (the password is not kept)."""
    url = server_url(target or server)
    name = _user_name(user)
    password = _stdin_password() if password_stdin else read_password(name, url)
    previous = stored_token(url)  # a file we may not read fails now, before a token exists
    me, created = await _sign_in(url, name, password, expires)
    if created is None:
        console.print(
            Text(f"the server at {url} needs no sign-in (it treats you as {me.name})"),
            soft_wrap=True,
        )
        return
    entry = StoredToken(token=created.token, token_id=created.id, user=me.name)
    try:
        save_token(url, entry)
    except ConfigError:
        await _revoke_quietly(url, entry)  # no token left behind that nobody holds
        raise
    if previous is not None and previous.token != entry.token:
        await _revoke_quietly(url, previous)  # one login, one live token per server
    console.print(Text(f"signed in to {url} as {entry.user}"), soft_wrap=True)
    if created.expires_at:
        expires_at = created.expires_at.isoformat()
        err_console.print(Text(f"the token expires at {expires_at}"), style="dim", soft_wrap=True)


@async_command
async def logout_command(
    target: ServerArgument = None, server: ServerOption = DEFAULT_SERVER
) -> None:
    """Revoke the saved token on the server and forget it here."""
    url = server_url(target or server)
    entry = stored_token(url)
    if entry is None:
        console.print(Text(f"not signed in to {url}"), soft_wrap=True)
        return
    problem, invalid = await _revoke(url, entry)
    forget_token(url)
    if problem is None:
        console.print(Text(f"signed out of {url}: the token is revoked"), soft_wrap=True)
    elif invalid:
        console.print(Text(f"signed out of {url}: {problem}; removed it here"), soft_wrap=True)
    else:
        console.print(Text(f"signed out of {url}"), soft_wrap=True)
        err_console.print(
            Text(
                f"could not revoke the token on the server ({problem}); removed it here only, "
                f"so it stays valid until it expires (token id {entry.token_id or 'unknown'})"
            ),
            style="yellow",
            soft_wrap=True,
        )


def _user_name(user: str | None) -> str:
    if user is not None and user.strip():
        return user.strip()
    if not interactive():
        raise ConfigError(f"pass --user NAME (or set {USER_ENVVAR}) to sign in")
    name: str = typer.prompt("User", err=True)
    return name.strip()


def _stdin_password() -> str:
    """The password piped in: the whole of stdin less its line ending (like docker login)."""
    password = sys.stdin.read().rstrip("\r\n")
    if not password:
        raise ConfigError("--password-stdin: stdin held no password")
    return password


async def _sign_in(
    url: str, name: str, password: str, expires: int
) -> tuple[MeOut, TokenCreated | None]:
    """``(me, created token)``; a refused password says so instead of "sign in".

    No token is made (None) when the server does not check credentials at all
    (default mode on loopback): it would be a secret that guards nothing.
    """
    auth = httpx.BasicAuth(name, password)
    async with open_client(url, auth, explain_401=False) as api:
        try:
            me = await api.me()
        except TooManyAttempts:
            raise
        except Unauthenticated as exc:
            raise Unauthenticated(f"cannot sign in to {url} as {name}: {exc.message}") from exc
        except NotFound as exc:
            raise FlowyardError(
                f"the server at {url} has no sign-in (no /api/me): is it an older flowyard?"
            ) from exc
        if not me.auth_required:
            return me, None
        created = await api.create_token(f"cli on {socket.gethostname()}", expires_days=expires)
    return me, created


async def _revoke(url: str, entry: StoredToken) -> tuple[str | None, bool]:
    """``(problem, token already invalid)``; ``(None, False)`` when the server revoked it."""
    if entry.token_id is None:
        return "no token id was saved with it", False
    async with open_client(url, BearerAuth(entry.token), explain_401=False) as api:
        try:
            await api.revoke_token(entry.token_id)
        except TooManyAttempts as exc:
            return exc.message, False
        except (Unauthenticated, NotFound):
            return "the token had already expired or been revoked", True
        except httpx.TransportError as exc:
            return f"cannot reach the server: {type(exc).__name__}", False
        except FlowyardError as exc:
            return exc.message, False
    return None, False


async def _revoke_quietly(url: str, entry: StoredToken) -> None:
    """Best effort: a token we failed to revoke still expires on its own."""
    with suppress(FlowyardError, httpx.TransportError):
        await _revoke(url, entry)
