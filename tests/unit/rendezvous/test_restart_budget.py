"""One restart budget for the job, whatever the cause (simulated nodes, MemoryStore, FakeClock).

Every restart of the worker group counts once, job-wide: a worker failure, a
lost node, a node that joins a running job. Round 0 is none. With the budget
spent, a failure or a lost node ends the job (a lost node is named as lost),
and a node that arrives at a running job waits as a spare.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from corral.core.errors import JobFailed, RendezvousClosed, RendezvousTimeout
from corral.core.model import ChangeKind, Decision
from corral.rendezvous.protocol.records import Outcome, RoundPointer

from .conftest import Job, advance, spin
from .test_dynamic import KEY, failure, join_in_order, pointer

pytestmark = pytest.mark.timeout(10)


async def test_a_second_lost_node_with_the_budget_spent_ends_the_job_naming_it(job: Job) -> None:
    for n in "abc":
        job.node(n, min_nodes=2, max_nodes=3, max_restarts=1)
    infos = await asyncio.gather(*await join_in_order(job, list("abc"), 0))
    assert {i.restart_count for i in infos} == {0}
    watches = [
        asyncio.create_task(job.nodes[n].watch_round(i))
        for n, i in zip("ab", infos[:2], strict=True)
    ]
    job.store.expire(job.nodes["c"].lease)  # c lost: restart 1 of 1
    changes = await asyncio.wait_for(asyncio.gather(*watches), 2)
    assert {(c.kind, c.new_round) for c in changes} == {(ChangeKind.MEMBER_LOST, 1)}
    a1, b1 = await asyncio.wait_for(asyncio.gather(job.nodes["a"].join(), job.nodes["b"].join()), 2)
    assert {(i.round, i.restart_count) for i in (a1, b1)} == {(1, 1)}
    wa = asyncio.create_task(job.nodes["a"].watch_round(a1))
    job.store.expire(job.nodes["b"].lease)  # b lost too: the budget is spent
    change = await asyncio.wait_for(wa, 2)
    assert change.kind is ChangeKind.JOB_ENDED
    ptr = await pointer(job)
    assert (ptr.reason, ptr.detail, ptr.restart_count) == ("job_ended", "failed", 1)
    with pytest.raises(JobFailed) as ei:
        await job.nodes["a"].join()
    root = ei.value.root_cause
    assert root is not None and root.lost and root.node_id == "b"
    assert (root.group_rank, root.round, root.exit_code) == (1, 1, 1)
    assert root.message is not None and "node 1 (b, 127.0.0.1, node id b) was lost" in root.message
    assert "failed in round 1: node 1 (b, 127.0.0.1, node id b) was lost" in str(ei.value)
    assert ei.value.exit_code == 1
    out = await job.store.get(KEY + "outcome")
    assert out is not None and Outcome.from_json(out.value).root_cause == root


async def test_a_lost_node_with_max_restarts_0_fails_the_job_at_once(job: Job) -> None:
    for n in "ab":
        job.node(n, min_nodes=1, max_nodes=2, max_restarts=0)
    ia, _ib = await asyncio.gather(*await join_in_order(job, ["a", "b"], 0))
    wa = asyncio.create_task(job.nodes["a"].watch_round(ia))
    job.store.expire(job.nodes["b"].lease)
    assert (await asyncio.wait_for(wa, 2)).kind is ChangeKind.JOB_ENDED
    out = await job.nodes["a"].outcome()
    assert out is not None and not out.succeeded
    assert out.root_cause is not None and out.root_cause.lost and out.root_cause.node_id == "b"


async def test_status_and_the_root_cause_name_the_lost_node(job: Job) -> None:
    from corral.agent.agent import _summary
    from corral.core.render import render_root_cause
    from corral.status import read_status, render

    for n in "ab":
        job.node(n, min_nodes=1, max_nodes=2, max_restarts=0)
    ia, _ib = await asyncio.gather(*await join_in_order(job, ["a", "b"], 0))
    running = render(await read_status(job.store, run_id="job", prefix="/corral", label="mem"))
    assert "state: RUNNING round 0 (started by start); restarts 0/0" in running, running
    wa = asyncio.create_task(job.nodes["a"].watch_round(ia))
    job.store.expire(job.nodes["b"].lease)
    await asyncio.wait_for(wa, 2)
    text = render(await read_status(job.store, run_id="job", prefix="/corral", label="mem"))
    assert "state: FAILED in round 0 (exit code 1); restarts 0/0" in text, text
    assert "root cause: node 1 (b, 127.0.0.1, node id b) was lost in round 0" in text, text
    out = await job.nodes["a"].outcome()
    assert out is not None and out.root_cause is not None
    block = render_root_cause(out.root_cause, 1)
    assert block == f"corral: {out.root_cause.message}" and "worker rank" not in block
    assert _summary(out.root_cause) == f"job failed: {out.root_cause.message}"


async def test_a_node_arriving_with_the_budget_spent_waits_as_a_spare(
    job: Job, caplog: pytest.LogCaptureFixture
) -> None:
    for n in "abc":
        job.node(n, min_nodes=2, max_nodes=3, max_restarts=1)
    tasks = await join_in_order(job, ["a", "b"], 0)
    await advance(job.clock, 31)  # below max: the last call closes round 0
    _ia, ib = await asyncio.gather(*tasks)
    # a failure spends the budget of 1
    assert await job.nodes["b"].report_failure(ib, [failure("b", 2)]) == (Decision.RESTART, None)
    a1, b1 = await asyncio.wait_for(asyncio.gather(job.nodes["a"].join(), job.nodes["b"].join()), 2)
    assert {(i.round, i.restart_count) for i in (a1, b1)} == {(1, 1)}
    wa = asyncio.create_task(job.nodes["a"].watch_round(a1))
    before = await pointer(job)
    caplog.set_level(logging.INFO, logger="corral.rendezvous.dynamic")
    c_join = asyncio.create_task(job.nodes["c"].join())
    await job.until(lambda: job.has_key(KEY + "waiting/c"))
    await spin()
    # a (rank 0, below max) saw c wait and did not restart for it
    assert not wa.done() and not c_join.done()
    assert await pointer(job) == before
    spare = [r.getMessage() for r in caplog.records if "spare" in r.getMessage()]
    assert len(spare) == 1 and "budget is spent (1/1 restarts)" in spare[0], spare
    admitted = [r.getMessage() for r in caplog.records if "not admitted" in r.getMessage()]
    assert any("node c" in msg for msg in admitted), admitted
    # a spare waits as long as the job runs: no join_timeout (600 s here)
    await advance(job.clock, 700, step=5)
    assert not c_join.done() and not wa.done()
    assert await job.has_key(KEY + "waiting/c")
    # the job ends well: the spare ends with it (RendezvousClosed: the agent exits 0)
    wa.cancel()
    sa = asyncio.create_task(job.nodes["a"].report_success(a1))
    assert await asyncio.wait_for(job.nodes["b"].report_success(b1), 2) is None
    assert await asyncio.wait_for(sa, 2) is None
    with pytest.raises(RendezvousClosed):
        await asyncio.wait_for(c_join, 2)


async def test_every_node_counts_with_the_jobs_budget_whatever_its_own(
    job: Job, caplog: pytest.LogCaptureFixture
) -> None:
    # a started the job with --max-restarts 1; b and c were given 2. The budget is the
    # job's (the first pointer's): after one restart b's next failure ends the job, and c,
    # arriving then, waits as a spare, though each of them alone would have gone on.
    caplog.set_level(logging.INFO, logger="corral.rendezvous.dynamic")
    job.node("a", min_nodes=2, max_nodes=3, max_restarts=1)
    for n in "bc":
        job.node(n, min_nodes=2, max_nodes=3, max_restarts=2)
    tasks = await join_in_order(job, ["a", "b"], 0)
    await advance(job.clock, 31)  # below max: the last call closes round 0
    _ia, ib = await asyncio.gather(*tasks)
    assert ib.max_restarts == 1 and ib.restarts_allowed(2) == 1
    warned = [r.getMessage() for r in caplog.records if "--max-restarts is" in r.getMessage()]
    assert warned == [
        "--max-restarts is 2 on this node but 1 for the job (given to the node that "
        "started it): this node counts with the job's"
    ]
    assert await job.nodes["b"].report_failure(ib, [failure("b", 2)]) == (Decision.RESTART, None)
    a1, b1 = await asyncio.wait_for(asyncio.gather(job.nodes["a"].join(), job.nodes["b"].join()), 2)
    assert {(i.round, i.restart_count, i.max_restarts) for i in (a1, b1)} == {(1, 1, 1)}
    wa = asyncio.create_task(job.nodes["a"].watch_round(a1))
    c_join = asyncio.create_task(job.nodes["c"].join())
    await job.until(lambda: job.has_key(KEY + "waiting/c"))
    await spin()
    assert not wa.done() and not c_join.done()  # c is a spare: the job's budget is spent
    spare = [r.getMessage() for r in caplog.records if "spare" in r.getMessage()]
    assert len(spare) == 1 and "budget is spent (1/1 restarts)" in spare[0], spare
    # b's second failure: with the job's budget spent, the job fails (b's own 2 is not used)
    decision, root = await job.nodes["b"].report_failure(b1, [failure("b", 2)])
    assert decision is Decision.FAIL and root is not None and root.node_id == "b"
    assert (await asyncio.wait_for(wa, 2)).kind is ChangeKind.JOB_ENDED
    with pytest.raises(JobFailed):
        await asyncio.wait_for(c_join, 2)  # the spare ends with the job


async def test_every_cause_counts_once_and_the_count_is_equal_everywhere(job: Job) -> None:
    for n in "abcd":
        job.node(n, min_nodes=2, max_nodes=3, max_restarts=5)
    infos = await asyncio.gather(*await join_in_order(job, list("abc"), 0))
    seen = [[i.restart_count for i in infos]]
    # 1: a failure (two nodes report it: still one restart)
    await asyncio.gather(
        job.nodes["b"].report_failure(infos[1], [failure("b", 2)]),
        job.nodes["c"].report_failure(infos[2], [failure("c", 4)]),
    )
    infos = await asyncio.wait_for(asyncio.gather(*(job.nodes[n].join() for n in "abc")), 2)
    seen.append([i.restart_count for i in infos])
    # 2: a lost node
    watches = [
        asyncio.create_task(job.nodes[n].watch_round(i))
        for n, i in zip("ab", infos[:2], strict=True)
    ]
    job.store.expire(job.nodes["c"].lease)
    await asyncio.wait_for(asyncio.gather(*watches), 2)
    infos = await asyncio.wait_for(asyncio.gather(*(job.nodes[n].join() for n in "ab")), 2)
    seen.append([i.restart_count for i in infos])
    # 3: a node that joins the running job
    watches = [
        asyncio.create_task(job.nodes[n].watch_round(i))
        for n, i in zip("ab", infos[:2], strict=True)
    ]
    d_join = asyncio.create_task(job.nodes["d"].join())
    changes = await asyncio.wait_for(asyncio.gather(*watches), 2)
    assert {c.kind for c in changes} == {ChangeKind.NODE_WAITING}
    infos = await asyncio.wait_for(
        asyncio.gather(job.nodes["a"].join(), job.nodes["b"].join(), d_join), 2
    )
    seen.append([i.restart_count for i in infos])
    assert seen == [[0, 0, 0], [1, 1, 1], [2, 2], [3, 3, 3]]
    assert await pointer(job) == RoundPointer(3, 3, "node_waiting", "node d waiting", 5, 0)


async def test_a_spare_that_sees_every_member_leave_with_the_budget_spent_fails_the_job(
    job: Job,
) -> None:
    for n in "abc":
        job.node(n, min_nodes=2, max_nodes=2, max_restarts=0)
    await asyncio.gather(*await join_in_order(job, ["a", "b"], 0))
    c_join = asyncio.create_task(job.nodes["c"].join())
    await job.until(lambda: job.has_key(KEY + "waiting/c"))  # full: c waits
    for n in "ab":
        job.store.expire(job.nodes[n].lease)  # every member of round 0 is lost
    with pytest.raises(JobFailed) as ei:
        await asyncio.wait_for(c_join, 2)
    root = ei.value.root_cause
    assert root is not None and root.lost and (root.node_id, root.group_rank) == ("a", 0)
    assert root.message is not None and "every member of round 0 left" in root.message
    assert (await pointer(job)).reason == "job_ended"


async def test_a_node_waiting_for_a_full_round_keeps_its_join_timeout(job: Job) -> None:
    # Not a spare: the round is at max_nodes (torch's wait list times out the same way).
    for n in "abc":
        job.node(n, min_nodes=2, max_nodes=2, max_restarts=0)
    await asyncio.gather(*await join_in_order(job, ["a", "b"], 0))
    c_join = asyncio.create_task(job.nodes["c"].join())
    await job.until(lambda: job.has_key(KEY + "waiting/c"))
    await advance(job.clock, 601, step=5)
    with pytest.raises(RendezvousTimeout):
        await asyncio.wait_for(c_join, 2)
