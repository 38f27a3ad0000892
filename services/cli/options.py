"""Options that mean the same on every server-side command, written once.

``serve``, ``worker``, ``webhooks dispatch``, ``events replay`` and ``config``
read settings the same way (a YAML file, ``--set``) and log in to NATS the same
way, so one name and one help text each.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

ConfigOption = Annotated[
    Path | None, typer.Option("--config", help="YAML settings file (or FLOWYARD_CONFIG).")
]
SetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        metavar="KEY=VALUE",
        help="Any setting (docs/configuration.md), e.g. --set max_attempts=5; repeatable.",
    ),
]
NatsUserOption = Annotated[
    str | None, typer.Option("--nats-user", help="Log in to NATS as this flowyard user.")
]
NatsPasswordOption = Annotated[
    str | None,
    typer.Option("--nats-password", help="NATS password (shows in ps: prefer the environment)."),
]
NatsCredsOption = Annotated[
    Path | None, typer.Option("--nats-creds", help="NATS credentials file (JWT + nkey seed).")
]
