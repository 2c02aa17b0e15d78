"""A running member of a round, as a reducer: ``member_step(state, event) -> (state, [effect])``.

While round r runs, each member watches the round pointer, its ring
predecessor's join key, and (rank 0 below MAX) the waiting nodes; a member
that finished waits at the success barrier, and one of them (rank 0, or who
takes over when it leaves) coordinates the success. Which key is watched,
who coordinates and who is done is this state; the driver
(:class:`corral.rendezvous.driver.running.Running`) watches the store, feeds
each change as an event, and performs the effects.

Pure: no I/O, no clock reads, no asyncio, no logging.
"""

from __future__ import annotations

from collections.abc import Sequence

from msgspec import Struct
from msgspec.structs import replace

from corral.core.errors import RendezvousError
from corral.core.model import NodeDesc
from corral.rendezvous.protocol.budget import ScaleUp, restarts_text, scale_up_step
from corral.rendezvous.protocol.records import REASON_NODE_WAITING, RoundPointer

__all__ = [
    "Bump",
    "Coordinate",
    "DoneSeen",
    "Effect",
    "Event",
    "FinishSuccess",
    "MemberLost",
    "MemberState",
    "NodeWaits",
    "PointerMoved",
    "PredecessorGone",
    "PredecessorLeft",
    "Say",
    "Superseded",
    "Watch",
    "member_step",
    "predecessor_gone",
    "start_member",
]


class MemberState(Struct, frozen=True, gc=False):
    """One member's view of running round ``round``.

    Attributes:
        round, rank: the round and this node's group rank in it.
        pred: the node id whose join key it watches (its ring predecessor, or
            the one before a predecessor that finished); None: nobody.
        done: this node finished (it waits at the success barrier).
        coordinator: it decides the round's success (all members done).
        members: the round's node ids, once a coordinator has read them.
        done_ids: the members seen done (a coordinator's count).
        max_nodes, max_restarts: MAX and the job's restart budget (scale-up).
    """

    round: int
    rank: int
    pred: str | None
    done: bool
    coordinator: bool
    max_nodes: int
    max_restarts: int
    members: frozenset[str] = frozenset()
    done_ids: frozenset[str] = frozenset()


def start_member(
    round: int,
    rank: int,
    pred: str,
    node_count: int,
    *,
    done: bool,
    max_nodes: int,
    max_restarts: int,
) -> tuple[MemberState, list[Effect]]:
    """The state of a member of ``round`` (``pred``: its ring predecessor) and its
    first effects: watch the predecessor, and coordinate if it is rank 0 and done."""
    state = MemberState(
        round,
        rank,
        pred if node_count > 1 else None,
        done,
        coordinator=False,
        max_nodes=max_nodes,
        max_restarts=max_restarts,
    )
    effects: list[Effect] = []
    if state.pred is not None:
        effects.append(Watch(state.pred))
    if done and rank == 0:
        state = replace(state, coordinator=True)
        effects.append(Coordinate())
    return state, effects


# --- events --------------------------------------------------------------------


class PointerMoved(Struct, frozen=True, gc=False):
    """The round pointer was written (``pointer``: its new value)."""

    pointer: RoundPointer


class PredecessorLeft(Struct, frozen=True, gc=False):
    """The watched predecessor's join key went.

    ``was_done``: it had marked itself done; ``members``: the round's node ids in
    rank order (read only when it was done: a lost one needs no list).
    """

    node_id: str
    was_done: bool
    members: Sequence[str] = ()


class DoneSeen(Struct, frozen=True, gc=False):
    """Members seen done (``members``: the round's node ids, when first read)."""

    node_ids: Sequence[str]
    members: Sequence[str] | None = None


class NodeWaits(Struct, frozen=True, gc=False):
    """A node waits to join (its key under ``waiting/``); ``members``: the round's,
    ``pointer``: the round's pointer as this node read it."""

    node_id: str
    members: Sequence[NodeDesc]
    pointer: RoundPointer


Event = PointerMoved | PredecessorLeft | DoneSeen | NodeWaits


# --- effects -------------------------------------------------------------------


class Superseded(Struct, frozen=True, gc=False):
    """A later round (or the job's end) superseded this one: report the change."""

    pointer: RoundPointer


class MemberLost(Struct, frozen=True, gc=False):
    """Member ``node_id`` was lost: restart without it, or end the job."""

    node_id: str


class Watch(Struct, frozen=True, gc=False):
    """Watch ``node_id``'s join key instead (None: stop watching any)."""

    node_id: str | None


class Coordinate(Struct, frozen=True, gc=False):
    """Start coordinating the success: read the member list and ``done/``, watch ``done/``
    (fed back as :class:`DoneSeen`)."""


class FinishSuccess(Struct, frozen=True, gc=False):
    """Every member is done: end the job in success."""


class Bump(Struct, frozen=True, gc=False):
    """Move the pointer to a restart round (``reason``, ``detail``)."""

    reason: str
    detail: str


class Say(Struct, frozen=True, gc=False):
    """One informative log line."""

    line: str


Effect = Superseded | MemberLost | Watch | Coordinate | FinishSuccess | Bump | Say


def member_step(state: MemberState, event: Event) -> tuple[MemberState, list[Effect]]:
    """Decide on one event of the running round."""
    if isinstance(event, PointerMoved):
        if event.pointer.round > state.round:
            return state, [Superseded(event.pointer)]
        return state, []
    if isinstance(event, PredecessorLeft):
        act = predecessor_gone(
            list(event.members), event.node_id, state.rank, event.was_done, state.done,
            state.coordinator,
        )  # fmt: skip
        if act.lost:
            return state, [MemberLost(event.node_id)]
        state = replace(state, pred=act.watch)
        effects: list[Effect] = [Watch(act.watch)]
        if act.coordinate:
            state = replace(state, coordinator=True)
            effects.append(Coordinate())
        return state, effects
    if isinstance(event, DoneSeen):
        members = state.members if event.members is None else frozenset(event.members)
        state = replace(state, members=members, done_ids=state.done_ids | frozenset(event.node_ids))
        if state.coordinator and state.members and state.done_ids >= state.members:
            return state, [FinishSuccess()]
        return state, []
    step = scale_up_step(
        event.members, event.node_id, state.max_nodes, event.pointer, state.max_restarts
    )
    if step is ScaleUp.ADMIT:
        return state, [Bump(REASON_NODE_WAITING, f"node {event.node_id} waiting")]
    if step is ScaleUp.SPARE:
        used = restarts_text(event.pointer.restart_count, state.max_restarts)
        line = (
            f"node {event.node_id} waits to join round {state.round}; not admitted: "
            f"restart budget spent ({used} restarts)"
        )
        return state, [Say(line)]
    return state, []


class PredecessorGone(Struct, frozen=True, gc=False):
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
