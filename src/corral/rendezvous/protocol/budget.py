"""The job's restart budget: how the round pointer moves, and what a node decides
when a round ends or a node waits to join a running one.

Every restart of the worker group (a failure, a lost member, a waiting node)
moves the pointer r -> r+1 and counts one against ``--max-restarts``; these
decide when that may happen and what happens once the budget is spent (the
job fails with a root cause, a waiting node stays a spare). The job's budget
itself is a value every node adopts from the first pointer
(:func:`adopt_budget`, a reducer). No I/O, no clock reads, no logging; tested
table-driven (tests/unit/rendezvous/test_machine.py, test_protocol.py).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence

from msgspec import Struct

from corral.core.failures import FailureReport
from corral.core.model import NodeDesc
from corral.rendezvous.protocol.records import (
    REASON_FAILURE,
    REASON_JOB_ENDED,
    REASON_MEMBER_LOST,
    REASON_NODE_WAITING,
    RoundPointer,
)

__all__ = [
    "RESTART_REASONS",
    "Budget",
    "BudgetDiffers",
    "FailureAction",
    "FailureStep",
    "ScaleUp",
    "adopt_budget",
    "budget_left",
    "end_pointer",
    "ends_without_restart",
    "failure_action",
    "failure_step",
    "failure_streak",
    "is_spare",
    "job_budget",
    "lost_node_report",
    "next_pointer",
    "quarantine_wanted",
    "restart_step",
    "restarts_text",
    "root_cause",
    "scale_up_step",
    "scale_up_wanted",
    "waiting_line",
]

# Why the worker group restarts: each of these moves the pointer r -> r+1 and
# counts one restart for the job (torch's ``--max-restarts`` bounds them all,
# "regardless of whether the restart was caused due to a failure or a scaling
# event"). Round 0, the job's first formation, is no restart.
RESTART_REASONS = frozenset({REASON_FAILURE, REASON_MEMBER_LOST, REASON_NODE_WAITING})


def next_pointer(
    current: RoundPointer, reason: str, detail: str = "", *, cause: str = "", streak: int = 0
) -> RoundPointer:
    """The pointer of the restart round after ``current``: every restart counts one.

    ``reason`` is one of :data:`RESTART_REASONS` (a failure, a lost member, a
    waiting node); the job's end is :func:`end_pointer`. ``cause`` and
    ``streak``: for a failure, the root cause's node and its
    :func:`failure_streak` (0 once that node is quarantined).
    """
    if reason not in RESTART_REASONS:
        raise ValueError(f"not a restart reason: {reason!r}")
    nxt = current.restart_count + 1
    return RoundPointer(
        current.round + 1,
        nxt,
        reason,
        detail,
        current.max_restarts,
        current.no_restart_code,
        cause=cause,
        streak=streak,
    )


def failure_streak(previous: RoundPointer, cause: str) -> int:
    """How many failures of the job in a row node ``cause`` is the root cause of,
    counting the failure now: one more than the pointer's ``streak`` when the
    current round started on a failure of that same node, else 1. Any other
    start (the first round, a lost or a waiting node) breaks the row."""
    if previous.reason == REASON_FAILURE and previous.cause == cause and cause:
        return previous.streak + 1
    return 1


def quarantine_wanted(
    streak: int, after: int, members: int, min_nodes: int, spare_waiting: bool
) -> bool:
    """Whether the root cause's node is quarantined (``--quarantine-after``).

    Args:
        streak: its :func:`failure_streak`.
        after: ``--quarantine-after`` (0: never).
        members: nodes in the round that failed (the node included).
        min_nodes: MIN.
        spare_waiting: another node waits to join.

    Only when the job can go on without it: a spare waits to take its slot, or
    MIN is still met without it. Otherwise it is retried, as without quarantine.
    """
    if after <= 0 or streak < after:
        return False
    return spare_waiting or members - 1 >= min_nodes


def end_pointer(current: RoundPointer, status: str) -> RoundPointer:
    """The terminal pointer after ``current`` (``status``: "success", "failed" or
    "stopped"); no restart."""
    return RoundPointer(
        current.round + 1,
        current.restart_count,
        REASON_JOB_ENDED,
        status,
        current.max_restarts,
        current.no_restart_code,
    )


def job_budget(own: int, recorded: int) -> int:
    """The job's restart budget: the one the first pointer recorded (``recorded``, the
    ``--max-restarts`` of the node that made it), else this node's (``own``)."""
    return recorded if recorded >= 0 else own


def ends_without_restart(root: FailureReport | None, no_restart_code: int) -> bool:
    """``--no-restart-exit-code``: the round's root cause ``root`` is a worker that
    exited with ``no_restart_code`` (> 0), so the job ends now, whatever the budget.

    Only a worker's own exit code counts: not a hang (exit code 124 by convention),
    a lost node or a death by a signal.
    """
    return (
        no_restart_code > 0
        and root is not None
        and not root.hang
        and not root.lost
        and root.exitcode == no_restart_code
    )


def budget_left(pointer: RoundPointer, max_restarts: int) -> bool:
    """Whether the job may restart once more from the round ``pointer`` names."""
    return pointer.restart_count < max_restarts


def restarts_text(restart_count: int, max_restarts: int) -> str:
    """``used/allowed``, as the agent's log and ``corral status`` show the budget."""
    return f"{restart_count}/{max_restarts}"


class FailureStep(enum.Enum):
    """What a node that saw round r end (failures, a lost member) does, given the current pointer."""

    RESTART = "restart"  # move the pointer r -> r+1 (counts one restart for the job)
    ALREADY_MOVED = "already_moved"  # someone started a later round: join it
    FAIL = "fail"  # budget spent: write the failed outcome


def restart_step(seen_round: int, pointer: RoundPointer, max_restarts: int) -> FailureStep:
    """Decide for round ``seen_round`` ending (the pointer is the store's current one).

    The same rule for every cause of a restart: a failure, a lost member.
    """
    if pointer.round != seen_round:
        return FailureStep.ALREADY_MOVED
    if budget_left(pointer, max_restarts):
        return FailureStep.RESTART
    return FailureStep.FAIL


def failure_step(failed_round: int, pointer: RoundPointer, max_restarts: int) -> FailureStep:
    """Decide for failures seen in ``failed_round``: :func:`restart_step`."""
    return restart_step(failed_round, pointer, max_restarts)


def lost_node_report(
    members: Sequence[NodeDesc],
    lost: str,
    round_: int,
    restart_count: int,
    max_restarts: int,
    why: str = "its agent left the rendezvous (lease ended)",
) -> FailureReport:
    """The root cause of a job that ends because member ``lost`` of round ``round_`` was lost.

    It names the node (group rank, host, address, node id) and says that it
    was lost; ``rank`` is its first global rank, ``local_rank`` -1 (the whole
    node), exit code 1. ``members`` is the round's member list in rank order.
    """
    ids = [n.node_id for n in members]
    if lost not in ids:
        raise ValueError(f"node {lost!r} is not a member")
    group_rank = ids.index(lost)
    node = members[group_rank]
    offset = sum(n.local_world_size for n in members[:group_rank])
    where = ", ".join(x for x in (node.host, node.addr) if x)
    return FailureReport(
        rank=offset,
        local_rank=-1,
        group_rank=group_rank,
        host=node.host or node.addr,
        node_id=node.node_id,
        pid=node.pid,
        exitcode=1,
        message=(
            f"node {group_rank} ({where}, node id {node.node_id}) was lost in round {round_}: "
            f"{why}; restart budget spent ({restarts_text(restart_count, max_restarts)} restarts)"
        ),
        round=round_,
        restart_count=restart_count,
        lost=True,
    )


def root_cause(failures: Iterable[tuple[int, FailureReport]]) -> FailureReport | None:
    """The earliest failure by create revision (the store's order, never a wall clock)."""
    best: tuple[int, FailureReport] | None = None
    for rev, rep in failures:
        if best is None or rev < best[0]:
            best = (rev, rep)
    return best[1] if best is not None else None


def scale_up_wanted(members: Sequence[NodeDesc], waiting_node: str, max_nodes: int) -> bool:
    """A running round has room for a waiting node: below max and the node is new."""
    if len(members) >= max_nodes:
        return False
    return all(m.node_id != waiting_node for m in members)


class ScaleUp(enum.Enum):
    """What a running round does for a node that waits to join it."""

    ADMIT = "admit"  # restart as round r+1 with it (node_waiting: counts one restart)
    NO_ROOM = "no_room"  # at max_nodes, or already a member: nothing
    SPARE = "spare"  # room, but the restart budget is spent: it waits as a spare


def scale_up_step(
    members: Sequence[NodeDesc],
    waiting_node: str,
    max_nodes: int,
    pointer: RoundPointer,
    max_restarts: int,
) -> ScaleUp:
    """Decide for ``waiting_node`` at the running round of ``pointer`` with ``members``."""
    if not scale_up_wanted(members, waiting_node, max_nodes):
        return ScaleUp.NO_ROOM
    if budget_left(pointer, max_restarts):
        return ScaleUp.ADMIT
    return ScaleUp.SPARE


def is_spare(node_count: int, max_nodes: int, restart_count: int, max_restarts: int) -> bool:
    """A node that found a running round of ``node_count`` closed without it waits as a
    *spare*: the round has room, but the restart budget is spent, so no round will admit
    it unless a restart still allowed happens for another reason. It waits with no
    join_timeout (it ends with the job); a node that waits because the round is full
    (at ``max_nodes``) keeps its join_timeout, as torch's wait list does."""
    return node_count < max_nodes and restart_count >= max_restarts


def waiting_line(
    node_id: str,
    round_: int,
    node_count: int,
    max_nodes: int,
    restart_count: int,
    max_restarts: int,
) -> str:
    """The one log line of a node that found round ``round_`` closed without it."""
    if is_spare(node_count, max_nodes, restart_count, max_restarts):
        return (
            f"round {round_} runs with {node_count} of at most {max_nodes} nodes, but the job's "
            f"restart budget is spent ({restarts_text(restart_count, max_restarts)} restarts): "
            f"node {node_id} waits as a spare, not admitted (it ends with the job, or joins a "
            "later round)"
        )
    return f"round {round_} closed without node {node_id}: waiting"


class FailureAction(enum.Enum):
    """One turn of the failure loop of round r (see :func:`failure_action`)."""

    JOB_MOVED_ON = "job_moved_on"  # a later round started: this node restarts with it
    FIX_OUTCOME = "fix_outcome"  # write round r's outcome from its failures, then end the job
    RESTART = "restart"  # move the pointer r -> r+1 (counts one restart)
    END = "end"  # end the job in failure


def failure_action(step: FailureStep, final: bool) -> FailureAction:
    """Decide from :func:`failure_step` and ``final``.

    ``final``: a restart policy gave up, so the job ends now whatever the budget;
    if the job had already moved past round r, round r's failures still make
    the outcome (written first), and the job ends from where it is.
    """
    if step is FailureStep.ALREADY_MOVED:
        return FailureAction.FIX_OUTCOME if final else FailureAction.JOB_MOVED_ON
    if step is FailureStep.RESTART and not final:
        return FailureAction.RESTART
    return FailureAction.END


# --- the job's budget, adopted from the first pointer ------------------------------


class Budget(Struct, frozen=True, gc=False):
    """The restart budget a node decides with.

    ``max_restarts``: ``--max-restarts``; ``no_restart_code``: ``--no-restart-exit-code``
    (0: none). A node starts with its own and adopts the job's (:func:`adopt_budget`).
    """

    max_restarts: int
    no_restart_code: int = 0


class BudgetDiffers(Struct, frozen=True, gc=False):
    """Effect: this node's ``option`` (``own``) is not the job's (``job``): say so once."""

    option: str
    own: int
    job: int

    def line(self) -> str:
        if self.option == "--max-restarts":
            return (
                f"--max-restarts is {self.own} on this node but {self.job} for the job (given "
                "to the node that started it): this node counts with the job's"
            )
        return (
            f"{self.option} is {self.own or 'unset'} on this node but {self.job or 'unset'} "
            "for the job (given to the node that started it): this node decides with the job's"
        )


def adopt_budget(budget: Budget, pointer: RoundPointer) -> tuple[Budget, list[BudgetDiffers]]:
    """The budget after reading ``pointer``: the one the job's first pointer recorded
    (:func:`job_budget`), so every node decides alike; an effect for each value that
    differs from this node's."""
    effects: list[BudgetDiffers] = []
    limit = job_budget(budget.max_restarts, pointer.max_restarts)
    if limit != budget.max_restarts:
        effects.append(BudgetDiffers("--max-restarts", budget.max_restarts, limit))
    code = job_budget(budget.no_restart_code, pointer.no_restart_code)
    if code != budget.no_restart_code:
        effects.append(BudgetDiffers("--no-restart-exit-code", budget.no_restart_code, code))
    if not effects:
        return budget, effects
    return Budget(limit, code), effects
