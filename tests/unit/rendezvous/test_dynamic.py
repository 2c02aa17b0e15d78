"""DynamicRendezvous with K simulated nodes on a MemoryStore and a FakeClock."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from corral.core.errors import (
    JobFailed,
    RendezvousClosed,
    RendezvousError,
    RendezvousTimeout,
    StoreCompacted,
)
from corral.core.failures import FailureReport
from corral.core.model import ChangeKind, Decision, NodeDesc, RoundInfo
from corral.rendezvous.dynamic import DynamicRendezvous
from corral.rendezvous.protocol.records import ClosedRound, RoundPointer, encode_node
from corral.store.api import WatchEvent
from corral.store.memory import MemoryStore

from .conftest import Job, advance, spin

pytestmark = pytest.mark.timeout(10)

KEY = "/corral/job/"


def failure(node: str, rank: int, code: int = 1) -> FailureReport:
    return FailureReport(
        rank=rank, local_rank=0, group_rank=rank, host=node, node_id=node, pid=100, exitcode=code
    )


async def join_in_order(job: Job, names: list[str], r: int) -> list[asyncio.Task[RoundInfo]]:
    """Start the joins one by one, each once the previous node's key exists (join order)."""
    tasks = []
    for name in names:
        tasks.append(asyncio.create_task(job.nodes[name].join()))
        await job.until(lambda n=name: job.has_key(f"{KEY}r/{r}/nodes/{n}"))  # type: ignore[misc]
    return tasks


async def pointer(job: Job) -> RoundPointer:
    kv = await job.store.get(KEY + "round")
    assert kv is not None
    return RoundPointer.from_json(kv.value)


async def test_single_node_closes_at_once(job: Job) -> None:
    r = job.node("solo", min_nodes=1, max_nodes=1)
    info = await asyncio.wait_for(r.join(), 2)
    assert (info.round, info.group_rank, info.group_world_size, info.world_size) == (0, 0, 1, 2)
    assert info.master_addr == "127.0.0.1" and info.master_port > 0
    assert info.restart_count == 0


async def test_first_round_ranks_in_join_order(job: Job) -> None:
    names = ["c", "a", "d", "b"]
    for n in names:
        job.node(n, min_nodes=4, max_nodes=4)
    infos = await asyncio.gather(*await join_in_order(job, names, 0))
    assert [i.group_rank for i in infos] == [0, 1, 2, 3]
    # The closer (first joiner) has the member list; the others may not (O(1) bytes each).
    assert [m.node_id for m in infos[0].members] == names
    assert {i.members for i in infos} <= {infos[0].members, ()}
    assert {(i.group_world_size, i.world_size) for i in infos} == {(4, 8)}
    assert [i.rank_offset for i in infos] == [0, 2, 4, 6]
    assert {i.master_port for i in infos} == {infos[0].members[0].master_port}


async def test_min_nodes_waits_for_last_call(job: Job) -> None:
    for n in "ab":
        job.node(n, min_nodes=2, max_nodes=4)
    tasks = await join_in_order(job, ["a", "b"], 0)
    await advance(job.clock, 29)
    assert not any(t.done() for t in tasks)
    await advance(job.clock, 1.5)
    infos = await asyncio.gather(*tasks)
    assert [i.group_world_size for i in infos] == [2, 2]


async def test_scale_up_via_waiting_node(job: Job) -> None:
    for n in "abc":
        job.node(n, min_nodes=2, max_nodes=3, max_restarts=1)
    tasks = await join_in_order(job, ["a", "b"], 0)
    await advance(job.clock, 31)
    a0, b0 = await asyncio.gather(*tasks)
    watches = [asyncio.create_task(job.nodes[n].watch_round(i)) for n, i in (("a", a0), ("b", b0))]
    c_join = asyncio.create_task(job.nodes["c"].join())
    changes = await asyncio.wait_for(asyncio.gather(*watches), 5)
    assert {c.kind for c in changes} == {ChangeKind.NODE_WAITING}
    assert {c.new_round for c in changes} == {1}
    a1, b1 = await asyncio.gather(job.nodes["a"].join(), job.nodes["b"].join())
    c1 = await asyncio.wait_for(c_join, 5)
    assert [(i.round, i.group_rank) for i in (a1, b1, c1)] == [(1, 0), (1, 1), (1, 2)]
    assert {i.restart_count for i in (a0, b0)} == {0}  # the first formation is no restart
    assert {i.restart_count for i in (a1, b1, c1)} == {1}  # a scale-up counts one restart


async def test_a_late_join_leaves_no_key_in_rounds_it_is_not_in(job: Job) -> None:
    # Round 1 is full (max 2) and closed; d expects round 0 (a fresh handle):
    # its join step creates keys in round 0 and round 1 and takes both back.
    for n in "abd":
        job.node(n, min_nodes=2, max_nodes=2, max_restarts=1)
    _, a0 = await asyncio.gather(*await join_in_order(job, ["b", "a"], 0))
    job.store.expire(job.nodes["b"].lease)  # round 0's closer: its key goes too
    job.node("b2", min_nodes=2, max_nodes=2, max_restarts=1)
    assert (await job.nodes["a"].watch_round(a0)).new_round == 1
    a1, b1 = await asyncio.gather(job.nodes["a"].join(), job.nodes["b2"].join())
    assert (a1.round, b1.round) == (1, 1)
    closers = {r: await job.store.get(f"{KEY}close/{r}/closer") for r in (0, 1)}
    assert closers[0] is None and closers[1] is not None
    d_join = asyncio.create_task(job.nodes["d"].join())
    await job.until(lambda: job.has_key(KEY + "waiting/d"))
    for r in (0, 1):
        assert not await job.has_key(f"{KEY}r/{r}/nodes/d")
        assert await job.store.get(f"{KEY}close/{r}/closer") == closers[r]
    d_join.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await d_join


async def test_scale_down_on_lease_loss_keeps_ranks(job: Job) -> None:
    for n in "abcd":
        job.node(n, min_nodes=2, max_nodes=4, max_restarts=1)
    infos = await asyncio.gather(*await join_in_order(job, list("abcd"), 0))
    survivors = {"a": infos[0], "c": infos[2], "d": infos[3]}
    watches = {n: asyncio.create_task(job.nodes[n].watch_round(i)) for n, i in survivors.items()}
    job.store.expire(job.nodes["b"].lease)
    changes = await asyncio.wait_for(asyncio.gather(*watches.values()), 5)
    assert {c.kind for c in changes} == {ChangeKind.MEMBER_LOST}
    assert {c.new_round for c in changes} == {1}
    # Every expected node (the live members of round 0) is back: no last call.
    new = await asyncio.wait_for(asyncio.gather(*(job.nodes[n].join() for n in "acd")), 5)
    assert [(i.round, i.group_rank) for i in new] == [(1, 0), (1, 2), (1, 1)]
    assert {i.restart_count for i in new} == {1}  # a lost node counts one restart


async def test_failure_restarts_job_at_once_and_counts_once(job: Job) -> None:
    for n in "abc":
        job.node(n, min_nodes=2, max_nodes=4, max_restarts=3)
    tasks = await join_in_order(job, list("abc"), 0)
    await advance(job.clock, 31)
    infos = await asyncio.gather(*tasks)
    watch_a = asyncio.create_task(job.nodes["a"].watch_round(infos[0]))
    # b and c fail at about the same time: one restart for the job.
    db, dc = await asyncio.gather(
        job.nodes["b"].report_failure(infos[1], [failure("b", 2)]),
        job.nodes["c"].report_failure(infos[2], [failure("c", 4)]),
    )
    assert db == (Decision.RESTART, None) and dc == (Decision.RESTART, None)
    change = await asyncio.wait_for(watch_a, 2)
    assert change.kind is ChangeKind.FAILURE and change.new_round == 1
    new = await asyncio.wait_for(asyncio.gather(*(job.nodes[n].join() for n in "abc")), 2)
    assert [(i.round, i.group_rank, i.restart_count) for i in new] == [
        (1, 0, 1),
        (1, 1, 1),
        (1, 2, 1),
    ]


async def test_a_restart_round_waits_for_expected_nodes_but_not_for_a_lost_one(
    job: Job,
) -> None:
    # Round 1 after a failure: a and b are back, c (a live member of round 0) is expected,
    # so the round does not close at MIN; when c's lease ends, nothing is missing any more
    # and it closes at once, long before the last call.
    for n in "abc":
        job.node(n, min_nodes=2, max_nodes=4, max_restarts=3)
    tasks = await join_in_order(job, list("abc"), 0)
    await advance(job.clock, 31)
    infos = await asyncio.gather(*tasks)
    assert await job.nodes["b"].report_failure(infos[1], [failure("b", 2)]) == (
        Decision.RESTART,
        None,
    )
    joins = [asyncio.create_task(job.nodes[n].join()) for n in "ab"]
    await job.until(lambda: job.has_key(f"{KEY}r/1/nodes/b"))
    await advance(job.clock, 5)  # well within the last call (30 s): c is still expected
    assert not any(t.done() for t in joins)
    job.store.expire(job.nodes["c"].lease)  # c is lost: its round-0 key goes
    new = await asyncio.wait_for(asyncio.gather(*joins), 2)
    assert [(i.round, i.group_world_size) for i in new] == [(1, 2), (1, 2)]
    assert job.clock.now() < 31 + 30  # no last call was waited for


async def test_each_node_keeps_one_close_watch_for_its_life(job: Job) -> None:
    # A restart round costs a node no new watch: its watch of close/ stays open
    # from its first join until it leaves.
    for n in "ab":
        job.node(n, min_nodes=2, max_nodes=2, max_restarts=1)
    infos = await asyncio.gather(*await join_in_order(job, ["a", "b"], 0))
    assert job.store.core.watch_count == 2
    decision = await job.nodes["b"].report_failure(infos[1], [failure("b", 0)])
    assert decision == (Decision.RESTART, None)
    new = await asyncio.wait_for(asyncio.gather(*(job.nodes[n].join() for n in "ab")), 2)
    assert {i.round for i in new} == {1}
    assert job.store.core.watch_count == 2
    await asyncio.gather(*(job.nodes[n].close() for n in "ab"))
    assert job.store.core.watch_count == 0


class CompactedOnce:
    """A store whose first watch of close/ fails with StoreCompacted once an
    event comes (as a kept etcd watch does when it must resume on another
    member from a revision compacted since); everything else is the store's."""

    def __init__(self, store: MemoryStore) -> None:
        self._store = store
        self.close_watches = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    @contextlib.asynccontextmanager
    async def watch(
        self, key: str, *, prefix: bool = False, start_revision: int = 0
    ) -> AsyncIterator[AsyncIterator[WatchEvent]]:
        async with self._store.watch(key, prefix=prefix, start_revision=start_revision) as events:
            if not key.endswith("/close/"):
                yield events
                return
            self.close_watches += 1
            if self.close_watches > 1:
                yield events
                return

            async def compacted() -> AsyncIterator[WatchEvent]:
                await anext(events)
                raise StoreCompacted("history compacted (test fault)")
                yield  # pragma: no cover

            yield compacted()


async def test_a_kept_close_watch_that_cannot_resume_is_made_again(job: Job) -> None:
    job.node("a", min_nodes=2, max_nodes=2)
    faulty = CompactedOnce(job.store.session())
    job.node("b", min_nodes=2, max_nodes=2, over=faulty)
    a0, b0 = await asyncio.wait_for(asyncio.gather(*await join_in_order(job, ["a", "b"], 0)), 5)
    assert (a0.group_rank, b0.group_rank) == (0, 1)
    assert faulty.close_watches == 2


class JoinAndLeaveBeforeRead:
    """A store where, just before the closer's first read of round 0's joiners,
    node ``ghost`` joins and leaves again (after the closer's watch is in
    place: the watch delivers both events, the read sees neither)."""

    def __init__(self, store: MemoryStore) -> None:
        self._store = store
        self.injected = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def range(self, prefix: str) -> Any:
        if prefix == f"{KEY}r/0/nodes/" and not self.injected:
            self.injected = True
            ghost = NodeDesc(node_id="ghost", addr="127.0.0.1", local_world_size=2)
            await self._store.put(prefix + "ghost", encode_node(ghost))
            await self._store.delete(prefix + "ghost")
        return await self._store.range(prefix)


async def test_the_closer_skips_events_its_read_already_covers(job: Job) -> None:
    # Without the skip, the closer would count ghost (its put event comes
    # before its delete event) and close at max_nodes with a node that is gone.
    racy = JoinAndLeaveBeforeRead(job.store.session())
    job.node("a", min_nodes=2, max_nodes=2, over=racy)
    job.node("b", min_nodes=2, max_nodes=2)
    first = await join_in_order(job, ["a"], 0)

    async def read_done() -> bool:
        return racy.injected

    await job.until(read_done)
    infos = await asyncio.wait_for(asyncio.gather(*first, *await join_in_order(job, ["b"], 0)), 5)
    assert [(i.group_rank, i.group_world_size) for i in infos] == [(0, 2), (1, 2)]
    closed = await job.store.get(f"{KEY}close/0/closed")
    assert closed is not None
    full = await job.store.get(f"{KEY}r/0/members/{ClosedRound.from_json(closed.value).tag}")
    assert full is not None
    assert [mm.node_id for mm in ClosedRound.from_json(full.value).members] == ["a", "b"]


async def test_budget_spent_gives_everyone_the_same_root_cause(job: Job) -> None:
    for n in "abc":
        job.node(n, min_nodes=3, max_nodes=3, max_restarts=0)
    infos = await asyncio.gather(*await join_in_order(job, list("abc"), 0))
    watch_a = asyncio.create_task(job.nodes["a"].watch_round(infos[0]))
    first = failure("c", 4, code=7)
    dc = await job.nodes["c"].report_failure(infos[2], [first])
    db = await job.nodes["b"].report_failure(infos[1], [failure("b", 2, code=9)])
    assert dc == (Decision.FAIL, first) and db == (Decision.FAIL, first)
    change = await asyncio.wait_for(watch_a, 2)
    assert change.kind is ChangeKind.JOB_ENDED
    for n in "abc":
        with pytest.raises(JobFailed) as ei:
            await job.nodes[n].join()
        assert ei.value.root_cause == first and ei.value.exit_code == 7


async def test_success_when_every_member_is_done(job: Job) -> None:
    for n in "ab":
        job.node(n, min_nodes=2, max_nodes=2)
    ia, ib = await asyncio.gather(*await join_in_order(job, ["a", "b"], 0))
    sa = asyncio.create_task(job.nodes["a"].report_success(ia))
    await spin()
    assert not sa.done()
    assert await job.nodes["b"].report_success(ib) is None
    assert await asyncio.wait_for(sa, 2) is None
    with pytest.raises(RendezvousClosed):
        await job.nodes["a"].join()


async def test_done_node_leaving_is_not_a_lost_member(job: Job) -> None:
    for n in "ab":
        job.node(n, min_nodes=2, max_nodes=2)
    ia, ib = await asyncio.gather(*await join_in_order(job, ["a", "b"], 0))
    sa = asyncio.create_task(job.nodes["a"].report_success(ia))
    wb = asyncio.create_task(job.nodes["b"].watch_round(ib))
    await spin()
    sa.cancel()
    job.store.expire(job.nodes["a"].lease)  # a's agent dies after its workers succeeded
    await spin()
    assert not wb.done()
    wb.cancel()
    assert await asyncio.wait_for(job.nodes["b"].report_success(ib), 2) is None
    assert (await pointer(job)).reason == "job_ended"


async def test_join_timeout(job: Job) -> None:
    r = job.node("a", min_nodes=2, max_nodes=2)
    t = asyncio.create_task(r.join())
    await advance(job.clock, 599)
    assert not t.done()
    await advance(job.clock, 2)
    with pytest.raises(RendezvousTimeout):
        await asyncio.wait_for(t, 2)


async def test_dead_closer_is_replaced(job: Job) -> None:
    for n in "abc":
        job.node(n, min_nodes=2, max_nodes=4)
    tasks = await join_in_order(job, list("abc"), 0)
    job.store.expire(job.nodes["a"].lease)  # the closer dies before closing
    tasks[0].cancel()
    await advance(job.clock, 31)
    infos = await asyncio.wait_for(asyncio.gather(*tasks[1:]), 2)
    assert [i.group_rank for i in infos] == [0, 1] and infos[0].group_world_size == 2


async def test_hung_node_cannot_disturb_the_new_round(job: Job) -> None:
    for n in "abc":
        job.node(n, min_nodes=2, max_nodes=3, max_restarts=5)
    infos = await asyncio.gather(*await join_in_order(job, list("abc"), 0))
    watches = [
        asyncio.create_task(job.nodes[n].watch_round(i)) for n, i in zip("ab", infos, strict=False)
    ]
    job.store.expire(job.nodes["c"].lease)  # c hangs past its TTL
    await asyncio.wait_for(asyncio.gather(*watches), 2)
    a1, _b1 = await asyncio.wait_for(
        asyncio.gather(job.nodes["a"].join(), job.nodes["b"].join()), 2
    )
    ptr_before = await pointer(job)
    closed_before = await job.store.get(f"{KEY}close/1/closed")
    # c resumes: its workers of round 0 "failed", and it reports so.
    c = job.nodes["c"]
    assert await c.report_failure(infos[2], [failure("c", 4)]) == (Decision.RESTART, None)
    change = await asyncio.wait_for(c.watch_round(infos[2]), 2)
    assert change.kind is ChangeKind.MEMBER_LOST
    assert await pointer(job) == ptr_before  # no restart counted, no round started
    assert await job.store.get(f"{KEY}close/1/closed") == closed_before
    # c rejoins as a new member: it waits, and the running round scales up for it.
    wa = asyncio.create_task(job.nodes["a"].watch_round(a1))
    c_join = asyncio.create_task(c.join())
    change = await asyncio.wait_for(wa, 2)
    assert change.kind is ChangeKind.NODE_WAITING
    assert ClosedRound.from_json(closed_before.value).round == 1 if closed_before else False
    a2, b2 = await asyncio.gather(job.nodes["a"].join(), job.nodes["b"].join())
    c2 = await asyncio.wait_for(c_join, 2)
    assert [(i.round, i.group_rank) for i in (a2, b2, c2)] == [(2, 0), (2, 1), (2, 2)]
    # c's loss (round 1) and its return (round 2) count one restart each; its
    # stale report counted none
    assert {i.restart_count for i in (a2, b2, c2)} == {2}


async def test_partition_fences_the_node_then_its_join_names_the_store(job: Job) -> None:
    for n in "ab":
        job.node(n, min_nodes=2, max_nodes=2)
    ia, _ = await asyncio.gather(*await join_in_order(job, ["a", "b"], 0))
    w = asyncio.create_task(job.nodes["a"].watch_round(ia))
    await spin()
    job.sessions["a"].partition()  # its watches fail: the membership decides (docs: Silence)
    await advance(job.clock, 14)
    assert not w.done()
    await advance(job.clock, 2)  # past the TTL (15 s): it fenced itself
    change = await asyncio.wait_for(w, 2)
    assert change.kind is ChangeKind.MEMBER_LOST and change.new_round is None
    # a join tries again until join_timeout (docs/rendezvous.md, "Silence"), then names the store
    j = asyncio.ensure_future(job.nodes["a"].join())
    await advance(job.clock, 700, step=50)
    with pytest.raises(RendezvousTimeout, match="the store could not be reached: memory store"):
        await asyncio.wait_for(j, 2)


async def test_waiting_node_restarts_an_abandoned_round(job: Job) -> None:
    for n in "abc":
        job.node(n, min_nodes=2, max_nodes=2, max_restarts=1)
    await asyncio.gather(*await join_in_order(job, ["a", "b"], 0))
    c_join = asyncio.create_task(job.nodes["c"].join())
    await job.until(lambda: job.has_key(KEY + "waiting/c"))
    for n in "ab":
        job.store.expire(job.nodes[n].lease)  # every member of round 0 dies
    await spin()
    assert (await pointer(job)).round == 1
    assert (await pointer(job)).restart_count == 1
    a_join = asyncio.create_task(job.nodes["a"].join())  # a's agent comes back
    ic, _ia = await asyncio.wait_for(asyncio.gather(c_join, a_join), 2)
    assert (ic.round, ic.group_world_size, ic.restart_count) == (1, 2, 1)


async def test_evicted_node_rejoins_with_a_new_lease(job: Job) -> None:
    r = job.node("a", min_nodes=1, max_nodes=1, max_restarts=1)
    info = await r.join()
    old = r.lease
    w = asyncio.create_task(r.watch_round(info))
    job.store.expire(old)
    await advance(job.clock, 5)  # the keep-alive finds the lease gone
    change = await asyncio.wait_for(w, 2)
    assert change.kind is ChangeKind.MEMBER_LOST and change.new_round is None
    info2 = await asyncio.wait_for(r.join(), 2)
    assert r.lease != old and info2.round >= 1
    assert info2.restart_count == 1  # the group restarts: one restart


async def test_join_without_a_task_group_says_how_to_get_one() -> None:
    from corral.config import RendezvousOptions, StoreOptions
    from corral.core.clock import FakeClock
    from corral.core.model import NodeDesc
    from corral.store.memory import MemoryStore

    store = MemoryStore()
    rdzv = DynamicRendezvous(
        store, run_id="j", node=NodeDesc("a", "127.0.0.1", 1), min_nodes=1, max_nodes=1,
        max_restarts=0, conf=RendezvousOptions(), store_conf=StoreOptions(), clock=FakeClock(),
    )  # fmt: skip
    with pytest.raises(RendezvousError, match="use async with or pass tasks="):
        await rdzv.join()
    assert (await store.range("/corral/j/"))[0] == []  # nothing written
    await rdzv.close()


async def test_constructor_validates() -> None:
    from corral.config import RendezvousOptions, StoreOptions
    from corral.core.clock import FakeClock
    from corral.core.errors import ConfigError
    from corral.core.model import NodeDesc
    from corral.store.memory import MemoryStore

    node = NodeDesc("a", "127.0.0.1", 1)
    with pytest.raises(ConfigError, match="max_nodes"):
        DynamicRendezvous(
            MemoryStore(), run_id="j", node=node, min_nodes=3, max_nodes=2, max_restarts=0,
            conf=RendezvousOptions(), store_conf=StoreOptions(), clock=FakeClock(),
        )  # fmt: skip


async def test_static_ranks_follow_node_rank(job: Job) -> None:
    from corral.core.model import NodeDesc
    from corral.rendezvous.static import StaticRendezvous, static_store_endpoint

    from .conftest import CONF, STORE

    async with contextlib.AsyncExitStack() as stack:  # each handle opens its own task scope
        nodes = [
            await stack.enter_async_context(
                StaticRendezvous(
                    job.store.session(),
                    run_id="static",
                    node=NodeDesc(f"host{rank}", f"10.0.0.{rank + 1}", 2),
                    node_rank=rank,
                    nnodes=3,
                    master_addr="10.0.0.9",
                    master_port=29500,
                    max_restarts=1,
                    conf=CONF,
                    store_conf=STORE,
                    clock=job.clock,
                )
            )
            for rank in (2, 0, 1)
        ]
        infos = await asyncio.wait_for(asyncio.gather(*(n.join() for n in nodes)), 2)
        assert [i.group_rank for i in infos] == [2, 0, 1]
        assert {(i.master_addr, i.master_port) for i in infos} == {("10.0.0.9", 29500)}
        d = await nodes[0].report_failure(infos[0], [failure("host2", 4)])
        assert d == (Decision.RESTART, None)
        again = await asyncio.wait_for(asyncio.gather(*(n.join() for n in nodes)), 2)
        assert [(i.group_rank, i.restart_count) for i in again] == [(2, 1), (0, 1), (1, 1)]
    assert static_store_endpoint("10.0.0.9", 29500) == ("10.0.0.9", 29501)


async def test_final_failure_ends_the_job_with_restarts_left(job: Job) -> None:
    for n in "ab":
        job.node(n, min_nodes=2, max_nodes=2, max_restarts=5)
    _ia, ib = await asyncio.gather(*await join_in_order(job, ["a", "b"], 0))
    first = failure("b", 2, code=3)
    assert await job.nodes["b"].report_failure(ib, [first], final=True) == (Decision.FAIL, first)
    with pytest.raises(JobFailed) as ei:
        await job.nodes["a"].join()
    assert ei.value.root_cause == first and ei.value.exit_code == 3
