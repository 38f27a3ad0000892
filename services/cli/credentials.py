"""Credentials for the client commands: the shared options, the credentials file, one resolver.

Every command that talks to the server takes the same ``--token`` and ``--user``
options and resolves them in ``resolve_auth``, in one order:

1. ``--token`` / ``FLOWYARD_TOKEN``: an API token, sent as ``Authorization: Bearer``;
2. ``--user`` / ``FLOWYARD_USER`` with the password from ``FLOWYARD_PASSWORD`` or,
   on a terminal, a hidden prompt (never an argument: ``ps`` and shell history
   would show it);
3. the token ``flowyard login`` stored for that server;
4. nothing (a default-mode server on loopback needs nothing).

The file is ``$XDG_CONFIG_HOME/flowyard/credentials.json`` (``~/.config/flowyard/``
by default), ``{server_url: {"token", "token_id", "user"}}`` keyed by the
normalised server URL. It holds secrets: it is written 0600 in a 0700 folder and
refused when other users can read it.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import sys
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from flowyard.core.errors import ConfigError
from flowyard.services.client import BearerAuth, normalise_server

TOKEN_ENVVAR = "FLOWYARD_TOKEN"
USER_ENVVAR = "FLOWYARD_USER"
PASSWORD_ENVVAR = "FLOWYARD_PASSWORD"
CREDENTIALS_FILE = "credentials.json"

TokenOption = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar=TOKEN_ENVVAR,
        metavar="TOKEN",
        show_envvar=True,
        help="API token (fyt_...); wins over --user and over a token saved by 'flowyard login'.",
    ),
]
UserOption = Annotated[
    str | None,
    typer.Option(
        "--user",
        envvar=USER_ENVVAR,
        metavar="NAME",
        show_envvar=True,
        help=f"Sign in as NAME; the password comes from {PASSWORD_ENVVAR} or a hidden prompt.",
    ),
]


@dataclass(frozen=True)
class StoredToken:
    """One server's entry in the credentials file."""

    token: str
    token_id: str | None = None
    user: str | None = None

    def as_json(self) -> dict[str, str | None]:
        return {"token": self.token, "token_id": self.token_id, "user": self.user}


# -- resolving ---------------------------------------------------------------


def server_url(server: str) -> str:
    """``--server`` in one spelling (the key of the credentials file); a bad one names it."""
    try:
        return normalise_server(server)
    except ConfigError as exc:
        raise ConfigError(f"--server: {exc.message}") from exc


def resolve_auth(
    server: str,
    token: str | None = None,
    user: str | None = None,
    *,
    env: Mapping[str, str] | None = None,
) -> httpx.Auth | None:
    """The credentials to send to ``server``, by the precedence in the module docstring.

    ``token`` and ``user`` are the option values (typer already filled them from
    their environment variables). The credentials file is read only when neither
    is given, so a broken file never stands in the way of an explicit token.
    """
    env = os.environ if env is None else env
    if token is not None and token.strip():
        return BearerAuth(check_token(token))
    if user is not None and user.strip():
        name = user.strip()
        return httpx.BasicAuth(name, read_password(name, server_url(server), env=env))
    stored = stored_token(server, env=env)
    return BearerAuth(stored.token, stored=True) if stored is not None else None


def check_token(token: str) -> str:
    """The token without surrounding blanks; refused if it could not go into a header."""
    value = token.strip()
    if not all("\x21" <= char <= "\x7e" for char in value):
        raise ConfigError(
            f"--token/{TOKEN_ENVVAR} contains spaces or control characters: "
            "pass the token exactly as it was shown"
        )
    return value


def read_password(user: str, server: str, *, env: Mapping[str, str] | None = None) -> str:
    """``FLOWYARD_PASSWORD``, else a hidden prompt on a terminal, else a clear error."""
    env = os.environ if env is None else env
    password = env.get(PASSWORD_ENVVAR)
    if password:
        return password
    if not interactive():
        raise ConfigError(
            f"--user {user} needs a password: set {PASSWORD_ENVVAR} "
            "(it is never taken as an argument), or use --token"
        )
    return prompt_hidden(f"Password for {user} at {server}")


def interactive() -> bool:
    """Whether a prompt can be answered: stdin is a terminal."""
    return sys.stdin is not None and sys.stdin.isatty()


def prompt_hidden(text: str) -> str:
    """Ask without echoing; the seam that tests replace."""
    value: str = typer.prompt(text, hide_input=True, err=True)
    return value


# -- the credentials file ------------------------------------------------------


def credentials_path(env: Mapping[str, str] | None = None) -> Path:
    """``$XDG_CONFIG_HOME/flowyard/credentials.json``; a relative XDG value is ignored (spec)."""
    env = os.environ if env is None else env
    base = env.get("XDG_CONFIG_HOME", "")
    folder = Path(base) if base and Path(base).is_absolute() else Path.home() / ".config"
    return folder / "flowyard" / CREDENTIALS_FILE


def stored_token(server: str, *, env: Mapping[str, str] | None = None) -> StoredToken | None:
    """The token ``flowyard login`` saved for ``server``, or None."""
    key = server_url(server)
    path = credentials_path(env)
    entry = _read(path).get(key)
    return None if entry is None else _entry(entry, key, path)


def save_token(server: str, entry: StoredToken, *, env: Mapping[str, str] | None = None) -> Path:
    """Store ``entry`` for ``server`` (replacing its old one); returns the file's path."""
    path = credentials_path(env)
    data = _read(path)
    data[server_url(server)] = entry.as_json()
    _write(path, data)
    return path


def forget_token(server: str, *, env: Mapping[str, str] | None = None) -> StoredToken | None:
    """Remove the entry for ``server``; returns what was stored (None: nothing was)."""
    key = server_url(server)
    path = credentials_path(env)
    data = _read(path)
    if key not in data:
        return None
    entry = data.pop(key)
    _write(path, data)
    return _entry(entry, key, path)


def _read(path: Path) -> dict[str, Any]:
    """The whole file as JSON ({} when missing); refused when others may read it."""
    try:
        with path.open("rb") as handle:
            mode = os.fstat(handle.fileno()).st_mode
            if mode & 0o077:
                raise ConfigError(
                    f"the credentials file {path} is accessible by other users "
                    f"(mode {stat.S_IMODE(mode):04o}) and holds tokens: run 'chmod 600 {path}'"
                )
            raw = handle.read()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(f"cannot read the credentials file {path}: {exc.strerror}") from exc
    try:
        data = json.loads(raw) if raw.strip() else {}
    except ValueError as exc:
        raise ConfigError(
            f"the credentials file {path} is not valid JSON ({exc}): fix or delete it"
        ) from exc
    if not isinstance(data, dict):
        raise ConfigError(f"the credentials file {path} must hold a JSON object: fix or delete it")
    return data


def _entry(value: Any, server: str, path: Path) -> StoredToken:
    if not isinstance(value, Mapping) or not isinstance(value.get("token"), str):
        raise ConfigError(
            f"the entry for {server} in {path} has no token: run 'flowyard login {server}' again"
        )
    token_id, user = value.get("token_id"), value.get("user")
    return StoredToken(
        token=value["token"],
        token_id=token_id if isinstance(token_id, str) else None,
        user=user if isinstance(user, str) else None,
    )


def _write(path: Path, data: Mapping[str, Any]) -> None:
    """Replace the file atomically with a new one that is 0600 from its first byte."""
    folder = path.parent
    try:
        if not folder.is_dir():
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            folder.chmod(0o700)  # mkdir's mode is cut by the umask
        partial = folder / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                os.fchmod(handle.fileno(), 0o600)
                json.dump(data, handle, indent=2, sort_keys=True)
                handle.write("\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(partial, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()
    except OSError as exc:
        raise ConfigError(f"cannot write the credentials file {path}: {exc.strerror}") from exc
