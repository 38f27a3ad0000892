"""taskiq-nats's half of ``bench/nats_queue.py``: run under ``bench/.venv-peers/bin/python``.

    bench/.venv-peers/bin/python bench/peers/taskiq_peer.py --nats nats://127.0.0.1:… \
        [--tasks 2000] [--workers 4] [--concurrency 4] [--drains 1] [--samples 40]
        [--results objectstore|none] [--nats-pid PID]

taskiq's documented worker, ``taskiq worker taskiq_app:broker --workers W
--max-async-tasks C`` (acks when the result is saved, taskiq's default), on
taskiq-nats's ``PullBasedJetStreamBroker`` (its defaults: one message a pull,
no pull timeout; a batch above 1 needs a timeout, since a pull without one
waits until the batch is full, and that timeout then delays idle pick-ups)
with taskiq-nats's ``NATSObjectStoreResultBackend`` (``--results none``: no
result backend), and a no-op task (``taskiq_app.py``).

With the workers idle it first kicks ``--samples`` jobs one at a time:
kick-to-start is the time taken before ``.kiq()`` to the task's first line,
kick-to-done the same to just after its result was saved (the ack follows).
Then each drain kicks ``--tasks`` jobs (64 publishes in flight, each awaiting
its PubAck, as the bare loop does) and times from the first kick until the
consumer's ack floor reaches the last one. CPU per job: the taskiq worker
processes, this kicker, and the nats-server (``--nats-pid``). The last line
is ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent


def cpu_seconds(pids: list[int], *, children: bool = False) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            process = psutil.Process(pid)
            for p in [process, *(process.children(recursive=True) if children else [])]:
                with contextlib.suppress(psutil.Error):
                    times = p.cpu_times()
                    total += times.user + times.system
    return total


async def wait_ready(js: object, stream: str, durable: str, workers: int, limit: float) -> None:
    """Until every worker process has a pull request waiting on the consumer."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            info = await js.consumer_info(stream, durable)  # type: ignore[attr-defined]
            if (info.num_waiting or 0) >= workers:
                return
        await asyncio.sleep(0.1)
    raise TimeoutError(f"taskiq workers not pulling after {limit:.0f}s")


async def wait_acked(js: object, stream: str, durable: str, last: int, limit: float) -> float:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        info = await js.consumer_info(stream, durable)  # type: ignore[attr-defined]
        if info.ack_floor is not None and (info.ack_floor.stream_seq or 0) >= last:
            return time.monotonic()
        await asyncio.sleep(0.02)
    raise TimeoutError(f"taskiq jobs not all acked after {limit:.0f}s")


async def kick(task: object, slots: asyncio.Semaphore) -> None:
    async with slots:
        await task.kiq()  # type: ignore[attr-defined]


async def measure(args: argparse.Namespace, worker_pid: int) -> dict[str, object]:
    import taskiq_app

    broker, noop = taskiq_app.broker, taskiq_app.noop
    await broker.startup()
    stream, durable = broker.stream_config.name or broker.stream_name, broker.durable
    js = broker.client.jetstream()
    await wait_ready(js, stream, durable, args.workers, 120)

    reports: asyncio.Queue[dict[str, float]] = asyncio.Queue()

    async def on_report(msg: object) -> None:
        await reports.put(json.loads(msg.data))  # type: ignore[attr-defined]

    await broker.client.subscribe(taskiq_app.REPORT, cb=on_report)
    to_start: list[float] = []
    to_done: list[float] = []
    for _ in range(args.samples):
        sent = time.time()
        await noop.kiq(sent=sent, report=True)
        seen: dict[str, float] = {}
        while "done" not in seen:
            body = await asyncio.wait_for(reports.get(), 10)
            if body["sent"] == sent:
                seen[str(body["kind"])] = float(body["at"])
        if "start" in seen:
            to_start.append((seen["start"] - sent) * 1000)
        to_done.append((seen["done"] - sent) * 1000)
        await asyncio.sleep(0.25)  # the workers go idle again

    drains = []
    for _ in range(args.drains):
        slots = asyncio.Semaphore(64)
        servers = [args.nats_pid] if args.nats_pid else []
        before = cpu_seconds([worker_pid], children=True), time.process_time()
        before_server = cpu_seconds(servers)
        started = time.monotonic()
        await asyncio.gather(*(kick(noop, slots) for _ in range(args.tasks)))
        last = (await js.stream_info(stream)).state.last_seq
        finished = await wait_acked(js, stream, durable, last, 300)
        workers = cpu_seconds([worker_pid], children=True) - before[0]
        kicker = time.process_time() - before[1]
        server = cpu_seconds(servers) - before_server
        drains.append(
            {
                "rate": args.tasks / (finished - started),
                "client_ms": workers / args.tasks * 1000,
                "kicker_ms": kicker / args.tasks * 1000,
                "server_ms": server / args.tasks * 1000,
            }
        )
    await broker.shutdown()
    return {"drains": drains, "to_start_ms": to_start, "to_done_ms": to_done}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nats", required=True, help="nats:// URL")
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=4, help="taskiq worker --workers")
    parser.add_argument("--concurrency", type=int, default=4, help="--max-async-tasks")
    parser.add_argument("--drains", type=int, default=1)
    parser.add_argument("--samples", type=int, default=40, help="one-at-a-time jobs")
    parser.add_argument(
        "--fetch", type=int, default=1, help="pull_consume_batch (1, taskiq-nats's default)"
    )
    parser.add_argument("--results", choices=["objectstore", "none"], default="objectstore")
    parser.add_argument("--nats-pid", type=int, help="the nats-server's pid (for its CPU)")
    args = parser.parse_args()

    tag = uuid.uuid4().hex[:8]
    os.environ.update(
        BENCH_NATS_URL=args.nats,
        BENCH_TAG=tag,
        BENCH_FETCH=str(args.fetch),
        BENCH_RESULTS=args.results,
    )
    sys.path.insert(0, str(HERE))
    taskiq = Path(sys.executable).parent / "taskiq"
    with tempfile.TemporaryFile() as log:
        workers = subprocess.Popen(
            [
                str(taskiq), "worker", "taskiq_app:broker", "--app-dir", str(HERE),
                "--workers", str(args.workers), "--max-async-tasks", str(args.concurrency),
                "--log-level", os.environ.get("BENCH_TASKIQ_LOG", "WARNING"),
            ],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            process_group=0,
        )  # fmt: skip
        try:
            result = asyncio.run(measure(args, workers.pid))
        except BaseException:
            log.seek(0)
            sys.stderr.write(log.read().decode(errors="replace")[-4000:])
            raise
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(workers.pid, signal.SIGTERM)
            try:
                workers.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(workers.pid, signal.SIGKILL)
                workers.wait(10)
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
