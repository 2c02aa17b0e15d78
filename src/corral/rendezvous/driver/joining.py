"""Joining a round: the driver of the joiner's reducer (:mod:`corral.rendezvous.protocol.joiner`).

:class:`Joining` performs the reducer's effects (store requests, this node's
watch of ``close/``, the wait for the next round, log lines and events) and
feeds what came back as the next event. Every decision is the reducer's.
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
from corral.rendezvous.protocol import joiner as protocol
from corral.rendezvous.protocol.records import Quarantine, RankTable, encode_node
from corral.rendezvous.waits import Mux, watching
from corral.store.api import EventType, KeyValue, WatchEvent

__all__ = ["Joining", "SpareWait"]

log = logging.getLogger("corral.rendezvous.dynamic")  # one logger for the rendezvous

# Round ``round`` runs without this node and no round will admit it while the
# restart budget is spent: the node waits, with no join_timeout, then joins
# again (:meth:`Joining.wait_next_round`).
SpareWait = protocol.Spare

# The effects done without I/O (Joining._apply), and those that keep the wait for the
# next round's watches open.
_LOCAL: frozenset[type[protocol.Effect]] = frozenset(
    {
        protocol.Placed, protocol.Joined, protocol.Remember, protocol.Say, protocol.Warn,
        protocol.EvictLease, protocol.Spare, protocol.Quarantined, protocol.Refuse,
        protocol.Rejoin,
    }
)  # fmt: skip
_IN_WAIT: frozenset[type[protocol.Effect]] = frozenset({protocol.ReadLive, protocol.WatchMember})


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
        # The joiner's last state (its ``unreachable`` names the store in a timeout).
        self._state: protocol.JoinerState | None = None
        # This node's watch of close/ (see _close_events).
        self._close_watch: contextlib.AsyncExitStack | None = None
        self._close_iter: AsyncIterator[WatchEvent] | None = None
        # This node's offer for the try in progress (a fresh port per try).
        self._desc: bytes | None = None

    def unreachable_text(self) -> str:
        """``"; the store could not be reached: <its last error>"`` after a join's failed
        requests, else empty."""
        error = self._state.unreachable if self._state is not None else None
        return f"; the store could not be reached: {error}" if error else ""

    async def join(self) -> RoundInfo | SpareWait | Quarantine:
        """Join until this node is in a closed round, or must wait as a spare, or is
        quarantined (the caller bounds it by join_timeout)."""
        s = self._s
        self.round = -1
        state, effects = protocol.start_join(
            node_id=s.node_id,
            run_id=s.run_id,
            max_nodes=s.max_nodes,
            budget=s.budget,
            retry_delay=min(1.0, s.conf.keep_alive_interval),
            expect=s.expect,
            waiting=s.waiting,
            former=s.lease.held(),
        )
        result = await self._run(state, effects)
        assert result is not None
        return result

    async def wait_next_round(self, wait: SpareWait) -> None:
        """Round ``wait.round`` closed without this node, a spare: wait in ``waiting/``
        until the pointer moves (outside join_timeout), then return (join again).

        Raises: the store error that ended the wait, if one did.
        """
        s = self._s
        state, effects = protocol.start_waiting(
            node_id=s.node_id,
            run_id=s.run_id,
            max_nodes=s.max_nodes,
            budget=s.budget,
            retry_delay=min(1.0, s.conf.keep_alive_interval),
            spare=wait,
            pointer=s.pointers[wait.round][0],
        )
        await self._run(state, effects)

    async def _run(
        self, state: protocol.JoinerState, effects: list[protocol.Effect]
    ) -> RoundInfo | SpareWait | Quarantine | None:
        """Perform effects and feed what comes back until a terminal effect."""
        # The wait for the next round's watches, made when a spare waits (a K-node join in
        # one process would keep K of them for nothing).
        waits: contextlib.AsyncExitStack | None = None
        mux: list[Mux] = []
        failure: StoreError | None = None  # the error the last event reported
        try:
            while True:
                self._state = state
                event: protocol.Event | None = None
                try:
                    for effect in effects:
                        out: protocol.Event | _End | None
                        if mux and type(effect) not in _IN_WAIT:
                            assert waits is not None
                            mux.clear()
                            await waits.aclose()
                        if type(effect) in _LOCAL:  # no I/O, no coroutine (a K-node join: many)
                            if type(effect) is protocol.Rejoin and effect.error:
                                assert failure is not None
                                raise failure  # a spare's wait ends with the error
                            out = self._apply(effect)
                        elif type(effect) is protocol.PutWaiting:
                            if waits is None:
                                waits = contextlib.AsyncExitStack()
                            mux.append(await self._put_waiting(effect, waits))
                            continue
                        elif type(effect) is protocol.WatchMember:
                            event = await self._watch_member(effect, mux[0])
                            continue
                        else:
                            out = await self._perform(effect)
                        if isinstance(out, _End):
                            return out.result
                        if out is not None:
                            event = out
                except LeaseNotFound:
                    event = protocol.LeaseLost()
                except (StoreTimeout, StoreUnavailable) as exc:  # the reducer decides
                    failure = exc
                    event = protocol.Unreachable(str(exc), self._s.clock.now())
                assert event is not None, f"no event after {effects}"
                state, effects = protocol.joiner_step(state, event)
        finally:
            if waits is not None:
                await waits.aclose()

    async def _perform(self, effect: protocol.Effect) -> protocol.Event | _End | None:
        """Do one effect: the event it asked for (None: it asks nothing), or the
        join's end."""
        s, store, k = self._s, self._s.store, self._s.keys
        match effect:
            case protocol.EnsureLease():
                self._desc = None  # a fresh port for each try
                return protocol.LeaseReady(await s.lease.ensure())
            case protocol.RevokeFormer(lease=former):
                with contextlib.suppress(LeaseNotFound):  # it expired meanwhile: its keys went
                    await store.revoke(former)
            case protocol.CheckQuarantine():
                return protocol.QuarantineChecked(await self._quarantines.check())
            case protocol.RequestJoin(round=r, lease=lease):
                if self._desc is None:
                    port = s.node.master_port or free_port(s.node.addr)
                    self._desc = encode_node(replace(s.node, master_port=port))
                await self._close_events()  # in place before the request's read
                s.expect = r
                mine, closer, ptr, ptr_rev, close_kvs, rev = await store.join_step(
                    r, s.node_id, self._desc, lease
                )
                closed_kv = next((kv for kv in close_kvs if kv.key == k.closed(r)), None)
                return protocol.JoinRead(
                    r,
                    mine.succeeded,
                    mine.kv.lease if mine.kv is not None else None,
                    closer.succeeded,
                    ptr,
                    ptr_rev,
                    _ref(closed_kv),
                    rev,
                )
            case protocol.Follow(round=r):
                return await self._follow(r)
            case protocol.TakeOver(round=r, lease=lease):
                res = await store.create(k.closer(r), s.node_id.encode(), lease=lease)
                return protocol.TakeOverResult(res.succeeded)
            case protocol.ReadClose(round=r):
                await self.drop_close_events()
                await self._close_events()
                kvs, seen = await store.range(k.close_prefix(r))
                by_key = {kv.key: kv for kv in kvs}
                closed = _ref(by_key.get(k.closed(r)))
                return protocol.CloseRead(closed, k.closer(r) in by_key, seen)
            case protocol.Close(pointer=ptr, lease=lease):
                kv, full = await self._closer.close_round(ptr, lease)
                ref = _ref(kv)
                assert ref is not None
                return protocol.RoundClosed(ref, full)
            case protocol.ReadRankTable(round=r, tag=tag, index=i, min_revision=min_rev):
                tkv = await store.get(k.rank_table(r, tag, i), min_revision=min_rev)
                a = RankTable.from_json(tkv.value).assignments.get(s.node_id) if tkv else None
                return protocol.RankTableRead(a)
            case protocol.ReadMembers(round=r, closed=closed):
                return protocol.MembersRead(await s.members_of(r, closed))
            case protocol.ReadLive(round=r):
                prefix = k.nodes(r)
                kvs, rev = await store.range(prefix)
                live = [kv.key[len(prefix) :] for kv in sorted(kvs, key=_created)]
                return protocol.LiveRead(live, rev)
            case protocol.WakeAt(at=at):
                await s.clock.sleep(max(0.0, at - s.clock.now()))
                return protocol.Timer(s.clock.now())
            case protocol.Retract(round=r, node=node, closer=closer_key):
                if node:
                    await store.delete(k.node(r, s.node_id))
                if closer_key:
                    await store.delete(k.closer(r))
            case protocol.DeleteWaiting():
                s.waiting = False
                await store.delete(k.waiting_key(s.node_id))
            case protocol.EndLost(round=r, closed=closed, first=first, detail=detail):
                await self._running.lost(r, closed, first, detail)
            case protocol.RaiseOutcome(pointer=ptr):
                await self._outcomes.raise_outcome(ptr)
                raise RendezvousError("the job ended with no outcome")  # pragma: no cover
            case _:  # pragma: no cover - PutWaiting, WatchMember and _LOCAL are _run's
                raise AssertionError(f"not an effect of _perform: {effect}")
        return None

    def _apply(self, effect: protocol.Effect) -> _End | None:
        """Do one effect that needs no I/O (:data:`_LOCAL`): None, or the join's end."""
        s = self._s
        match effect:
            case protocol.Placed(info=info, closed=ref, assignment=assignment):
                s.memberships[info.round] = Membership(ref.record, ref.revision, assignment)
                s.expect = info.round + 1
                log.debug(
                    "round %d closed: node %s is group rank %d of %d (restart %d)",
                    info.round, s.node_id, info.group_rank, info.group_world_size,
                    info.restart_count,
                )  # fmt: skip
                return _End(info)
            case protocol.Joined(round=r, pointer=ptr, pointer_revision=rev, budget=budget):
                s.pointers[r] = (ptr, rev)
                s.budget = budget
                self.round = r
                s.emit(NodeJoined, r, addr=s.node.addr)
            case protocol.Remember(round=r, full=full):
                s.members[r] = full
            case protocol.Say(line=line):
                log.info("%s", line)
            case protocol.Warn(line=line):
                log.warning("%s", line)
            case protocol.EvictLease():
                s.lease.evict()  # our lease ended under us: the next try takes a new one
            case protocol.Spare():
                return _End(effect)
            case protocol.Quarantined(record=rec):
                return _End(rec)
            case protocol.Refuse(message=message):
                raise RendezvousError(message)
            case protocol.Rejoin():
                return _End(None)
            case _:  # pragma: no cover - _run sends only _LOCAL effects here
                raise AssertionError(f"not a local effect: {effect}")
        return None

    async def _close_events(self) -> AsyncIterator[WatchEvent]:
        """This node's watch of close/ (from now), opened on first use and kept while
        it lives (every round's closer and closed)."""
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

    async def _follow(self, r: int) -> protocol.Event:
        """The next event of round r's ``closed`` (a put) or closer key (a delete).

        The watch is kept between joins, so it may have to resume (on another
        etcd member) from a revision the store has compacted since: then the
        reducer has it made again from now, and ``close/<r>/`` read again.
        """
        k = self._s.keys
        closed_key, closer_key = k.closed(r), k.closer(r)
        events = await self._close_events()
        try:
            async for ev in events:
                if ev.kv.key == closed_key and ev.type is EventType.PUT:
                    ref = _ref(ev.kv)
                    assert ref is not None
                    return protocol.CloseSeen(ref, ev.revision)
                if ev.kv.key == closer_key and ev.type is EventType.DELETE:
                    return protocol.CloserLeft(ev.revision)
            raise StoreUnavailable(f"the watch of {k.closes} ended")
        except StoreCompacted:
            log.info("watch of %s resumed too late (compacted); watching again", k.closes)
            return protocol.Compacted()
        except StoreError:
            await self.drop_close_events()  # the next join opens a new one
            raise

    async def _put_waiting(
        self, effect: protocol.PutWaiting, waits: contextlib.AsyncExitStack
    ) -> Mux:
        """Put this node's waiting key, say so, and watch the pointer (and the lease)."""
        s, store, k = self._s, self._s.store, self._s.keys
        r, me = effect.round, s.node_id
        await store.put(k.waiting_key(me), encode_node(s.node), lease=effect.lease)
        s.waiting = True
        s.emit(NodeWaiting, r, subject=me, detail=f"round {r} closed without this node")
        log.info("%s", effect.line)
        mux = await waits.enter_async_context(watching())
        mux.add("round", store.watch(k.round, start_revision=effect.pointer_revision + 1))
        mux.add_event("evicted", s.lease.evicted)
        mux.add_failure(s.lease)
        return mux

    async def _watch_member(self, effect: protocol.WatchMember, mux: Mux) -> protocol.Event:
        """Watch one member's key until it goes, or the pointer moves."""
        s = self._s
        key = s.keys.node(effect.round, effect.node_id)
        mux.add("member", s.store.watch(key, start_revision=effect.revision + 1))
        while True:
            item = await mux.next(s.clock)
            assert item is not None
            tag, ev = item
            if isinstance(ev, StoreError):
                raise ev
            if tag == "evicted":
                return protocol.LeaseLost()
            if tag == "round":
                return protocol.PointerMoved()
            if tag == "member" and ev is not None and ev.type is EventType.DELETE:
                return protocol.MemberLeft()


@dataclass(frozen=True, slots=True)
class _End:
    """The join's end: what it returns."""

    result: RoundInfo | SpareWait | Quarantine | None


def _ref(kv: KeyValue | None) -> protocol.ClosedRef | None:
    return protocol.ClosedRef(decode_closed(kv), kv.mod_revision) if kv is not None else None


def _created(kv: KeyValue) -> int:
    return kv.create_revision
