"""Settings: defaults < YAML file < ``FLOWYARD_*`` environment < command-line flags.

Only the model and pure helpers live here; reading the YAML file is done by
``services/config.py``. ``docs/configuration.md`` is generated from this model
(``flowyard config docs``; a test compares), so every field needs a
``description``.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from flowyard.core.errors import ConfigError

Mode = Literal["default", "server"]
LogFormat = Literal["text", "json"]
LogLevel = Literal["debug", "info", "warning", "error"]

CommaList = Annotated[list[str], NoDecode]
"""A list setting: ``a,b`` in the environment or ``--set``, a YAML list in the file."""

MAX_INPUT_FILES = 16
"""Input files one ``POST /api/tasks`` may carry."""
JSON_BODY_SLACK = 64 * 1024
"""What a JSON body may hold beside ``params`` (flow, owner, priority, whitespace)."""

DATABASE_SCHEMES: dict[str, str] = {
    "sqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
    "postgres": "postgresql+psycopg",
    "postgresql": "postgresql+psycopg",
    "postgresql+psycopg": "postgresql+psycopg",
    "mysql": "mysql+asyncmy",
    "mysql+asyncmy": "mysql+asyncmy",
    "mariadb": "mysql+asyncmy",
    "mariadb+asyncmy": "mysql+asyncmy",
}


DEFAULT_SERVER_RETENTION_DAYS = 30.0
"""Server mode keeps finished tasks this long unless ``retention_days`` says otherwise."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FLOWYARD_", extra="forbid")

    mode: Mode = Field(
        default="default",
        description="default: all-in-one on SQLite with in-process workers; server: API only, "
        "on PostgreSQL or MariaDB, flows run in `flowyard worker` processes (SQLite refused)",
    )
    host: str = Field(default="127.0.0.1", description="address the HTTP server listens on")
    port: int = Field(default=8288, ge=0, le=65535, description="HTTP port")
    data_dir: Path = Field(
        default=Path("flowyard-data"),
        description="SQLite database (flowyard.db) and, unless files_dir is set, task files",
    )
    database_uri: str | None = Field(
        default=None,
        description="sqlite://, postgresql:// (psycopg 3), mysql:// or mariadb:// (asyncmy); "
        "the async driver is chosen for you (default: SQLite in data_dir)",
    )
    files_dir: Path | None = Field(
        default=None,
        description="the tasks folder, one folder per task that has files; database workers "
        "mount the same folder (default: data_dir/files)",
    )
    workers: int = Field(default=2, ge=0, description="in-process worker slots (default mode)")
    max_upload_bytes: int = Field(
        default=512 * 1024 * 1024, ge=1, description="largest input file (HTTP 413 beyond)"
    )
    max_params_bytes: int = Field(
        default=1024 * 1024, ge=1, description="largest params (as compact JSON), any content type"
    )
    max_request_bytes: int | None = Field(
        default=None,
        ge=1,
        description="largest multipart body (default: 16 inputs at max_upload_bytes, plus params)",
    )
    lease_seconds: float = Field(
        default=30.0,
        gt=0,
        description="how long a claimed task stays with a silent worker; heartbeats renew it "
        "every lease/3 (over NATS: the consumers' ack wait)",
    )
    max_attempts: int = Field(
        default=3, ge=1, description="attempts before a task whose worker keeps vanishing fails"
    )
    max_batch_tasks: int = Field(
        default=100,
        ge=1,
        description="most tasks one POST /api/tasks/batch may create (all or none)",
    )
    idempotency_window_hours: float = Field(
        default=24.0,
        gt=0,
        description="how long an Idempotency-Key returns the task it first created",
    )
    max_wait_seconds: float = Field(
        default=300.0,
        gt=0,
        description="longest ?wait= of POST /api/tasks (create and wait for the result)",
    )
    schedule_tolerance_seconds: float = Field(
        default=60.0,
        ge=0,
        description="how far in the past a task's run_at may lie (clock skew) before the "
        "create is refused; a run_at within it runs at once",
    )
    progress_interval: float = Field(
        default=0.2,
        ge=0,
        description="seconds between two task.progress events of one task (the latest wins)",
    )
    poll_interval: float = Field(
        default=2.0,
        gt=0,
        description="longest sleep of an idle worker between polls (backoff from 50 ms; only "
        "the fallback under PostgreSQL's LISTEN)",
    )
    worker_offline_seconds: float = Field(
        default=60.0, gt=0, description="a worker not seen for this long shows as offline"
    )
    grace_seconds: float = Field(
        default=30.0,
        ge=0,
        description="on SIGTERM, how long a worker lets running flows finish before releasing them",
    )
    batch_limit: int = Field(
        default=0,
        ge=0,
        description="most same-flow tasks a worker runs as one batch (0: each flow's batch_size; "
        "1: never batch)",
    )
    nats_url: str | None = Field(
        default=None, description="NATS server for the JetStream transport (docs/nats.md)"
    )
    nats_user: str | None = Field(default=None, description="NATS user (server or worker)")
    nats_password: str | None = Field(
        default=None, description="NATS password of nats_user (prefer the environment)"
    )
    nats_creds: Path | None = Field(default=None, description="NATS credentials file (JWT+nkey)")
    events_max_age_hours: float = Field(
        default=24.0 * 30, gt=0, description="FLOWYARD_EVENTS keeps events this long"
    )
    retention_days: float | None = Field(
        default=None,
        ge=0,
        description="finished tasks, their files and webhook deliveries older than this many "
        "days are removed by a background pruner; unset: 30 in server mode, off in default "
        "mode; 0: off",
    )
    events_retention_days: float | None = Field(
        default=None,
        ge=0,
        description="events older than this many days whose task was removed are pruned too; "
        "unset or 0: kept (FLOWYARD_EVENTS then keeps them at most this long as well)",
    )
    retention_interval_seconds: float = Field(
        default=300.0, gt=0, description="seconds between two rounds of the pruner"
    )
    retention_batch: int = Field(
        default=100, ge=1, description="tasks removed per pruner transaction (small: short locks)"
    )
    nats_dispatch: Literal["priority", "fifo"] = Field(
        default="priority",
        description="how the server sends work to NATS workers: priority (held in the "
        "database, sent highest priority first as workers have free slots) or fifo (sent "
        "at once, run in creation order)",
    )
    nats_prefetch: int = Field(
        default=0,
        ge=0,
        description="with nats_dispatch priority: tasks sent ahead per NATS worker slot, "
        "so a worker starts its next task without waiting for the server (0: none, "
        "priority exact; N: a later, higher-priority task may wait behind N per slot)",
    )
    events_max_bytes: int = Field(
        default=-1, ge=-1, description="FLOWYARD_EVENTS size limit in bytes (-1: none)"
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto",
        description="auto (CUDA when torch sees it), cpu, or cuda (refused when absent)",
    )
    public_url: str | None = Field(
        default=None, description="base URL for absolute download links (webhooks)"
    )
    default_owner: str = Field(
        default="admin", description="the local admin that owns everything when auth is off"
    )
    admin_user: str = Field(default="admin", description="user that admin_password creates")
    admin_password: SecretStr | None = Field(
        default=None,
        description="creates admin_user at start when no admin exists (bootstraps a container)",
    )
    session_hours: float = Field(default=12.0, gt=0, description="web sign-in lifetime")
    cookie_secure: bool = Field(
        default=False, description="mark the session cookie Secure (TLS in front of flowyard)"
    )
    login_attempts: int = Field(
        default=10, ge=1, description="failed sign-ins per user and per address in a minute"
    )
    webhooks_allow_private: bool = Field(
        default=False, description="allow webhook targets on loopback/private/link-local addresses"
    )
    webhook_dispatch: Literal["server", "separate"] = Field(
        default="server",
        description="who sends webhook deliveries: the server, or separate 'flowyard webhooks "
        "dispatch' processes (with NATS they also create the delivery rows, from the event "
        "stream)",
    )
    webhook_timeout: float = Field(default=10.0, gt=0, description="seconds per delivery attempt")
    webhook_retry_hours: float = Field(default=24.0, gt=0, description="retry a delivery this long")
    webhook_backoff_base: float = Field(default=1.0, gt=0, description="first retry delay (s)")
    webhook_disable_after: int = Field(
        default=50, ge=1, description="failed attempts in a row (over a retry period) to disable"
    )
    # --- the HTTP edge: CORS, TLS, proxies (docs/deploy.md)
    cors_origins: CommaList = Field(
        default_factory=list,
        description="origins allowed to call the API from a browser (CORS); empty: CORS off",
    )
    cors_methods: CommaList = Field(
        default_factory=lambda: ["GET", "POST", "PUT", "PATCH", "DELETE"],
        description="methods a cross-origin request may use",
    )
    cors_headers: CommaList = Field(
        default_factory=lambda: ["Authorization", "Content-Type", "X-CSRF-Token"],
        description="request headers a cross-origin request may send",
    )
    cors_credentials: bool = Field(
        default=False, description="let cross-origin requests send cookies (never with origin *)"
    )
    tls_cert_file: Path | None = Field(
        default=None, description="PEM certificate (chain): serve HTTPS itself; needs tls_key_file"
    )
    tls_key_file: Path | None = Field(default=None, description="PEM private key of tls_cert_file")
    proxy_headers: bool = Field(
        default=True,
        description="trust X-Forwarded-For/-Proto from forwarded_allow_ips (client address, https)",
    )
    forwarded_allow_ips: str = Field(
        default="127.0.0.1",
        description="proxies whose X-Forwarded-* headers are trusted: addresses, networks or *",
    )
    # --- operations: metrics and logs
    metrics_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="workers: serve Prometheus /metrics on this port (the server has /metrics)",
    )
    metrics_host: str = Field(
        default="127.0.0.1", description="address a worker's metrics port listens on"
    )
    log_level: LogLevel = Field(
        default="info", description="flowyard's log level; debug also shows library INFO lines"
    )
    log_format: LogFormat = Field(
        default="text", description="text: one readable line per record; json: one JSON object"
    )
    log_file: Path | None = Field(
        default=None, description="append logs to this file instead of standard error"
    )

    @field_validator("cors_origins", "cors_methods", "cors_headers", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @model_validator(mode="after")
    def _normalise(self) -> Settings:
        if self.database_uri is not None:
            self.database_uri = normalise_database_uri(self.database_uri)
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ConfigError("setting tls_cert_file: give both tls_cert_file and tls_key_file")
        if self.cors_credentials and "*" in self.cors_origins:
            raise ConfigError(
                "setting cors_credentials: browsers refuse credentials with origin '*'; "
                "list the origins"
            )
        return self

    @property
    def tls_enabled(self) -> bool:
        """flowyard terminates TLS itself (uvicorn with the cert and key)."""
        return self.tls_cert_file is not None

    @property
    def db_uri(self) -> str:
        """The database URI in force: the configured one, or SQLite in the data folder."""
        if self.database_uri:
            return self.database_uri
        return f"sqlite+aiosqlite:///{(self.data_dir / 'flowyard.db').resolve()}"

    @property
    def multipart_limit(self) -> int:
        """Multipart bodies stream to disk: room for every input file at its limit."""
        if self.max_request_bytes is not None:
            return self.max_request_bytes
        return self.max_upload_bytes * MAX_INPUT_FILES + self.json_limit

    @property
    def json_limit(self) -> int:
        """Every other body is read whole, so it is held to about the size of params."""
        return self.max_params_bytes + JSON_BODY_SLACK

    @property
    def tasks_dir(self) -> Path:
        return self.files_dir if self.files_dir is not None else self.data_dir / "files"

    @property
    def auth_required(self) -> bool:
        """Server mode, or any listener beyond loopback: a laptop is never an open door."""
        return self.mode == "server" or not is_loopback(self.host)

    @property
    def task_retention_days(self) -> float | None:
        """``retention_days`` resolved: None means tasks are kept."""
        days = self.retention_days
        if days is None:
            days = DEFAULT_SERVER_RETENTION_DAYS if self.mode == "server" else 0.0
        return days or None

    @property
    def events_stream_max_age_hours(self) -> float:
        """FLOWYARD_EVENTS never keeps what the database's event retention removed."""
        if self.events_retention_days:
            return min(self.events_max_age_hours, self.events_retention_days * 24)
        return self.events_max_age_hours

    @property
    def heartbeat_seconds(self) -> float:
        """Leases are renewed three times per lease: one missed beat does not lose a task."""
        return self.lease_seconds / 3

    def check_mode(self) -> None:
        """Server mode needs a real database: SQLite has one writer and no row locks."""
        if self.mode == "server" and self.db_uri.startswith("sqlite"):
            raise ConfigError(
                "server mode needs PostgreSQL or MariaDB, not SQLite (workers in other "
                "processes need row locks): pass --db postgresql://… or --db mysql://…, "
                "or drop --mode server to run everything in one process on SQLite"
            )


def is_loopback(host: str) -> bool:
    """``127.0.0.1``, ``::1``, ``localhost`` and the rest of 127/8 (no name lookups)."""
    name = host.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def normalise_database_uri(uri: str) -> str:
    """Map a user's URI to the async driver we use; refuse unknown schemes by listing ours."""
    scheme, sep, rest = uri.partition("://")
    if not sep:
        raise ConfigError(f"database URI {uri!r} has no scheme; use one of: {_schemes()}")
    driver = DATABASE_SCHEMES.get(scheme.lower())
    if driver is None:
        raise ConfigError(f"unsupported database scheme {scheme!r}; use one of: {_schemes()}")
    return f"{driver}://{rest}"


def _schemes() -> str:
    return ", ".join(f"{s}://" for s in ("sqlite", "postgresql", "mysql", "mariadb"))
