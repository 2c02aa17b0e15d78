"""Pure decisions of the dynamic rendezvous's shell: (state, event) -> action.

The async shell (:mod:`corral.rendezvous.dynamic` and its modules) reads the
store, calls one of these, and performs the action it returns. Nothing here
does I/O, reads a clock or logs; each is tested table-driven
(tests/unit/rendezvous/test_decide.py), like :func:`~corral.rendezvous.machine.close_decision`.

* :func:`join_step`: how one join request ends (joined, move to another round,
  the job's end, a node id in use);
* :func:`after_join`: what a node that joined an open round does next (the
  round closed meanwhile, follow the closer, or close it);
* :func:`predecessor_gone`: a running member's ring predecessor left (lost, or
  done: watch the one before it, and maybe coordinate the success);
* :func:`failure_action`: one turn of the failure loop (restart, the job moved
  on, fix the outcome first, end the job);
* :func:`waiting_target`: whom a node that waits for the next round watches,
  or that every member is gone and it must start the next round itself.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from corral.core.errors import RendezvousError
from corral.rendezvous.machine import FailureStep
from corral.rendezvous.state import REASON_JOB_ENDED, RoundPointer

__all__ = [
    "AfterJoin",
    "FailureAction",
    "JoinStep",
    "PredecessorGone",
    "after_join",
    "failure_action",
    "join_step",
    "predecessor_gone",
    "waiting_target",
]


class JoinStep(enum.Enum):
    """How one join request for round r ended (see :func:`join_step`)."""

    JOINED = "joined"  # the pointer names round r: go on in it
    MOVE = "move"  # the pointer names another round: take back what was created, join that
    JOB_ENDED = "job_ended"  # take back what was created, end with the job's outcome
    ID_IN_USE = "id_in_use"  # this node id is held by another live agent


def join_step(
    r: int,
    lease: int,
    created: bool,
    existing_lease: int | None,
    pointer: RoundPointer,
) -> JoinStep:
    """Decide after the join request for round ``r`` under ``lease``.

    Args:
        r: the round the request joined.
        lease: this node's lease.
        created: the request created this node's key.
        existing_lease: when it did not, the lease of the key that was there
            (None: no key was read back).
        pointer: the round pointer the request read.
    """
    if not created and existing_lease is not None and existing_lease != lease:
        return JoinStep.ID_IN_USE
    if pointer.reason == REASON_JOB_ENDED:
        return JoinStep.JOB_ENDED
    if pointer.round != r:
        return JoinStep.MOVE
    return JoinStep.JOINED


class AfterJoin(enum.Enum):
    """What a node does once it has joined round r (see :func:`after_join`)."""

    CLOSED = "closed"  # the round closed before this join: read its place in it
    FOLLOW = "follow"  # another node closes: wait for ``closed`` (take over if it leaves)
    CLOSE = "close"  # this node created the closer key: it closes the round


def after_join(closed_present: bool, closer_created: bool) -> AfterJoin:
    """Decide for a node in round r: ``closed`` already there, else who closes."""
    if closed_present:
        return AfterJoin.CLOSED
    return AfterJoin.CLOSE if closer_created else AfterJoin.FOLLOW


@dataclass(frozen=True, slots=True)
class PredecessorGone:
    """What a running member does when its ring predecessor's key goes.

    Attributes:
        lost: the predecessor is lost (it had not finished): the round ends.
        watch: the node id to watch instead (None: nobody is left before this node).
        coordinate: this node now coordinates the round's success (its
            predecessor may have been the coordinator).
    """

    lost: bool
    watch: str | None = None
    coordinate: bool = False


def predecessor_gone(
    members: Sequence[str],
    gone: str,
    my_rank: int,
    gone_was_done: bool,
    i_am_done: bool,
    i_coordinate: bool,
) -> PredecessorGone:
    """Decide when the key of ``gone`` (this node's predecessor) is deleted.

    Args:
        members: the round's node ids in rank order (read only when
            ``gone_was_done``: a lost predecessor needs no list).
        gone: the predecessor whose key went.
        my_rank: this node's group rank.
        gone_was_done: ``gone`` had marked itself done (it left after success).
        i_am_done: this node is done too (it waits at the success barrier).
        i_coordinate: this node already coordinates the success.

    Raises: RendezvousError if a done ``gone`` is not in ``members``.

    A member that left before finishing is lost. A done one is not: watch the
    member before it in the ring (none when that is this node), and, if this
    node waits at the barrier, take the coordinator's role (the one that left
    may have held it).
    """
    if not gone_was_done:
        return PredecessorGone(lost=True)
    if gone not in members:
        raise RendezvousError(f"node {gone!r} is not in the member list")
    n = len(members)
    before = (members.index(gone) - 1) % n
    watch = None if before == my_rank else members[before]
    return PredecessorGone(lost=False, watch=watch, coordinate=i_am_done and not i_coordinate)


class FailureAction(enum.Enum):
    """One turn of the failure loop of round r (see :func:`failure_action`)."""

    JOB_MOVED_ON = "job_moved_on"  # a later round started: this node restarts with it
    FIX_OUTCOME = "fix_outcome"  # write round r's outcome from its failures, then end the job
    RESTART = "restart"  # move the pointer r -> r+1 (counts one restart)
    END = "end"  # end the job in failure


def failure_action(step: FailureStep, final: bool) -> FailureAction:
    """Decide from :func:`~corral.rendezvous.machine.failure_step` and ``final``.

    ``final``: a restart policy gave up, so the job ends now whatever the budget;
    if the job had already moved past round r, round r's failures still make
    the outcome (written first), and the job ends from where it is.
    """
    if step is FailureStep.ALREADY_MOVED:
        return FailureAction.FIX_OUTCOME if final else FailureAction.JOB_MOVED_ON
    if step is FailureStep.RESTART and not final:
        return FailureAction.RESTART
    return FailureAction.END


def waiting_target(members: Sequence[str], live: Sequence[str]) -> str | None:
    """The member a node waiting for the next round watches: the oldest live one.

    Args:
        members: the node ids of the closed round it waits after.
        live: the node ids whose keys are there, oldest first (by create revision).

    Returns: that node id, or None when no member is left (the waiting node
    then ends the round itself, as a lost member's).
    """
    wanted = set(members)
    return next((nid for nid in live if nid in wanted), None)
