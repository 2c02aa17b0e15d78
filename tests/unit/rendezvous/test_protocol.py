"""The protocol's reducers: tables per role, and a state machine over K nodes.

The state machine (tests/unit/rendezvous/test_protocol_machine.py) drives every role's
reducer: the joiner, the closer, the running member and the failure report
(the budget), for K nodes over a simulated store of plain dicts, with random
joins, losses (a lease ends), worker failures and timeouts.
"""

from __future__ import annotations

import pytest

from corral.core.model import NodeDesc
from corral.rendezvous.protocol import budget, closer, member, ranks
from corral.rendezvous.protocol.records import (
    REASON_NODE_WAITING,
    ClosedRound,
    RoundPointer,
)

P = closer.CloseParams(
    min_nodes=2, max_nodes=3, last_call_timeout=30.0, settle_time=0.0, settle_cap=0.0
)


def node(i: int) -> NodeDesc:
    return NodeDesc(node_id=f"n{i}", addr=f"10.0.0.{i}", local_world_size=1)


def joiner(i: int, rev: int) -> ranks.Joiner:
    return ranks.Joiner(node(i), rev)


# --- tables ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("joins", "now", "effect"),
    [
        ([1], 0.0, None),  # below MIN: only a change helps
        ([1, 2], 0.0, closer.WakeAt(30.0)),  # MIN: the last call
        ([1, 2, 3], 0.0, "close"),  # MAX: at once
    ],
)
def test_closer_steps(joins: list[int], now: float, effect: object) -> None:
    state = closer.start_closing(round=0, restart_count=0, tag="t", params=P, joined=(), now=0.0)
    items = [closer.Arrived(joiner(i, i)) for i in joins]
    state, effects = closer.close_step(state, closer.Changes(now, items))
    if effect is None:
        assert effects == []
    elif effect == "close":
        (e,) = effects
        assert isinstance(e, closer.CloseRound)
        assert [m.node_id for m in e.record.members] == [f"n{i}" for i in joins]
        assert state.closed
    else:
        assert effects == [effect]


def test_closer_last_call_then_close_and_nothing_after() -> None:
    state = closer.start_closing(
        round=0, restart_count=0, tag="t", params=P, joined=[joiner(1, 1), joiner(2, 2)], now=5.0
    )
    state, effects = closer.close_step(state, closer.Changes(10.0))
    assert effects == [closer.WakeAt(35.0)]
    state, effects = closer.close_step(state, closer.Changes(35.0))
    assert isinstance(effects[0], closer.CloseRound)
    assert closer.close_step(state, closer.Changes(40.0, [closer.Arrived(joiner(3, 3))])) == (
        state,
        [],
    )


def test_closer_dip_below_min_restarts_the_last_call() -> None:
    state = closer.start_closing(
        round=0, restart_count=0, tag="t", params=P, joined=[joiner(1, 1), joiner(2, 2)], now=0.0
    )
    state, _ = closer.close_step(state, closer.Changes(10.0, [closer.Departed("n2")]))
    assert state.min_at is None
    state, effects = closer.close_step(state, closer.Changes(12.0, [closer.Arrived(joiner(2, 5))]))
    assert effects == [closer.WakeAt(42.0)]


def test_closer_restart_waits_for_expected_then_closes_without_last_call() -> None:
    prev = ClosedRound(0, 0, (node(1), node(2)), "10.0.0.1", 1)
    state = closer.start_closing(
        round=1, restart_count=1, tag="t", params=P, joined=[joiner(2, 7)], now=0.0,
        previous=prev, live_previous=["n1", "n2"],
    )  # fmt: skip
    state, effects = closer.close_step(state, closer.Changes(1.0, [closer.Arrived(joiner(1, 8))]))
    (e,) = effects
    assert isinstance(e, closer.CloseRound)
    assert [m.node_id for m in e.record.members] == ["n1", "n2"]  # ranks kept


def test_closer_expected_gone_is_not_waited_for() -> None:
    prev = ClosedRound(0, 0, (node(1), node(2), node(3)), "10.0.0.1", 1)
    state = closer.start_closing(
        round=1, restart_count=1, tag="t", params=P, joined=[joiner(1, 7), joiner(2, 8)], now=0.0,
        previous=prev, live_previous=["n1", "n2", "n3"],
    )  # fmt: skip
    state, effects = closer.close_step(state, closer.Changes(1.0))
    assert effects == [closer.WakeAt(30.0)]
    state, effects = closer.close_step(state, closer.Changes(2.0, [closer.ExpectedGone("n3")]))
    assert isinstance(effects[0], closer.CloseRound)


def _member(rank: int, *, done: bool = False) -> member.MemberState:
    state, _ = member.start_member(3, rank, "p", 3, done=done, max_nodes=4, max_restarts=2)
    return state


@pytest.mark.parametrize(
    ("state", "event", "effects"),
    [
        (_member(1), member.PointerMoved(RoundPointer(3)), []),
        (
            _member(1),
            member.PointerMoved(RoundPointer(4, 1)),
            [member.Superseded(RoundPointer(4, 1))],
        ),
        (_member(1), member.PredecessorLeft("p", False), [member.MemberLost("p")]),
        (
            _member(1),
            member.PredecessorLeft("p", True, ["a", "p", "me"]),
            [member.Watch("a")],
        ),
        (
            _member(2, done=True),
            member.PredecessorLeft("p", True, ["me0", "p", "me"]),
            [member.Watch("me0"), member.Coordinate()],
        ),
        (
            _member(0),
            member.NodeWaits("w", (node(1),), RoundPointer(3, 1)),
            [member.Bump(REASON_NODE_WAITING, "node w waiting")],
        ),
        (_member(0), member.NodeWaits("n1", (node(1),), RoundPointer(3, 1)), []),
    ],
)
def test_member_steps(
    state: member.MemberState, event: member.Event, effects: list[member.Effect]
) -> None:
    assert member.member_step(state, event)[1] == effects


def test_member_spare_is_said_not_admitted() -> None:
    _, effects = member.member_step(
        _member(0), member.NodeWaits("w", (node(1),), RoundPointer(3, 2))
    )
    (say,) = effects
    assert isinstance(say, member.Say) and "restart budget spent (2/2 restarts)" in say.line


def test_member_coordinator_finishes_when_all_done() -> None:
    state, effects = member.start_member(0, 0, "b", 2, done=True, max_nodes=2, max_restarts=0)
    assert effects == [member.Watch("b"), member.Coordinate()]
    state, effects = member.member_step(state, member.DoneSeen(["a"], ["a", "b"]))
    assert effects == []
    _, effects = member.member_step(state, member.DoneSeen(["b"]))
    assert effects == [member.FinishSuccess()]


@pytest.mark.parametrize(
    ("own", "recorded", "after", "lines"),
    [
        (budget.Budget(3, 0), RoundPointer(0), budget.Budget(3, 0), 0),
        (
            budget.Budget(3, 0),
            RoundPointer(0, max_restarts=3, no_restart_code=0),
            budget.Budget(3, 0),
            0,
        ),
        (
            budget.Budget(3, 0),
            RoundPointer(0, max_restarts=1, no_restart_code=0),
            budget.Budget(1, 0),
            1,
        ),
        (
            budget.Budget(3, 0),
            RoundPointer(0, max_restarts=1, no_restart_code=7),
            budget.Budget(1, 7),
            2,
        ),
    ],
)
def test_adopt_budget(
    own: budget.Budget, recorded: RoundPointer, after: budget.Budget, lines: int
) -> None:
    new, effects = budget.adopt_budget(own, recorded)
    assert new == after and len(effects) == lines
    for e in effects:
        assert "for the job (given to the node that started it)" in e.line()
