"""Drain N tasks while workers, PostgreSQL and nats-server are killed; count what survived.

    .venv/bin/python bench/chaos.py --tasks 10000 --transport db|nats|both
        [--workers 3] [--concurrency 4] [--lease 3] [--max-attempts 10]
        [--gap 8] [--kill-every 3] [--seconds S] [--drain-timeout 900] [--seed 1]
        [--keep DIR] [--json FILE]

Everything is throwaway (PostgreSQL, nats-server, the flowyard server and its
workers, in a temporary folder, or ``--keep DIR`` to keep the logs). For each
transport: N ``debug.sleep`` tasks are queued, then, ``--gap`` seconds apart,
PostgreSQL is restarted (fast shutdown), nats-server restarted, PostgreSQL
SIGKILLed and nats-server restarted with its JetStream store deleted (the NATS
faults only for ``nats``), while a random worker is SIGKILLed every
``--kill-every`` seconds and replaced by a fresh one. Then nothing more is
injected and the clock runs until every task finished.

Prints, per transport: succeeded, failed, lost (not finished), finished more
than once (``task.done`` events per task in the event log), the attempts
histogram and the time to drain after the last fault. Exits 1 if any task was
lost or finished twice. See tests/support/chaos.py and docs/reliability.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import get_args

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.chaos import Chaos, ChaosConfig, ChaosResult, Transport  # noqa: E402


def run_one(config: ChaosConfig, work: Path) -> ChaosResult:
    print(f"== {config.transport}: {config.tasks} tasks", flush=True)
    with Chaos(config, work, log=lambda line: print(line, flush=True)) as chaos:
        result = chaos.run()
    print(result.report(), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--transport", choices=[*get_args(Transport), "both"], default="both")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--lease", type=float, default=3.0)
    parser.add_argument("--max-attempts", type=int, default=10)
    parser.add_argument("--gap", type=float, default=8.0, help="seconds between server faults")
    parser.add_argument("--kill-every", type=float, default=3.0, help="seconds between kills")
    parser.add_argument("--seconds", type=float, help="each task's run time (default: auto)")
    parser.add_argument("--drain-timeout", type=float, default=900.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", type=Path, help="work folder to keep (logs, data)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    transports: list[Transport] = ["db", "nats"] if args.transport == "both" else [args.transport]
    results = []
    with tempfile.TemporaryDirectory(prefix="flowyard-chaos-") as tmp:
        root = args.keep or Path(tmp)
        for transport in transports:
            config = ChaosConfig(
                transport=transport,
                tasks=args.tasks,
                workers=args.workers,
                concurrency=args.concurrency,
                lease=args.lease,
                max_attempts=args.max_attempts,
                gap=args.gap,
                kill_every=args.kill_every,
                seconds=args.seconds,
                drain_timeout=args.drain_timeout,
                seed=args.seed,
            )
            results.append(run_one(config, root / transport))
    if args.json is not None:
        figures = [
            {
                **asdict(r.config),
                "seconds_per_task": r.seconds_per_task,
                "succeeded": r.succeeded,
                "failed": r.failed,
                "lost": r.lost,
                "finished_more_than_once": r.twice,
                "attempts": dict(sorted(r.attempts.items())),
                "faults": r.faults,
                "drained_after_last_fault": r.drained_after_last_fault,
                "finished_at_last_fault": r.finished_at_last_fault,
                "total_seconds": r.total_seconds,
                "recovery": r.recovery,
            }
            for r in results
        ]
        args.json.write_text(json.dumps(figures, indent=2))
    if any(r.lost or r.twice for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
