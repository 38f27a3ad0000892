"""Loads settings: defaults < YAML file < ``.env`` < FLOWYARD_* environment < flags.

``--set key=value`` (repeatable, on ``serve``, ``worker`` and ``config``) reaches
every setting, including those without a flag of their own; it ranks with the
flags, and giving both for one setting is an error rather than a silent winner.
``load_settings_traced`` also says where each value came from, for
``flowyard config show``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic_settings import BaseSettings, InitSettingsSource, PydanticBaseSettingsSource

from flowyard.core.errors import ConfigError
from flowyard.core.settings import Settings
from flowyard.core.settings_file import expand_env, file_source

ENV_PREFIX = "FLOWYARD_"
ENV_FILE_VARIABLE = "FLOWYARD_ENV_FILE"
DEFAULT_ENV_FILE = Path(".env")
NOT_SETTINGS = frozenset(
    {"CONFIG", "ENV_FILE", "SERVER", "TOKEN", "USER", "PASSWORD", "WORKER_AUTH"}
)
"""``FLOWYARD_*`` names that are not settings (the CLI's sign-in, file locations)."""


def load_settings(
    config: Path | None = None, *, assignments: Sequence[str] = (), **overrides: Any
) -> Settings:
    """Settings for this process; ``overrides`` are flags the user gave (None = not given)."""
    return load_settings_traced(config, assignments=assignments, **overrides)[0]


def load_settings_traced(
    config: Path | None = None,
    *,
    assignments: Sequence[str] = (),
    **overrides: Any,
) -> tuple[Settings, dict[str, str]]:
    """The settings, and for each one where it came from: default, file, .env, env, --set, flag."""
    environ = os.environ
    path = config or _env_config_path(environ)
    values = _read_file(path) if path is not None else {}
    env_file = Path(environ.get(ENV_FILE_VARIABLE) or DEFAULT_ENV_FILE)
    dotenv = _read_env_file(env_file, explicit=ENV_FILE_VARIABLE in environ)
    flags = {k: v for k, v in overrides.items() if v is not None}
    given = parse_assignments(assignments)
    for name in given.keys() & flags.keys():
        raise ConfigError(f"setting {name}: given both as --set and as its own flag; give one")
    flags |= given
    environment = {name for name in Settings.model_fields if _env_name(name) in environ}

    class _Layered(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return (
                init_settings,
                env_settings,
                InitSettingsSource(settings_cls, dotenv),
                InitSettingsSource(settings_cls, values),
            )

    try:
        settings = Settings.model_validate(_Layered(**flags).model_dump())
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"setting {field}: {first['msg']}") from None
    sources: dict[str, str] = {}
    for name in Settings.model_fields:
        if name in given:
            sources[name] = "--set"
        elif name in flags:
            sources[name] = "flag"
        elif name in environment:
            sources[name] = f"env {_env_name(name)}"
        elif name in dotenv:
            sources[name] = f"{env_file} {_env_name(name)}"
        elif name in values:
            sources[name] = f"file {path}"
        else:
            sources[name] = "default"
    return settings, sources


def parse_assignments(assignments: Sequence[str]) -> dict[str, Any]:
    """``key=value`` pairs (dashes allowed in keys) as settings fields; empty value = unset."""
    out: dict[str, Any] = {}
    for item in assignments:
        key, sep, value = item.partition("=")
        name = key.strip().replace("-", "_").lower()
        if not sep or not name:
            raise ConfigError(f"--set {item!r}: give key=value, e.g. --set port=8300")
        if name not in Settings.model_fields:
            raise ConfigError(f"unknown setting {key.strip()!r} (from --set)")
        if name in out:
            raise ConfigError(f"setting {name}: given twice with --set")
        out[name] = value if value != "" else None
    return out


def _env_name(field: str) -> str:
    return f"{ENV_PREFIX}{field.upper()}"


def _env_config_path(environ: Mapping[str, str]) -> Path | None:
    raw = environ.get("FLOWYARD_CONFIG")
    return Path(raw) if raw else None


def _read_env_file(path: Path, *, explicit: bool) -> dict[str, str]:
    """``FLOWYARD_*`` lines of a ``.env`` file as settings; other variables are left alone."""
    if not path.is_file():
        if explicit:
            raise ConfigError(f"{ENV_FILE_VARIABLE}: no such file {path}")
        return {}
    from dotenv import dotenv_values

    out: dict[str, str] = {}
    for key, value in dotenv_values(path).items():
        if not key.startswith(ENV_PREFIX) or value is None:
            continue
        name = key.removeprefix(ENV_PREFIX)
        if name in NOT_SETTINGS:
            continue
        field = name.lower()
        if field not in Settings.model_fields:
            raise ConfigError(f"unknown setting {key} in {path}")
        out[field] = value
    return out


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(expand_env(text)) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"configuration file {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"configuration file {path} must be a mapping of settings")
    return file_source(data)
