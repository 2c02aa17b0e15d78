"""The model values every layer shares: a node, this node's round, a round's change.

They are plain frozen values with no behaviour of the rendezvous; the
rendezvous produces them, the agent and the workers read them
(``corral.rendezvous.api`` re-exports them, their documented path).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["ChangeKind", "Decision", "NodeDesc", "RoundChange", "RoundInfo"]


@dataclass(frozen=True, slots=True)
class NodeDesc:
    """A node as it describes itself when it joins a round.

    Attributes:
        node_id: unique per agent process (host, pid and a random suffix).
        addr: numeric address the node's workers are reachable at (MASTER_ADDR if rank 0).
        local_world_size: workers on this node.
        host: host name, for humans only.
        pid: the agent's pid, for humans only.
        master_port: a free port this node offers for MASTER_PORT if it becomes group rank 0.
    """

    node_id: str
    addr: str
    local_world_size: int
    host: str = ""
    pid: int = 0
    master_port: int = 0


@dataclass(frozen=True, slots=True)
class RoundInfo:
    """This node's view of a closed round: everything the worker environment needs.

    ``members`` (the nodes in group-rank order) may be empty: the dynamic
    backend gives each node only its own assignment (O(1) bytes per node),
    and only the node that closed the round has the list. Nothing the agent
    needs depends on it; the sizes, ranks and master address are always set.
    """

    run_id: str
    round: int
    group_rank: int
    group_world_size: int
    members: tuple[NodeDesc, ...]
    rank_offset: int  # sum of local world sizes of lower group ranks
    world_size: int
    master_addr: str
    master_port: int
    restart_count: int  # restarts the job has had, of any cause (same on every node)
    max_restarts: int = -1  # the job's restart budget, the same on every node (-1: unknown)

    def restarts_allowed(self, own: int) -> int:
        """The job's restart budget where the rendezvous knows it, else ``own``."""
        return self.max_restarts if self.max_restarts >= 0 else own


class ChangeKind(enum.Enum):
    MEMBER_LOST = "member_lost"  # a member's lease ended: scale down / node failure
    NODE_WAITING = "node_waiting"  # a node waits to join while below max: scale up
    FAILURE = "failure"  # a worker failed somewhere and the job restarts
    JOB_ENDED = "job_ended"  # the job has an outcome (success or failure)


@dataclass(frozen=True, slots=True)
class RoundChange:
    """Why a round is over for everyone. ``detail`` is for humans (e.g. which node was lost).

    ``stop_signal``: the job was stopped by this handled signal on another node
    (JOB_ENDED; ``--on-signal stop``), ``stop_node`` (its host): forward it to
    the workers, give them ``--shutdown-timeout``, exit 128 + signal. 0 otherwise.
    """

    kind: ChangeKind
    new_round: int | None
    detail: str = ""
    stop_signal: int = 0
    stop_node: str = ""


class Decision(enum.Enum):
    RESTART = "restart"  # join the next round
    FAIL = "fail"  # the job failed: exit with the root cause
