"""Self-fencing: a node that cannot renew its lease for its TTL counts itself dropped.

The membership timeout is the lease TTL, keep_alive_interval x keep_alive_max_attempt
(5 s x 3 = 15 s here, torch's defaults). Nodes over a MemoryStore on a FakeClock;
a store the node cannot reach is ``fail_next`` (every request fails, open watches
stay silent, as in a partition).
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest
from tests.unit.rendezvous.conftest import CONF, STORE, Job, advance, spin

from corral.core.aio import task_scope
from corral.core.clock import FakeClock
from corral.core.errors import RendezvousTimeout
from corral.core.failures import FailureReport
from corral.core.model import ChangeKind, Decision, NodeDesc, RoundInfo
from corral.rendezvous.dynamic import DynamicRendezvous
from corral.rendezvous.protocol.records import RoundPointer
from corral.store.memory import MemoryStore

pytestmark = pytest.mark.timeout(10)


async def pointer(job: Job) -> RoundPointer:
    kv = await job.store.get("/corral/job/round")
    assert kv is not None
    return RoundPointer.from_json(kv.value)


async def test_a_node_cut_from_the_store_fences_itself_at_the_ttl_and_rejoins_as_new(
    job: Job, caplog: pytest.LogCaptureFixture
) -> None:
    r = job.node("a", min_nodes=1, max_nodes=1, max_restarts=3)
    info = await r.join()
    old = r.lease
    w = asyncio.ensure_future(r.watch_round(info))
    await spin()  # its watches are open
    job.sessions["a"].fail_next(10_000)  # cut: every request fails, the watches go silent
    await advance(job.clock, 14)  # a blip shorter than the TTL: still a member
    assert not w.done()
    await advance(job.clock, 1.5)
    change = await asyncio.wait_for(w, 2)
    assert change.kind is ChangeKind.MEMBER_LOST and change.new_round is None
    assert "not renewed for 15.0 s" in caplog.text
    job.sessions["a"].fail_next(0)  # healed
    info2 = await asyncio.wait_for(r.join(), 2)
    assert r.lease != old  # a newcomer: never its old membership
    assert info2.round == 1 and info2.restart_count == 1


async def test_a_blip_shorter_than_the_ttl_changes_nothing(job: Job) -> None:
    r = job.node("a", min_nodes=1, max_nodes=1, max_restarts=3)
    info = await r.join()
    w = asyncio.ensure_future(r.watch_round(info))
    await spin()  # its watches are open
    for _ in range(3):
        job.sessions["a"].fail_next(10_000)
        await advance(job.clock, 9)
        job.sessions["a"].fail_next(0)
        await advance(job.clock, 6)  # a renewal gets through
    assert not w.done()
    assert (await pointer(job)).round == 0
    w.cancel()


async def test_a_frozen_node_fences_itself_on_resume_before_it_sends_anything(
    job: Job, caplog: pytest.LogCaptureFixture
) -> None:
    """a's agent is frozen (its own clock stands still) while 20 s pass for the job;
    when it runs again it fences itself on its clock alone, and writes nothing stale."""
    frozen = FakeClock()
    a = DynamicRendezvous(
        job.store.session(), run_id="job", node=NodeDesc("a", "127.0.0.1", 2, host="a"),
        min_nodes=1, max_nodes=2, max_restarts=3, conf=CONF, store_conf=STORE, clock=frozen,
        tasks=job.tasks,
    )  # fmt: skip
    job.nodes["a"] = a
    b = job.node("b", min_nodes=1, max_nodes=2, max_restarts=3)
    ia, ib = await asyncio.wait_for(asyncio.gather(a.join(), b.join()), 5)
    wb = asyncio.ensure_future(b.watch_round(ib))
    await advance(job.clock, 20)  # a's lease ends on the store at 15 s: b goes on without it
    change = await asyncio.wait_for(wb, 2)
    assert change.kind is ChangeKind.MEMBER_LOST and change.new_round == 1
    ib1 = await asyncio.wait_for(b.join(), 5)
    before = await pointer(job)
    frozen.advance(20)  # SIGCONT
    await spin()
    assert "node a: lease 1 not renewed for 20.0 s" in caplog.text
    assert (
        "keep-alive of lease 1" not in caplog.text and "lease 1 of node a ended" not in caplog.text
    )
    decision, cause = await a.report_failure(ia, [stale(ia)])  # its stale worker failed
    assert (decision, cause) == (Decision.RESTART, None)
    assert (await job.store.range("/corral/job/r/0/failures/"))[0] == []
    assert await pointer(job) == before
    wb1 = asyncio.ensure_future(b.watch_round(ib1))
    ja = asyncio.ensure_future(a.join())  # a newcomer: it waits, b admits it (a scale-up)
    assert (await asyncio.wait_for(wb1, 2)).kind is ChangeKind.NODE_WAITING
    both = asyncio.ensure_future(asyncio.gather(ja, b.join()))
    while not both.done():  # the settle window runs on the closer's clock
        frozen.advance(0.1)
        await advance(job.clock, 0.1)
    ia2, ib2 = both.result()
    assert ia2.round == ib2.round == 2 and ia2.restart_count == before.restart_count + 1


def stale(info: RoundInfo) -> FailureReport:
    return FailureReport(
        rank=info.rank_offset, local_rank=0, group_rank=info.group_rank, host="a", node_id="a",
        pid=1, exitcode=1, message="stale",
    )  # fmt: skip


async def test_a_zombie_cannot_change_a_newer_round(job: Job) -> None:
    """The store ended a's lease before a's own clock says so: a's report of its stale
    workers' failure is refused all the same (the store is asked): nothing is written,
    the pointer does not move, no restart is counted; it rejoins as a new node."""
    a = job.node("a", min_nodes=1, max_nodes=2, max_restarts=3)
    b = job.node("b", min_nodes=1, max_nodes=2, max_restarts=3)
    ia, ib = await asyncio.wait_for(asyncio.gather(a.join(), b.join()), 5)
    wb = asyncio.ensure_future(b.watch_round(ib))
    job.store.expire(a.lease)  # a's lease ended on the store (its agent was frozen)
    change = await asyncio.wait_for(wb, 2)  # b moves on without it: round 1
    assert change.kind is ChangeKind.MEMBER_LOST and change.new_round == 1
    ib1 = await asyncio.wait_for(b.join(), 5)
    before = await pointer(job)
    decision, cause = await a.report_failure(ia, [stale(ia)])
    assert (decision, cause) == (Decision.RESTART, None)
    assert (await job.store.range("/corral/job/r/0/failures/"))[0] == []
    assert await pointer(job) == before  # no restart counted, round 1 goes on
    wb1 = asyncio.ensure_future(b.watch_round(ib1))
    ja = asyncio.ensure_future(a.join())  # a newcomer: it waits, b admits it (a scale-up)
    assert (await asyncio.wait_for(wb1, 2)).kind is ChangeKind.NODE_WAITING
    both = asyncio.ensure_future(asyncio.gather(ja, b.join()))
    while not both.done():  # the settle window runs on the closer's clock
        await advance(job.clock, 0.1)
    ia2, ib2 = both.result()
    assert ia2.round == ib2.round == 2 and ia2.restart_count == before.restart_count + 1


@pytest.mark.parametrize("heals", [True, False])
async def test_a_join_tries_an_unreachable_store_until_join_timeout(job: Job, heals: bool) -> None:
    conf = replace(CONF, join_timeout=20.0)
    r = job.node("a", min_nodes=1, max_nodes=1, conf=conf)
    job.sessions["a"].partition()
    j = asyncio.ensure_future(r.join())
    await advance(job.clock, 15)
    assert not j.done()  # nobody gives up before join_timeout
    if heals:
        job.sessions["a"].heal()
        await advance(job.clock, 2)
        info = await asyncio.wait_for(j, 2)
        assert info.round == 0
        return
    await advance(job.clock, 6)
    with pytest.raises(RendezvousTimeout) as err:
        await asyncio.wait_for(j, 2)
    msg = str(err.value)
    assert "join_timeout (20.0 s) passed" in msg and "\n" not in msg
    assert "the store could not be reached: memory store: partitioned" in msg


async def test_watches_lost_in_a_blip_are_opened_again_and_miss_nothing(job: Job) -> None:
    a = job.node("a", min_nodes=1, max_nodes=2, max_restarts=3)
    b = job.node("b", min_nodes=1, max_nodes=2, max_restarts=3)
    ja = asyncio.ensure_future(a.join())
    await advance(job.clock, 31)  # the last call: round 0 with a alone
    ia = await asyncio.wait_for(ja, 2)
    w = asyncio.ensure_future(a.watch_round(ia))
    await spin()
    job.sessions["a"].partition()  # its watches fail at once
    await advance(job.clock, 3)
    jb = asyncio.ensure_future(b.join())  # b waits while a cannot see it
    await advance(job.clock, 2)
    job.sessions["a"].heal()  # before the TTL: a renewal gets through
    await advance(job.clock, 8)
    change = await asyncio.wait_for(w, 2)  # the watches, opened again, saw b waiting
    assert change.kind is ChangeKind.NODE_WAITING and change.new_round == 1
    jb.cancel()


async def test_a_fenced_node_whose_old_key_outlives_it_gives_that_key_up_and_rejoins(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The store could not expire the fenced node's lease (etcd without a leader: its
    leases wait for one): the rejoin finds the node's own key under its former lease.
    That key is this node's, not another live agent's: it is revoked and the join goes
    on (it was refused as "already used by another live agent", and the agent exited)."""
    clock, frozen = FakeClock(), FakeClock()  # the store's clock stands still: no expiry
    store = MemoryStore(frozen)
    sess = store.session()
    async with task_scope() as tasks:
        a = DynamicRendezvous(
            sess, run_id="job", node=NodeDesc("a", "127.0.0.1", 2, host="a"), min_nodes=1,
            max_nodes=1, max_restarts=3, conf=CONF, store_conf=STORE, clock=clock, tasks=tasks,
        )  # fmt: skip
        try:
            info = await a.join()
            old = a.lease
            w = asyncio.ensure_future(a.watch_round(info))
            await spin()
            sess.fail_next(10_000)  # cut
            await advance(clock, 15.5)
            assert (await asyncio.wait_for(w, 2)).kind is ChangeKind.MEMBER_LOST
            assert "not renewed for 15.0 s" in caplog.text
            sess.fail_next(0)  # healed; the old lease still holds a's key on the store
            assert (await store.get("/corral/job/r/0/nodes/a")) is not None
            info2 = await asyncio.wait_for(a.join(), 2)
            assert a.lease != old
            assert info2.round == 1 and info2.restart_count == 1
        finally:
            await a.close()
            await store.close()
