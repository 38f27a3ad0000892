"""Configuration as operators use it: generate, show, .env, --set; the page and the CLI's speed.

``docs/configuration.md`` is generated from the settings model; the first test
fails when the two differ (run ``flowyard config docs > docs/configuration.md``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from flowyard.core.errors import ConfigError
from flowyard.core.settings import Settings
from flowyard.services.cli.main import COMMANDS, build_app
from flowyard.services.config import load_settings, load_settings_traced
from flowyard.services.config_docs import FLAGS, render_markdown

ROOT = Path(__file__).resolve().parents[2]
AUTH_ENV = ("FLOWYARD_ADMIN_PASSWORD", "FLOWYARD_USER", "FLOWYARD_PASSWORD")


@pytest.fixture(autouse=True)
def _clean_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No FLOWYARD_* settings from the test run, and no .env from the repository."""
    for name in list(os.environ):
        if name.startswith("FLOWYARD_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def invoke(*args: str, stdin: str | None = None) -> typer.testing.Result:
    return CliRunner().invoke(build_app(), list(args), input=stdin)


# ------------------------------------------------------------------ the page


def test_configuration_page_is_generated_from_the_model() -> None:
    committed = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert committed == render_markdown(), (
        "docs/configuration.md differs from the settings model: "
        "run `flowyard config docs > docs/configuration.md`"
    )


def test_every_setting_is_described() -> None:
    missing = [n for n, f in Settings.model_fields.items() if not (f.description or "").strip()]
    assert missing == [], f"give these settings a description: {missing}"


def test_every_documented_flag_exists() -> None:
    options = {
        name: {opt for param in COMMANDS[name].load(name).params for opt in param.opts}
        for name in ("serve", "worker")
    }
    for setting, flags in FLAGS.items():
        assert setting in Settings.model_fields, setting
        for flag in flags:
            command, _, option = flag.rpartition(" ")
            for name in [command] if command else ["serve", "worker"]:
                assert option in options[name], f"{setting}: `flowyard {name}` has no {option}"


# ---------------------------------------------------------------- generate


def test_generate_writes_every_setting_and_loads_back(tmp_path: Path) -> None:
    path = tmp_path / "flowyard.yaml"
    result = invoke("config", "generate", "--path", str(path), "--set", "port=9100")
    assert result.exit_code == 0, result.output
    text = path.read_text()
    for name in Settings.model_fields:
        assert f"\n{name}:" in text, name
    assert "# HTTP port" in text
    loaded = load_settings(path)
    assert loaded.port == 9100
    assert loaded.model_dump(exclude={"port"}) == Settings().model_dump(exclude={"port"})


def test_generate_does_not_overwrite_unasked(tmp_path: Path) -> None:
    path = tmp_path / "flowyard.yaml"
    path.write_text("port: 1\n")
    refused = invoke("config", "generate", "--path", str(path))
    assert refused.exit_code == 1
    assert refused.stderr.strip() == f"error: {path} exists; pass --force to overwrite it"
    assert path.read_text() == "port: 1\n"
    forced = invoke("config", "generate", "--path", str(path), "--force")
    assert forced.exit_code == 0
    assert "mode: default" in path.read_text()


def test_generate_refuses_bad_values_naming_the_key(tmp_path: Path) -> None:
    result = invoke("config", "generate", "--path", "-", "--set", "port=high")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: setting port: ")
    unknown = invoke("config", "generate", "--path", "-", "--set", "colour=blue")
    assert unknown.stderr.strip() == "error: unknown setting 'colour' (from --set)"


# -------------------------------------------------------------------- show


def test_show_says_where_each_value_came_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "flowyard.yaml"
    config.write_text("workers: 4\nlease-seconds: 45\n")
    (tmp_path / ".env").write_text(
        "FLOWYARD_LEASE_SECONDS=50\nFLOWYARD_LOG_FORMAT=json\nPOSTGRES_PASSWORD=not-ours\n"
    )
    monkeypatch.setenv("FLOWYARD_LOG_FORMAT", "text")
    monkeypatch.setenv("FLOWYARD_DATABASE_URI", "postgresql://fy:pg-Secret@db/flowyard")
    monkeypatch.setenv("FLOWYARD_ADMIN_PASSWORD", "admin-Secret-1")
    settings, sources = load_settings_traced(
        config, assignments=["max_attempts=7", "cors_origins=https://a,https://b"], port=8400
    )
    assert (settings.workers, sources["workers"]) == (4, f"file {config}")
    assert (settings.lease_seconds, sources["lease_seconds"]) == (50, ".env FLOWYARD_LEASE_SECONDS")
    assert (settings.log_format, sources["log_format"]) == ("text", "env FLOWYARD_LOG_FORMAT")
    assert (settings.max_attempts, sources["max_attempts"]) == (7, "--set")
    assert settings.cors_origins == ["https://a", "https://b"]
    assert (settings.port, sources["port"]) == (8400, "flag")
    assert sources["host"] == "default"

    shown = invoke("config", "show", "--config", str(config), "--set", "max_attempts=7")
    assert shown.exit_code == 0, shown.output
    lines = {line.split()[0]: line for line in shown.stdout.splitlines()}
    assert lines["max_attempts"].split()[1:] == ["7", "--set"]
    assert "postgresql+psycopg://fy:********@db/flowyard" in lines["database_uri"]
    assert lines["admin_password"].split()[1] == "********"
    assert "Secret" not in shown.stdout


def test_env_file_unknown_key_names_it(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("FLOWYARD_COLOUR=blue\n")
    with pytest.raises(ConfigError, match=r"^unknown setting FLOWYARD_COLOUR in \.env$"):
        load_settings()


def test_set_and_its_flag_together_are_refused() -> None:
    with pytest.raises(ConfigError, match="setting port: given both"):
        load_settings(assignments=["port=1"], port=2)
    with pytest.raises(ConfigError, match="give key=value"):
        load_settings(assignments=["port"])
    assert load_settings(assignments=["public-url="]).public_url is None


def test_serve_and_worker_take_set() -> None:
    serve = invoke("serve", "--set", "nope=1")
    assert (serve.exit_code, serve.stderr.strip()) == (
        1,
        "error: unknown setting 'nope' (from --set)",
    )
    worker = invoke("worker", "--db", "postgresql://h/db", "--set", "grace_seconds=-1")
    assert worker.exit_code == 1
    assert worker.stderr.startswith("error: setting grace_seconds: ")


# -------------------------------------------------------------- a fast CLI


def test_lazy_commands_list_their_own_help() -> None:
    for name, spec in COMMANDS.items():
        command = spec.load(name)
        first = " ".join((command.help or "").split("\n\n")[0].split())
        assert first == spec.help, f"COMMANDS[{name!r}].help differs from the command's"


def _modules_after(code: str) -> set[str]:
    probe = f"import sys\n{code}\nprint(' '.join(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT
    )
    return set(out.stdout.split())


HEAVY = {"fastapi", "sqlalchemy", "alembic", "uvicorn", "faststream", "torch", "numpy", "nats"}


def test_help_imports_nothing_heavy() -> None:
    loaded = _modules_after(
        "from services.cli.main import app, run_cli\n"
        "import contextlib, io\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    run_cli(app, ['--help'])"
    )
    assert not loaded & (HEAVY | {"httpx", "pydantic"})


def test_client_commands_import_no_server_code() -> None:
    loaded = _modules_after("import services.cli.tasks, services.cli.run, services.cli.flows")
    assert not loaded & HEAVY
