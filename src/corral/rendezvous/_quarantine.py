"""Quarantine (``--quarantine-after N``): a node that keeps failing the job stays out.

Functions of a :class:`~corral.rendezvous.dynamic.DynamicRendezvous`
(``rd``), which delegates to them; they read and write its state. The
decisions are pure (``machine.failure_streak``, ``machine.quarantine_wanted``).

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
from typing import TYPE_CHECKING

from corral.core.errors import NodeQuarantined, StoreUnavailable
from corral.core.events import NodeQuarantined as NodeQuarantinedEvent
from corral.core.model import RoundInfo
from corral.rendezvous import machine as m
from corral.rendezvous.state import REASON_JOB_ENDED, Quarantine, RoundPointer
from corral.store.api import EventType

if TYPE_CHECKING:
    from corral.rendezvous.dynamic import DynamicRendezvous

log = logging.getLogger("corral.rendezvous.dynamic")  # one logger for the rendezvous


class Refused(Exception):  # a signal to join(), not an error
    """This node's address is quarantined: ``args[0]`` is its :class:`Quarantine` record."""


async def judge(
    rd: DynamicRendezvous, rnd: RoundInfo, ptr: RoundPointer
) -> tuple[str, int, Quarantine | None]:
    """Before moving the pointer for a failure of ``rnd``: the root cause's address,
    its failures in a row (0 once quarantined) and the record, if it is quarantined now.

    The root cause read after this node's reports are in is final (a report
    created later has a later revision), so whichever node moves the pointer
    judges alike.
    """
    if rd._quarantine_after <= 0:
        return "", 0, None
    r = rnd.round
    root = (await rd._ops.failed(r)).root_cause
    entry = rd._closed.get(r)
    if root is None or entry is None:
        return "", 0, None
    members = await rd._members_of(r, entry[0])
    node = next((n for n in members.members if n.node_id == root.node_id), None)
    if node is None:
        return "", 0, None
    streak = m.failure_streak(ptr, node.addr)
    if streak < rd._quarantine_after:
        return node.addr, streak, None
    waiting, _ = await rd._ops.range(rd._k.waiting)
    spare = any(kv.key[len(rd._k.waiting) :] != node.node_id for kv in waiting)
    if not m.quarantine_wanted(streak, rd._quarantine_after, rnd.group_world_size, rd._min, spare):
        return node.addr, streak, None
    reason = root.line().splitlines()[0]  # a hang, a lost node, a signal or an exit code
    rec = Quarantine(node.addr, node.node_id, node.host, r, streak, reason)
    return node.addr, 0, rec


async def record(rd: DynamicRendezvous, rec: Quarantine, next_round: int) -> None:
    """Write ``rec`` (create-only: the first record of an address stays) before the
    pointer moves; say so in one line and one event."""
    if not (await rd._ops.create(rd._k.quarantine_key(rec.addr), rec.to_json())).succeeded:
        return  # recorded already (a retried move, or another node): said once
    log.warning("%s; the job goes on without it", rec.line())
    rd._emit(
        NodeQuarantinedEvent, next_round, subject=rec.node_id, addr=rec.addr,
        failures=rec.failures, reason=rec.reason,
    )  # fmt: skip


async def check(rd: DynamicRendezvous) -> None:
    """Before a join: raise :class:`Refused` if this node's address is quarantined."""
    kv = await rd._ops.get(rd._k.quarantine_key(rd._node.addr))
    if kv is not None:
        raise Refused(Quarantine.from_json(kv.value))


async def sit_out(rd: DynamicRendezvous, rec: Quarantine) -> NodeQuarantined:
    """This node is quarantined: say why in one line, wait for the job's end (no
    join_timeout), and return the error the agent exits with."""
    log.warning("%s: this node takes no part in the job and exits when it ends", rec.line())
    rd._emit(
        NodeQuarantinedEvent, rd._expect, subject=rec.node_id, addr=rec.addr,
        failures=rec.failures, reason=rec.reason,
    )  # fmt: skip
    ptr, rev = await rd._ops.pointer()
    if ptr.reason == REASON_JOB_ENDED:
        return NodeQuarantined(_gone(rec))
    async with rd._ops.watch(rd._k.round, start_revision=rev + 1) as events:
        async for ev in events:
            if ev.type is EventType.PUT:
                if RoundPointer.from_json(ev.kv.value).reason == REASON_JOB_ENDED:
                    return NodeQuarantined(_gone(rec))
    raise StoreUnavailable(f"the watch of {rd._k.round} ended")


def _gone(rec: Quarantine) -> str:
    return f"node {rec.addr} was kept out of the job (quarantined); the job has ended"
