"""Joining a round: create this node's key, find the closer, follow it, read the result.

:class:`Joining` drives one node's joins; the decisions are the joiner's
(:mod:`corral.rendezvous.protocol.joiner`), the budget's and the ranks'.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

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
from corral.rendezvous.driver.closing import Closer
from corral.rendezvous.driver.ending import Outcomes
from corral.rendezvous.driver.quarantine import Quarantines
from corral.rendezvous.driver.running import Running
from corral.rendezvous.driver.session import Membership, Session
from corral.rendezvous.driver.store import decode_closed
from corral.rendezvous.protocol import budget, ranks
from corral.rendezvous.protocol import joiner as protocol
from corral.rendezvous.protocol.records import (
    Assignment,
    ClosedRound,
    Quarantine,
    RankTable,
    encode_node,
    rank_table_of,
)
from corral.rendezvous.waits import watching
from corral.store.api import EventType, KeyValue, WatchEvent, WriteResult

__all__ = ["Joining", "SpareWait"]

log = logging.getLogger("corral.rendezvous.dynamic")  # one logger for the rendezvous


@dataclass(frozen=True, slots=True)
class SpareWait:
    """Round ``round`` runs without this node and no round will admit it while the
    restart budget is spent: the node waits, with no join_timeout, then joins again
    (:meth:`Joining.wait_next_round`)."""

    round: int
    closed: ClosedRound
    pointer_revision: int
    lease: int


class Joining:
    """One node's joins: its watch of ``close/`` and the round it is joining.

    Attributes:
        round: the round the join in progress last tried (-1: none yet); the
            join's timeout names it.
    """

    def __init__(
        self,
        session: Session,
        closer: Closer,
        running: Running,
        outcomes: Outcomes,
        quarantines: Quarantines,
    ) -> None:
        self._s = session
        self._closer = closer
        self._running = running
        self._outcomes = outcomes
        self._quarantines = quarantines
        self.round = -1
        # The last store error a join retried past, for its timeout's line.
        self._unreachable: StoreError | None = None
        # This node's watch of close/ (see close_events).
        self._close_watch: contextlib.AsyncExitStack | None = None
        self._close_iter: AsyncIterator[WatchEvent] | None = None

    def unreachable_text(self) -> str:
        """``"; the store could not be reached: <its last error>"`` after a join's failed
        requests, else empty."""
        return f"; the store could not be reached: {self._unreachable}" if self._unreachable else ""

    async def join(self) -> RoundInfo | SpareWait | Quarantine:
        """Join until this node is in a closed round, or must wait as a spare, or is
        quarantined (the caller bounds it by join_timeout)."""
        s = self._s
        self.round = -1
        while True:
            try:
                lease = await s.lease.ensure()
                result = await self._join_round(lease)
            except LeaseNotFound:
                s.lease.evict()  # our lease ended under us: take a new one
                continue
            except (StoreTimeout, StoreUnavailable) as exc:  # try again until join_timeout
                await self._retry_later(exc)
                continue
            self._unreachable = None
            if isinstance(result, RoundInfo):
                s.expect = result.round + 1
            if result is not None:
                return result

    async def _retry_later(self, exc: StoreError) -> None:
        """A join's request got no answer (a partition, the store's host down): wait a
        moment and let the join try again, within its join_timeout; nobody gives up before.

        The first such error of a join is logged; the last one names the store in the
        join's timeout (:meth:`unreachable_text`).
        """
        s = self._s
        if self._unreachable is None:
            log.warning("node %s: the store cannot be reached (trying until join_timeout): %s",
                        s.node_id, exc)  # fmt: skip
        self._unreachable = exc
        await s.clock.sleep(min(1.0, s.conf.keep_alive_interval))

    async def _join_round(self, lease: int) -> RoundInfo | SpareWait | Quarantine | None:
        s, store, k = self._s, self._s.store, self._s.keys
        me = s.node_id
        port = s.node.master_port or free_port(s.node.addr)
        desc = encode_node(replace(s.node, master_port=port))
        # This node's watch of close/ (every round's closer and closed), opened
        # before its first join step and kept while it lives. Then one request
        # joins round r (the round this node expects): it creates this node's
        # key and, if there is none, the closer's key (the first joiner
        # closes), and reads the pointer and close/<r>/. If the pointer names
        # another round, take back what was created and join that round the
        # same way.
        refused = await self._quarantines.check()  # a quarantined address joins no round
        if refused is not None:
            return refused
        events = await self._close_events()
        r = s.expect
        while True:
            mine, closer, ptr, ptr_rev, close_kvs, rev = await store.join_step(r, me, desc, lease)
            existing = mine.kv.lease if mine.kv is not None else None
            step = protocol.join_step(r, lease, mine.succeeded, existing, ptr)
            if step is protocol.JoinStep.ID_IN_USE:
                raise RendezvousError(f"node id {me!r} is already used by another live agent")
            if step is protocol.JoinStep.JOINED:
                break
            await self._retract(r, mine, closer)
            if step is protocol.JoinStep.JOB_ENDED:
                await self._outcomes.raise_outcome(ptr)
            r = s.expect = ptr.round
        s.pointers[r] = (ptr, ptr_rev)
        s.budget, differs = budget.adopt_budget(s.budget, ptr)  # one budget for the job
        for d in differs:
            log.warning("%s", d.line())
        self.round = r
        s.emit(NodeJoined, r, addr=s.node.addr)
        closed_kv = next((kv for kv in close_kvs if kv.key == k.closed(r)), None)
        then = protocol.after_join(closed_kv is not None, closer.succeeded)
        if closed_kv is not None:  # then is AfterJoin.CLOSED
            # Closed before this join: a member only if this node had joined
            # under this lease before (a join cut short by a timeout); an
            # evicted node has not.
            await self._retract(r, mine, closer)
            member = not mine.succeeded
            return await self._after_close(r, closed_kv, ptr_rev, lease, member=member)
        if s.waiting:
            s.waiting = False
            await store.delete(k.waiting_key(me))
        full: ClosedRound | None = None
        if then is protocol.AfterJoin.FOLLOW:
            # Someone is closing: follow (and take over if that closer leaves).
            closed_kv = await self._follow(r, lease, events, rev)
        if closed_kv is None:  # this node closes
            closed_kv, full = await self._closer.close_round(ptr, lease)
        return await self._after_close(r, closed_kv, ptr_rev, lease, full=full)

    async def _close_events(self) -> AsyncIterator[WatchEvent]:
        """This node's watch of close/ (from now), opened on first use."""
        if self._close_watch is None:
            stack = contextlib.AsyncExitStack()
            watch = self._s.store.watch(self._s.keys.closes, prefix=True)
            self._close_iter = await stack.enter_async_context(watch)
            self._close_watch = stack
        assert self._close_iter is not None
        return self._close_iter

    async def drop_close_events(self) -> None:
        """Close this node's watch of close/ (the next join opens a new one)."""
        stack, self._close_watch, self._close_iter = self._close_watch, None, None
        if stack is not None:
            with contextlib.suppress(StoreError):
                await stack.aclose()

    async def _retract(self, r: int, mine: WriteResult, closer: WriteResult) -> None:
        """Delete the keys a join step created in round r (a round this node is not joining)."""
        s = self._s
        if mine.succeeded:
            await s.store.delete(s.keys.node(r, s.node_id))
        if closer.succeeded:
            await s.store.delete(s.keys.closer(r))

    async def _after_close(
        self,
        r: int,
        closed_kv: KeyValue,
        ptr_rev: int,
        lease: int,
        *,
        member: bool = True,
        full: ClosedRound | None = None,
    ) -> RoundInfo | SpareWait | None:
        """This node's place in closed round r: O(1) bytes unless it wrote the member list.

        ``full``: the member list this node wrote as the closer (used only if its
        ``closed`` is the one that won). None: it waited for the next round (join again).
        """
        s = self._s
        me = s.node_id
        closed = decode_closed(closed_kv)
        if full is not None and full.tag != closed.tag:
            full = None
        if closed.members:
            full = closed  # a record that carries its members
        assignment: Assignment | None = None
        if member and full is not None:
            idx = full.rank_of(me)
            if idx is not None:
                assignment = ranks.assignments(full.members)[idx]
        elif member:
            if closed.rank_tables < 1:
                raise RendezvousError(
                    f"round {r} was closed with no rank tables (by another corral version?)"
                )
            # Written before closed: any state as of closed's revision has it.
            index = rank_table_of(me, closed.rank_tables)
            tkv = await s.store.get(
                s.keys.rank_table(r, closed.tag, index), min_revision=closed_kv.mod_revision
            )
            if tkv is not None:
                assignment = RankTable.from_json(tkv.value).assignments.get(me)
        if full is not None:
            s.members[r] = full
        if assignment is not None:
            s.memberships[r] = Membership(closed, closed_kv.mod_revision, assignment)
            info = ranks.round_info_of(
                s.run_id, closed, assignment, full.members if full is not None else (),
                s.budget.max_restarts,
            )  # fmt: skip
            log.debug(
                "round %d closed: node %s is group rank %d of %d (restart %d)",
                r, me, info.group_rank, info.group_world_size, info.restart_count,
            )  # fmt: skip
            return info
        members = await s.members_of(r, closed)
        wait = SpareWait(r, members, ptr_rev, lease)
        used = s.pointers[r][0].restart_count
        if budget.is_spare(closed.node_count, s.max_nodes, used, s.budget.max_restarts):
            return wait  # join() waits, with no join_timeout, then joins again
        await self.wait_next_round(wait)
        return None

    async def _follow(
        self, r: int, lease: int, events: AsyncIterator[WatchEvent], seen: int
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
        s, store, k = self._s, self._s.store, self._s.keys
        closed_key, closer_key = k.closed(r), k.closer(r)
        me = s.node_id
        gone = False  # the closer's key was seen to go
        while True:
            if gone:
                gone = False
                res = await store.create(closer_key, me.encode(), lease=lease)
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
                    raise StoreUnavailable(f"the watch of {k.closes} ended")
            except StoreCompacted:
                log.info("watch of %s resumed too late (compacted); watching again", k.closes)
                await self.drop_close_events()
                events = await self._close_events()
                kvs, seen = await store.range(k.close_prefix(r))
                state = {kv.key: kv for kv in kvs}
                if closed_key in state:
                    return state[closed_key]
                gone = closer_key not in state
            except StoreError:
                await self.drop_close_events()  # the next join opens a new one
                raise

    async def wait_next_round(self, wait: SpareWait) -> None:
        """Round r closed without this node: wait in ``waiting/`` until the pointer moves.

        Running members see the waiting key and start a new round while below
        max. If every member of round r is gone, nobody would: this node then
        starts the next round itself.
        """
        s, store, k = self._s, self._s.store, self._s.keys
        r, closed, me = wait.round, wait.closed, s.node_id
        await store.put(k.waiting_key(me), encode_node(s.node), lease=wait.lease)
        s.waiting = True
        s.emit(NodeWaiting, r, subject=me, detail=f"round {r} closed without this node")
        ptr = s.pointers[r][0]
        n, cap, used = len(closed.members), s.max_nodes, ptr.restart_count
        log.info("%s", budget.waiting_line(me, r, n, cap, used, s.budget.max_restarts))
        nodes_prefix = k.nodes(r)
        async with watching() as mux:
            mux.add("round", store.watch(k.round, start_revision=wait.pointer_revision + 1))
            mux.add_event("evicted", s.lease.evicted)
            mux.add_failure(s.lease)
            while True:
                kvs, rev = await store.range(nodes_prefix)
                live = [kv.key[len(nodes_prefix) :] for kv in sorted(kvs, key=_created)]
                target = protocol.waiting_target([m.node_id for m in closed.members], live)
                if target is None:  # every member is gone: nobody else would start a round
                    first = closed.members[0].node_id
                    await self._running.lost(r, closed, first, f"every member of round {r} left")
                    return
                mux.add("member", store.watch(k.node(r, target), start_revision=rev + 1))
                while True:
                    item = await mux.next(s.clock)
                    assert item is not None
                    tag, ev = item
                    if isinstance(ev, StoreError):
                        raise ev
                    if tag == "evicted":
                        raise LeaseNotFound(f"lease {wait.lease} ended while waiting")
                    if tag == "round":
                        return
                    if tag == "member" and ev is not None and ev.type is EventType.DELETE:
                        break


def _created(kv: KeyValue) -> int:
    return kv.create_revision
