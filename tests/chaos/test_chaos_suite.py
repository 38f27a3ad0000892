"""The chaos suite, small: 500 tasks per transport, each fault once (tests/support/chaos.py).

The full run is ``bench/chaos.py --tasks 10000 --transport both``; this is the
version CI runs: the same faults, fewer tasks, one worker SIGKILL. Nothing may
be lost, nothing may finish twice, and no task may run out of attempts.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.chaos import FAULTS, Chaos, ChaosConfig, Transport

pytestmark = [pytest.mark.chaos, pytest.mark.postgres, pytest.mark.e2e, pytest.mark.timeout(240)]

TASKS = 500
DRAIN_BOUND = 90.0
"""Seconds after the last fault by which every task must have finished."""


@pytest.mark.parametrize(
    "transport", ["db", pytest.param("nats", marks=pytest.mark.nats)], ids=["db", "nats"]
)
def test_every_task_finishes_exactly_once_through_every_fault(
    transport: Transport, tmp_path: Path
) -> None:
    config = ChaosConfig(
        transport=transport, tasks=TASKS, gap=4.0, kill_every=0, drain_timeout=DRAIN_BOUND
    )
    with Chaos(config, tmp_path) as chaos:
        try:
            result = chaos.run()
        finally:
            tails = chaos.group.tails()
        print(result.report())
        assert [name for _, name in result.faults] == [*FAULTS[transport], "worker-kill"]
        assert result.lost == 0, f"{result.report()}\n{tails}"
        assert result.twice == 0, result.report()
        assert result.failed == 0, result.report()
        assert result.succeeded == TASKS, result.report()
        assert result.drained_after_last_fault is not None
        assert result.drained_after_last_fault < DRAIN_BOUND
