"""``flowyard events replay``: the database log (every dialect), a real server, and JetStream.

The end-to-end test runs a mixed workload on a real default-mode server
(succeeded, failed, cancelled, and a task retried after the server was killed
under it), then replays it with the CLI: printed in order, re-delivered to a
webhook under the original ids, and rebuilt without a difference.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
import sqlalchemy as sa
from nats.js.api import StreamConfig

from flowyard.adapters.sql.database import Database
from flowyard.adapters.sql.engine import make_engine, upgrade
from flowyard.adapters.sql.schema import tasks
from flowyard.adapters.sql.task_store import SqlTaskStore
from flowyard.adapters.webhook_sender import verify
from flowyard.bus.nats.subjects import subject_for
from flowyard.core.events import (
    Event,
    FileRef,
    TaskCancelRequested,
    TaskClaimed,
    TaskCreated,
    TaskDone,
    TaskProgress,
    TaskRequeued,
    utcnow,
)
from flowyard.core.replay import EventFilter
from flowyard.services.cli.main import build_app, run_cli
from flowyard.services.event_replay import STREAM, SqlEventLog, rebuild_and_compare
from tests.support.auth import ADMIN_AUTH
from tests.support.nats import NatsServer
from tests.support.processes import (
    ManagedProcess,
    ProcessGroup,
    flowyard_command,
    wait_all_finished,
    wait_until,
)
from tests.support.webhook_receiver import WebhookReceiver

pytestmark = pytest.mark.timeout(90)


@dataclass(frozen=True)
class Ran:
    returncode: int
    stdout: str
    stderr: str


def replay_process(*args: str, env: dict[str, str] | None = None) -> Ran:
    """The real console script, as an operator runs it."""
    result = subprocess.run(
        [*flowyard_command(), "events", "replay", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        check=False,
    )
    return Ran(result.returncode, result.stdout, result.stderr)


@pytest.fixture
def replay(capsys: pytest.CaptureFixture[str]) -> Callable[..., Ran]:
    """The same command in this process (no interpreter start-up: many calls stay fast)."""
    app = build_app()

    def run(*args: str) -> Ran:
        capsys.readouterr()
        code = run_cli(app, ["events", "replay", *args])
        out = capsys.readouterr()
        return Ran(code, out.out, out.err)

    return run


def lines(result: Ran) -> list[dict[str, Any]]:
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def mixed_events() -> list[Event]:
    """Four tasks: succeeded, failed, cancelled while running, and retried after a requeue."""
    at = utcnow() - timedelta(minutes=5)
    step = iter(range(1, 1000))
    a, b, c, d = (uuid.uuid4() for _ in range(4))
    flows = {a: "debug.sleep", b: "image.blur", c: "debug.sleep", d: "debug.sleep"}

    def env(task: uuid.UUID, attempt: int = 0) -> dict[str, Any]:
        """The envelope, each event a little later than the one before."""
        later = at + timedelta(milliseconds=10 * next(step))
        return {"task_id": task, "flow": flows[task], "attempt": attempt, "at": later}

    def claim(task: uuid.UUID, attempt: int, worker: str) -> TaskClaimed:
        lease = at + timedelta(hours=1)
        return TaskClaimed(**env(task, attempt), worker_id=worker, lease_expires_at=lease)

    out = FileRef(name="output.png", path="attempts/1/outputs/output.png", size=10)
    return [
        TaskCreated(**env(a), params={"seconds": 1}),
        TaskCreated(**env(b)),
        claim(a, 1, "w1"),
        TaskProgress(**env(a, 1), progress=0.3, message="step 1"),
        claim(b, 1, "w2"),
        TaskDone(**env(b, 1), status="failed", error="boom"),
        TaskCreated(**env(c)),
        TaskDone(**env(a, 1), status="succeeded", outputs=(out,)),
        claim(c, 1, "w1"),
        TaskCancelRequested(**env(c, 1)),
        TaskDone(**env(c, 1), status="cancelled", error="cancelled"),
        TaskCreated(**env(d)),
        claim(d, 1, "w1"),
        TaskProgress(**env(d, 1), progress=0.5),
        TaskRequeued(**env(d, 1), reason="lease expired"),
        claim(d, 2, "w2"),
        TaskDone(**env(d, 2), status="succeeded"),
    ]


# -- the database log on every dialect -------------------------------------------------


@pytest.fixture
async def recorded(db_uri: str) -> AsyncIterator[tuple[Database, list[Event]]]:
    engine = make_engine(db_uri, pool_size=2)
    await upgrade(engine)
    db = Database(engine)
    events = mixed_events()
    store = SqlTaskStore(db)
    for event in events:
        await store.record(event)
    yield db, events
    await db.close()


async def read_all(log: SqlEventLog, f: EventFilter) -> list[tuple[int, Event]]:
    await log.prepare(f)
    return [entry async for entry in log.read(f)]


async def test_sql_log_reads_in_order_with_filters(recorded: tuple[Database, list[Event]]) -> None:
    db, events = recorded
    log = SqlEventLog(db, "test log")
    everything = await read_all(log, EventFilter())
    assert [e.id for _, e in everything] == [e.id for e in events]
    seqs = [seq for seq, _ in everything]
    assert seqs == sorted(seqs)

    done = await read_all(log, EventFilter(types=("task.done",)))
    assert [e.status for _, e in done] == ["failed", "succeeded", "cancelled", "succeeded"]  # type: ignore[union-attr]
    blur = await read_all(log, EventFilter(flow="image.blur"))
    assert {e.flow for _, e in blur} == {"image.blur"}
    assert len(blur) == 3
    window = await read_all(log, EventFilter(since=seqs[2], until=seqs[5]))
    assert [e.id for _, e in window] == [e.id for e in events[2:5]]
    later = await read_all(log, EventFilter(since=events[10].at))
    assert [e.id for _, e in later] == [e.id for e in events[10:]]
    one = events[11].task_id
    assert {e.task_id for _, e in await read_all(log, EventFilter(task_id=one))} == {one}


async def test_rebuild_of_a_mixed_workload_finds_no_difference_until_one_is_made(
    recorded: tuple[Database, list[Event]],
) -> None:
    db, events = recorded
    log = SqlEventLog(db, "test log")
    await log.prepare(EventFilter())
    report = await rebuild_and_compare(log, EventFilter(), db, started_at=utcnow())
    assert report.rebuilt == report.compared == 4
    assert report.clean, report.differences

    victim = events[0].task_id
    async with db.write() as tx:
        await tx.conn.execute(sa.update(tasks).where(tasks.c.id == victim).values(progress=0.25))
    await log.prepare(EventFilter())
    report = await rebuild_and_compare(log, EventFilter(), db, started_at=utcnow())
    assert report.differences == {victim: ["progress: log says 1.0, table says 0.25"]}


# -- a real server -----------------------------------------------------------------------


SERVER_ENV = {
    "FLOWYARD_WEBHOOKS_ALLOW_PRIVATE": "true",
    "FLOWYARD_WEBHOOK_BACKOFF_BASE": "0.2",
    "FLOWYARD_POLL_INTERVAL": "0.5",
}


def task_of(api: httpx.Client, task_id: str) -> dict[str, Any]:
    response = api.get(f"/api/tasks/{task_id}")
    response.raise_for_status()
    found: dict[str, Any] = response.json()
    return found


def create(api: httpx.Client, **params: Any) -> str:
    response = api.post("/api/tasks", json={"flow": "debug.sleep", "params": params})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def run_workload(group: ProcessGroup, data: Path) -> tuple[ManagedProcess, dict[str, str]]:
    """Succeeded, failed, cancelled, and retried (the server is killed while it runs)."""
    args = ["--data-dir", str(data), "--lease-seconds", "6"]
    first = group.start_server(args, SERVER_ENV, name="first")
    first.wait_healthy(60)
    with httpx.Client(auth=ADMIN_AUTH, base_url=first.url or "", timeout=10) as api:
        retried = create(api, seconds=2, steps=4)
        wait_until(lambda: task_of(api, retried)["state"] == "running", 20, "the task to run")
    first.kill()
    server = group.start_server(args, SERVER_ENV, name="second")
    server.wait_healthy(60)
    with httpx.Client(auth=ADMIN_AUTH, base_url=server.url or "", timeout=10) as api:
        ids = {
            "retried": retried,
            "succeeded": create(api, seconds=0.2, steps=2),
            "failed": create(api, seconds=0, fail="boom"),
            "cancelled": create(api, seconds=60, steps=600),
        }
        wait_until(
            lambda: task_of(api, ids["cancelled"])["state"] == "running", 20, "the long task"
        )
        assert api.post(f"/api/tasks/{ids['cancelled']}/cancel").status_code == 200
        wait_all_finished(server.url or "", 30)
        states = {kind: task_of(api, tid)["state"] for kind, tid in ids.items()}
    assert states == {
        "retried": "succeeded",
        "succeeded": "succeeded",
        "failed": "failed",
        "cancelled": "cancelled",
    }
    return server, ids


@pytest.fixture(scope="module")
def workload(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ManagedProcess, Path, dict[str, str]]]:
    root = tmp_path_factory.mktemp("replay")
    group = ProcessGroup(root / "logs")
    try:
        server, ids = run_workload(group, root / "data")
        yield server, root / "data", ids
    finally:
        group.stop_all()
        print(group.tails())


@pytest.mark.e2e
@pytest.mark.chaos
def test_replay_prints_every_event_in_log_order(
    workload: tuple[ManagedProcess, Path, dict[str, str]], replay: Callable[..., Ran]
) -> None:
    server, data, ids = workload
    printed = lines(replay_process("--data-dir", str(data)))
    assert lines(replay("--data-dir", str(data))) == printed
    with httpx.Client(auth=ADMIN_AUTH, base_url=server.url or "", timeout=10) as api:
        per_task = {
            tid: api.get(f"/api/tasks/{tid}/events").json()["items"] for tid in ids.values()
        }
    assert len(printed) == sum(len(v) for v in per_task.values())
    for task_id, expected in per_task.items():
        mine = [e for e in printed if e["task_id"] == task_id]
        assert [e["id"] for e in mine] == [e["id"] for e in expected]
    kinds = [e["type"] for e in printed if e["task_id"] == ids["retried"]]
    assert kinds[:2] == ["task.created", "task.claimed"]
    assert "task.requeued" in kinds
    assert kinds[-1] == "task.done"
    retried = [e for e in printed if e["task_id"] == ids["retried"]]
    assert [e["attempt"] for e in retried if e["type"] == "task.claimed"] == [1, 2]

    done = lines(replay("--data-dir", str(data), "--type", "task.done"))
    assert sorted(e["status"] for e in done) == ["cancelled", "failed", "succeeded", "succeeded"]
    assert [e["id"] for e in done] == [e["id"] for e in printed if e["type"] == "task.done"]
    one = lines(replay("--data-dir", str(data), "--task", ids["failed"]))
    assert {e["task_id"] for e in one} == {ids["failed"]}
    assert one[-1]["error"] == "boom"
    requeued = lines(
        replay("--data-dir", str(data), "--flow", "debug.sleep", "--type", "task.requeued")
    )
    assert [e["task_id"] for e in requeued] == [ids["retried"]]

    # SQLite numbers the log from 1 without gaps: --since inclusive, --until exclusive
    assert lines(replay("--data-dir", str(data), "--since", "3", "--until", "6")) == printed[2:5]
    moment = printed[len(printed) // 2]["at"]
    since = lines(replay("--data-dir", str(data), "--since", moment))
    assert since == [e for e in printed if e["at"] >= moment]
    until = lines(replay("--data-dir", str(data), "--until", moment))
    assert until == [e for e in printed if e["at"] < moment]


@pytest.mark.e2e
@pytest.mark.chaos
def test_replay_errors_are_one_clear_line(
    workload: tuple[ManagedProcess, Path, dict[str, str]],
    tmp_path: Path,
    replay: Callable[..., Ran],
) -> None:
    _, data, _ = workload
    d = str(data)
    cases = [
        (["--since", "99999"], "--since 99999 is past the end of the event log"),
        (["--since", "5", "--until", "5"], "--since 5 is not before --until 5"),
        (["--since", "last tuesday"], "--since: 'last tuesday' is neither a sequence number"),
        (["--task", "nope"], "--task: 'nope' is not a task id"),
        (["--task", str(uuid.uuid4())], "no events of task"),
        (["--type", "task.finished"], "unknown event type 'task.finished'"),
        (["--to", "email"], "--to: use 'print' or 'webhook:ID'"),
        (["--to", f"webhook:{uuid.uuid4()}"], "no webhook subscription has id"),
        (["--rebuild", "--since", "3"], "--rebuild folds every event of each task"),
    ]
    for args, message in cases:
        result = replay("--data-dir", d, *args)
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        assert result.stderr.startswith("error: "), (args, result.stderr)
        assert message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
    missing = replay("--data-dir", str(tmp_path / "nowhere"))
    assert missing.returncode == 1
    assert "no flowyard database at" in missing.stderr
    assert not (tmp_path / "nowhere").exists()  # nothing created by mistake


@pytest.mark.e2e
@pytest.mark.chaos
def test_replay_redelivers_to_a_webhook_under_the_original_ids(
    workload: tuple[ManagedProcess, Path, dict[str, str]], replay: Callable[..., Ran]
) -> None:
    server, data, ids = workload
    receiver = WebhookReceiver().start()
    try:
        with httpx.Client(auth=ADMIN_AUTH, base_url=server.url or "", timeout=10) as api:
            sub = api.post("/api/webhooks", json={"url": receiver.url}).json()
            done = lines(replay("--data-dir", str(data), "--type", "task.done"))
            target = f"webhook:{sub['id']}"
            sent = replay_process("--data-dir", str(data), "--type", "task.done", "--to", target)
            assert sent.returncode == 0, sent.stderr
            assert "queued 4 events" in sent.stderr
            got = receiver.wait_for(lambda r: len({x.webhook_id for x in r}) >= 4, 30, "4 events")
            assert {r.webhook_id for r in got} == {e["id"] for e in done}
            assert all(verify(sub["secret"], r.headers, r.body) for r in got)
            assert {r.json()["task_id"] for r in got} == set(ids.values())

            # an event delivered already can be sent again: same id, so receivers can dedupe
            before = len(receiver.received)
            again = replay(
                "--data-dir", str(data), "--task", ids["failed"], "--type", "task.done",
                "--to", f"webhook:{sub['id']}",
            )  # fmt: skip
            assert again.returncode == 0, again.stderr
            more = receiver.wait_for(lambda r: len(r) > before, 30, "the re-delivery")[before:]
            (failed_done,) = [e for e in done if e["task_id"] == ids["failed"]]
            assert {r.webhook_id for r in more} == {failed_done["id"]}
            api.delete(f"/api/webhooks/{sub['id']}")
    finally:
        receiver.stop()


@pytest.mark.e2e
@pytest.mark.chaos
def test_rebuild_reports_no_difference_then_the_one_we_make(
    workload: tuple[ManagedProcess, Path, dict[str, str]], replay: Callable[..., Ran]
) -> None:
    _, data, ids = workload
    clean = replay("--data-dir", str(data), "--rebuild")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "rebuilt 4 tasks" in clean.stderr
    assert "no differences" in clean.stderr
    assert clean.stdout == ""

    victim = uuid.UUID(ids["succeeded"])
    with sqlite3.connect(data / "flowyard.db") as conn:
        conn.execute("UPDATE tasks SET error = 'tampered' WHERE id = ?", (victim.hex,))
    try:
        dirty = replay("--data-dir", str(data), "--rebuild")
        assert dirty.returncode == 1
        assert dirty.stdout.splitlines() == [
            f"task {victim}: error: log says None, table says 'tampered'"
        ]
        assert "1 tasks differ" in dirty.stderr
        scoped = replay("--data-dir", str(data), "--rebuild", "--task", ids["failed"])
        assert scoped.returncode == 0, scoped.stdout + scoped.stderr
    finally:
        with sqlite3.connect(data / "flowyard.db") as conn:
            conn.execute("UPDATE tasks SET error = NULL WHERE id = ?", (victim.hex,))


# -- JetStream ------------------------------------------------------------------------------


async def publish(url: str, events: list[Event]) -> None:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name=STREAM, subjects=["flowyard.events.>"]))
        for event in events:
            headers = {"Nats-Msg-Id": str(event.id)}
            ack = await js.publish(subject_for(event), event.to_json().encode(), headers=headers)
            assert not ack.duplicate
    finally:
        await nc.close()


async def record(uri: str, events: list[Event]) -> None:
    engine = make_engine(uri)
    await upgrade(engine)
    db = Database(engine)
    try:
        for event in events:
            await SqlTaskStore(db).record(event)
    finally:
        await db.close()


async def delete_stream(url: str) -> None:
    nc = await nats.connect(url)
    try:
        await nc.jetstream().delete_stream(STREAM)
    finally:
        await nc.close()


@pytest.mark.nats
def test_replay_reads_the_jetstream_event_stream(
    nats_server_private: NatsServer, tmp_path: Path, replay: Callable[..., Ran]
) -> None:
    events = mixed_events()
    url = nats_server_private.url
    asyncio.run(publish(url, events))
    # the same history in a database, so --rebuild can compare with a task table
    asyncio.run(record(f"sqlite:///{tmp_path / 'flowyard.db'}", events))

    everything = lines(replay_process(env={"FLOWYARD_NATS_URL": url}))
    assert [e["id"] for e in everything] == [str(e.id) for e in events]
    done = lines(replay("--nats", url, "--type", "task.done"))
    assert [e["id"] for e in done] == [str(e.id) for e in events if e.type == "task.done"]
    blur = lines(replay("--nats", url, "--flow", "image.blur"))
    assert [e["id"] for e in blur] == [str(e.id) for e in events if e.flow == "image.blur"]
    window = lines(replay("--nats", url, "--since", "3", "--until", "6"))
    assert [e["id"] for e in window] == [str(e.id) for e in events[2:5]]
    by_task = lines(replay("--nats", url, "--task", str(events[-1].task_id)))
    assert [e["id"] for e in by_task] == [
        str(e.id) for e in events if e.task_id == events[-1].task_id
    ]
    assert lines(replay("--nats", url, "--since", "1h")) == everything
    future = (utcnow() + timedelta(hours=1)).isoformat()
    assert lines(replay("--nats", url, "--since", future)) == []

    rebuilt = replay("--nats", url, "--rebuild", "--data-dir", str(tmp_path))
    assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
    assert f"rebuilt 4 tasks from JetStream stream {STREAM}" in rebuilt.stderr
    assert "no differences" in rebuilt.stderr

    for args, message in [
        (["--since", "500"], "--since 500 is past the end of JetStream stream"),
        (["--task", str(uuid.uuid4())], "no events of task"),
    ]:
        failed = replay("--nats", url, *args)
        assert failed.returncode == 1, args
        assert message in failed.stderr, failed.stderr

    asyncio.run(delete_stream(url))
    missing = replay("--nats", url)
    assert missing.returncode == 1
    assert f"has no stream {STREAM}" in missing.stderr
    unreachable = replay("--nats", "nats://127.0.0.1:1")
    assert unreachable.returncode == 1
    assert "cannot reach NATS at nats://127.0.0.1:1" in unreachable.stderr
