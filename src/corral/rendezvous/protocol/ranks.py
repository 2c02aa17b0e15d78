"""How a closed round's members are ranked, and what each member reads of it.

Pure: no I/O, no clock reads, no logging. The closer orders the joiners
(:func:`assign_ranks`, or :func:`fixed_ranks` for the static backend) and writes
the member list and the rank tables (:func:`rank_tables`); every member reads
its own :class:`~corral.rendezvous.protocol.records.Assignment` and builds its
:class:`~corral.rendezvous.api.RoundInfo` (:func:`round_info_of`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from msgspec import Struct

from corral.core.model import NodeDesc, RoundInfo
from corral.rendezvous.protocol.records import (
    Assignment,
    ClosedRound,
    RankTable,
    rank_table_count,
    rank_table_of,
)

__all__ = [
    "Joiner",
    "assign_ranks",
    "assignments",
    "fixed_ranks",
    "rank_tables",
    "round_info",
    "round_info_of",
    "slot_holders",
]


class Joiner(Struct, frozen=True, gc=False):
    """A node that joined a round: its description and the create revision of its key."""

    desc: NodeDesc
    create_revision: int


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
