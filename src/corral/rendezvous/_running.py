"""A running round: watch it until it is superseded, and move the job on when a member is lost.

Functions of a :class:`~corral.rendezvous.dynamic.DynamicRendezvous`
(``rd``), which delegates to them; they read and write its state.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from corral.core.errors import LeaseNotFound, StoreError
from corral.core.events import RoundOpened
from corral.core.model import ChangeKind, RoundChange, RoundInfo
from corral.rendezvous import decide as d
from corral.rendezvous import machine as m
from corral.rendezvous._aio import Mux, watching
from corral.rendezvous._common import change_for
from corral.rendezvous.state import (
    REASON_JOB_ENDED,
    REASON_MEMBER_LOST,
    REASON_NODE_WAITING,
    ClosedRound,
    RoundPointer,
)
from corral.store.api import EventType

if TYPE_CHECKING:
    from corral.rendezvous.dynamic import DynamicRendezvous

log = logging.getLogger("corral.rendezvous.dynamic")  # one logger for the rendezvous


async def watch(rd: DynamicRendezvous, rnd: RoundInfo, *, done: bool) -> RoundChange:
    """Watch round ``rnd`` until it is superseded (see ``watch_round``).

    A store that cannot be reached (a watch lost, a request unanswered: a partition,
    a failover) ends nothing by itself: the node's membership decides (docs/rendezvous.md,
    "Silence"). Once a renewal of its lease gets through again, the round's watches are
    opened again from the round's close (they replay what was missed); if the
    membership timeout passes first, the node has fenced itself: ``MEMBER_LOST``.
    """
    r = rnd.round
    while True:
        try:
            return await _watch_once(rd, rnd, done=done)
        except LeaseNotFound:
            rd._evicted.set()
            return RoundChange(ChangeKind.MEMBER_LOST, None, "this node's lease ended")
        except StoreError as exc:
            lost = rd._clock.now()
            log.warning(
                "round %d: the store cannot be reached (%s): waiting for it, or for the "
                "membership timeout",
                r,
                exc,
            )
            while not rd._evicted.is_set() and (rd._renewed or 0.0) < lost:
                await rd._clock.sleep(rd._conf.keep_alive_interval / 2)
            if rd._evicted.is_set():
                return RoundChange(ChangeKind.MEMBER_LOST, None, "this node fenced itself")
            log.info("round %d: the store answers again: watching the round again", r)


async def _watch_once(rd: DynamicRendezvous, rnd: RoundInfo, *, done: bool) -> RoundChange:
    r = rnd.round
    if rd._evicted.is_set() or r not in rd._closed:
        return RoundChange(ChangeKind.MEMBER_LOST, None, "this node is no longer a member")
    closed, closed_rev, assignment = rd._closed[r]
    start = closed_rev + 1
    n = closed.node_count
    rank = assignment.group_rank
    pred_id = assignment.pred
    coordinator = done and rank == 0
    done_ids: set[str] = set()
    # The member list, read only when needed (rank 0's scale-up and success
    # checks, a predecessor that left after success): O(1) bytes otherwise.
    member_ids: set[str] = set()
    async with watching() as mux:
        mux.add("round", rd._ops.watch(rd._k.round, start_revision=start))
        mux.add_event("evicted", rd._evicted)
        mux.add_failure(rd._tasks)
        if n > 1:
            mux.add("pred", rd._ops.watch(rd._k.node(r, pred_id), start_revision=start))
        if rank == 0 and n < rd._max:
            mux.add("waiting", rd._ops.watch(rd._k.waiting, prefix=True, start_revision=start))
        if coordinator:
            members = (await rd._members_of(r, closed)).members
            member_ids = {mm.node_id for mm in members}
            done_ids = await rd._watch_done(mux, r)
        while True:
            if coordinator and done_ids >= member_ids:
                return await rd._finish_success(r)
            item = await mux.next(rd._clock)
            assert item is not None
            tag, ev = item
            if tag == "evicted":
                return RoundChange(ChangeKind.MEMBER_LOST, None, "this node's lease ended")
            if isinstance(ev, StoreError):
                raise ev
            assert ev is not None
            if tag == "round" and ev.type is EventType.PUT:
                ptr = RoundPointer.from_json(ev.kv.value)
                if ptr.round > r:
                    return await rd._change_of(ptr)
            elif tag == "pred" and ev.type is EventType.DELETE:
                gone = pred_id
                # A done node leaving is not lost; watch the one before it. It
                # may have been the success coordinator: take that role too.
                gone_done = await rd._ops.get(rd._k.done_key(r, gone)) is not None
                members = (await rd._members_of(r, closed)).members if gone_done else ()
                ids = [mm.node_id for mm in members]
                act = d.predecessor_gone(ids, gone, rank, gone_done, done, coordinator)
                if act.lost:
                    return await rd._lost(r, closed, gone)
                if act.watch is None:
                    mux.drop("pred")
                else:
                    pred_id = act.watch
                    key = rd._k.node(r, pred_id)
                    mux.add("pred", rd._ops.watch(key, start_revision=ev.revision))
                if act.coordinate:
                    coordinator = True
                    member_ids = {mm.node_id for mm in members}
                    done_ids = await rd._watch_done(mux, r)
            elif tag == "waiting" and ev.type is EventType.PUT:
                nid = ev.kv.key[len(rd._k.waiting) :]
                members = (await rd._members_of(r, closed)).members
                ptr = rd._pointers[r][0]
                step = m.scale_up_step(members, nid, rd._max, ptr, rd._max_restarts)
                if step is m.ScaleUp.ADMIT:
                    return await rd._bump(r, REASON_NODE_WAITING, f"node {nid} waiting")
                if step is m.ScaleUp.SPARE:
                    log.info(
                        "node %s waits to join round %d; not admitted: restart budget spent "
                        "(%s restarts)", nid, r, m.restarts_text(ptr.restart_count, rd._max_restarts),
                    )  # fmt: skip
            elif tag == "done" and ev.type is EventType.PUT:
                done_ids.add(ev.kv.key[len(rd._k.done(r)) :])


async def watch_done(rd: DynamicRendezvous, mux: Mux, r: int) -> set[str]:
    prefix = rd._k.done(r)
    kvs, rev = await rd._ops.range(prefix)
    mux.add("done", rd._ops.watch(prefix, prefix=True, start_revision=rev + 1))
    return {kv.key[len(prefix) :] for kv in kvs}


async def finish_success(rd: DynamicRendezvous, r: int) -> RoundChange:
    ptr, rev = rd._pointers.get(r) or await rd._ops.pointer()
    if ptr.round == r:
        end = m.end_pointer(ptr, "success")
        if await rd._ops.cas_pointer(end, rev):
            await rd._ops.outcome_of(end)
            log.info("every member of round %d succeeded: job succeeded", r)
            return change_for(end)
    cur, _ = await rd._ops.pointer()
    if cur.reason == REASON_JOB_ENDED:
        await rd._ops.outcome_of(cur)
    return change_for(cur)


async def lost(
    rd: DynamicRendezvous, r: int, closed: ClosedRound, gone: str, detail: str = ""
) -> RoundChange:
    """Member ``gone`` of round r was lost (``detail``: how, if not its lease alone):
    restart (counts one), or with the budget spent end the job with a root
    cause that names the node as lost (machine.lost_node_report)."""
    ptr, rev = rd._pointers[r]
    if m.budget_left(ptr, rd._max_restarts):
        return await rd._bump(r, REASON_MEMBER_LOST, detail or f"lost node {gone}")
    members = (await rd._members_of(r, closed)).members
    why = [detail] if detail else []  # else: the lost node's lease ended
    report = m.lost_node_report(members, gone, r, ptr.restart_count, rd._max_restarts, *why)
    await rd._ops.create(rd._k.lost(r, gone), report.to_json())
    end = m.end_pointer(ptr, "failed")
    if await rd._ops.cas_pointer(end, rev):
        out = await rd._ops.outcome_of(end)
        log.error("%s: the job fails", out.root_cause.message if out.root_cause else detail)
        return change_for(end)
    cur, _ = await rd._ops.pointer()
    return change_for(cur)


async def bump(rd: DynamicRendezvous, r: int, reason: str, detail: str) -> RoundChange:
    """Move the pointer from round r (only from r: fencing) and report the change."""
    ptr, rev = rd._pointers[r]
    new = m.next_pointer(ptr, reason, detail)
    if await rd._ops.cas_pointer(new, rev):
        log.info("round %d superseded by round %d: %s", r, new.round, detail)
        rd._emit(RoundOpened, new.round, reason=reason, detail=detail)
        return change_for(new)
    cur, _ = await rd._ops.pointer()
    return change_for(cur)
