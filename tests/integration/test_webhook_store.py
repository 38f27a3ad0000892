"""Webhook tables on SQLite, PostgreSQL and MariaDB, and the dispatcher in-process.

Delivery rows must commit with their events (and roll back with them), exist once
per subscription and event, be claimed without blocking on rows another
dispatcher holds, and record every attempt.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from flowyard.adapters.sql.database import Database
from flowyard.adapters.sql.delivery_intake import SqlDeliveryIntake
from flowyard.adapters.sql.delivery_recorder import DeliveryRecorder
from flowyard.adapters.sql.engine import MIGRATIONS, make_engine, upgrade
from flowyard.adapters.sql.schema import webhook_deliveries
from flowyard.adapters.sql.task_store import SqlTaskStore, append_events
from flowyard.adapters.sql.webhook_store import SqlWebhookStore
from flowyard.adapters.webhook_sender import verify
from flowyard.core.errors import InvalidInput, WebhookNotFound
from flowyard.core.events import TaskClaimed, TaskCreated, TaskDone, TaskProgress, utcnow
from flowyard.core.identity import Principal, Role
from flowyard.core.settings import Settings
from flowyard.core.webhook import DeliveryStatus, Outcome, RetryPolicy, Subscription
from flowyard.services.api.urls import output_urls
from flowyard.services.hooks import InTransaction, register
from flowyard.services.webhook_dispatcher import WebhookDispatcher
from flowyard.services.webhook_service import NewWebhook, WebhookService
from tests.support.webhook_receiver import WebhookReceiver

pytestmark = pytest.mark.timeout(60)

ADMIN = Principal("admin", Role.admin)
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@dataclass
class Stores:
    db: Database
    tasks: SqlTaskStore
    webhooks: WebhookService


def settings(**overrides: object) -> Settings:
    values: dict[str, object] = {
        "webhooks_allow_private": True,
        "webhook_backoff_base": 0.01,
        "webhook_timeout": 2.0,
        "poll_interval": 0.2,
    }
    return Settings.model_validate(values | overrides)


async def open_stores(uri: str, config: Settings) -> Stores:
    engine = make_engine(uri, pool_size=4)
    await upgrade(engine)
    db = Database(engine)
    recorder = DeliveryRecorder(db.dialect, output_urls(config.public_url))
    register(db, [InTransaction("webhook delivery rows", recorder)])
    return Stores(db, SqlTaskStore(db), WebhookService(SqlWebhookStore(db), recorder, config))


@pytest.fixture
async def stores(db_uri: str) -> AsyncIterator[Stores]:
    opened = await open_stores(db_uri, settings())
    yield opened
    await opened.db.close()


async def deliveries_of(s: Stores, sub: Subscription) -> list[tuple[str, uuid.UUID]]:
    rows = await s.webhooks.deliveries(sub.id, ADMIN, limit=100)
    return sorted((d.event_type, d.event_id) for d, _ in rows)


def finished_task(flow: str = "debug.sleep") -> list[TaskCreated | TaskClaimed | TaskDone]:
    task_id = uuid.uuid4()
    now = utcnow()
    return [
        TaskCreated(task_id=task_id, flow=flow),
        TaskClaimed(task_id=task_id, flow=flow, attempt=1, worker_id="w", lease_expires_at=now),
        TaskDone(task_id=task_id, flow=flow, attempt=1, status="succeeded"),
    ]


async def test_the_event_stream_intake_makes_rows_only_for_subscriptions(db_uri: str) -> None:
    """The NATS path: no in-transaction hook; the intake makes rows from the log. While
    no subscription exists it opens no transaction at all, and one made through the
    API (the same recorder) counts from the next batch."""
    engine = make_engine(db_uri, pool_size=4)
    await upgrade(engine)
    db = Database(engine)
    recorder = DeliveryRecorder(db.dialect)
    service = WebhookService(SqlWebhookStore(db), recorder, settings())
    woken: list[int] = []
    intake = SqlDeliveryIntake(db, recorder, on_rows=lambda: woken.append(1))
    begun: list[object] = []
    sa.event.listen(engine.sync_engine, "begin", begun.append)
    store = SqlTaskStore(db)
    try:
        first = finished_task()
        for event in first:
            await store.record(event)
        ids = [event.id for event in first]
        assert await intake.take(ids) == set(ids)  # reads the (empty) list once
        begun.clear()
        assert await intake.take(ids) == set(ids)
        assert begun == []
        assert woken == []

        sub = await service.create(NewWebhook("http://127.0.0.1:9/a", ["task.done"]), ADMIN)
        second = finished_task()
        for event in second:
            await store.record(event)
        unknown = uuid.uuid4()  # not in the log (yet): not taken, offered again later
        taken = await intake.take([*(event.id for event in second), unknown])
        assert taken == {event.id for event in second}
        assert woken == [1]
        rows = await service.deliveries(sub.id, ADMIN, limit=100)
        assert [d.event_id for d, _ in rows] == [second[-1].id]  # task.done only
    finally:
        await db.close()


async def test_migration_round_trip(db_uri: str) -> None:
    engine = make_engine(db_uri)
    try:
        await upgrade(engine)

        def tables(conn: sa.Connection) -> set[str]:
            return set(sa.inspect(conn).get_table_names())

        def downgrade(conn: sa.Connection) -> None:
            cfg = Config()
            cfg.set_main_option("script_location", str(MIGRATIONS))
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0001")

        async with engine.connect() as conn:
            assert {"webhooks", "webhook_deliveries", "webhook_attempts"} <= await conn.run_sync(
                tables
            )
        async with engine.begin() as conn:
            await conn.run_sync(downgrade)
        async with engine.connect() as conn:
            assert not {"webhooks", "webhook_deliveries"} & await conn.run_sync(tables)
        await upgrade(engine)
        async with engine.connect() as conn:
            assert "webhook_attempts" in await conn.run_sync(tables)
    finally:
        await engine.dispose()


async def test_matching_events_create_deliveries_in_their_own_transaction(stores: Stores) -> None:
    every = await stores.webhooks.create(NewWebhook("http://127.0.0.1:9/a"), ADMIN)
    blur = await stores.webhooks.create(
        NewWebhook("http://127.0.0.1:9/b", ["task.created", "task.done"], ["image.blur"]), ADMIN
    )
    sleep_events, blur_events = finished_task("debug.sleep"), finished_task("image.blur")
    for event in [*sleep_events, *blur_events]:
        await stores.tasks.record(event)
    progress = TaskProgress(
        task_id=blur_events[0].task_id, flow="image.blur", attempt=1, progress=0.5
    )
    with pytest.raises(Exception, match="progress for a task"):  # refused: nothing written
        await stores.tasks.record(progress)
    await stores.tasks.record(blur_events[2])  # a duplicate event id changes nothing

    assert await deliveries_of(stores, every) == sorted(
        [("task.done", sleep_events[2].id), ("task.done", blur_events[2].id)]
    )
    assert await deliveries_of(stores, blur) == sorted(
        [("task.created", blur_events[0].id), ("task.done", blur_events[2].id)]
    )

    # a write that rolls back takes its delivery rows with it
    doomed = TaskCreated(task_id=uuid.uuid4(), flow="image.blur")

    async def write_then_fail() -> None:
        async with stores.db.write() as tx:
            await append_events(tx, [doomed])
            raise RuntimeError("rolled back")

    with pytest.raises(RuntimeError, match="rolled back"):
        await write_then_fail()
    assert ("task.created", doomed.id) not in await deliveries_of(stores, blur)


async def test_claim_lease_attempts_and_health(stores: Stores, db_uri: str) -> None:
    store = stores.webhooks.store
    sub = await stores.webhooks.create(NewWebhook("http://127.0.0.1:9/a", secret=SECRET), ADMIN)
    for _ in range(3):
        for event in finished_task():
            await stores.tasks.record(event)
    now = utcnow()
    lease = timedelta(seconds=30)

    if not db_uri.startswith("sqlite"):  # a row locked by another dispatcher is skipped
        async with stores.db.engine.connect() as other:
            await other.begin()
            held = await other.scalar(
                sa.select(webhook_deliveries.c.id)
                .order_by(webhook_deliveries.c.id)
                .limit(1)
                .with_for_update()
            )
            claimed = await asyncio.wait_for(store.claim({sub.id: 10}, now, lease), 10)
            assert held not in {d.id for d in claimed}
            assert len(claimed) == 2
            await other.rollback()
        first = await store.claim({sub.id: 10}, now, lease)
        assert [d.id for d in first] == [held]
        claimed += first
    else:
        claimed = await store.claim({sub.id: 2}, now, lease)
        assert len(claimed) == 2  # the per-subscription slot count bounds the claim
        claimed += await store.claim({sub.id: 10}, now, lease)
    assert len(claimed) == 3
    assert await store.claim({sub.id: 10}, now, lease) == []  # leased, not due
    assert await store.next_due([sub.id]) == now + lease

    policy = RetryPolicy(base=0.01, retry_for=timedelta(hours=1), disable_after=2)
    ok, retry, gone = claimed
    result = await store.record_attempt(
        ok, at=now, status_code=204, error=None, duration_ms=5,
        outcome=Outcome.delivered, policy=policy,
    )  # fmt: skip
    assert result.status is DeliveryStatus.delivered
    result = await store.record_attempt(
        retry, at=now, status_code=503, error="HTTP 503", duration_ms=7,
        outcome=Outcome.retry, policy=policy,
    )  # fmt: skip
    assert result.status is DeliveryStatus.pending
    assert result.disabled_reason is None
    assert (await store.get(sub.id)).consecutive_failures == 1
    result = await store.record_attempt(
        gone, at=now, status_code=410, error="HTTP 410", duration_ms=3,
        outcome=Outcome.gone, policy=policy,
    )  # fmt: skip
    assert result.status is DeliveryStatus.failed
    assert "410 Gone" in (result.disabled_reason or "")

    disabled = await store.get(sub.id)
    assert not disabled.enabled
    assert "410" in (disabled.disabled_reason or "")
    assert await store.enabled() == []
    listed = {
        d.id: (d, attempts)
        for d, attempts in await stores.webhooks.deliveries(sub.id, ADMIN, limit=10)
    }
    assert listed[retry.id][0].last_status_code == 503
    assert [(a.status_code, a.error, a.duration_ms) for a in listed[retry.id][1]] == [
        (503, "HTTP 503", 7)
    ]
    assert listed[ok.id][0].delivered_at == now

    enabled = await stores.webhooks.enable(sub.id, ADMIN)
    assert enabled.enabled
    assert enabled.disabled_reason is None
    assert enabled.consecutive_failures == 0


async def test_requeue_resets_a_delivered_event_instead_of_duplicating_it(stores: Stores) -> None:
    store = stores.webhooks.store
    sub = await stores.webhooks.create(NewWebhook("http://127.0.0.1:9/a"), ADMIN)
    events = finished_task()
    for event in events:
        await stores.tasks.record(event)
    (delivery,) = await store.claim({sub.id: 5}, utcnow(), timedelta(seconds=30))
    await store.record_attempt(
        delivery, at=utcnow(), status_code=200, error=None, duration_ms=1,
        outcome=Outcome.delivered, policy=RetryPolicy(),
    )  # fmt: skip
    assert await store.requeue(sub.id, events) == 3
    rows = {d.event_id: d for d, _ in await stores.webhooks.deliveries(sub.id, ADMIN, limit=10)}
    assert set(rows) == {e.id for e in events}
    assert all(d.status is DeliveryStatus.pending and d.attempts == 0 for d in rows.values())
    with pytest.raises(WebhookNotFound):
        await store.requeue(uuid.uuid4(), events)


async def test_removing_a_subscription_removes_its_deliveries(stores: Stores) -> None:
    sub = await stores.webhooks.create(NewWebhook("http://127.0.0.1:9/a"), ADMIN)
    for event in finished_task():
        await stores.tasks.record(event)
    await stores.webhooks.delete(sub.id, ADMIN)
    async with stores.db.read() as conn:
        assert await conn.scalar(sa.select(sa.func.count()).select_from(webhook_deliveries)) == 0
    with pytest.raises(WebhookNotFound):
        await stores.webhooks.deliveries(sub.id, ADMIN, limit=5)
    with pytest.raises(WebhookNotFound):
        await stores.webhooks.delete(sub.id, ADMIN)


# -- the dispatcher in-process (SQLite) ---------------------------------------------


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    started = WebhookReceiver().start()
    yield started
    started.stop()


async def dispatch(dispatcher: WebhookDispatcher, rounds: int = 1) -> None:
    async with httpx.AsyncClient(follow_redirects=False, trust_env=False) as client:
        for _ in range(rounds):
            await dispatcher.dispatch_once(client)
            await dispatcher.drain()


async def open_dispatcher(tmp_path: Path, **overrides: object) -> tuple[Stores, WebhookDispatcher]:
    config = settings(**overrides)
    s = await open_stores(f"sqlite:///{tmp_path / 'd.db'}", config)
    return s, WebhookDispatcher(s.webhooks.store, s.webhooks.recorder, config)


async def test_dispatcher_signs_and_delivers(tmp_path: Path, receiver: WebhookReceiver) -> None:
    s, dispatcher = await open_dispatcher(tmp_path)
    try:
        sub = await s.webhooks.create(NewWebhook(receiver.url, secret=SECRET), ADMIN)
        events = finished_task()
        for event in events:
            await s.tasks.record(event)
        await dispatch(dispatcher)
        (got,) = receiver.received
        assert got.webhook_id == str(events[2].id)
        assert verify(SECRET, got.headers, got.body)
        assert got.json()["status"] == "succeeded"
        ((delivery, attempts),) = await s.webhooks.deliveries(sub.id, ADMIN, limit=5)
        assert delivery.status is DeliveryStatus.delivered
        assert [a.status_code for a in attempts] == [200]
    finally:
        await s.db.close()


async def test_send_time_guard_refuses_private_targets(
    tmp_path: Path, receiver: WebhookReceiver
) -> None:
    s, dispatcher = await open_dispatcher(tmp_path, webhooks_allow_private=False)
    try:
        with pytest.raises(InvalidInput, match="loopback/private targets are refused"):
            await s.webhooks.create(NewWebhook(receiver.url), ADMIN)
        # a row that got past the first check (say, DNS changed since) is refused at send time
        sub = Subscription(uuid.uuid4(), receiver.url, ("task.done",), None, SECRET)
        await s.webhooks.store.create(sub)
        s.webhooks.recorder.invalidate()
        for event in finished_task():
            await s.tasks.record(event)
        await dispatch(dispatcher)
        assert receiver.received == []
        ((delivery, attempts),) = await s.webhooks.deliveries(sub.id, ADMIN, limit=5)
        assert delivery.status is DeliveryStatus.pending
        assert attempts[0].status_code is None
        assert "refused" in (attempts[0].error or "")
    finally:
        await s.db.close()


async def test_failing_receiver_is_retried_then_disabled_with_a_reason(
    tmp_path: Path, receiver: WebhookReceiver
) -> None:
    receiver.responder = lambda _request: (500, 0.0)
    s, dispatcher = await open_dispatcher(
        tmp_path, webhook_retry_hours=0.5 / 3600, webhook_disable_after=3
    )
    try:
        sub = await s.webhooks.create(NewWebhook(receiver.url), ADMIN)
        for event in finished_task():
            await s.tasks.record(event)
        for _ in range(200):  # bounded: the retry period is half a second
            await dispatch(dispatcher)
            if not (await s.webhooks.get(sub.id, ADMIN)).enabled:
                break
            await asyncio.sleep(0.02)
        disabled = await s.webhooks.get(sub.id, ADMIN)
        assert not disabled.enabled
        assert "consecutive failed attempts" in (disabled.disabled_reason or "")
        ((delivery, attempts),) = await s.webhooks.deliveries(sub.id, ADMIN, limit=5)
        assert delivery.status is DeliveryStatus.failed
        assert len(attempts) >= 3
        assert {a.status_code for a in attempts} == {500}
        assert len({r.webhook_id for r in receiver.received}) == 1  # one event id throughout
    finally:
        await s.db.close()
