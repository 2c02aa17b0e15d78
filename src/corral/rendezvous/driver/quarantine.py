"""Quarantine (``--quarantine-after N``): a node that keeps failing the job stays out.

The decisions are pure (``budget.failure_streak``, ``budget.quarantine_wanted``);
:class:`Quarantines` reads and writes the records.

The node that moves the round pointer after a failure judges the round's root
cause (the earliest failure report, a hang included): the pointer carries the
root cause's address and how many failures in a row it has caused. At N, and
only when the job can go on without it (a node waits, or MIN is met without
it), the node is written under ``quarantine/<addr>`` before the pointer moves,
so its agent, and any agent later started at that address, finds the record
at its next join: it takes no part in later rounds, says why in one line, and
waits for the job's end (:class:`~corral.core.errors.NodeQuarantined`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from corral.core.errors import NodeQuarantined, StoreUnavailable
from corral.core.events import NodeQuarantined as NodeQuarantinedEvent
from corral.core.model import RoundInfo
from corral.rendezvous.driver.session import Session
from corral.rendezvous.protocol import budget
from corral.rendezvous.protocol.records import REASON_JOB_ENDED, Quarantine, RoundPointer
from corral.store.api import EventType

__all__ = ["Quarantines", "Verdict"]

log = logging.getLogger("corral.rendezvous.dynamic")  # one logger for the rendezvous


@dataclass(frozen=True, slots=True)
class Verdict:
    """The judgement of a failed round's root cause: its address (``cause``), its
    failures in a row (``streak``, 0 once quarantined) and the record, if it is
    quarantined now."""

    cause: str = ""
    streak: int = 0
    record: Quarantine | None = None


class Quarantines:
    """The quarantine records of one node's job (``after``: ``--quarantine-after``, 0: off)."""

    def __init__(self, session: Session, after: int) -> None:
        self._s = session
        self._after = after

    async def judge(self, rnd: RoundInfo, ptr: RoundPointer) -> Verdict:
        """Before moving the pointer for a failure of ``rnd``: judge its root cause.

        The root cause read after this node's reports are in is final (a report
        created later has a later revision), so whichever node moves the pointer
        judges alike.
        """
        s = self._s
        if self._after <= 0:
            return Verdict()
        r = rnd.round
        root = (await s.store.failed(r)).root_cause
        place = s.memberships.get(r)
        if root is None or place is None:
            return Verdict()
        members = await s.members_of(r, place.closed)
        node = next((n for n in members.members if n.node_id == root.node_id), None)
        if node is None:
            return Verdict()
        streak = budget.failure_streak(ptr, node.addr)
        if streak < self._after:
            return Verdict(node.addr, streak)
        waiting, _ = await s.store.range(s.keys.waiting)
        spare = any(kv.key[len(s.keys.waiting) :] != node.node_id for kv in waiting)
        size = rnd.group_world_size
        if not budget.quarantine_wanted(streak, self._after, size, s.min_nodes, spare):
            return Verdict(node.addr, streak)
        reason = root.line().splitlines()[0]  # a hang, a lost node, a signal or an exit code
        return Verdict(
            node.addr, 0, Quarantine(node.addr, node.node_id, node.host, r, streak, reason)
        )

    async def record(self, rec: Quarantine, next_round: int) -> None:
        """Write ``rec`` (create-only: the first record of an address stays) before the
        pointer moves; say so in one line and one event."""
        s = self._s
        if not (await s.store.create(s.keys.quarantine_key(rec.addr), rec.to_json())).succeeded:
            return  # recorded already (a retried move, or another node): said once
        log.warning("%s; the job goes on without it", rec.line())
        s.emit(
            NodeQuarantinedEvent, next_round, subject=rec.node_id, addr=rec.addr,
            failures=rec.failures, reason=rec.reason,
        )  # fmt: skip

    async def check(self) -> Quarantine | None:
        """Before a join: this node's quarantine record, if its address has one."""
        kv = await self._s.store.get(self._s.keys.quarantine_key(self._s.node.addr))
        return Quarantine.from_json(kv.value) if kv is not None else None

    async def sit_out(self, rec: Quarantine) -> NodeQuarantined:
        """This node is quarantined: say why in one line, wait for the job's end (no
        join_timeout), and return the error the agent exits with."""
        s = self._s
        log.warning("%s: this node takes no part in the job and exits when it ends", rec.line())
        s.emit(
            NodeQuarantinedEvent, s.expect, subject=rec.node_id, addr=rec.addr,
            failures=rec.failures, reason=rec.reason,
        )  # fmt: skip
        ptr, rev = await s.store.pointer()
        if ptr.reason == REASON_JOB_ENDED:
            return NodeQuarantined(_gone(rec))
        async with s.store.watch(s.keys.round, start_revision=rev + 1) as events:
            async for ev in events:
                if ev.type is EventType.PUT:
                    if RoundPointer.from_json(ev.kv.value).reason == REASON_JOB_ENDED:
                        return NodeQuarantined(_gone(rec))
        raise StoreUnavailable(f"the watch of {s.keys.round} ended")


def _gone(rec: Quarantine) -> str:
    return f"node {rec.addr} was kept out of the job (quarantined); the job has ended"
