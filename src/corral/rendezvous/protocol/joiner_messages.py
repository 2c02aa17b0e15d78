"""The joiner's vocabulary: the events its driver feeds in and the effects it asks for.

The reducer is :func:`corral.rendezvous.protocol.joiner.joiner_step`; these are its
values (frozen dataclasses), kept apart so that the reducer reads as one idea.
Asking effects (an event comes back) come last in an effect list; the others only
do something; the last group ends the join.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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


@dataclass(frozen=True, slots=True)
class ClosedRef:
    """A ``closed`` record as read: the record and its mod revision."""

    record: ClosedRound
    revision: int


# --- events --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LeaseReady:
    lease: int


@dataclass(frozen=True, slots=True)
class QuarantineChecked:
    """``refused``: this node's address is quarantined (None: it is not)."""

    refused: Quarantine | None


@dataclass(frozen=True, slots=True)
class JoinRead:
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


@dataclass(frozen=True, slots=True)
class CloseSeen:
    """The followed round's ``closed`` was written (at ``revision``)."""

    closed: ClosedRef
    revision: int


@dataclass(frozen=True, slots=True)
class CloserLeft:
    """The followed round's closer key went (at ``revision``)."""

    revision: int


@dataclass(frozen=True, slots=True)
class Compacted:
    """The watch of ``close/`` resumed from a compacted revision: it was opened again."""


@dataclass(frozen=True, slots=True)
class CloseRead:
    """``close/<r>/`` read again: its ``closed`` (if there), whether the closer key is."""

    closed: ClosedRef | None
    closer_present: bool
    revision: int


@dataclass(frozen=True, slots=True)
class TakeOverResult:
    """This node's create of the closer key: ``succeeded``."""

    succeeded: bool


@dataclass(frozen=True, slots=True)
class RoundClosed:
    """This node's close ended: ``closed`` as it is, ``full`` the record it wrote
    (None when another closer's ``closed`` won)."""

    closed: ClosedRef
    full: ClosedRound | None


@dataclass(frozen=True, slots=True)
class RankTableRead:
    """This node's assignment in its rank table (None: not in it)."""

    assignment: Assignment | None


@dataclass(frozen=True, slots=True)
class MembersRead:
    """The round's full member list."""

    full: ClosedRound


@dataclass(frozen=True, slots=True)
class LiveRead:
    """The node ids whose keys are there in the round waited after, oldest first,
    and the revision of that read."""

    live: Sequence[str]
    revision: int


@dataclass(frozen=True, slots=True)
class MemberLeft:
    """The watched member's key went."""


@dataclass(frozen=True, slots=True)
class PointerMoved:
    """The round pointer moved (a node waiting for the next round joins it)."""


@dataclass(frozen=True, slots=True)
class LeaseLost:
    """This node's lease ended (LeaseNotFound, or evicted)."""


@dataclass(frozen=True, slots=True)
class Unreachable:
    """A request got no answer (``error``), at clock time ``now``."""

    error: str
    now: float


@dataclass(frozen=True, slots=True)
class Timer:
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


@dataclass(frozen=True, slots=True)
class EnsureLease:
    """Take a lease, if this node has none (-> LeaseReady)."""


@dataclass(frozen=True, slots=True)
class CheckQuarantine:
    """Read whether this node's address is quarantined (-> QuarantineChecked)."""


@dataclass(frozen=True, slots=True)
class RequestJoin:
    """One join request for ``round`` under ``lease`` (-> JoinRead); this node's watch
    of ``close/`` is in place before it."""

    round: int
    lease: int


@dataclass(frozen=True, slots=True)
class Follow:
    """Wait for ``close/<round>/closed`` or the delete of its closer key, after
    revision ``seen`` (-> CloseSeen, CloserLeft or Compacted)."""

    round: int
    seen: int


@dataclass(frozen=True, slots=True)
class TakeOver:
    """Create the closer key of ``round`` under ``lease`` (-> TakeOverResult)."""

    round: int
    lease: int


@dataclass(frozen=True, slots=True)
class ReadClose:
    """Read ``close/<round>/`` again (-> CloseRead)."""

    round: int


@dataclass(frozen=True, slots=True)
class Close:
    """Close the round ``pointer`` names, as its closer (-> RoundClosed)."""

    pointer: RoundPointer
    lease: int


@dataclass(frozen=True, slots=True)
class ReadRankTable:
    """Read rank table ``index`` of the ``tag`` of ``round``, as of ``min_revision``
    (-> RankTableRead)."""

    round: int
    tag: str
    index: int
    min_revision: int


@dataclass(frozen=True, slots=True)
class ReadMembers:
    """Read the full member list of ``round`` (-> MembersRead)."""

    round: int
    closed: ClosedRound


@dataclass(frozen=True, slots=True)
class ReadLive:
    """Read the live join keys of ``round``, oldest first (-> LiveRead)."""

    round: int


@dataclass(frozen=True, slots=True)
class WatchMember:
    """Watch ``node_id``'s key in ``round`` from ``revision`` on, and the pointer
    (-> MemberLeft, PointerMoved or LeaseLost)."""

    round: int
    node_id: str
    revision: int


@dataclass(frozen=True, slots=True)
class WakeAt:
    """Wait until clock time ``at`` (-> Timer)."""

    at: float


# --- effects: doing (nothing comes back) ---------------------------------------------


@dataclass(frozen=True, slots=True)
class EvictLease:
    """Forget this node's lease (it ended): the next EnsureLease takes a new one."""


@dataclass(frozen=True, slots=True)
class Retract:
    """Delete what a join request created in ``round``: this node's key, the closer's."""

    round: int
    node: bool
    closer: bool


@dataclass(frozen=True, slots=True)
class Joined:
    """This node joined ``round`` (record the pointer and the job's budget; NodeJoined)."""

    round: int
    pointer: RoundPointer
    pointer_revision: int
    budget: Budget


@dataclass(frozen=True, slots=True)
class DeleteWaiting:
    """Delete this node's key under ``waiting/``."""


@dataclass(frozen=True, slots=True)
class Remember:
    """Keep ``full``, the member list of ``round`` (read again by no one)."""

    round: int
    full: ClosedRound


@dataclass(frozen=True, slots=True)
class PutWaiting:
    """Put this node's key under ``waiting/`` (under ``lease``), say ``line`` and send
    NodeWaiting for ``round``; then watch the pointer from ``pointer_revision + 1``."""

    round: int
    lease: int
    pointer_revision: int
    line: str


@dataclass(frozen=True, slots=True)
class EndLost:
    """Every member of ``round`` left while this node waited: end it as ``first``'s loss."""

    round: int
    closed: ClosedRound
    first: str
    detail: str


@dataclass(frozen=True, slots=True)
class Say:
    """One informative log line."""

    line: str


@dataclass(frozen=True, slots=True)
class Warn:
    """One warning log line."""

    line: str


# --- effects: the end of the join ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Placed:
    """This node is in closed round ``info.round``: the join returns ``info``."""

    info: RoundInfo
    closed: ClosedRef
    assignment: Assignment


@dataclass(frozen=True, slots=True)
class Spare:
    """Round ``round`` runs without this node and the budget is spent: it waits as a
    spare, outside join_timeout (:func:`start_waiting`)."""

    round: int
    closed: ClosedRound
    pointer_revision: int
    lease: int


@dataclass(frozen=True, slots=True)
class Quarantined:
    """This node's address is quarantined: it takes no part (``record``)."""

    record: Quarantine


@dataclass(frozen=True, slots=True)
class RaiseOutcome:
    """The job ended (``pointer``): raise its outcome."""

    pointer: RoundPointer


@dataclass(frozen=True, slots=True)
class Refuse:
    """The join cannot go on: raise RendezvousError(``message``)."""

    message: str


@dataclass(frozen=True, slots=True)
class Rejoin:
    """A spare's wait ended: join again (a new join, with its own join_timeout).
    ``error``: the wait ended on a store error, raised as it is."""

    error: bool = False


Effect = (
    EnsureLease
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
