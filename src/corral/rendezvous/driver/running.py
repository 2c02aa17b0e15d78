"""A running round's driver: watch it until it is superseded, feed what changes to the
member's reducer (:mod:`corral.rendezvous.protocol.member`), and move the job on
when a member is lost, a node waits, or every member is done."""

from __future__ import annotations

import logging

from corral.core.errors import LeaseNotFound, StoreError
from corral.core.events import RoundOpened
from corral.core.model import ChangeKind, RoundChange, RoundInfo
from corral.rendezvous.driver.ending import Outcomes, change_for
from corral.rendezvous.driver.session import Session
from corral.rendezvous.protocol import budget
from corral.rendezvous.protocol import member as protocol
from corral.rendezvous.protocol.records import (
    REASON_JOB_ENDED,
    REASON_MEMBER_LOST,
    ClosedRound,
    RoundPointer,
)
from corral.rendezvous.waits import Mux, watching
from corral.store.api import EventType

__all__ = ["Running"]

log = logging.getLogger("corral.rendezvous.dynamic")  # one logger for the rendezvous


class Running:
    """Watches the rounds this node runs in, and moves the job on from them."""

    def __init__(self, session: Session, outcomes: Outcomes) -> None:
        self._s = session
        self._outcomes = outcomes

    async def watch(self, rnd: RoundInfo, *, done: bool) -> RoundChange:
        """Watch round ``rnd`` until it is superseded (see ``watch_round``).

        A store that cannot be reached (a watch lost, a request unanswered: a partition,
        a failover) ends nothing by itself: the node's membership decides (docs/rendezvous.md,
        "Silence"). Once a renewal of its lease gets through again, the round's watches are
        opened again from the round's close (they replay what was missed); if the
        membership timeout passes first, the node has fenced itself: ``MEMBER_LOST``.
        """
        s = self._s
        r = rnd.round
        while True:
            try:
                return await self._watch_once(rnd, done=done)
            except LeaseNotFound:
                s.lease.evict()
                return RoundChange(ChangeKind.MEMBER_LOST, None, "this node's lease ended")
            except StoreError as exc:
                lost = s.clock.now()
                log.warning(
                    "round %d: the store cannot be reached (%s): waiting for it, or for the "
                    "membership timeout",
                    r,
                    exc,
                )
                while not s.lease.evicted.is_set() and (s.lease.renewed or 0.0) < lost:
                    await s.clock.sleep(s.conf.keep_alive_interval / 2)
                if s.lease.evicted.is_set():
                    return RoundChange(ChangeKind.MEMBER_LOST, None, "this node fenced itself")
                log.info("round %d: the store answers again: watching the round again", r)

    async def _watch_once(self, rnd: RoundInfo, *, done: bool) -> RoundChange:
        s, store, k = self._s, self._s.store, self._s.keys
        r = rnd.round
        place = s.memberships.get(r)
        if s.lease.evicted.is_set() or place is None:
            return RoundChange(ChangeKind.MEMBER_LOST, None, "this node is no longer a member")
        closed, start = place.closed, place.revision + 1
        state, effects = protocol.start_member(
            r,
            place.assignment.group_rank,
            place.assignment.pred,
            closed.node_count,
            done=done,
            max_nodes=s.max_nodes,
            max_restarts=s.budget.max_restarts,
        )
        async with watching() as mux:
            mux.add("round", store.watch(k.round, start_revision=start))
            mux.add_event("evicted", s.lease.evicted)
            mux.add_failure(s.lease)
            if state.rank == 0 and closed.node_count < s.max_nodes:
                mux.add("waiting", store.watch(k.waiting, prefix=True, start_revision=start))
            since = start  # where a watch of a (new) predecessor starts
            while True:
                for effect in effects:
                    if isinstance(effect, protocol.Watch):
                        if effect.node_id is None:
                            mux.drop("pred")
                        else:
                            key = k.node(r, effect.node_id)
                            mux.add("pred", store.watch(key, start_revision=since))
                        continue
                    if isinstance(effect, protocol.Coordinate):
                        members = (await s.members_of(r, closed)).members
                        done_ids = await self._watch_done(mux, r)
                        ids = [m.node_id for m in members]
                        state, more = protocol.member_step(state, protocol.DoneSeen(done_ids, ids))
                        effects.extend(more)
                        continue
                    if isinstance(effect, protocol.Say):
                        log.info("%s", effect.line)
                        continue
                    return await self._perform(effect, r, closed)
                item = await mux.next(s.clock)
                assert item is not None
                tag, ev = item
                if tag == "evicted":
                    return RoundChange(ChangeKind.MEMBER_LOST, None, "this node's lease ended")
                if isinstance(ev, StoreError):
                    raise ev
                assert ev is not None
                event: protocol.Event | None = None
                if tag == "round" and ev.type is EventType.PUT:
                    event = protocol.PointerMoved(RoundPointer.from_json(ev.kv.value))
                elif tag == "pred" and ev.type is EventType.DELETE and state.pred is not None:
                    gone = state.pred
                    # A done node leaving is not lost: the reducer watches the one before it.
                    was_done = await store.get(k.done_key(r, gone)) is not None
                    members = (await s.members_of(r, closed)).members if was_done else ()
                    event = protocol.PredecessorLeft(gone, was_done, [m.node_id for m in members])
                    since = ev.revision
                elif tag == "waiting" and ev.type is EventType.PUT:
                    nid = ev.kv.key[len(k.waiting) :]
                    members = (await s.members_of(r, closed)).members
                    event = protocol.NodeWaits(nid, members, s.pointers[r][0])
                elif tag == "done" and ev.type is EventType.PUT:
                    event = protocol.DoneSeen([ev.kv.key[len(k.done(r)) :]])
                effects = []
                if event is not None:
                    state, effects = protocol.member_step(state, event)

    async def _perform(self, effect: protocol.Effect, r: int, closed: ClosedRound) -> RoundChange:
        """The effects that end the watch of round r."""
        if isinstance(effect, protocol.Superseded):
            return await self._outcomes.change_of(effect.pointer)
        if isinstance(effect, protocol.MemberLost):
            return await self.lost(r, closed, effect.node_id)
        if isinstance(effect, protocol.FinishSuccess):
            return await self._finish_success(r)
        assert isinstance(effect, protocol.Bump), effect
        return await self.bump(r, effect.reason, effect.detail)

    async def _watch_done(self, mux: Mux, r: int) -> list[str]:
        store, prefix = self._s.store, self._s.keys.done(r)
        kvs, rev = await store.range(prefix)
        mux.add("done", store.watch(prefix, prefix=True, start_revision=rev + 1))
        return [kv.key[len(prefix) :] for kv in kvs]

    async def _finish_success(self, r: int) -> RoundChange:
        store = self._s.store
        ptr, rev = self._s.pointers.get(r) or await store.pointer()
        if ptr.round == r:
            end = budget.end_pointer(ptr, "success")
            if await store.cas_pointer(end, rev):
                await store.outcome_of(end)
                log.info("every member of round %d succeeded: job succeeded", r)
                return change_for(end)
        cur, _ = await store.pointer()
        if cur.reason == REASON_JOB_ENDED:
            await store.outcome_of(cur)
        return change_for(cur)

    async def lost(self, r: int, closed: ClosedRound, gone: str, detail: str = "") -> RoundChange:
        """Member ``gone`` of round r was lost (``detail``: how, if not its lease alone):
        restart (counts one), or with the budget spent end the job with a root
        cause that names the node as lost (budget.lost_node_report)."""
        s, store = self._s, self._s.store
        ptr, rev = s.pointers[r]
        limit = s.budget.max_restarts
        if budget.budget_left(ptr, limit):
            return await self.bump(r, REASON_MEMBER_LOST, detail or f"lost node {gone}")
        members = (await s.members_of(r, closed)).members
        why = [detail] if detail else []  # else: the lost node's lease ended
        report = budget.lost_node_report(members, gone, r, ptr.restart_count, limit, *why)
        await store.create(s.keys.lost(r, gone), report.to_json())
        end = budget.end_pointer(ptr, "failed")
        if await store.cas_pointer(end, rev):
            out = await store.outcome_of(end)
            log.error("%s: the job fails", out.root_cause.message if out.root_cause else detail)
            return change_for(end)
        cur, _ = await store.pointer()
        return change_for(cur)

    async def bump(self, r: int, reason: str, detail: str) -> RoundChange:
        """Move the pointer from round r (only from r: fencing) and report the change."""
        s = self._s
        ptr, rev = s.pointers[r]
        new = budget.next_pointer(ptr, reason, detail)
        if await s.store.cas_pointer(new, rev):
            log.info("round %d superseded by round %d: %s", r, new.round, detail)
            s.emit(RoundOpened, new.round, reason=reason, detail=detail)
            return change_for(new)
        cur, _ = await s.store.pointer()
        return change_for(cur)
