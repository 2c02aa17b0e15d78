"""The key layout of one run in the store: :class:`Keys`.

The records themselves (their JSON) are :mod:`corral.rendezvous.protocol.records`.

Layout (under ``<prefix>/<run_id>/``)::

    round                         RoundPointer: current round, restart count, why it started
    outcome                       Outcome: the job's end (create-only)
    waiting/<node_id>             NodeDesc of a node waiting for the next round (lease)
    quarantine/<addr>             Quarantine: a node kept out of the job (no lease)
    r/<r>/nodes/<node_id>         NodeDesc of a joiner of round r (lease); create revision = order
    close/<r>/closer              node id of the node that closes round r (lease, create-only)
    close/<r>/closed              ClosedRound summary: sizes, master addr/port, tag; no members
                                  (create-only; small: every node reads it). Under close/,
                                  apart from the rest, so that one watch of close/ follows
                                  every round's close for a node's whole life
    r/<r>/members/<tag>           ClosedRound with the members in rank order (read by few)
    r/<r>/ranks/<tag>/<i>         RankTable i of ``rank_tables``: the Assignment (group rank,
                                  rank offset, ring predecessor) of each member whose id
                                  hashes to i, about ASSIGNMENTS_PER_KEY of them (each
                                  member reads only the one table its id names)
    r/<r>/failures/<node_id>/<lr> FailureReport of one failed worker
    r/<r>/failures/<node_id>/lost FailureReport naming member node_id as lost, written when
                                  its loss ends the job (the restart budget spent)
    r/<r>/done/<node_id>          a member whose workers all succeeded in round r
    r/<r>/left/<node_id>          a member that left round r on a handled signal
                                  (``--on-signal leave``; counted against MIN)
"""

from __future__ import annotations

from corral.core.errors import RendezvousError

__all__ = ["Keys"]


class Keys:
    """Key names of one run: ``<prefix>/<run_id>/...`` (see the module docstring)."""

    def __init__(self, prefix: str, run_id: str) -> None:
        if "/" in run_id or not run_id:
            raise RendezvousError(f"run id {run_id!r} must be non-empty and contain no '/'")
        self.base = f"{prefix.rstrip('/')}/{run_id}/"
        self.round = self.base + "round"
        self.outcome = self.base + "outcome"
        self.waiting = self.base + "waiting/"
        self.quarantine = self.base + "quarantine/"
        self.closes = self.base + "close/"

    def quarantine_key(self, addr: str) -> str:
        """A quarantined node, keyed by its address (``Quarantine``; no lease)."""
        return f"{self.quarantine}{addr}"

    def waiting_key(self, node_id: str) -> str:
        return f"{self.waiting}{node_id}"

    def nodes(self, r: int) -> str:
        return f"{self.base}r/{r}/nodes/"

    def node(self, r: int, node_id: str) -> str:
        return f"{self.base}r/{r}/nodes/{node_id}"

    def close_prefix(self, r: int) -> str:
        """Both ``closer`` and ``closed`` of round r, and nothing else."""
        return f"{self.closes}{r}/"

    def closer(self, r: int) -> str:
        return f"{self.closes}{r}/closer"

    def closed(self, r: int) -> str:
        return f"{self.closes}{r}/closed"

    def members(self, r: int, tag: str) -> str:
        return f"{self.base}r/{r}/members/{tag}"

    def ranks(self, r: int) -> str:
        return f"{self.base}r/{r}/ranks/"

    def rank_table(self, r: int, tag: str, index: int) -> str:
        return f"{self.base}r/{r}/ranks/{tag}/{index}"

    def failures(self, r: int) -> str:
        return f"{self.base}r/{r}/failures/"

    def failure(self, r: int, node_id: str, local_rank: int) -> str:
        return f"{self.base}r/{r}/failures/{node_id}/{local_rank}"

    def lost(self, r: int, node_id: str) -> str:
        """The report of member ``node_id`` lost in round r (a failure key of its own)."""
        return f"{self.base}r/{r}/failures/{node_id}/lost"

    def done(self, r: int) -> str:
        return f"{self.base}r/{r}/done/"

    def left(self, r: int) -> str:
        return f"{self.base}r/{r}/left/"

    def left_key(self, r: int, node_id: str) -> str:
        return f"{self.base}r/{r}/left/{node_id}"

    def done_key(self, r: int, node_id: str) -> str:
        return f"{self.base}r/{r}/done/{node_id}"

    @staticmethod
    def leaf(key: str) -> str:
        return key.rsplit("/", 1)[-1]
