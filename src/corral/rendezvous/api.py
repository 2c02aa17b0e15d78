"""What the agent needs from a rendezvous: rounds, changes, and the job-wide outcome.

A *round* is one membership of the job: the ordered list of nodes that run
the worker group together. Every backend (the dynamic one over any
:class:`corral.store.Store`, and ``static``) implements :class:`Rendezvous`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from corral.reporting.failures import FailureReport

__all__ = ["ChangeKind", "Decision", "NodeDesc", "Rendezvous", "RoundChange", "RoundInfo"]


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


class Rendezvous(Protocol):
    """One node's handle on the job's rendezvous.

    Usage by the agent: ``rnd = await join()``; start workers; race the group's
    result against ``await watch_round(rnd)``; on a local failure call
    ``report_failure`` and follow its decision; on local success call
    ``report_success``.
    """

    async def join(self) -> RoundInfo:
        """Join the next round and wait until it closes with this node in it.

        Raises: RendezvousTimeout (join_timeout passed), RendezvousClosed /
        JobFailed / JobStopped (the job already has an outcome: success, failure,
        or stopped by a handled signal), StoreError.
        """
        ...

    async def watch_round(self, rnd: RoundInfo) -> RoundChange:
        """Return when ``rnd`` is superseded (membership change, failure elsewhere, job end).

        Never returns while ``rnd`` is current and healthy; cancel it to stop watching.
        """
        ...

    async def report_failure(
        self, rnd: RoundInfo, failures: list[FailureReport], *, final: bool = False
    ) -> tuple[Decision, FailureReport | None]:
        """Publish this node's failures of round ``rnd`` and decide, job-wide, what comes next.

        If restarts are left, the job moves to the next round (counted once for
        the job, however many nodes fail) and the answer is RESTART. Otherwise
        the job's outcome becomes failure and the answer is FAIL with the
        job-wide root cause: the earliest failure by store order.

        ``final=True`` spends the budget now (a restart policy gave up): the
        outcome becomes failure with the job-wide root cause of round ``rnd``
        even if restarts are left or the job already moved to a later round;
        the answer is FAIL (unless the job had already ended). Raises JobStopped
        when a handled signal stopped the job meanwhile (not a failure).
        """
        ...

    async def report_success(self, rnd: RoundInfo) -> RoundChange | None:
        """Record that this node's workers all succeeded in ``rnd``; wait for the job's end.

        Returns None when every member of the round has succeeded (the job
        succeeded), or the change that superseded the round before that (the
        agent then joins the next round, as torchrun's exit barrier does).
        """
        ...

    async def close(self) -> None:
        """Leave: revoke this node's lease and close the store client."""
        ...
