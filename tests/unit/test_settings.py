"""Settings layering and validation (env and files are given explicitly; no real config)."""

from __future__ import annotations

from pathlib import Path

import pytest

from flowyard.core.errors import ConfigError, UnsafeFileName
from flowyard.core.files import safe_file_name
from flowyard.core.settings import Settings, normalise_database_uri
from flowyard.core.settings_file import expand_env
from flowyard.services.config import load_settings


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgresql://u@h/db", "postgresql+psycopg://u@h/db"),
        ("postgres://u@h/db", "postgresql+psycopg://u@h/db"),
        ("postgresql+psycopg://u@h/db", "postgresql+psycopg://u@h/db"),
        ("mysql://root@h/db", "mysql+asyncmy://root@h/db"),
        ("mariadb://root@h/db", "mysql+asyncmy://root@h/db"),
        ("mariadb+asyncmy://root@h/db", "mysql+asyncmy://root@h/db"),
        ("sqlite:///x.db", "sqlite+aiosqlite:///x.db"),
    ],
)
def test_database_uri_is_normalised(given: str, expected: str) -> None:
    assert normalise_database_uri(given) == expected


def test_unknown_scheme_lists_valid_ones() -> None:
    with pytest.raises(ConfigError, match=r"oracle.*sqlite://, postgresql://, mysql://"):
        normalise_database_uri("oracle://x")


def test_server_mode_refuses_sqlite() -> None:
    with pytest.raises(ConfigError, match="server mode needs PostgreSQL or MariaDB"):
        Settings(mode="server").check_mode()
    Settings(mode="server", database_uri="postgresql://h/db").check_mode()


def test_expand_env() -> None:
    env = {"DB": "postgresql://h/db"}
    assert expand_env("uri: ${DB}", env) == "uri: postgresql://h/db"
    assert expand_env("port: ${PORT:-8288}", env) == "port: 8288"
    with pytest.raises(ConfigError, match=r"\$\{NOPE\}"):
        expand_env("x: ${NOPE}", env)


def test_layering_file_env_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "flowyard.yaml"
    config.write_text("port: 9000\nworkers: 3\nlease-seconds: ${LEASE}\n")
    monkeypatch.setenv("LEASE", "12")
    monkeypatch.setenv("FLOWYARD_WORKERS", "5")
    settings = load_settings(config, port=None, host="0.0.0.0")
    assert settings.port == 9000  # file
    assert settings.workers == 5  # env beats file
    assert settings.lease_seconds == 12  # file, with ${ENV} substituted
    assert settings.host == "0.0.0.0"  # flag
    assert load_settings(config, port=7000).port == 7000  # flag beats file


def test_bad_file_is_a_config_error(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("colour: blue\n")
    with pytest.raises(ConfigError, match="unknown setting 'colour'"):
        load_settings(config)
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "missing.yaml")
    config.write_text("port: high\n")
    with pytest.raises(ConfigError, match="port"):
        load_settings(config)


def test_defaults_need_no_configuration(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    assert settings.db_uri.startswith("sqlite+aiosqlite:///")
    assert settings.tasks_dir == tmp_path / "files"
    assert settings.heartbeat_seconds == settings.lease_seconds / 3


@pytest.mark.parametrize("name", ["../x.png", "/etc/passwd", "a/b.png", "..", "C:\\x.png", ""])
def test_unsafe_file_names_are_refused(name: str) -> None:
    with pytest.raises(UnsafeFileName):
        safe_file_name(name)


def test_odd_characters_are_replaced() -> None:
    assert safe_file_name("my photo (1).png") == "my photo _1_.png"
    assert safe_file_name(".hidden") == "_hidden"
