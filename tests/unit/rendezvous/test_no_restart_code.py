"""``--no-restart-exit-code``: the job-wide root cause decides, with the job's code (MemoryStore).

When the root cause of a round's failures (the earliest report by create
revision, the same record on every node) is a worker that exited with the
code, the job ends without a restart, whatever the budget. The code is the
one the first round pointer records (the node that started the job), as
``--max-restarts`` is: every node decides alike.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

import pytest

from corral.core.errors import JobFailed
from corral.core.keys import Keys
from corral.core.model import ChangeKind, Decision
from corral.rendezvous import protocol as m
from corral.rendezvous.protocol.records import RoundPointer

from .conftest import Job, advance
from .test_dynamic import failure, join_in_order, pointer

pytestmark = pytest.mark.timeout(10)

HANG = replace(failure("a", 0, 124), hang=True)
LOST = replace(failure("a", 0, 42), lost=True)


@pytest.mark.parametrize(
    ("root", "code", "ends"),
    [
        (failure("a", 0, 42), 42, True),
        (failure("a", 0, 42), 0, False),  # the option unset
        (failure("a", 0, 7), 42, False),
        (failure("a", 0, -9), 247, False),  # a signal is no exit code
        (HANG, 124, False),  # a hang is the launcher's verdict, not the worker's exit
        (LOST, 42, False),  # a whole node lost
        (None, 42, False),
    ],
)
def test_ends_without_restart(root: object, code: int, ends: bool) -> None:
    assert m.ends_without_restart(root, code) is ends  # type: ignore[arg-type]


def test_the_pointer_carries_the_code_from_round_to_round() -> None:
    first = RoundPointer(0, max_restarts=3, no_restart_code=42)
    nxt = m.next_pointer(first, "failure", "x")
    assert (nxt.round, nxt.restart_count, nxt.no_restart_code) == (1, 1, 42)
    assert m.end_pointer(nxt, "failed").no_restart_code == 42
    assert RoundPointer.from_json(nxt.to_json()) == nxt
    old = b'{"version":1,"round":2,"restart_count":1,"reason":"failure","detail":""}'
    assert RoundPointer.from_json(old).no_restart_code == -1  # not recorded: a node's own


async def _round0(job: Job, a_code: int, b_code: int) -> tuple[object, object]:
    job.node("a", min_nodes=2, max_nodes=2, max_restarts=3, no_restart_code=a_code)
    job.node("b", min_nodes=2, max_nodes=2, max_restarts=3, no_restart_code=b_code)
    tasks = await join_in_order(job, ["a", "b"], 0)
    await advance(job.clock, 1)
    ia, ib = await asyncio.wait_for(asyncio.gather(*tasks), 2)
    return ia, ib


async def test_the_code_as_root_cause_ends_the_job_on_every_node_with_the_jobs_code(
    job: Job, caplog: pytest.LogCaptureFixture
) -> None:
    # a started the job with --no-restart-exit-code 42; b was given none: the job's wins
    caplog.set_level(logging.INFO, logger="corral.rendezvous.dynamic")
    ia, ib = await _round0(job, 42, 0)
    assert any("--no-restart-exit-code is unset on this node but 42" in r.getMessage()
               for r in caplog.records)  # fmt: skip
    wa = asyncio.create_task(job.nodes["a"].watch_round(ia))  # type: ignore[arg-type]
    decision, root = await job.nodes["b"].report_failure(ib, [failure("b", 2, 42)])  # type: ignore[arg-type]
    assert decision is Decision.FAIL and root is not None
    assert (root.node_id, root.rank, root.exit_code) == ("b", 2, 42)
    assert (await asyncio.wait_for(wa, 2)).kind is ChangeKind.JOB_ENDED
    ptr = await pointer(job)
    assert (ptr.reason, ptr.detail, ptr.restart_count) == ("job_ended", "failed", 0)
    with pytest.raises(JobFailed) as ei:
        await job.nodes["a"].join()
    assert ei.value.exit_code == 42 and ei.value.root_cause == root
    assert "rank 2 on b (exit 42)" in str(ei.value)
    said = [r.getMessage() for r in caplog.records if "--no-restart-exit-code)" in r.getMessage()]
    assert said == [
        "round 0: worker rank 2 exited with 42 (--no-restart-exit-code): "
        "the job ends without a restart"
    ]


async def test_another_code_restarts(job: Job) -> None:
    _ia, ib = await _round0(job, 42, 42)
    decision, root = await job.nodes["b"].report_failure(ib, [failure("b", 2, 7)])  # type: ignore[arg-type]
    assert (decision, root) == (Decision.RESTART, None)
    assert (await pointer(job)).restart_count == 1


async def test_the_root_cause_decides_not_the_local_failure(job: Job) -> None:
    # a's worker failed first (exit 7: its report is in the store first); b's exited 42
    # after it. The root cause is a's: the job restarts, on b's report too.
    _ia, ib = await _round0(job, 42, 42)
    key = Keys("/corral", "job").failure(0, "a", 0)
    await job.store.put(key, failure("a", 0, 7).to_json())
    decision, _ = await job.nodes["b"].report_failure(ib, [failure("b", 2, 42)])  # type: ignore[arg-type]
    assert decision is Decision.RESTART
    assert (await pointer(job)).restart_count == 1
