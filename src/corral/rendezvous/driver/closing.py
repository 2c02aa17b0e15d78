"""The closer's driver: watch the round's joins, feed them to the closer's reducer
(:mod:`corral.rendezvous.protocol.closer`), and write the round it closes."""

from __future__ import annotations

import contextlib
import logging

from corral.core.errors import LeaseNotFound, StoreError
from corral.core.keys import Keys
from corral.rendezvous.driver.ending import Outcomes
from corral.rendezvous.driver.session import Session
from corral.rendezvous.driver.store import decode_closed
from corral.rendezvous.protocol import closer as protocol
from corral.rendezvous.protocol.ranks import Joiner, rank_tables
from corral.rendezvous.protocol.records import (
    REASON_JOB_ENDED,
    ClosedRound,
    RoundPointer,
    decode_node,
)
from corral.rendezvous.waits import watching
from corral.store.api import EventType, KeyValue

__all__ = ["Closer"]

log = logging.getLogger("corral.rendezvous.dynamic")  # one logger for the rendezvous


class Closer:
    """Closes rounds for one node (the first live joiner of a round closes it).

    Args:
        session: the node's driver state.
        outcomes: ends a close when the job ends meanwhile.
        params: the limits the closer decides with.
        fixed_ranks: rank by node id (the static backend).
    """

    def __init__(
        self,
        session: Session,
        outcomes: Outcomes,
        params: protocol.CloseParams,
        *,
        fixed_ranks: bool = False,
    ) -> None:
        self._s = session
        self._outcomes = outcomes
        self._params = params
        self._fixed_ranks = fixed_ranks

    async def close_round(
        self, ptr: RoundPointer, lease: int
    ) -> tuple[KeyValue, ClosedRound | None]:
        """As the closer: watch the joins and close when the reducer says so.

        Writes the member list and the assignments first, then ``closed``
        (create-only: the first closer wins; its tag names its lists). Returns
        the ``closed`` key and, if this node's record won, its full record.
        """
        s, store, k = self._s, self._s.store, self._s.keys
        r = ptr.round
        nodes_prefix = k.nodes(r)
        prev_prefix = k.nodes(r - 1)
        # Each watch is in place before the read it follows (events up to the
        # read's revision are skipped). A watch from a past revision would do
        # too, but etcd serves one from its "unsynced" watchers, caught up
        # every 100 ms: that delay would be the close's.
        seen: dict[str, int] = {}
        async with watching() as mux:
            # the pointer from the join's read on: a job that ends meanwhile (a
            # stop recorded on a signal) ends this close, and with it the join
            since = s.pointers[r][1] + 1 if r in s.pointers else 0
            await mux.start_all(
                {
                    "nodes": store.watch(nodes_prefix, prefix=True),
                    "closed": store.watch(k.closed(r)),
                    "round": store.watch(k.round, start_revision=since),
                }
            )
            kvs, seen["nodes"] = await store.range(nodes_prefix)
            joined = [joiner(kv) for kv in kvs]
            pkv = await store.get(k.closed(r - 1)) if r > 0 else None
            prev: ClosedRound | None = None
            live: list[str] = []
            quarantined: list[str] = []
            waiting: list[str] = []
            if pkv is not None:
                # A restart: every live member of round r-1, and every waiting
                # node, is expected (see protocol.closer.close_decision).
                prev = await s.members_of(r - 1, decode_closed(pkv))
                await mux.start_all(
                    {
                        "prev": store.watch(prev_prefix, prefix=True),
                        "waiting": store.watch(k.waiting, prefix=True),
                    }
                )
                prev_kvs, seen["prev"] = await store.range(prev_prefix)
                qkvs, _ = await store.range(k.quarantine)
                quarantined = [kv.key[len(k.quarantine) :] for kv in qkvs]
                # a member that left round r-1 (a signal, or unhealthy: its lease may live
                # on) holds no slot either
                left = {Keys.leaf(kv.key) for kv in (await store.range(k.left(r - 1)))[0]}
                back = (kv.key[len(prev_prefix) :] for kv in prev_kvs)
                live = [i for i in back if i not in left]
                wkvs, seen["waiting"] = await store.range(k.waiting)
                waiting = [kv.key[len(k.waiting) :] for kv in wkvs]
            mux.add_event("evicted", s.lease.evicted)
            mux.add_failure(s.lease)
            now = s.clock.now()
            state = protocol.start_closing(
                round=r,
                restart_count=ptr.restart_count,
                tag=f"{s.node_id}.{lease:x}",
                params=self._params,
                joined=joined,
                now=now,
                previous=prev,
                live_previous=live,
                quarantined=quarantined,
                waiting=waiting,
                fixed_ranks=self._fixed_ranks,
            )
            changes: list[protocol.Change] = []
            while True:
                now = s.clock.now()
                state, effects = protocol.close_step(state, protocol.Changes(now, changes))
                changes = []
                wake_at: float | None = None
                for effect in effects:
                    if isinstance(effect, protocol.CloseRound):
                        return await self._close(effect.record, effect.why)
                    wake_at = effect.at
                item = await mux.next(s.clock, None if wake_at is None else wake_at - now)
                # every change ready now is one step of the reducer
                while item is not None:
                    tag, ev = item
                    if isinstance(ev, StoreError):
                        raise ev
                    if tag == "evicted":
                        raise LeaseNotFound(f"lease {lease} ended while closing round {r}")
                    assert ev is not None
                    if ev.revision > seen.get(tag, 0):  # else the read already had it
                        if tag == "closed" and ev.type is EventType.PUT:
                            return ev.kv, None
                        if tag == "round" and ev.type is EventType.PUT:
                            moved = RoundPointer.from_json(ev.kv.value)
                            if moved.reason == REASON_JOB_ENDED:
                                await self._outcomes.raise_outcome(moved)
                        change = _change(tag, ev.type, ev.kv, nodes_prefix, prev_prefix, k.waiting)
                        if change is not None:
                            changes.append(change)
                    item = mux.ready()

    async def _close(self, full: ClosedRound, why: str) -> tuple[KeyValue, ClosedRound | None]:
        store, k, r = self._s.store, self._s.keys, full.round
        writes = [(k.members(r, full.tag), full.to_json())]
        writes += [
            (k.rank_table(r, full.tag, i), t.to_json())
            for i, t in enumerate(rank_tables(full.members))
        ]
        await store.put_many(writes)
        res = await store.create(k.closed(r), full.summary().to_json())
        assert res.kv is not None
        if not res.succeeded:
            return res.kv, None
        log.debug("closed round %d with %d nodes (%s)", r, len(full.members), why)
        if r >= 2:
            # Assignments of round r-2 are read by no one now (a node that
            # still looks finds none and rejoins); member lists stay.
            with contextlib.suppress(StoreError):
                await store.delete(k.ranks(r - 2), prefix=True)
        return res.kv, full


def _change(
    tag: str, kind: EventType, kv: KeyValue, nodes: str, prev: str, waiting: str
) -> protocol.Change | None:
    """The closer's view of one store event (None: nothing it decides on)."""
    if tag == "nodes":
        nid = kv.key[len(nodes) :]
        if kind is EventType.PUT:
            return protocol.Arrived(joiner(kv))
        return protocol.Departed(nid)
    if tag == "prev" and kind is EventType.DELETE:
        return protocol.ExpectedGone(kv.key[len(prev) :])
    if tag == "waiting" and kind is EventType.DELETE:
        return protocol.WaitingGone(kv.key[len(waiting) :])
    return None


def joiner(kv: KeyValue) -> Joiner:
    return Joiner(decode_node(kv.value), kv.create_revision)
