"""Joining a round: create this node's key, find the closer, follow it, read the result.

Functions of a :class:`~corral.rendezvous.dynamic.DynamicRendezvous`
(``rd``), which delegates to them; they read and write its state.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import TYPE_CHECKING

from corral.core.errors import (
    LeaseNotFound,
    RendezvousError,
    StoreCompacted,
    StoreError,
    StoreTimeout,
    StoreUnavailable,
)
from corral.core.events import NodeJoined, NodeWaiting
from corral.core.model import RoundInfo
from corral.core.net import free_port
from corral.rendezvous import _lease, _quarantine
from corral.rendezvous import decide as d
from corral.rendezvous import machine as m
from corral.rendezvous._aio import watching
from corral.rendezvous._common import Spare, decode_closed
from corral.rendezvous.state import Assignment, ClosedRound, RankTable, encode_node, rank_table_of
from corral.store.api import EventType, KeyValue, WatchEvent, WriteResult

if TYPE_CHECKING:
    from corral.rendezvous.dynamic import DynamicRendezvous

log = logging.getLogger("corral.rendezvous.dynamic")  # one logger for the rendezvous


async def join(rd: DynamicRendezvous, state: dict[str, int]) -> RoundInfo:
    while True:
        try:
            lease = await rd._ensure_lease()
            info = await rd._join_round(lease, state)
        except LeaseNotFound:
            rd._evicted.set()  # our lease ended under us: take a new one
            continue
        except (StoreTimeout, StoreUnavailable) as exc:  # try again until join_timeout
            await _lease.unreachable(rd, exc)
            continue
        rd._unreachable = None
        if info is not None:
            rd._expect = info.round + 1
            return info


async def join_round(rd: DynamicRendezvous, lease: int, state: dict[str, int]) -> RoundInfo | None:
    me = rd._node.node_id
    k = rd._k
    port = rd._node.master_port or free_port(rd._node.addr)
    desc = encode_node(replace(rd._node, master_port=port))
    # This node's watch of close/ (every round's closer and closed), opened
    # before its first join step and kept while it lives. Then one request
    # joins round r (the round this node expects): it creates this node's
    # key and, if there is none, the closer's key (the first joiner
    # closes), and reads the pointer and close/<r>/. If the pointer names
    # another round, take back what was created and join that round the
    # same way.
    await _quarantine.check(rd)  # a quarantined address joins no round (raises Refused)
    events = await rd._close_events()
    r = rd._expect
    while True:
        mine, closer, ptr, ptr_rev, close_kvs, rev = await rd._ops.join_step(r, me, desc, lease)
        existing = mine.kv.lease if mine.kv is not None else None
        step = d.join_step(r, lease, mine.succeeded, existing, ptr)
        if step is d.JoinStep.ID_IN_USE:
            raise RendezvousError(f"node id {me!r} is already used by another live agent")
        if step is d.JoinStep.JOINED:
            break
        await rd._retract(r, mine, closer)
        if step is d.JoinStep.JOB_ENDED:
            await rd._raise_outcome(ptr)
        r = rd._expect = ptr.round
    rd._pointers[r] = (ptr, ptr_rev)
    budget = m.job_budget(rd._max_restarts, ptr.max_restarts)
    if budget != rd._max_restarts:  # one budget for the job: every node decides alike
        log.warning(
            "--max-restarts is %d on this node but %d for the job (given to the node that "
            "started it): this node counts with the job's", rd._max_restarts, budget,
        )  # fmt: skip
        rd._max_restarts = budget
    code = m.job_budget(rd._no_restart_code, ptr.no_restart_code)
    if code != rd._no_restart_code:  # the same rule for --no-restart-exit-code
        log.warning(
            "--no-restart-exit-code is %s on this node but %s for the job (given to the node "
            "that started it): this node decides with the job's",
            rd._no_restart_code or "unset", code or "unset",
        )  # fmt: skip
        rd._no_restart_code = code
    state["round"] = r
    rd._emit(NodeJoined, r, addr=rd._node.addr)
    closed_kv = next((kv for kv in close_kvs if kv.key == k.closed(r)), None)
    then = d.after_join(closed_kv is not None, closer.succeeded)
    if closed_kv is not None:  # then is d.AfterJoin.CLOSED
        # Closed before this join: a member only if this node had joined
        # under this lease before (a join cut short by a timeout); an
        # evicted node has not.
        await rd._retract(r, mine, closer)
        member = not mine.succeeded
        return await rd._after_close(r, closed_kv, ptr_rev, lease, member=member)
    if rd._waiting:
        rd._waiting = False
        await rd._ops.delete(k.waiting_key(me))
    full: ClosedRound | None = None
    if then is d.AfterJoin.FOLLOW:
        # Someone is closing: follow (and take over if that closer leaves).
        closed_kv = await rd._follow(r, lease, events, rev)
    if closed_kv is None:  # this node closes
        closed_kv, full = await rd._close_round(ptr, lease)
    return await rd._after_close(r, closed_kv, ptr_rev, lease, full=full)


async def close_events(rd: DynamicRendezvous) -> AsyncIterator[WatchEvent]:
    """This node's watch of close/ (from now), opened on first use."""
    if rd._close_watch is None:
        stack = contextlib.AsyncExitStack()
        rd._close_iter = await stack.enter_async_context(rd._ops.watch(rd._k.closes, prefix=True))
        rd._close_watch = stack
    assert rd._close_iter is not None
    return rd._close_iter


async def drop_close_events(rd: DynamicRendezvous) -> None:
    stack, rd._close_watch, rd._close_iter = rd._close_watch, None, None
    if stack is not None:
        with contextlib.suppress(StoreError):
            await stack.aclose()


async def retract(rd: DynamicRendezvous, r: int, mine: WriteResult, closer: WriteResult) -> None:
    """Delete the keys a join step created in round r (a round this node is not joining)."""
    if mine.succeeded:
        await rd._ops.delete(rd._k.node(r, rd._node.node_id))
    if closer.succeeded:
        await rd._ops.delete(rd._k.closer(r))


async def after_close(
    rd: DynamicRendezvous,
    r: int,
    closed_kv: KeyValue,
    ptr_rev: int,
    lease: int,
    *,
    member: bool = True,
    full: ClosedRound | None = None,
) -> RoundInfo | None:
    """This node's place in closed round r: O(1) bytes unless it wrote the member list.

    ``full``: the member list this node wrote as the closer (used only if its
    ``closed`` is the one that won).
    """
    me = rd._node.node_id
    closed = decode_closed(closed_kv)
    if full is not None and full.tag != closed.tag:
        full = None
    if closed.members:
        full = closed  # a record that carries its members
    assignment: Assignment | None = None
    if member and full is not None:
        idx = full.rank_of(me)
        if idx is not None:
            assignment = m.assignments(full.members)[idx]
    elif member:
        if closed.rank_tables < 1:
            raise RendezvousError(
                f"round {r} was closed with no rank tables (by another corral version?)"
            )
        # Written before closed: any state as of closed's revision has it.
        index = rank_table_of(me, closed.rank_tables)
        tkv = await rd._ops.get(
            rd._k.rank_table(r, closed.tag, index), min_revision=closed_kv.mod_revision
        )
        if tkv is not None:
            assignment = RankTable.from_json(tkv.value).assignments.get(me)
    if full is not None:
        rd._members[r] = full
    if assignment is not None:
        rd._closed[r] = (closed, closed_kv.mod_revision, assignment)
        info = m.round_info_of(
            rd._run_id, closed, assignment, full.members if full is not None else (),
            rd._max_restarts,
        )  # fmt: skip
        log.debug(
            "round %d closed: node %s is group rank %d of %d (restart %d)",
            r, me, info.group_rank, info.group_world_size, info.restart_count,
        )  # fmt: skip
        return info
    members = await rd._members_of(r, closed)
    wait = (r, members, ptr_rev, lease)
    used = rd._pointers[r][0].restart_count
    if m.is_spare(closed.node_count, rd._max, used, rd._max_restarts):
        raise Spare(*wait)  # join() waits, with no join_timeout, then joins again
    await rd._wait_next_round(*wait)
    return None


async def members_of(rd: DynamicRendezvous, r: int, closed: ClosedRound) -> ClosedRound:
    """The full member list of round r (closed summary ``closed``): one read, cached.

    Only a few nodes need it: the closer of round r+1, rank 0 for scale-up and
    success, a waiting node, and a member whose predecessor left after success.
    """
    if closed.members:
        return closed
    have = rd._members.get(r)
    if have is not None and have.tag == closed.tag:
        return have
    kv = await rd._ops.get(rd._k.members(r, closed.tag))
    if kv is None:
        raise RendezvousError(f"round {r} is closed but its member list is missing")
    full = decode_closed(kv)
    rd._members[r] = full
    return full


async def write_members(rd: DynamicRendezvous, full: ClosedRound) -> None:
    """As the closer: store the member list once and the rank tables."""
    r, tag, k = full.round, full.tag, rd._k
    writes = [(k.members(r, tag), full.to_json())]
    writes += [
        (k.rank_table(r, tag, i), t.to_json()) for i, t in enumerate(m.rank_tables(full.members))
    ]
    await rd._ops.put_many(writes)


async def follow(
    rd: DynamicRendezvous, r: int, lease: int, events: AsyncIterator[WatchEvent], seen: int
) -> KeyValue | None:
    """Wait for ``closed`` of round r; None if this node must close it instead.

    ``events``: this node's watch of close/, opened before the join step
    that read close/<r>/ at revision ``seen`` (no ``closed``, a closer
    other than this node): events up to ``seen``, and of other rounds, are
    skipped. When the closer's key goes before ``closed`` comes (its lease
    ended), every follower tries to create it: the one that does is the
    new closer.

    The watch is kept between joins, so it may have to resume (on another
    etcd member) from a revision the store has compacted since: then it is
    made again from now, and close/<r>/ read again.
    """
    closed_key, closer_key = rd._k.closed(r), rd._k.closer(r)
    me = rd._node.node_id
    gone = False  # the closer's key was seen to go
    while True:
        if gone:
            gone = False
            res = await rd._ops.create(closer_key, me.encode(), lease=lease)
            if res.succeeded:
                log.info("closer of round %d left; %s closes it", r, me)
                return None
        try:
            async for ev in events:
                if ev.revision <= seen:
                    continue
                if ev.kv.key == closed_key and ev.type is EventType.PUT:
                    kv: KeyValue = ev.kv
                    return kv
                if ev.kv.key == closer_key and ev.type is EventType.DELETE:
                    gone = True
                    break
            else:
                raise StoreUnavailable(f"the watch of {rd._k.closes} ended")
        except StoreCompacted:
            log.info("watch of %s resumed too late (compacted); watching again", rd._k.closes)
            await rd._drop_close_events()
            events = await rd._close_events()
            kvs, seen = await rd._ops.range(rd._k.close_prefix(r))
            state = {kv.key: kv for kv in kvs}
            if closed_key in state:
                return state[closed_key]
            gone = closer_key not in state
        except StoreError:
            await rd._drop_close_events()  # the next join opens a new one
            raise


async def wait_next_round(
    rd: DynamicRendezvous, r: int, closed: ClosedRound, ptr_rev: int, lease: int
) -> None:
    """Round r closed without this node: wait in ``waiting/`` until the pointer moves.

    Running members see the waiting key and start a new round while below
    max. If every member of round r is gone, nobody would: this node then
    starts the next round itself.
    """
    me = rd._node.node_id
    await rd._ops.put(rd._k.waiting_key(me), encode_node(rd._node), lease=lease)
    rd._waiting = True
    rd._emit(NodeWaiting, r, subject=me, detail=f"round {r} closed without this node")
    ptr = rd._pointers[r][0]
    n, cap, used = len(closed.members), rd._max, ptr.restart_count
    log.info("%s", m.waiting_line(me, r, n, cap, used, rd._max_restarts))
    nodes_prefix = rd._k.nodes(r)
    async with watching() as mux:
        mux.add("round", rd._ops.watch(rd._k.round, start_revision=ptr_rev + 1))
        mux.add_event("evicted", rd._evicted)
        mux.add_failure(rd._tasks)
        while True:
            kvs, rev = await rd._ops.range(nodes_prefix)
            live = [kv.key[len(nodes_prefix) :] for kv in sorted(kvs, key=_created)]
            target = d.waiting_target([mm.node_id for mm in closed.members], live)
            if target is None:  # every member is gone: nobody else would start a round
                first = closed.members[0].node_id
                await rd._lost(r, closed, first, f"every member of round {r} left")
                return
            key = rd._k.node(r, target)
            mux.add("member", rd._ops.watch(key, start_revision=rev + 1))
            while True:
                item = await mux.next(rd._clock)
                assert item is not None
                tag, ev = item
                if isinstance(ev, StoreError):
                    raise ev
                if tag == "evicted":
                    raise LeaseNotFound(f"lease {lease} ended while waiting")
                if tag == "round":
                    return
                if tag == "member" and ev is not None and ev.type is EventType.DELETE:
                    break


def _created(kv: KeyValue) -> int:
    return kv.create_revision
