"""corral.launch_async(events=...): the caller's EventSink sees the job's events, typed."""

from __future__ import annotations

from dataclasses import replace

import pytest

import corral
from corral.config import LaunchConfig
from corral.core import events as t
from corral.core.errors import WorkerFailed
from tests.api import fns

pytestmark = pytest.mark.timeout(60)


async def test_a_crash_and_a_restart_reach_the_callers_sink(cfg: LaunchConfig) -> None:
    got: list[t.Event] = []
    with pytest.raises(WorkerFailed):
        await corral.launch_async(replace(cfg, max_restarts=1), fns.fail_on_rank, 1,
                                  events=got.append)  # fmt: skip
    kinds = [type(e).__name__ for e in got]
    assert kinds.count("RoundClosed") == 2 and kinds.count("WorkerStarted") == 4
    [decided] = [e for e in got if isinstance(e, t.RestartDecided)]
    assert (decided.cause, decided.restart_count, decided.max_restarts) == ("failure", 0, 1)
    failed = [e for e in got if isinstance(e, t.WorkerFailed)]
    assert [(e.round, e.rank, e.exitcode) for e in failed] == [(0, 1, 1), (1, 1, 1)]
    assert failed[0].message and "rank 1" in failed[0].message
    end = got[-1]
    assert isinstance(end, t.JobEnded) and end.outcome == "failed" and end.exit_code == 1
    assert len({e.node for e in got}) == 1
    monos = [e.mono for e in got]
    assert monos == sorted(monos)  # one node's events come in the order they happened
