"""The closer of a round, as a reducer: ``close_step(state, event) -> (state, [effect])``.

The first live joiner of round r closes it (docs/rendezvous.md). Its state is
what it has seen of the round: who joined (and when it first had MIN), which
members of the previous round keep their slots, which nodes it still expects.
The driver (:class:`corral.rendezvous.driver.closing.Closer`) reads the store,
feeds what changed as :class:`Changes` (with the time, from its clock), and
performs the effect: :class:`WakeAt` (decide again at that time if nothing
comes) or :class:`CloseRound` (write the member list, then ``closed``).

Pure: no I/O, no clock reads, no asyncio, no logging.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from msgspec import Struct, field
from msgspec.structs import replace

from corral.rendezvous.protocol import ranks
from corral.rendezvous.protocol.ranks import Joiner
from corral.rendezvous.protocol.records import ClosedRound, rank_table_count

__all__ = [
    "Arrived",
    "Change",
    "Changes",
    "CloseDecision",
    "CloseParams",
    "CloseRound",
    "CloserState",
    "Departed",
    "Effect",
    "ExpectedGone",
    "WaitingGone",
    "WakeAt",
    "close_decision",
    "close_step",
    "start_closing",
]


class CloseParams(Struct, frozen=True, gc=False):
    """The limits the closer decides with."""

    min_nodes: int
    max_nodes: int
    last_call_timeout: float
    settle_time: float
    # Upper bound of the settle window after a close condition first holds.
    settle_cap: float


class CloseDecision(Struct, frozen=True, gc=False):
    """What the closer does now.

    Attributes:
        close: write ``closed`` now.
        wake_at: if not closing, re-decide at this clock time even if no event
            comes (None: only an event can change the answer).
        why: for logs.
    """

    close: bool
    wake_at: float | None
    why: str


def close_decision(
    *,
    joined: int,
    expected_present: bool,
    now: float,
    min_reached_at: float | None,
    last_arrival_at: float,
    p: CloseParams,
    members_back: bool = True,
) -> CloseDecision:
    """Decide whether the closer closes the round now.

    Args:
        joined: live joiners of the round.
        expected_present: there is a previous round, and every node expected
            in this one (live members of the previous round plus the waiting
            nodes) has joined: a restart need not wait for a last call.
        now: the closer's clock.
        min_reached_at: when the closer first saw ``min_nodes`` joined (None: not yet).
        last_arrival_at: the closer's clock at the latest join it saw.
        p: limits.
        members_back: every node that keeps its slot from the previous round
            (its live members, less the quarantined: :func:`slot_holders`) has
            joined; True when there is no previous round.

    The round closes at once with ``max_nodes`` joined, once the previous
    round's members are back: after a failure they keep their slots, so a
    node waiting at MAX (a spare) is admitted only in the slot of a member
    that is lost (its key gone) or quarantined, never in the place of a
    member that is slower to rejoin; if one does not come back, the round
    closes at the last call as any other. Otherwise, with at
    least ``min_nodes``, a close condition holds once the last call has passed
    (``min_reached_at + last_call_timeout``) or every expected node is
    present; the closer then still waits for a quiet ``settle_time`` with no
    new arrival (so a wave of nodes lands in one round), but no longer than
    ``settle_cap`` after the condition first could hold.
    """
    if joined >= p.max_nodes and members_back:
        return CloseDecision(True, None, f"max_nodes ({p.max_nodes}) joined")
    if joined < p.min_nodes or min_reached_at is None:
        return CloseDecision(False, None, f"{joined} of min_nodes ({p.min_nodes}) joined")
    last_call_at = min_reached_at + p.last_call_timeout
    if expected_present:
        cond_at = min_reached_at
        why = "every expected node joined"
    elif now >= last_call_at:
        cond_at = last_call_at
        why = "last call passed"
    else:
        return CloseDecision(False, last_call_at, "waiting for the last call")
    quiet_at = last_arrival_at + p.settle_time
    cap_at = max(cond_at, last_arrival_at if expected_present else cond_at) + p.settle_cap
    settle_until = min(quiet_at, cap_at)
    if now >= settle_until:
        return CloseDecision(True, None, why)
    return CloseDecision(False, settle_until, f"{why}; settling")


# --- the closer's reducer ------------------------------------------------------


class CloserState(Struct, frozen=True, gc=False):
    """What the closer of one round knows (a value; :func:`close_step` makes the next).

    Attributes:
        round, restart_count: the round being closed and the job's restart count.
        tag: names this closer's attempt (its member list and rank tables).
        params: the limits it decides with.
        fixed_ranks: rank by node id (the static backend), not by :func:`assign_ranks`.
        joined: the live joiners, by node id.
        previous: the previous round's full member list (a restart), else None.
        expected: node ids a restart waits for (live members of the previous
            round and waiting nodes): with all of them in, no last call.
        holders: the previous round's members that keep their slots at MAX.
        min_at: when MIN joiners were first seen (None: fewer now).
        last_arrival: the time of the latest join.
        closed: :class:`CloseRound` was emitted; nothing more happens.
    """

    round: int
    restart_count: int
    tag: str
    params: CloseParams
    fixed_ranks: bool = False
    joined: Mapping[str, Joiner] = field(default_factory=dict)
    previous: ClosedRound | None = None
    expected: frozenset[str] = frozenset()
    holders: frozenset[str] = frozenset()
    min_at: float | None = None
    last_arrival: float = 0.0
    closed: bool = False


class Arrived(Struct, frozen=True, gc=False):
    """A node's join key appeared (``joiner.create_revision``: its place in join order)."""

    joiner: Joiner


class Departed(Struct, frozen=True, gc=False):
    """A join key of this round went (its node left or its lease ended)."""

    node_id: str


class ExpectedGone(Struct, frozen=True, gc=False):
    """A member of the previous round left it (its key there went): expected no more."""

    node_id: str


class WaitingGone(Struct, frozen=True, gc=False):
    """A waiting node's key went (it joined, or left): expected no more unless it joined."""

    node_id: str


Change = Arrived | Departed | ExpectedGone | WaitingGone


class Changes(Struct, frozen=True, gc=False):
    """What the store said since the last step, in order, and the closer's clock now.

    Several changes in one event cost one decision (the driver hands over every
    change that is ready: a wave of K joins is not K copies of the state).
    """

    now: float
    items: Sequence[Change] = ()


class WakeAt(Struct, frozen=True, gc=False):
    """Decide again at clock time ``at`` if no change comes first."""

    at: float


class CloseRound(Struct, frozen=True, gc=False):
    """Write ``record``'s member list and rank tables, then its summary as ``closed``
    (create-only: if another closer's is there, that one is the round)."""

    record: ClosedRound
    why: str


Effect = WakeAt | CloseRound


def start_closing(
    *,
    round: int,
    restart_count: int,
    tag: str,
    params: CloseParams,
    joined: Iterable[Joiner],
    now: float,
    previous: ClosedRound | None = None,
    live_previous: Iterable[str] = (),
    quarantined: Iterable[str] = (),
    waiting: Iterable[str] = (),
    fixed_ranks: bool = False,
) -> CloserState:
    """The closer's first state, from its first reads of the store.

    Args:
        joined: the joiners read (the round's join keys).
        now: the closer's clock.
        previous: for a restart, the previous round's full member list.
        live_previous: node ids whose keys in the previous round are there, less
            those that left it (a signal, unhealthy).
        quarantined: quarantined addresses (they hold no slot).
        waiting: node ids under ``waiting/``.
    """
    holders: frozenset[str] = frozenset()
    expected: frozenset[str] = frozenset()
    if previous is not None:
        holders = frozenset(ranks.slot_holders(previous.members, live_previous, quarantined))
        expected = holders | frozenset(waiting)
    members = {j.desc.node_id: j for j in joined}
    return CloserState(
        round=round,
        restart_count=restart_count,
        tag=tag,
        params=params,
        fixed_ranks=fixed_ranks,
        joined=members,
        previous=previous,
        expected=expected,
        holders=holders,
        min_at=now if len(members) >= params.min_nodes else None,
        last_arrival=now,
    )


def close_step(state: CloserState, event: Changes) -> tuple[CloserState, list[Effect]]:
    """Apply the changes in ``event``, then decide (:func:`close_decision`).

    Returns the next state and one effect: :class:`CloseRound` (the state is then
    ``closed``) or :class:`WakeAt`; no effect when only a change can help.
    """
    if state.closed:
        return state, []
    now = event.now
    joined = state.joined
    expected, holders = state.expected, state.holders
    last_arrival, min_at = state.last_arrival, state.min_at
    if event.items:
        joined = dict(joined)  # one copy per step, however many changes it carries
        for item in event.items:
            if isinstance(item, Arrived):
                joined[item.joiner.desc.node_id] = item.joiner
                last_arrival = now
            elif isinstance(item, Departed):
                joined.pop(item.node_id, None)
            elif isinstance(item, ExpectedGone):
                expected = expected - {item.node_id}
                holders = holders - {item.node_id}
            elif item.node_id not in joined:  # WaitingGone of a node that did not join
                expected = expected - {item.node_id}
            min_at = _min_at(min_at, len(joined), state.params.min_nodes, now)
    min_at = _min_at(min_at, len(joined), state.params.min_nodes, now)
    decision = close_decision(
        joined=len(joined),
        expected_present=state.previous is not None and expected <= joined.keys(),
        now=now,
        min_reached_at=min_at,
        last_arrival_at=last_arrival,
        p=state.params,
        members_back=holders <= joined.keys(),
    )
    nxt = replace(
        state,
        joined=joined,
        expected=expected,
        holders=holders,
        min_at=min_at,
        last_arrival=last_arrival,
        closed=decision.close,
    )
    if decision.close:
        return nxt, [CloseRound(_record(nxt), decision.why)]
    if decision.wake_at is not None:
        return nxt, [WakeAt(decision.wake_at)]
    return nxt, []


def _min_at(min_at: float | None, joined: int, min_nodes: int, now: float) -> float | None:
    """When MIN was reached: kept while it holds, ``now`` when it starts to, None below it."""
    if joined < min_nodes:
        return None
    return now if min_at is None else min_at


def _record(state: CloserState) -> ClosedRound:
    """The full record of the round as this closer closes it."""
    joiners = list(state.joined.values())
    if state.fixed_ranks:
        members = ranks.fixed_ranks(joiners)
    else:
        members = ranks.assign_ranks(joiners, state.previous, state.params.max_nodes)
    return ClosedRound(
        state.round,
        state.restart_count,
        members,
        members[0].addr,
        members[0].master_port,
        tag=state.tag,
        rank_tables=rank_table_count(len(members)),
    )
