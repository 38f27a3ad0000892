"""A NATS worker's login: whose tasks it may take, and stopping when NATS refuses it.

A worker that logs in (a user and password, or an API token) first asks the
server whose tasks its NATS user may take (``resolve_owner``): an admin's
every owner's, a user's their own, so it needs no ``--owner``. Then it
subscribes, on that short-lived connection, where it is going to, and stops
with one line when NATS refuses (``--owner`` of someone else, a stale config)
instead of retrying refused requests forever. NATS permissions decide; the
check only makes their answer visible.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Sequence
from typing import TypeVar

import nats.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from pydantic import ValidationError

from flowyard.bus.nats.auth_config import WhoAmIReply, inbox_prefix, whoami_subject
from flowyard.bus.nats.broker import (
    RECONNECT_WAIT,
    TRANSIENT,
    NatsAuth,
    nats_errors,
)
from flowyard.bus.nats.streams import work_consumer, work_stream
from flowyard.bus.nats.subjects import cancel_subject, owner_filter, token, wake_subject
from flowyard.core.errors import ConfigError, Forbidden, Unauthenticated, Unavailable
from flowyard.core.identity import Role
from flowyard.services.worker import Worker

log = logging.getLogger(__name__)

T = TypeVar("T")
PERMISSIONS_VIOLATION = "permissions violation"

__all__ = ["check_lease", "inbox_prefix", "resolve_owner", "stop_when_refused", "unless_stopped"]


async def stop_when_refused(client: Client, worker: Worker, refused: list[str]) -> None:
    """Stop the worker once NATS refuses its login (a reload dropped it): retrying cannot help.

    FastStream ends nats-py's reconnect loop on an authorization violation, so
    the connection would otherwise stay down silently; the process exits with
    one line instead, and whatever restarts it learns the same at its start.
    """
    while True:
        await asyncio.sleep(1.0)
        reason = str(client.last_error or "").removeprefix("nats: ").strip("'")
        if not client.is_connected and "authorization violation" in reason.lower():
            refused.append(reason)
            worker.stop()
            return


async def unless_stopped(work: Awaitable[T]) -> T | None:
    """Wait for ``work`` (connecting, retrying while NATS is down); SIGTERM meanwhile: None."""
    loop = asyncio.get_running_loop()
    attempt = asyncio.ensure_future(work)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, attempt.cancel)
    try:
        return await attempt
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():  # we were cancelled, not the attempt
            raise
        return None
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


async def check_lease(
    js: JetStreamContext, owner: str | None, flows: tuple[str, ...], lease_seconds: float
) -> None:
    """Warn when the server configured another ack wait than our heartbeats assume."""
    if owner is None or not flows:
        return
    try:
        info = await js.consumer_info(work_stream(owner), work_consumer(flows[0]))
    except TRANSIENT:  # no permission, or no consumer yet: nothing to compare
        return
    ack_wait = info.config.ack_wait or 0.0
    if abs(ack_wait - lease_seconds) > 0.01:
        log.warning(
            "the server's ack wait is %.1fs but FLOWYARD_LEASE_SECONDS here is %.1fs: "
            "heartbeats run every lease/3, so use the server's value",
            ack_wait,
            lease_seconds,
        )


# ------------------------------------------------------------------ who the login is


async def resolve_owner(
    url: str,
    auth: NatsAuth,
    owner: str | None,
    flows: Sequence[str],
    *,
    rpc_seconds: int = 2,
) -> tuple[str | None, str]:
    """The owner to serve (None: every owner) and the inbox prefix, for this NATS login.

    Without a user and password (no auth, or a credentials file) it is what was
    given, as before logins existed. With one, the server is asked on the
    login's own whoami subject; without ``--owner`` the worker waits for that
    answer, with ``--owner`` it goes on without it. Then NATS is shown the
    subscriptions the worker will make, and a refusal ends it with one line.
    """
    login, password = auth.user, auth.password
    if login is None or password is None:
        return owner, inbox_prefix(owner)
    errors: list[str] = []
    nc = await _probe_connection(url, login, password, errors)
    try:
        reply = await _whoami(nc, login, owner, errors, rpc_seconds=rpc_seconds)
        if reply is not None and owner is None:
            owner = reply.owner
        admin = reply is not None and reply.role is Role.admin
        inbox = inbox_prefix(None if admin else owner)
        await _check_permissions(nc, login, owner, flows, inbox, errors, rpc_seconds=rpc_seconds)
    finally:
        await nc.close()
    if reply is not None:
        who = "an admin" if admin else f"{reply.owner}'s (a user)"
        serves = f"{owner}'s tasks" if owner is not None else "every owner's tasks"
        log.info("NATS user %s is %s: serving %s", login, who, serves)
    return owner, inbox


async def _probe_connection(url: str, login: str, password: str, errors: list[str]) -> Client:
    """A short-lived connection of our own, whose error callback collects NATS refusals."""

    async def collect(exc: Exception) -> None:
        errors.append(str(exc).removeprefix("nats: ").strip("'"))

    waiting = False
    while True:
        nc = Client()
        errors.clear()
        try:
            await nc.connect(
                url,
                user=login,
                password=password,
                name="flowyard-worker (whoami)",
                inbox_prefix=inbox_prefix(login),
                error_cb=collect,
                allow_reconnect=False,
                max_reconnect_attempts=1,  # nats-py would try the first connect 60 times
                reconnect_time_wait=int(RECONNECT_WAIT),
                connect_timeout=2,
            )
            return nc
        except TRANSIENT as exc:
            await nc.close()
            reason = str(exc).removeprefix("nats: ").strip("'") or type(exc).__name__
            if any("authorization" in text.lower() for text in (reason, *errors)):
                raise ConfigError(
                    f"NATS at {url} refused user {login!r} (authorization violation): check the "
                    "password or token, and that the config was regenerated and reloaded"
                ) from None
            if not waiting:
                log.warning("NATS at %s: %s; retrying", url, reason)
                waiting = True
        await asyncio.sleep(RECONNECT_WAIT)


async def _whoami(
    nc: Client, login: str, owner: str | None, errors: list[str], *, rpc_seconds: int
) -> WhoAmIReply | None:
    """The server's answer for ``login``; None when it cannot be had (see ``resolve_owner``)."""
    waiting = False
    while True:
        try:
            msg = await nc.request(whoami_subject(login), b"", timeout=rpc_seconds)
        except nats.errors.NoRespondersError:
            reason = "no flowyard server answers on NATS yet"
        except TimeoutError as exc:
            if any(PERMISSIONS_VIOLATION in e.lower() for e in errors):
                # a config not made by `flowyard nats auth-config`: its permissions decide
                log.warning("NATS does not let %s ask whose tasks it is (%s)", login, errors[0])
                return None
            reason = f"the flowyard server did not answer ({exc or 'timeout'})"
        except nats.errors.Error as exc:
            raise Unavailable(f"NATS: asking the server who {login!r} is failed: {exc}") from exc
        else:
            try:
                reply = WhoAmIReply.model_validate_json(msg.data)
            except ValidationError:
                reply = WhoAmIReply(error="an answer flowyard cannot read", retry=True)
            if not reply.error and reply.role is not None:
                return reply
            if not reply.retry:
                raise Unauthenticated(
                    f"the flowyard server refused NATS user {login!r}: {reply.error}"
                )
            reason = reply.error
        if owner is not None:
            log.warning("%s; serving --owner %s as given", reason, owner)
            return None
        if not waiting:
            log.info("waiting for the flowyard server to say who %s is: %s", login, reason)
            waiting = True
        await asyncio.sleep(RECONNECT_WAIT)


async def _check_permissions(
    nc: Client,
    login: str,
    owner: str | None,
    flows: Sequence[str],
    inbox: str,
    errors: list[str],
    *,
    rpc_seconds: int,
) -> None:
    """Subscribe where the worker will; NATS reports a refusal before it answers a flush.

    Twice: nats-py writes a flush's PING ahead of queued commands, so only the
    second PING is sure to follow the subscriptions.
    """
    errors.clear()
    subjects: list[str] = []
    for flow in flows:
        subjects += [cancel_subject(owner, flow), wake_subject(owner_filter(owner), token(flow))]
    subjects.append(f"{inbox}.check")
    with nats_errors(f"checking the permissions of {login!r}"):
        subscriptions = [await nc.subscribe(subject) for subject in subjects]
        await nc.flush(timeout=rpc_seconds)
        await nc.flush(timeout=rpc_seconds)
        for subscription in subscriptions:
            await subscription.unsubscribe()
    refused = [e for e in errors if PERMISSIONS_VIOLATION in e.lower()]
    if not refused:
        return
    if owner is not None:
        whose = f"owner {owner!r}"
        hint = "a user's worker takes only that user's tasks: drop --owner, or log in as an admin"
    else:
        whose = "every owner"
        hint = "only an admin's worker serves every owner: pass --owner, or check the NATS config"
    raise Forbidden(f"NATS refused user {login!r} the subjects of {whose} ({refused[0]}): {hint}")
