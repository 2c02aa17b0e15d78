"""The joiner, as a reducer: ``joiner_step(state, event) -> (state, [effect])``.

One node's path through a join (docs/rendezvous.md): take a lease, check its
quarantine, make one join request for round r (create its key and, if absent,
the closer's key; read the pointer and ``close/<r>/``), move to the round the
pointer names, then learn who closes round r: the round is closed already, or
this node closes it, or it follows the closer (and takes over when the closer's
key goes). Once ``closed`` is there, the node reads its place (its assignment:
in the member list, or in one rank table). A node that is not in the round
waits as a spare (the restart budget is spent: it waits outside join_timeout),
or waits in ``waiting/`` for the next round, watching the oldest live member
(and ends the round itself as a lost member's when none is left).

Its events and effects are in :mod:`.joiner_messages` (and named here too).
The driver (:class:`corral.rendezvous.driver.joining.Joining`) performs each
effect (a store request, a watch, a log line) and feeds what came back as the
next event: store results as values, and the time (from its clock) where a
timer matters. Effects that ask something are last in their list; the others
(:class:`Retract`, :class:`Joined`, :class:`Say`, ...) only do something.

Pure: no I/O, no clock reads, no asyncio, no logging.
(tests/unit/rendezvous/test_decide.py, test_joiner.py, test_protocol.py)
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

from msgspec import Struct
from msgspec.structs import replace

from corral.rendezvous.protocol import ranks
from corral.rendezvous.protocol.budget import Budget, adopt_budget, is_spare, waiting_line
from corral.rendezvous.protocol.joiner_messages import (
    CheckQuarantine,
    Close,
    ClosedRef,
    CloseRead,
    CloserLeft,
    CloseSeen,
    Compacted,
    DeleteWaiting,
    Effect,
    EndLost,
    EnsureLease,
    Event,
    EvictLease,
    Follow,
    Joined,
    JoinRead,
    LeaseLost,
    LeaseReady,
    LiveRead,
    MemberLeft,
    MembersRead,
    Placed,
    PointerMoved,
    PutWaiting,
    QuarantineChecked,
    Quarantined,
    RaiseOutcome,
    RankTableRead,
    ReadClose,
    ReadLive,
    ReadMembers,
    ReadRankTable,
    Refuse,
    Rejoin,
    Remember,
    RequestJoin,
    Retract,
    RevokeFormer,
    RoundClosed,
    Say,
    Spare,
    TakeOver,
    TakeOverResult,
    Timer,
    Unreachable,
    WakeAt,
    Warn,
    WatchMember,
)
from corral.rendezvous.protocol.records import (
    REASON_JOB_ENDED,
    Assignment,
    ClosedRound,
    RoundPointer,
    rank_table_of,
)

__all__ = [
    "AfterJoin",
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
    "JoinStep",
    "Joined",
    "JoinerState",
    "LeaseLost",
    "LeaseReady",
    "LiveRead",
    "MemberLeft",
    "MembersRead",
    "Phase",
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
    "RevokeFormer",
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
    "after_join",
    "join_step",
    "joiner_step",
    "start_join",
    "start_waiting",
    "waiting_target",
]


# --- the decisions the reducer is made of (table-tested on their own) ------------


class JoinStep(enum.Enum):
    """How one join request for round r ended (see :func:`join_step`)."""

    JOINED = "joined"  # the pointer names round r: go on in it
    MOVE = "move"  # the pointer names another round: take back what was created, join that
    JOB_ENDED = "job_ended"  # take back what was created, end with the job's outcome
    ID_IN_USE = "id_in_use"  # this node id is held by another live agent
    FORMER = "former"  # this node's own key under a lease it held before: revoke it, again


def join_step(
    r: int,
    lease: int,
    created: bool,
    existing_lease: int | None,
    pointer: RoundPointer,
    former: frozenset[int] = frozenset(),
) -> JoinStep:
    """Decide after the join request for round ``r`` under ``lease``.

    Args:
        r: the round the request joined.
        lease: this node's lease.
        created: the request created this node's key.
        existing_lease: when it did not, the lease of the key that was there
            (None: no key was read back).
        pointer: the round pointer the request read.
        former: the leases this node held before this one (after it fenced itself
            or was evicted, its key may outlive its membership: the store could
            not be told, or has not expired the lease yet).
    """
    if not created and existing_lease is not None and existing_lease != lease:
        return JoinStep.FORMER if existing_lease in former else JoinStep.ID_IN_USE
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


# --- state ---------------------------------------------------------------------------


class Phase(enum.Enum):
    """Where the joiner is: each phase waits for one kind of event."""

    LEASE = "lease"  # EnsureLease asked
    QUARANTINE = "quarantine"  # CheckQuarantine asked
    REQUEST = "request"  # RequestJoin asked
    FOLLOW = "follow"  # Follow asked (another node closes)
    TAKE_OVER = "take_over"  # TakeOver asked (the closer left)
    REREAD = "reread"  # ReadClose asked (the watch was compacted)
    CLOSE = "close"  # Close asked (this node closes)
    RANKS = "ranks"  # ReadRankTable asked
    MEMBERS = "members"  # ReadMembers asked (this node is not in the round)
    LIVE = "live"  # ReadLive asked (waiting for the next round)
    WAIT = "wait"  # WatchMember asked (waiting for the next round)
    RETRY = "retry"  # WakeAt asked (the store could not be reached)
    DONE = "done"  # a terminal effect was emitted


class JoinerState(Struct, frozen=True, gc=False):
    """What one node's join knows (a value; :func:`joiner_step` makes the next).

    Attributes:
        node_id, run_id, max_nodes: this node, its job and MAX.
        budget: the job's restart budget as this node knows it (adopted from the pointer).
        retry_delay: seconds between tries while the store cannot be reached.
        spare: this is a spare's wait (outside join_timeout): it ends with :class:`Rejoin`.
        phase: what the joiner waits for.
        round: the round it requests, or has joined.
        lease: its lease for this try.
        former: the leases it held before (see :func:`join_step`).
        pointer, pointer_revision: the pointer as its join request read it.
        mine, closer: its request created its own key, the closer's key.
        member: a ``closed`` found at the join counts this node as a member (it had
            joined under this lease before).
        seen: the revision of the read of ``close/<r>/`` its watch resumes after.
        closed, full: ``closed`` of the round, and its full member list when known.
        waiting: this node has a key under ``waiting/``.
        unreachable: the last store error a try got (None: the last one answered).
    """

    node_id: str
    run_id: str
    max_nodes: int
    budget: Budget
    retry_delay: float
    spare: bool = False
    phase: Phase = Phase.LEASE
    round: int = 0
    lease: int = 0
    former: frozenset[int] = frozenset()
    pointer: RoundPointer | None = None
    pointer_revision: int = 0
    mine: bool = False
    closer: bool = False
    member: bool = True
    seen: int = 0
    closed: ClosedRef | None = None
    full: ClosedRound | None = None
    waiting: bool = False
    unreachable: str | None = None


# --- starting ----------------------------------------------------------------------------


def start_join(
    *,
    node_id: str,
    run_id: str,
    max_nodes: int,
    budget: Budget,
    retry_delay: float,
    expect: int,
    waiting: bool = False,
    former: frozenset[int] = frozenset(),
) -> tuple[JoinerState, list[Effect]]:
    """A join of round ``expect`` (a guess: the pointer says where the job is).

    ``waiting``: this node has a key under ``waiting/`` from an earlier wait.
    ``former``: the leases this node held before (see :func:`join_step`).
    """
    state = JoinerState(
        node_id,
        run_id,
        max_nodes,
        budget,
        retry_delay,
        round=expect,
        waiting=waiting,
        former=former,
    )
    return state, [EnsureLease()]


def start_waiting(
    *,
    node_id: str,
    run_id: str,
    max_nodes: int,
    budget: Budget,
    retry_delay: float,
    spare: Spare,
    pointer: RoundPointer,
) -> tuple[JoinerState, list[Effect]]:
    """A spare's wait for the next round (outside join_timeout), after :class:`Spare`."""
    state = JoinerState(
        node_id, run_id, max_nodes, budget, retry_delay, spare=True,
        round=spare.round, lease=spare.lease, pointer=pointer,
        pointer_revision=spare.pointer_revision,
    )  # fmt: skip
    return _wait(state, spare.closed)


# --- the reducer ---------------------------------------------------------------------------


def joiner_step(state: JoinerState, event: Event) -> tuple[JoinerState, list[Effect]]:
    """Decide on one event of the join (see the module docstring)."""
    if isinstance(event, LeaseLost):
        if state.spare:
            return replace(state, phase=Phase.DONE), [EvictLease(), Rejoin()]
        return replace(state, phase=Phase.LEASE), [EvictLease(), EnsureLease()]
    if isinstance(event, Unreachable):
        if state.spare:
            return replace(state, phase=Phase.DONE), [Rejoin(error=True)]
        effects: list[Effect] = []
        if state.unreachable is None:
            effects.append(
                Warn(
                    f"node {state.node_id}: the store cannot be reached (trying until "
                    f"join_timeout): {event.error}"
                )
            )
        effects.append(WakeAt(event.now + state.retry_delay))
        return replace(state, phase=Phase.RETRY, unreachable=event.error), effects
    if isinstance(event, Timer):
        return replace(state, phase=Phase.LEASE), [EnsureLease()]
    if isinstance(event, LeaseReady):
        return replace(state, phase=Phase.QUARANTINE, lease=event.lease), [CheckQuarantine()]
    if isinstance(event, QuarantineChecked):
        if event.refused is not None:
            return replace(state, phase=Phase.DONE), [Quarantined(event.refused)]
        return replace(state, phase=Phase.REQUEST), [RequestJoin(state.round, state.lease)]
    if isinstance(event, JoinRead):
        return _join_read(state, event)
    if isinstance(event, CloseSeen):
        if event.revision <= state.seen:  # the join's read had it
            return state, [Follow(state.round, state.seen)]
        return _after_close(replace(state, closed=event.closed), event.closed)
    if isinstance(event, CloserLeft):
        if event.revision <= state.seen:
            return state, [Follow(state.round, state.seen)]
        return replace(state, phase=Phase.TAKE_OVER), [TakeOver(state.round, state.lease)]
    if isinstance(event, TakeOverResult):
        if event.succeeded:
            assert state.pointer is not None
            line = f"closer of round {state.round} left; {state.node_id} closes it"
            return replace(state, phase=Phase.CLOSE), [
                Say(line),
                Close(state.pointer, state.lease),
            ]
        return replace(state, phase=Phase.FOLLOW), [Follow(state.round, state.seen)]
    if isinstance(event, Compacted):
        return replace(state, phase=Phase.REREAD), [ReadClose(state.round)]
    if isinstance(event, CloseRead):
        state = replace(state, seen=event.revision)
        if event.closed is not None:
            return _after_close(replace(state, closed=event.closed), event.closed)
        if not event.closer_present:
            return replace(state, phase=Phase.TAKE_OVER), [TakeOver(state.round, state.lease)]
        return replace(state, phase=Phase.FOLLOW), [Follow(state.round, state.seen)]
    if isinstance(event, RoundClosed):
        return _after_close(replace(state, closed=event.closed, full=event.full), event.closed)
    if isinstance(event, RankTableRead):
        assert state.closed is not None
        return _placed(state, state.closed, event.assignment, None)
    if isinstance(event, MembersRead):
        return _not_placed(state, event.full)
    if isinstance(event, LiveRead):
        assert state.full is not None
        members = [m.node_id for m in state.full.members]
        target = waiting_target(members, list(event.live))
        if target is None:  # every member is gone: nobody else would start a round
            r = state.round
            lost = EndLost(r, state.full, members[0], f"every member of round {r} left")
            return _waited(state, [lost])
        return replace(state, phase=Phase.WAIT), [WatchMember(state.round, target, event.revision)]
    if isinstance(event, MemberLeft):
        return replace(state, phase=Phase.LIVE), [ReadLive(state.round)]
    return _waited(state, [])  # PointerMoved: the next round


def _join_read(state: JoinerState, ev: JoinRead) -> tuple[JoinerState, list[Effect]]:
    r, lease = ev.round, state.lease
    step = join_step(r, lease, ev.created, ev.existing_lease, ev.pointer, state.former)
    if step is JoinStep.FORMER:  # a key of this node's own from before: give it up, ask again
        assert ev.existing_lease is not None
        return state, [RevokeFormer(ev.existing_lease), RequestJoin(r, lease)]
    if step is JoinStep.ID_IN_USE:
        message = f"node id {state.node_id!r} is already used by another live agent"
        return replace(state, phase=Phase.DONE), [Refuse(message)]
    if step is not JoinStep.JOINED:
        effects: list[Effect] = []
        if ev.created or ev.closer_created:
            effects.append(Retract(r, ev.created, ev.closer_created))
        if step is JoinStep.JOB_ENDED:
            return replace(state, phase=Phase.DONE), [*effects, RaiseOutcome(ev.pointer)]
        nxt = ev.pointer.round
        return replace(state, round=nxt), [*effects, RequestJoin(nxt, lease)]
    budget, differs = adopt_budget(state.budget, ev.pointer)  # one budget for the job
    state = replace(
        state,
        budget=budget,
        pointer=ev.pointer,
        pointer_revision=ev.pointer_revision,
        mine=ev.created,
        closer=ev.closer_created,
        seen=ev.revision,
        closed=ev.closed,
        full=None,
        member=True,
    )
    effects = [Warn(d.line()) for d in differs]
    effects.append(Joined(r, ev.pointer, ev.pointer_revision, budget))
    then = after_join(ev.closed is not None, ev.closer_created)
    if ev.closed is not None:  # then is AfterJoin.CLOSED
        # Closed before this join: a member only if this node had joined under
        # this lease before (a join cut short by a timeout); an evicted node has not.
        if ev.created or ev.closer_created:
            effects.append(Retract(r, ev.created, ev.closer_created))
        state, more = _after_close(replace(state, member=not ev.created), ev.closed)
        return state, effects + more
    if state.waiting:
        state = replace(state, waiting=False)
        effects.append(DeleteWaiting())
    if then is AfterJoin.FOLLOW:  # someone is closing: follow (take over if it leaves)
        return replace(state, phase=Phase.FOLLOW), [*effects, Follow(r, ev.revision)]
    return replace(state, phase=Phase.CLOSE), [*effects, Close(ev.pointer, lease)]


def _after_close(state: JoinerState, ref: ClosedRef) -> tuple[JoinerState, list[Effect]]:
    """This node's place in the closed round: O(1) bytes unless it wrote the member list."""
    closed = ref.record
    full = state.full
    if full is not None and full.tag != closed.tag:
        full = None  # this node's record lost
    if closed.members:
        full = closed  # a record that carries its members
    state = replace(state, full=full)
    if state.member and full is not None:
        idx = full.rank_of(state.node_id)
        assignment = ranks.assignments(full.members)[idx] if idx is not None else None
        return _placed(state, ref, assignment, full)
    if state.member:
        if closed.rank_tables < 1:
            message = (
                f"round {state.round} was closed with no rank tables (by another corral version?)"
            )
            return replace(state, phase=Phase.DONE), [Refuse(message)]
        # Written before closed: any state as of closed's revision has it.
        index = rank_table_of(state.node_id, closed.rank_tables)
        read = ReadRankTable(state.round, closed.tag, index, ref.revision)
        return replace(state, phase=Phase.RANKS), [read]
    return _placed(state, ref, None, full)


def _placed(
    state: JoinerState, ref: ClosedRef, assignment: Assignment | None, full: ClosedRound | None
) -> tuple[JoinerState, list[Effect]]:
    effects: list[Effect] = []
    if full is not None:
        effects.append(Remember(state.round, full))
    if assignment is not None:
        members = full.members if full is not None else ()
        info = ranks.round_info_of(
            state.run_id, ref.record, assignment, members, state.budget.max_restarts
        )
        effects.append(Placed(info, ref, assignment))
        return replace(state, phase=Phase.DONE), effects
    if full is not None:
        state, more = _not_placed(state, full)
        return state, effects + more
    read = ReadMembers(state.round, ref.record)
    return replace(state, phase=Phase.MEMBERS), [*effects, read]


def _not_placed(state: JoinerState, full: ClosedRound) -> tuple[JoinerState, list[Effect]]:
    """Round r closed without this node: a spare, or it waits for the next round."""
    closed, pointer = state.closed, state.pointer
    assert closed is not None and pointer is not None
    state = replace(state, full=full)
    used, limit = pointer.restart_count, state.budget.max_restarts
    if is_spare(closed.record.node_count, state.max_nodes, used, limit):
        spare = Spare(state.round, full, state.pointer_revision, state.lease)
        return replace(state, phase=Phase.DONE), [spare]
    return _wait(state, full)


def _wait(state: JoinerState, full: ClosedRound) -> tuple[JoinerState, list[Effect]]:
    """Wait in ``waiting/`` until the pointer moves: running members see the key
    and start a new round while below MAX; if every member of the round is gone,
    nobody would, and this node starts the next round itself."""
    assert state.pointer is not None
    r = state.round
    line = waiting_line(
        state.node_id, r, len(full.members), state.max_nodes, state.pointer.restart_count,
        state.budget.max_restarts,
    )  # fmt: skip
    put = PutWaiting(r, state.lease, state.pointer_revision, line)
    state = replace(state, phase=Phase.LIVE, full=full, waiting=True)
    return state, [put, ReadLive(r)]


def _waited(state: JoinerState, effects: list[Effect]) -> tuple[JoinerState, list[Effect]]:
    """The wait for the next round ended: a spare's with :class:`Rejoin`, else a new try."""
    if state.spare:
        return replace(state, phase=Phase.DONE), [*effects, Rejoin()]
    state = replace(state, phase=Phase.LEASE, unreachable=None, round=state.round)
    return state, [*effects, EnsureLease()]
