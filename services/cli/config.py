"""``flowyard config``: write a settings file, show the settings in force, document them."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from flowyard.core.errors import ConfigError
from flowyard.core.settings import Settings
from flowyard.services.cli.options import ConfigOption, SetOption
from flowyard.services.config import load_settings_traced, parse_assignments
from flowyard.services.config_docs import is_secret, plain, render_markdown, render_yaml

config_app = typer.Typer(
    no_args_is_help=True,
    help="Write a commented settings file, show the effective settings, or document them.",
)

MASK = "********"
_URI_PASSWORD = re.compile(r"(?<=://)([^:/@]*):([^@]*)@")


@config_app.command("generate")
def generate(
    path: Annotated[
        Path, typer.Option("--path", help="Where to write ('-' for standard output).")
    ] = Path("flowyard.yaml"),
    assignments: SetOption = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite without asking.")] = False,
) -> None:
    """Write every setting with its default (or the --set value) as commented YAML."""
    given = parse_assignments(assignments or [])
    checked = _validated(given)
    text = render_yaml({name: getattr(checked, name) for name in given})
    if str(path) == "-":
        sys.stdout.write(text)
        return
    if path.exists() and not force:
        if not sys.stdin.isatty():
            raise ConfigError(f"{path} exists; pass --force to overwrite it")
        if not typer.confirm(f"{path} exists. Overwrite it?", default=False):
            raise typer.Exit(1)
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror}") from None
    typer.echo(f"wrote {path}: use it with `flowyard serve --config {path}`", err=True)


def _validated(given: dict[str, Any]) -> Settings:
    from pydantic import ValidationError

    try:
        return Settings(**given)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ConfigError(f"setting {'.'.join(map(str, first['loc']))}: {first['msg']}") from None


@config_app.command("show")
def show(
    config: ConfigOption = None,
    assignments: SetOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
) -> None:
    """Print the settings in force here and where each came from; secrets are masked."""
    settings, sources = load_settings_traced(config, assignments=assignments or [])
    rows = [(name, shown(name, getattr(settings, name)), sources[name]) for name in sources]
    if as_json:
        body = {name: {"value": value, "source": source} for name, value, source in rows}
        typer.echo(json.dumps(body, indent=2))
        return
    width = max(len(name) for name, _, _ in rows)
    value_width = min(48, max(len(_text(value)) for _, value, _ in rows))
    for name, value, source in rows:
        typer.echo(f"{name:<{width}}  {_text(value):<{value_width}}  {source}")


def shown(name: str, value: Any) -> Any:
    """The value as ``show`` prints it: secrets masked, passwords in URIs too."""
    if value is not None and is_secret(name, value):
        return MASK
    value = plain(value)
    if isinstance(value, str):
        return _URI_PASSWORD.sub(lambda m: f"{m.group(1)}:{MASK}@", value)
    return value


def _text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ",".join(map(str, value)) or "-"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


@config_app.command("docs")
def docs() -> None:
    """Print docs/configuration.md as generated from the settings model."""
    sys.stdout.write(render_markdown())
