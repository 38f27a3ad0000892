"""``flowyard asyncapi``: the AsyncAPI document of flowyard's NATS subjects, from FastStream."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def asyncapi_command(
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write to this file (default: standard output)."),
    ] = None,
) -> None:
    """Print the AsyncAPI 3 description of the NATS subjects (YAML); docs/asyncapi.yaml is one."""
    from flowyard.bus.nats.asyncapi import asyncapi_yaml

    text = asyncapi_yaml()
    if output is None:
        typer.echo(text, nl=False)
    else:
        output.write_text(text, encoding="utf-8")
