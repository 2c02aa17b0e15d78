"""The joiner's vocabulary: the events its driver feeds in and the effects it asks for.

The reducer is :func:`corral.rendezvous.protocol.joiner.joiner_step`; these are its
values (frozen msgspec Structs), kept apart so that the reducer reads as one idea.
Asking effects (an event comes back) come last in an effect list; the others only
do something; the last group ends the join.
"""

from __future__ import annotations

from collections.abc import Sequence

from msgspec import Struct

from corral.core.model import RoundInfo
from corral.rendezvous.protocol.budget import Budget
from corral.rendezvous.protocol.records import (
    Assignment,
    ClosedRound,
    Quarantine,
    RoundPointer,
)

__all__ = [
    "CheckQuarantine",
    "Close",
    "CloseRead",
    "CloseSeen",
    "ClosedRef",
    "CloserLeft",
    "Compacted",
    "DeleteWaiting",
    "Effect",
    "EndLost",
    "EnsureLease",
    "Event",
    "EvictLease",
    "Follow",
    "JoinRead",
    "Joined",
    "LeaseLost",
    "LeaseReady",
    "LiveRead",
    "MemberLeft",
    "MembersRead",
    "Placed",
    "PointerMoved",
    "PutWaiting",
    "QuarantineChecked",
    "Quarantined",
    "RaiseOutcome",
    "RankTableRead",
    "ReadClose",
    "ReadLive",
    "ReadMembers",
    "ReadRankTable",
    "Refuse",
    "Rejoin",
    "Remember",
    "RequestJoin",
    "Retract",
    "RoundClosed",
    "Say",
    "Spare",
    "TakeOver",
    "TakeOverResult",
    "Timer",
    "Unreachable",
    "WakeAt",
    "Warn",
    "WatchMember",
]


class ClosedRef(Struct, frozen=True, gc=False):
    """A ``closed`` record as read: the record and its mod revision."""

    record: ClosedRound
    revision: int


# --- events --------------------------------------------------------------------------


class LeaseReady(Struct, frozen=True, gc=False):
    lease: int


class QuarantineChecked(Struct, frozen=True, gc=False):
    """``refused``: this node's address is quarantined (None: it is not)."""

    refused: Quarantine | None


class JoinRead(Struct, frozen=True, gc=False):
    """What one join request for ``round`` did and read.

    ``created``/``closer_created``: it created this node's key, the closer's;
    ``existing_lease``: the lease of this node's key when it was there already;
    ``closed``: ``close/<r>/closed`` if there; ``revision``: of that read.
    """

    round: int
    created: bool
    existing_lease: int | None
    closer_created: bool
    pointer: RoundPointer
    pointer_revision: int
    closed: ClosedRef | None
    revision: int


class CloseSeen(Struct, frozen=True, gc=False):
    """The followed round's ``closed`` was written (at ``revision``)."""

    closed: ClosedRef
    revision: int


class CloserLeft(Struct, frozen=True, gc=False):
    """The followed round's closer key went (at ``revision``)."""

    revision: int


class Compacted(Struct, frozen=True, gc=False):
    """The watch of ``close/`` resumed from a compacted revision: it was opened again."""


class CloseRead(Struct, frozen=True, gc=False):
    """``close/<r>/`` read again: its ``closed`` (if there), whether the closer key is."""

    closed: ClosedRef | None
    closer_present: bool
    revision: int


class TakeOverResult(Struct, frozen=True, gc=False):
    """This node's create of the closer key: ``succeeded``."""

    succeeded: bool


class RoundClosed(Struct, frozen=True, gc=False):
    """This node's close ended: ``closed`` as it is, ``full`` the record it wrote
    (None when another closer's ``closed`` won)."""

    closed: ClosedRef
    full: ClosedRound | None


class RankTableRead(Struct, frozen=True, gc=False):
    """This node's assignment in its rank table (None: not in it)."""

    assignment: Assignment | None


class MembersRead(Struct, frozen=True, gc=False):
    """The round's full member list."""

    full: ClosedRound


class LiveRead(Struct, frozen=True, gc=False):
    """The node ids whose keys are there in the round waited after, oldest first,
    and the revision of that read."""

    live: Sequence[str]
    revision: int


class MemberLeft(Struct, frozen=True, gc=False):
    """The watched member's key went."""


class PointerMoved(Struct, frozen=True, gc=False):
    """The round pointer moved (a node waiting for the next round joins it)."""


class LeaseLost(Struct, frozen=True, gc=False):
    """This node's lease ended (LeaseNotFound, or evicted)."""


class Unreachable(Struct, frozen=True, gc=False):
    """A request got no answer (``error``), at clock time ``now``."""

    error: str
    now: float


class Timer(Struct, frozen=True, gc=False):
    """The time asked by :class:`WakeAt` came (``now``: the clock)."""

    now: float


Event = (
    LeaseReady
    | QuarantineChecked
    | JoinRead
    | CloseSeen
    | CloserLeft
    | Compacted
    | CloseRead
    | TakeOverResult
    | RoundClosed
    | RankTableRead
    | MembersRead
    | LiveRead
    | MemberLeft
    | PointerMoved
    | LeaseLost
    | Unreachable
    | Timer
)


# --- effects: asking (an event comes back) ---------------------------------------------


class EnsureLease(Struct, frozen=True, gc=False):
    """Take a lease, if this node has none (-> LeaseReady)."""


class CheckQuarantine(Struct, frozen=True, gc=False):
    """Read whether this node's address is quarantined (-> QuarantineChecked)."""


class RequestJoin(Struct, frozen=True, gc=False):
    """One join request for ``round`` under ``lease`` (-> JoinRead); this node's watch
    of ``close/`` is in place before it."""

    round: int
    lease: int


class Follow(Struct, frozen=True, gc=False):
    """Wait for ``close/<round>/closed`` or the delete of its closer key, after
    revision ``seen`` (-> CloseSeen, CloserLeft or Compacted)."""

    round: int
    seen: int


class TakeOver(Struct, frozen=True, gc=False):
    """Create the closer key of ``round`` under ``lease`` (-> TakeOverResult)."""

    round: int
    lease: int


class ReadClose(Struct, frozen=True, gc=False):
    """Read ``close/<round>/`` again (-> CloseRead)."""

    round: int


class Close(Struct, frozen=True, gc=False):
    """Close the round ``pointer`` names, as its closer (-> RoundClosed)."""

    pointer: RoundPointer
    lease: int


class ReadRankTable(Struct, frozen=True, gc=False):
    """Read rank table ``index`` of the ``tag`` of ``round``, as of ``min_revision``
    (-> RankTableRead)."""

    round: int
    tag: str
    index: int
    min_revision: int


class ReadMembers(Struct, frozen=True, gc=False):
    """Read the full member list of ``round`` (-> MembersRead)."""

    round: int
    closed: ClosedRound


class ReadLive(Struct, frozen=True, gc=False):
    """Read the live join keys of ``round``, oldest first (-> LiveRead)."""

    round: int


class WatchMember(Struct, frozen=True, gc=False):
    """Watch ``node_id``'s key in ``round`` from ``revision`` on, and the pointer
    (-> MemberLeft, PointerMoved or LeaseLost)."""

    round: int
    node_id: str
    revision: int


class WakeAt(Struct, frozen=True, gc=False):
    """Wait until clock time ``at`` (-> Timer)."""

    at: float


# --- effects: doing (nothing comes back) ---------------------------------------------


class EvictLease(Struct, frozen=True, gc=False):
    """Forget this node's lease (it ended): the next EnsureLease takes a new one."""


class RevokeFormer(Struct, frozen=True, gc=False):
    """Revoke ``lease``, a lease this node held before (it fenced itself, or it was
    evicted): its keys go, the key this node finds under its own id among them."""

    lease: int


class Retract(Struct, frozen=True, gc=False):
    """Delete what a join request created in ``round``: this node's key, the closer's."""

    round: int
    node: bool
    closer: bool


class Joined(Struct, frozen=True, gc=False):
    """This node joined ``round`` (record the pointer and the job's budget; NodeJoined)."""

    round: int
    pointer: RoundPointer
    pointer_revision: int
    budget: Budget


class DeleteWaiting(Struct, frozen=True, gc=False):
    """Delete this node's key under ``waiting/``."""


class Remember(Struct, frozen=True, gc=False):
    """Keep ``full``, the member list of ``round`` (read again by no one)."""

    round: int
    full: ClosedRound


class PutWaiting(Struct, frozen=True, gc=False):
    """Put this node's key under ``waiting/`` (under ``lease``), say ``line`` and send
    NodeWaiting for ``round``; then watch the pointer from ``pointer_revision + 1``."""

    round: int
    lease: int
    pointer_revision: int
    line: str


class EndLost(Struct, frozen=True, gc=False):
    """Every member of ``round`` left while this node waited: end it as ``first``'s loss."""

    round: int
    closed: ClosedRound
    first: str
    detail: str


class Say(Struct, frozen=True, gc=False):
    """One informative log line."""

    line: str


class Warn(Struct, frozen=True, gc=False):
    """One warning log line."""

    line: str


# --- effects: the end of the join ------------------------------------------------------


class Placed(Struct, frozen=True, gc=False):
    """This node is in closed round ``info.round``: the join returns ``info``."""

    info: RoundInfo
    closed: ClosedRef
    assignment: Assignment


class Spare(Struct, frozen=True, gc=False):
    """Round ``round`` runs without this node and the budget is spent: it waits as a
    spare, outside join_timeout (:func:`start_waiting`)."""

    round: int
    closed: ClosedRound
    pointer_revision: int
    lease: int


class Quarantined(Struct, frozen=True, gc=False):
    """This node's address is quarantined: it takes no part (``record``)."""

    record: Quarantine


class RaiseOutcome(Struct, frozen=True, gc=False):
    """The job ended (``pointer``): raise its outcome."""

    pointer: RoundPointer


class Refuse(Struct, frozen=True, gc=False):
    """The join cannot go on: raise RendezvousError(``message``)."""

    message: str


class Rejoin(Struct, frozen=True, gc=False):
    """A spare's wait ended: join again (a new join, with its own join_timeout).
    ``error``: the wait ended on a store error, raised as it is."""

    error: bool = False


Effect = (
    EnsureLease
    | RevokeFormer
    | CheckQuarantine
    | RequestJoin
    | Follow
    | TakeOver
    | ReadClose
    | Close
    | ReadRankTable
    | ReadMembers
    | ReadLive
    | WatchMember
    | WakeAt
    | EvictLease
    | Retract
    | Joined
    | DeleteWaiting
    | Remember
    | PutWaiting
    | EndLost
    | Say
    | Warn
    | Placed
    | Spare
    | Quarantined
    | RaiseOutcome
    | Refuse
    | Rejoin
)
