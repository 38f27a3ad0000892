"""Loads settings: defaults < YAML file < FLOWYARD_* environment < command-line flags."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic_settings import BaseSettings, InitSettingsSource, PydanticBaseSettingsSource

from core.errors import ConfigError
from core.settings import Settings, expand_env, file_source


def load_settings(config: Path | None = None, **overrides: Any) -> Settings:
    """Settings for this process; ``overrides`` are flags the user gave (None = not given)."""
    path = config or _env_config_path()
    values = _read_file(path) if path is not None else {}
    flags = {k: v for k, v in overrides.items() if v is not None}

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
            return (init_settings, env_settings, InitSettingsSource(settings_cls, values))

    try:
        return Settings.model_validate(_Layered(**flags).model_dump())
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"setting {field}: {first['msg']}") from None


def _env_config_path() -> Path | None:
    raw = os.environ.get("FLOWYARD_CONFIG")
    return Path(raw) if raw else None


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
