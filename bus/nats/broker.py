"""The FastStream ``NatsBroker`` every flowyard process uses: auth, reconnects, one connection.

FastStream publishes and decodes the typed events and serves the request-reply
subjects; the same connection's raw nats-py client does what FastStream gets
wrong or lacks (exact pull fetches with explicit acks, the object store), see
docs/nats.md. Reconnection never gives up: a NATS outage delays, it does not
stop a server or a worker.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats.errors
from faststream.nats import NatsBroker
from faststream.nats.security import NatsCredentials, NatsUserPassword
from faststream.security import BaseSecurity
from nats.aio.client import Client
from nats.js import JetStreamContext

from flowyard.core.errors import ConfigError, Unavailable
from flowyard.core.settings import Settings

log = logging.getLogger(__name__)

PUBLISH_TIMEOUT = 5.0
"""Seconds to wait for a PubAck; generous, a loaded 2-core box can be slow to answer."""
RECONNECT_WAIT = 1.0


@dataclass(frozen=True)
class NatsAuth:
    """User and password, or a credentials file (JWT + nkey seed); or nothing."""

    user: str | None = None
    password: str | None = None
    creds: Path | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> NatsAuth:
        auth = cls(settings.nats_user, settings.nats_password, settings.nats_creds)
        auth.check()
        return auth

    def check(self) -> None:
        if self.creds is not None and (self.user or self.password):
            raise ConfigError("give --nats-creds or --nats-user/--nats-password, not both")
        if bool(self.user) != bool(self.password):
            raise ConfigError("--nats-user and --nats-password go together")
        if self.creds is not None:
            if not self.creds.is_file():
                raise ConfigError(f"NATS credentials file {self.creds} does not exist")
            if importlib.util.find_spec("nkeys") is None:
                raise ConfigError("--nats-creds needs the 'nkeys' package: pip install nkeys")

    def security(self) -> BaseSecurity | None:
        if self.creds is not None:
            return NatsCredentials.from_file(self.creds)
        if self.user and self.password:
            return NatsUserPassword(self.user, self.password)
        return None


def check_url(url: str) -> str:
    if not url.startswith(("nats://", "tls://", "ws://", "wss://")):
        raise ConfigError(f"NATS URL {url!r} must start with nats:// (or tls://, ws://, wss://)")
    return url


def make_broker(
    url: str, auth: NatsAuth, *, name: str, inbox_prefix: str = "_INBOX", **extra: Any
) -> NatsBroker:
    """A broker that reconnects forever; FastStream's own logging goes to DEBUG."""
    return NatsBroker(
        check_url(url),
        security=auth.security(),
        name=name,
        error_cb=_error_logger(url),
        inbox_prefix=inbox_prefix,
        allow_reconnect=True,
        max_reconnect_attempts=-1,
        reconnect_time_wait=RECONNECT_WAIT,  # type: ignore[arg-type]
        connect_timeout=2,
        ping_interval=5,
        max_outstanding_pings=2,
        log_level=logging.DEBUG,
        graceful_timeout=5.0,
        **extra,
    )


def _error_logger(url: str, every: float = 30.0) -> Callable[[Exception], Awaitable[None]]:
    """Log connection trouble (refused, permission violations) once per ``every`` seconds each."""
    last: dict[str, float] = {}

    async def report(exc: Exception) -> None:
        text = str(exc).strip() or type(exc).__name__
        now = time.monotonic()
        if now - last.get(text, -every) >= every:
            last[text] = now
            log.warning("NATS %s: %s", url, text)

    return report


async def connection(broker: NatsBroker) -> tuple[Client, JetStreamContext]:
    """The broker's nats-py client and its JetStream context (connects if needed).

    While NATS cannot be reached this keeps trying; refused credentials end it
    with a ``ConfigError`` that says so (retrying would not help).
    """
    try:
        client = await broker.connect()
    except nats.errors.Error as exc:
        reason = str(exc).removeprefix("nats: ").strip("'")
        if "authorization" in reason.lower() or "authentication" in reason.lower():
            where = ", ".join(broker.specification.url)
            raise ConfigError(
                f"NATS at {where} refused our credentials ({reason}): "
                "check the NATS user and password, or the credentials file"
            ) from None
        raise unavailable("connecting", exc) from exc
    return client, client.jetstream(timeout=PUBLISH_TIMEOUT)


TRANSIENT: tuple[type[BaseException], ...] = (nats.errors.Error, OSError, TimeoutError)
"""What an outage looks like to a client (a permission violation too: the request times out)."""


def unavailable(what: str, exc: BaseException) -> Unavailable:
    reason = str(exc).strip() or type(exc).__name__
    return Unavailable(f"NATS: {what} failed: {reason}")


@contextlib.contextmanager
def nats_errors(what: str) -> Iterator[None]:
    """Translate an outage inside the block into ``Unavailable`` ("NATS: <what> failed: …").

    The one place nats-py's errors become flowyard's: callers retry ``Unavailable``
    and never see a driver exception. Errors the block handles itself (a
    ``NotFoundError`` that means "already gone") are caught inside it.
    """
    try:
        yield
    except TRANSIENT as exc:
        raise unavailable(what, exc) from exc


@contextlib.contextmanager
def best_effort(
    what: str | None = None, *, log_to: logging.Logger = log, level: int = logging.DEBUG
) -> Iterator[None]:
    """Ignore an outage inside the block (an ack, a nak, a wake-up: NATS redelivers or a
    poll catches up); ``what`` names it in a log line."""
    try:
        yield
    except TRANSIENT as exc:
        if what is not None:
            reason = str(exc).strip() or type(exc).__name__
            log_to.log(level, "NATS: %s failed: %s", what, reason)
