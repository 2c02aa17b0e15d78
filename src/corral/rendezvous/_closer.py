"""The closer: the first live joiner watches the joins and closes the round.

Functions of a :class:`~corral.rendezvous.dynamic.DynamicRendezvous`
(``rd``), which delegates to them; they read and write its state.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING

from corral.core.errors import LeaseNotFound, StoreError
from corral.core.keys import Keys
from corral.rendezvous import machine as m
from corral.rendezvous._aio import watching
from corral.rendezvous._common import decode_closed
from corral.rendezvous.state import (
    REASON_JOB_ENDED,
    ClosedRound,
    RoundPointer,
    decode_node,
    rank_table_count,
)
from corral.store.api import EventType, KeyValue

if TYPE_CHECKING:
    from corral.rendezvous.dynamic import DynamicRendezvous

log = logging.getLogger("corral.rendezvous.dynamic")  # one logger for the rendezvous


async def close_round(
    rd: DynamicRendezvous, ptr: RoundPointer, lease: int
) -> tuple[KeyValue, ClosedRound | None]:
    """As the closer: watch the joins and close when machine.close_decision says so.

    Writes the member list and the assignments first, then ``closed``
    (create-only: the first closer wins; its tag names its lists). Returns
    the ``closed`` key and, if this node's record won, its full record.
    """
    r = ptr.round
    k = rd._k
    nodes_prefix = k.nodes(r)
    prev_prefix = k.nodes(r - 1)
    prev: ClosedRound | None = None
    expected: set[str] = set()
    holders: set[str] = set()  # the previous round's members that keep their slots
    # Each watch is in place before the read it follows (events up to the
    # read's revision are skipped). A watch from a past revision would do
    # too, but etcd serves one from its "unsynced" watchers, caught up
    # every 100 ms: that delay would be the close's.
    seen: dict[str, int] = {}
    async with watching() as mux:
        # the pointer from the join's read on: a job that ends meanwhile (a
        # stop recorded on a signal) ends this close, and with it the join
        since = rd._pointers[r][1] + 1 if r in rd._pointers else 0
        await mux.start_all(
            {
                "nodes": rd._ops.watch(nodes_prefix, prefix=True),
                "closed": rd._ops.watch(k.closed(r)),
                "round": rd._ops.watch(k.round, start_revision=since),
            }
        )
        kvs, seen["nodes"] = await rd._ops.range(nodes_prefix)
        joined = {kv.key[len(nodes_prefix) :]: rd._joiner(kv) for kv in kvs}
        pkv = await rd._ops.get(k.closed(r - 1)) if r > 0 else None
        if pkv is not None:
            # A restart: every live member of round r-1, and every waiting
            # node, is expected (see machine.close_decision).
            prev = await rd._members_of(r - 1, decode_closed(pkv))
            await mux.start_all(
                {
                    "prev": rd._ops.watch(prev_prefix, prefix=True),
                    "waiting": rd._ops.watch(k.waiting, prefix=True),
                }
            )
            live, seen["prev"] = await rd._ops.range(prev_prefix)
            qkvs, _ = await rd._ops.range(k.quarantine)
            quarantined = [kv.key[len(k.quarantine) :] for kv in qkvs]
            # a member that left round r-1 (a signal, or unhealthy: its lease may live
            # on) holds no slot either
            left = {Keys.leaf(kv.key) for kv in (await rd._ops.range(k.left(r - 1)))[0]}
            back = (kv.key[len(prev_prefix) :] for kv in live)
            holders = m.slot_holders(prev.members, (i for i in back if i not in left), quarantined)
            expected = set(holders)
            wkvs, seen["waiting"] = await rd._ops.range(k.waiting)
            expected |= {kv.key[len(k.waiting) :] for kv in wkvs}
        mux.add_event("evicted", rd._evicted)
        mux.add_failure(rd._tasks)
        now = rd._clock.now()
        min_at: float | None = now if len(joined) >= rd._min else None
        last_arrival = now
        while True:
            now = rd._clock.now()
            if len(joined) >= rd._min:
                min_at = now if min_at is None else min_at
            else:
                min_at = None
            present = prev is not None and expected <= joined.keys()
            d = m.close_decision(
                joined=len(joined),
                expected_present=present,
                now=now,
                min_reached_at=min_at,
                last_arrival_at=last_arrival,
                p=rd._params,
                members_back=holders <= joined.keys(),
            )
            if d.close:
                if rd._fixed_ranks:
                    members = m.fixed_ranks(list(joined.values()))
                else:
                    members = m.assign_ranks(list(joined.values()), prev, rd._max)
                full = ClosedRound(
                    r,
                    ptr.restart_count,
                    members,
                    members[0].addr,
                    members[0].master_port,
                    tag=f"{rd._node.node_id}.{lease:x}",
                    rank_tables=rank_table_count(len(members)),
                )
                await rd._write_members(full)
                res = await rd._ops.create(k.closed(r), full.summary().to_json())
                assert res.kv is not None
                if not res.succeeded:
                    return res.kv, None
                log.debug("closed round %d with %d nodes (%s)", r, len(members), d.why)
                if r >= 2:
                    # Assignments of round r-2 are read by no one now (a node that
                    # still looks finds none and rejoins); member lists stay.
                    with contextlib.suppress(StoreError):
                        await rd._ops.delete(k.ranks(r - 2), prefix=True)
                return res.kv, full
            item = await mux.next(rd._clock, None if d.wake_at is None else d.wake_at - now)
            if item is None:
                continue
            tag, ev = item
            if isinstance(ev, StoreError):
                raise ev
            if tag == "evicted":
                raise LeaseNotFound(f"lease {lease} ended while closing round {r}")
            assert ev is not None
            if ev.revision <= seen.get(tag, 0):
                continue  # the read already had it
            if tag == "closed" and ev.type is EventType.PUT:
                return ev.kv, None
            if tag == "round" and ev.type is EventType.PUT:
                moved = RoundPointer.from_json(ev.kv.value)
                if moved.reason == REASON_JOB_ENDED:
                    await rd._raise_outcome(moved)
            if tag == "nodes":
                nid = ev.kv.key[len(nodes_prefix) :]
                if ev.type is EventType.PUT:
                    joined[nid] = rd._joiner(ev.kv)
                    last_arrival = rd._clock.now()
                else:
                    joined.pop(nid, None)
            elif tag == "prev" and ev.type is EventType.DELETE:
                expected.discard(ev.kv.key[len(prev_prefix) :])
                holders.discard(ev.kv.key[len(prev_prefix) :])
            elif tag == "waiting" and ev.type is EventType.DELETE:
                nid = ev.kv.key[len(k.waiting) :]
                if nid not in joined:
                    expected.discard(nid)


def joiner(kv: KeyValue) -> m.Joiner:
    return m.Joiner(decode_node(kv.value), kv.create_revision)
