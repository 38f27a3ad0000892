"""A worker process that reaches only NATS: no database, no shared folder.

The same ``Worker`` as everywhere, given a ``NatsWorkQueue`` (work from
JetStream, events back to it) and ``NatsTaskFiles`` (inputs and outputs through
the owner's object store bucket, in a private temp folder that is removed after
each attempt). Its lease is JetStream's ack wait, so FLOWYARD_LEASE_SECONDS must
match the server's (it configures the consumers); a mismatch is logged.

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
import contextlib
import dataclasses
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
    connection,
    make_broker,
    nats_errors,
)
from flowyard.bus.nats.object_store import NatsTaskFiles
from flowyard.bus.nats.streams import work_consumer, work_stream
from flowyard.bus.nats.subjects import cancel_subject, owner_filter, token, wake_subject
from flowyard.bus.nats.work_queue import NatsWorkQueue
from flowyard.bus.nats.worker_protocol import NATS_LEASES
from flowyard.core.errors import ConfigError, Forbidden, Unauthenticated, Unavailable
from flowyard.core.identity import Role
from flowyard.core.settings import Settings
from flowyard.flows.device import detect_device
from flowyard.flows.registry import installed_flows
from flowyard.services.worker import Worker
from flowyard.services.worker_metrics import metered
from flowyard.services.worker_process import (
    log_start,
    select_flows,
    stop_on_signals,
    worker_identity,
    worker_options,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
PERMISSIONS_VIOLATION = "permissions violation"

__all__ = ["inbox_prefix", "resolve_owner", "run_nats_worker"]


async def run_nats_worker(
    settings: Settings,
    *,
    name: str | None,
    flows: list[str] | None,
    concurrency: int,
    owner: str | None,
) -> None:
    if settings.nats_url is None:
        raise ConfigError("a NATS worker needs --nats nats://HOST:4222")
    registry = installed_flows()
    selected = select_flows(registry, flows)
    auth = NatsAuth.from_settings(settings)
    log.info("connecting to NATS at %s", settings.nats_url)
    resolved = await _unless_stopped(resolve_owner(settings.nats_url, auth, owner, selected))
    if resolved is None:
        log.info("stopped before NATS could be reached")
        return
    owner, inbox = resolved
    local = worker_identity(
        name, selected, concurrency, owner, transport="nats", device=detect_device(settings.device)
    )
    identity = dataclasses.replace(local, id=NATS_LEASES.worker_id(local.id))
    broker = make_broker(
        settings.nats_url, auth, name=f"flowyard-worker {identity.name}", inbox_prefix=inbox
    )
    queue = NatsWorkQueue(broker, identity, lease_seconds=settings.lease_seconds)
    connected = await _unless_stopped(connection(broker))
    if connected is None:
        log.info("stopped before NATS could be reached")
        return
    client, js = connected
    await broker.start()
    await queue.start(client, js)
    await _check_lease(js, owner, identity.flows, settings.lease_seconds)
    files = NatsTaskFiles(js, abandon=queue.abandon)
    counted, serve_metrics = metered(queue, settings.metrics_port, settings.metrics_host)
    worker = Worker(identity, counted, files, registry, worker_options(settings))
    queue.on_cancel = worker.cancel
    stop_on_signals(worker)
    if serve_metrics is not None:
        serve_metrics()
    log_start(identity, settings.nats_url)
    refused: list[str] = []
    watch = asyncio.create_task(_stop_when_refused(client, worker, refused), name="nats-login")
    try:
        await worker.run()
    finally:
        watch.cancel()
        await files.close()
        # a broker whose connection is already gone fails to unsubscribe: nothing to undo
        with contextlib.suppress(*TRANSIENT, ExceptionGroup):
            await asyncio.wait_for(broker.stop(), 5.0)
    if refused:
        raise ConfigError(
            f"NATS at {settings.nats_url} no longer accepts user {auth.user!r} ({refused[0]}): "
            "its token was revoked or its user disabled or changed, and nats-server reloaded"
        )


async def _stop_when_refused(client: Client, worker: Worker, refused: list[str]) -> None:
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


async def _unless_stopped(work: Awaitable[T]) -> T | None:
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


async def _check_lease(
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
