"""The joiner's decisions: pure, ``(what it read) -> what it does next``.

The driver (:class:`corral.rendezvous.driver.joining.Joining`) makes one join
request, calls one of these with what it read, and does what it returns.
Nothing here does I/O, reads a clock or logs (tests/unit/rendezvous/test_decide.py).

* :func:`join_step`: how one join request ends (joined, move to another round,
  the job's end, a node id in use);
* :func:`after_join`: what a node that joined an open round does next (the
  round closed meanwhile, follow the closer, or close it);
* :func:`waiting_target`: whom a node that waits for the next round watches,
  or that every member is gone and it must start the next round itself.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

from corral.rendezvous.protocol.records import REASON_JOB_ENDED, RoundPointer

__all__ = ["AfterJoin", "JoinStep", "after_join", "join_step", "waiting_target"]


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
