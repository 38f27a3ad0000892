"""The client commands' connection: the ``--server`` option and a ``Client`` that says how
to sign in.

Every command that talks to the server opens one ``Client``
(``services/client``) through ``connect``, so a 401 reads the same everywhere:
what was refused, if anything was sent, and how to sign in.
"""

from __future__ import annotations

from functools import partial
from typing import Annotated

import httpx
import typer

from flowyard.core.errors import Unauthenticated
from flowyard.services.cli.credentials import resolve_auth, server_url
from flowyard.services.client import DEFAULT_SERVER, BearerAuth, Client

SERVER_ENVVAR = "FLOWYARD_SERVER"
USER_AGENT = "flowyard-cli"

ServerOption = Annotated[
    str,
    typer.Option(
        "--server",
        envvar=SERVER_ENVVAR,
        metavar="URL",
        show_envvar=True,
        help="Base URL of the flowyard server.",
    ),
]

__all__ = ["DEFAULT_SERVER", "SERVER_ENVVAR", "ServerOption", "connect", "open_client"]


def connect(server: str, token: str | None = None, user: str | None = None) -> Client:
    """A client for ``server`` with the credentials the options (or the saved token) give."""
    return open_client(server, resolve_auth(server, token, user))


def open_client(server: str, auth: httpx.Auth | None, *, explain_401: bool = True) -> Client:
    """``explain_401=False`` keeps the server's own 401 message (``login`` says better)."""
    url = server_url(server)
    explain = partial(_explain, url, auth) if explain_401 else None
    return Client(url, auth=auth, on_unauthenticated=explain, user_agent=USER_AGENT)


def sign_in_hint(server: str) -> str:
    """How to sign in to ``server``, in the words every 401 uses."""
    return (
        f"run 'flowyard login {server}', or pass --token / set FLOWYARD_TOKEN, "
        "or --user with FLOWYARD_PASSWORD"
    )


def explain_unauthenticated(server: str, auth: httpx.Auth | None, detail: str) -> str:
    """The one line for a 401: what was refused (if anything was sent) and how to sign in."""
    if auth is None:
        why = ""
    elif isinstance(auth, BearerAuth) and auth.stored:
        why = " (the token saved by 'flowyard login' may have expired or been revoked)"
    elif isinstance(auth, BearerAuth):
        why = f" (the token was refused: {detail})"
    else:
        why = f" (the user name and password were refused: {detail})"
    return f"the server at {server} needs you to sign in{why}: {sign_in_hint(server)}"


def _explain(server: str, auth: httpx.Auth | None, exc: Unauthenticated) -> Unauthenticated:
    return Unauthenticated(explain_unauthenticated(server, auth, exc.message))
