"""What one task create costs the creating process, back to back and after a pause.

    .venv/bin/python bench/create_cost.py [--creates 300] [--pauses 0,0.001,0.02,0.1]
                                          [--db postgresql://…]

On a throwaway PostgreSQL (unless ``--db``), with no worker listening, it records
``--creates`` tasks one at a time through the store the server uses
(``SqlTaskStore.record``: the task row, its ``task.created`` event and the NOTIFY
in one transaction) and prints, for each pause between two creates, the median
wall time and the creating process's CPU time of one create. Idle create-to-claim
is mostly this create (``docs/performance.md``), and a process that slept costs
more CPU for the same statements (cold caches on this kind of host), which is
what the pauses show. A tool for that bound, not a benchmark with a peer.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.text_batching import database  # noqa: E402
from flowyard.core.events import TaskCreated  # noqa: E402
from tests.support.task_db import open_store  # noqa: E402

WARMUP = 50


async def measure(uri: str, creates: int, pause: float) -> tuple[float, float]:
    """Median wall and CPU milliseconds of one create, ``pause`` seconds after the last."""
    wall: list[float] = []
    cpu: list[float] = []
    async with open_store(uri) as store:
        for i in range(WARMUP + creates):
            event = TaskCreated(
                task_id=uuid.uuid4(), flow="debug.sleep", params={"seconds": 0.0, "steps": 1}
            )
            started, used = time.perf_counter(), time.process_time()
            await store.record(event)
            if i >= WARMUP:
                wall.append((time.perf_counter() - started) * 1000)
                cpu.append((time.process_time() - used) * 1000)
            if pause:
                await asyncio.sleep(pause)
    return statistics.median(wall), statistics.median(cpu)


def run(uri: str, args: argparse.Namespace) -> None:
    for pause in args.pauses:
        wall, cpu = asyncio.run(measure(uri, args.creates, pause))
        print(f"pause {pause * 1000:6.1f} ms: create p50 {wall:.2f} ms wall, {cpu:.2f} ms CPU")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--creates", type=int, default=300)
    parser.add_argument(
        "--pauses",
        type=lambda text: [float(x) for x in text.split(",")],
        default=[0.0, 0.001, 0.02, 0.1],
        help="seconds between two creates, comma-separated",
    )
    parser.add_argument("--db", help="a PostgreSQL URI (default: a throwaway cluster)")
    args = parser.parse_args()
    with database(args.db) as uri:
        print(f"PostgreSQL {uri}: {args.creates} creates per pause")
        run(uri, args)


if __name__ == "__main__":
    main()
