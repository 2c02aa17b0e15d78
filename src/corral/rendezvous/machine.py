"""The rendezvous decisions as pure functions: no I/O, no clock reads, no logging.

The async runner (:mod:`corral.rendezvous.dynamic`) reads the store, calls
these with the values it read and the time from its own clock, and writes
what they decide. Everything here is tested table-driven.

This module decides how a round closes and how its members are ranked; the
restart budget (the pointer's moves, the failure and scale-up steps, the root
cause of a failed job) is :mod:`corral.rendezvous.restarts`, re-exported here
so that ``machine.X`` names every pure decision of the rendezvous.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from corral.core.model import NodeDesc, RoundInfo
from corral.rendezvous.restarts import (
    RESTART_REASONS,
    FailureStep,
    ScaleUp,
    budget_left,
    end_pointer,
    ends_without_restart,
    failure_step,
    failure_streak,
    is_spare,
    job_budget,
    lost_node_report,
    next_pointer,
    quarantine_wanted,
    restart_step,
    restarts_text,
    root_cause,
    scale_up_step,
    scale_up_wanted,
    waiting_line,
)
from corral.rendezvous.state import (
    Assignment,
    ClosedRound,
    RankTable,
    rank_table_count,
    rank_table_of,
)

__all__ = [
    "RESTART_REASONS",
    "CloseDecision",
    "CloseParams",
    "FailureStep",
    "Joiner",
    "ScaleUp",
    "assign_ranks",
    "assignments",
    "budget_left",
    "close_decision",
    "end_pointer",
    "ends_without_restart",
    "failure_step",
    "failure_streak",
    "fixed_ranks",
    "is_spare",
    "job_budget",
    "lost_node_report",
    "next_pointer",
    "quarantine_wanted",
    "rank_tables",
    "restart_step",
    "restarts_text",
    "root_cause",
    "round_info",
    "round_info_of",
    "scale_up_step",
    "scale_up_wanted",
    "slot_holders",
    "waiting_line",
]


@dataclass(frozen=True, slots=True)
class Joiner:
    """A node that joined a round: its description and the create revision of its key."""

    desc: NodeDesc
    create_revision: int


@dataclass(frozen=True, slots=True)
class CloseParams:
    """The limits the closer decides with."""

    min_nodes: int
    max_nodes: int
    last_call_timeout: float
    settle_time: float
    # Upper bound of the settle window after a close condition first holds.
    settle_cap: float


@dataclass(frozen=True, slots=True)
class CloseDecision:
    """What the closer does now.

    Attributes:
        close: write ``closed`` now.
        wake_at: if not closing, re-decide at this clock time even if no event
            comes (None: only an event can change the answer).
        why: for logs.
    """

    close: bool
    wake_at: float | None
    why: str


def close_decision(
    *,
    joined: int,
    expected_present: bool,
    now: float,
    min_reached_at: float | None,
    last_arrival_at: float,
    p: CloseParams,
    members_back: bool = True,
) -> CloseDecision:
    """Decide whether the closer closes the round now.

    Args:
        joined: live joiners of the round.
        expected_present: there is a previous round, and every node expected
            in this one (live members of the previous round plus the waiting
            nodes) has joined: a restart need not wait for a last call.
        now: the closer's clock.
        min_reached_at: when the closer first saw ``min_nodes`` joined (None: not yet).
        last_arrival_at: the closer's clock at the latest join it saw.
        p: limits.
        members_back: every node that keeps its slot from the previous round
            (its live members, less the quarantined: :func:`slot_holders`) has
            joined; True when there is no previous round.

    The round closes at once with ``max_nodes`` joined, once the previous
    round's members are back: after a failure they keep their slots, so a
    node waiting at MAX (a spare) is admitted only in the slot of a member
    that is lost (its key gone) or quarantined, never in the place of a
    member that is slower to rejoin; if one does not come back, the round
    closes at the last call as any other. Otherwise, with at
    least ``min_nodes``, a close condition holds once the last call has passed
    (``min_reached_at + last_call_timeout``) or every expected node is
    present; the closer then still waits for a quiet ``settle_time`` with no
    new arrival (so a wave of nodes lands in one round), but no longer than
    ``settle_cap`` after the condition first could hold.
    """
    if joined >= p.max_nodes and members_back:
        return CloseDecision(True, None, f"max_nodes ({p.max_nodes}) joined")
    if joined < p.min_nodes or min_reached_at is None:
        return CloseDecision(False, None, f"{joined} of min_nodes ({p.min_nodes}) joined")
    last_call_at = min_reached_at + p.last_call_timeout
    if expected_present:
        cond_at = min_reached_at
        why = "every expected node joined"
    elif now >= last_call_at:
        cond_at = last_call_at
        why = "last call passed"
    else:
        return CloseDecision(False, last_call_at, "waiting for the last call")
    quiet_at = last_arrival_at + p.settle_time
    cap_at = max(cond_at, last_arrival_at if expected_present else cond_at) + p.settle_cap
    settle_until = min(quiet_at, cap_at)
    if now >= settle_until:
        return CloseDecision(True, None, why)
    return CloseDecision(False, settle_until, f"{why}; settling")


def assign_ranks(
    joined: Sequence[Joiner], previous: ClosedRound | None, max_nodes: int
) -> tuple[NodeDesc, ...]:
    """Order the members of a round: position = group rank.

    Rule (survivors keep their ranks where possible):

    1. Candidates are taken in join order (create revision), at most
       ``max_nodes``, members of the previous round first (they are already
       part of the job), then newcomers.
    2. A previous member whose old rank is below the new world size keeps
       that exact rank.
    3. The free ranks are filled, lowest first, by newcomers in join order,
       then by previous members whose old rank no longer fits, in old-rank order.

    So a round after a failure with the same nodes has the same ranks; a lost
    node's rank is taken by a newcomer, or by the member with the highest old
    rank; and group rank 0 (and with it MASTER_ADDR) stays where it was
    whenever its node survives.
    """
    ordered = sorted(joined, key=lambda j: j.create_revision)
    old_rank: dict[str, int] = {}
    if previous is not None:
        old_rank = {m.node_id: i for i, m in enumerate(previous.members)}
    survivors = [j for j in ordered if j.desc.node_id in old_rank]
    newcomers = [j for j in ordered if j.desc.node_id not in old_rank]
    survivors.sort(key=lambda j: old_rank[j.desc.node_id])
    chosen_survivors = survivors[:max_nodes]
    chosen_new = newcomers[: max_nodes - len(chosen_survivors)]
    n = len(chosen_survivors) + len(chosen_new)
    slots: list[NodeDesc | None] = [None] * n
    displaced: list[NodeDesc] = []
    for j in chosen_survivors:
        r = old_rank[j.desc.node_id]
        if r < n:
            slots[r] = j.desc
        else:
            displaced.append(j.desc)
    fill = [j.desc for j in chosen_new] + displaced
    it = iter(fill)
    out: list[NodeDesc] = []
    for s in slots:
        out.append(s if s is not None else next(it))
    return tuple(out)


def slot_holders(
    previous: Sequence[NodeDesc], live: Iterable[str], quarantined: Iterable[str]
) -> set[str]:
    """The node ids that keep their slots in a restart round: the members of the
    previous round (``previous``) whose join keys are still there (``live``, node
    ids), less those whose address is quarantined (``quarantined``, addresses).
    The closer waits for them at MAX (:func:`close_decision`)."""
    out = set(live) & {n.node_id for n in previous}
    out_addrs = set(quarantined)
    return {n.node_id for n in previous if n.node_id in out and n.addr not in out_addrs}


def fixed_ranks(joined: Sequence[Joiner]) -> tuple[NodeDesc, ...]:
    """Static backend: order by the rank before the first ``-`` of each node id."""

    def rank(j: Joiner) -> tuple[int, int]:
        head = j.desc.node_id.split("-", 1)[0]
        return (int(head) if head.isdigit() else 1 << 30, j.create_revision)

    return tuple(j.desc for j in sorted(joined, key=rank))


def round_info(run_id: str, closed: ClosedRound, node_id: str) -> RoundInfo | None:
    """This node's view of a closed round, or None if it is not a member."""
    rank = closed.rank_of(node_id)
    if rank is None:
        return None
    offset = sum(m.local_world_size for m in closed.members[:rank])
    return RoundInfo(
        run_id=run_id,
        round=closed.round,
        group_rank=rank,
        group_world_size=len(closed.members),
        members=closed.members,
        rank_offset=offset,
        world_size=sum(m.local_world_size for m in closed.members),
        master_addr=closed.master_addr,
        master_port=closed.master_port,
        restart_count=closed.restart_count,
    )


def assignments(members: Sequence[NodeDesc]) -> list[Assignment]:
    """Each member's assignment, in rank order: rank, rank offset, ring predecessor."""
    out: list[Assignment] = []
    offset = 0
    n = len(members)
    for i, mem in enumerate(members):
        pred = members[(i - 1) % n].node_id if n > 1 else ""
        out.append(Assignment(i, offset, pred))
        offset += mem.local_world_size
    return out


def rank_tables(members: Sequence[NodeDesc]) -> list[RankTable]:
    """The rank tables of a round with ``members`` (in rank order): table
    ``rank_table_of(node_id, len(tables))`` holds that member's assignment."""
    n = rank_table_count(len(members))
    tables: list[dict[str, Assignment]] = [{} for _ in range(n)]
    for mem, a in zip(members, assignments(members), strict=True):
        tables[rank_table_of(mem.node_id, n)][mem.node_id] = a
    return [RankTable(t) for t in tables]


def round_info_of(
    run_id: str,
    closed: ClosedRound,
    assignment: Assignment,
    members: tuple[NodeDesc, ...] = (),
    max_restarts: int = -1,
) -> RoundInfo:
    """A member's view of a closed round from the ``closed`` summary and its own assignment.

    ``members`` is the member list when this node has it (the closer), else empty;
    ``max_restarts`` the job's restart budget.
    """
    return RoundInfo(
        run_id=run_id,
        round=closed.round,
        group_rank=assignment.group_rank,
        group_world_size=closed.node_count,
        members=members,
        rank_offset=assignment.rank_offset,
        world_size=closed.world_size,
        master_addr=closed.master_addr,
        master_port=closed.master_port,
        restart_count=closed.restart_count,
        max_restarts=max_restarts,
    )
