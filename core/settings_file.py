"""A settings file's text and keys: ``${VAR}`` expansion, and which keys it may set.

``services/config.py`` reads the YAML file; what its values mean is decided here,
without I/O, beside the model (``core/settings.py``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from flowyard.core.errors import ConfigError
from flowyard.core.settings import Settings

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(text: str, env: Mapping[str, str] | None = None) -> str:
    """Replace ``${NAME}`` and ``${NAME:-default}``; an unset name without default is an error."""
    values = os.environ if env is None else env

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in values:
            return values[name]
        if default is not None:
            return default
        raise ConfigError(f"configuration refers to ${{{name}}}, which is not set")

    return _ENV_REF.sub(substitute, text)


def file_source(values: Mapping[str, Any]) -> dict[str, Any]:
    """Keys of a YAML file as settings fields (dashes allowed, unknown keys refused)."""
    fields = Settings.model_fields
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = str(key).replace("-", "_")
        if name not in fields:
            raise ConfigError(f"unknown setting {key!r} in the configuration file")
        out[name] = value
    return out
