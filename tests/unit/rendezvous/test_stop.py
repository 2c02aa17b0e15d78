"""A job stopped by a handled signal: the stopped outcome, the watch, leave (docs/schedulers.md)."""

from __future__ import annotations

import asyncio
import signal

import pytest

from corral.core.errors import JobStopped
from corral.core.model import ChangeKind, RoundInfo
from corral.rendezvous.protocol.records import Outcome

from .conftest import Job
from .test_dynamic import failure, join_in_order, pointer

pytestmark = pytest.mark.timeout(10)


async def form(job: Job, names: str, lo: int, hi: int, restarts: int = 3) -> list[RoundInfo]:
    for n in names:
        job.node(n, min_nodes=lo, max_nodes=hi, max_restarts=restarts)
    tasks = await join_in_order(job, list(names), 0)
    return list(await asyncio.wait_for(asyncio.gather(*tasks), 5))


def test_outcome_record_round_trips_and_reads_old_records() -> None:
    out = Outcome("stopped", 3, None, 143, signal=signal.SIGTERM, node="gpu007")
    back = Outcome.from_json(out.to_json())
    assert back == out and back.stopped and not back.succeeded
    assert back.stop_text == "stopped by SIGTERM on node gpu007"
    old = b'{"version":1,"status":"failed","round":1,"root_cause":null,"exit_code":3}'
    assert Outcome.from_json(old) == Outcome("failed", 1, None, 3)


async def test_stop_reaches_every_watch_with_the_signal_and_counts_no_restart(job: Job) -> None:
    infos = await form(job, "abc", 3, 3)
    watches = [
        asyncio.create_task(job.nodes[n].watch_round(i))
        for n, i in zip("ab", infos[:2], strict=True)
    ]
    out = await job.nodes["c"].report_stop(signal.SIGTERM, "host-c")
    assert (out.status, out.exit_code, out.signal, out.node) == ("stopped", 143, 15, "host-c")
    changes = await asyncio.wait_for(asyncio.gather(*watches), 2)
    for ch in changes:
        assert ch.kind is ChangeKind.JOB_ENDED
        assert ch.stop_signal == signal.SIGTERM
        assert ch.detail == "stopped by SIGTERM on node host-c"
    ptr = await pointer(job)
    assert (ptr.reason, ptr.detail, ptr.restart_count) == ("job_ended", "stopped", 0)
    # whoever comes later (a join, a failure report) is told the same
    with pytest.raises(JobStopped, match="job stopped by SIGTERM on node host-c") as ei:
        await job.nodes["a"].join()
    assert ei.value.signum == signal.SIGTERM
    with pytest.raises(JobStopped):
        await job.nodes["b"].report_failure(infos[1], [failure("b", 1)])


async def test_the_first_outcome_wins(job: Job) -> None:
    await form(job, "ab", 2, 2)
    first = await job.nodes["a"].report_stop(signal.SIGUSR1, "host-a")
    second = await job.nodes["b"].report_stop(signal.SIGTERM, "host-b")
    assert second == first and first.signal == signal.SIGUSR1


async def test_leave_is_a_scale_down_the_others_go_on(job: Job) -> None:
    infos = await form(job, "abc", 2, 3)
    watches = [
        asyncio.create_task(job.nodes[n].watch_round(i))
        for n, i in zip("ab", infos[:2], strict=True)
    ]
    assert await job.nodes["c"].leave(infos[2], signal.SIGTERM, "host-c") is None
    changes = await asyncio.wait_for(asyncio.gather(*watches), 2)
    assert {(c.kind, c.new_round, c.stop_signal) for c in changes} == {
        (ChangeKind.MEMBER_LOST, 1, 0)
    }
    assert {c.detail for c in changes} == {"node host-c left on SIGTERM"}
    new = await asyncio.wait_for(asyncio.gather(*(job.nodes[n].join() for n in "ab")), 5)
    assert [(i.round, i.group_world_size) for i in new] == [(1, 2), (1, 2)]
    assert {i.restart_count for i in new} == {1}  # a scale-down: one restart, counted


async def test_leave_below_min_stops_the_job(job: Job) -> None:
    infos = await form(job, "abc", 3, 3)  # MIN == MAX: any leave is below MIN
    out = await job.nodes["c"].leave(infos[2], signal.SIGTERM, "host-c")
    assert out is not None and out.stopped and out.node == "host-c"
    assert (await pointer(job)).detail == "stopped"


async def test_two_leaving_at_once_cannot_both_scale_down_below_min(job: Job) -> None:
    infos = await form(job, "abc", 2, 3)
    outs = await asyncio.gather(
        job.nodes["b"].leave(infos[1], signal.SIGTERM, "host-b"),
        job.nodes["c"].leave(infos[2], signal.SIGTERM, "host-c"),
    )
    assert sum(o is not None and o.stopped for o in outs) >= 1, outs
    assert (await pointer(job)).reason == "job_ended"


async def test_leave_with_no_restart_left_stops_the_job(job: Job) -> None:
    infos = await form(job, "abc", 2, 3, restarts=0)
    out = await job.nodes["c"].leave(infos[2], signal.SIGTERM, "host-c")
    assert out is not None and out.stopped


async def test_status_reads_a_stopped_job(job: Job) -> None:
    from corral.status import read_status, render

    await form(job, "ab", 2, 2)
    await job.nodes["b"].report_stop(signal.SIGTERM, "gpu007")
    st = await read_status(job.store, run_id="job", prefix="/corral", label="memory")
    text = render(st)
    assert "state: STOPPED in round 0, stopped by SIGTERM on node gpu007 (exit code 143)" in text


async def test_a_stop_ends_a_rendezvous_that_waits_for_nodes(job: Job) -> None:
    for n in "abc":
        job.node(n, min_nodes=3, max_nodes=3)
    joins = await join_in_order(job, ["a", "b"], 0)  # the closer (a), a follower (b)
    await job.nodes["c"].report_stop(signal.SIGTERM, "host-c")  # c got it before joining
    with pytest.raises(JobStopped, match="on node host-c"):
        await asyncio.wait_for(joins[0], 2)  # the closer watches the round pointer
    await job.nodes["a"].close()  # its agent exits: the follower takes over, and learns
    with pytest.raises(JobStopped, match="on node host-c"):
        await asyncio.wait_for(joins[1], 2)
