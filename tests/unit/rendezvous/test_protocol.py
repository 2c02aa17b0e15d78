"""The protocol's reducers: tables per role, and a state machine over K nodes.

The state machine drives the closer's reducer (protocol.closer) for K nodes
over a simulated store of plain dicts (create-only keys, a round pointer
moved by compare-and-set), with random joins, losses, failures and timeouts:
no two different closed rounds ever share a number, and the ranks of a closed
round are always 0..N-1.
"""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from corral.core.model import NodeDesc
from corral.rendezvous.protocol import budget, closer, member, ranks
from corral.rendezvous.protocol.records import (
    REASON_FAILURE,
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


# --- the state machine ---------------------------------------------------------------

K = 5


class Rounds(RuleBasedStateMachine):
    """K nodes join rounds through the closer's reducer over a dict store.

    The store: ``round`` (a RoundPointer, moved only by compare-and-set on its
    version), ``nodes[r]`` (join keys with create revisions), ``closer[r]`` and
    ``closed[r]`` (create-only). Each round's closer is the node that created
    ``closer[r]``; when it is lost another joiner takes over with a fresh state.
    """

    def __init__(self) -> None:
        super().__init__()
        self.rev = 0
        self.now = 0.0
        self.pointer = RoundPointer(0, max_restarts=1000)
        self.pointer_version = 0
        self.nodes: dict[int, dict[str, int]] = {}
        self.closer: dict[int, str] = {}
        self.closed: dict[int, ClosedRound] = {}
        self.states: dict[int, closer.CloserState] = {}
        self.history: list[ClosedRound] = []  # every closed record that was created

    def _rev(self) -> int:
        self.rev += 1
        return self.rev

    def _start(self, r: int) -> None:
        prev = self.closed.get(r - 1)
        joined = [joiner(int(n[1:]), rev) for n, rev in self.nodes[r].items()]
        self.states[r] = closer.start_closing(
            round=r, restart_count=self.pointer.restart_count, tag=f"{self.closer[r]}.{r}",
            params=P, joined=joined, now=self.now, previous=prev,
            live_previous=list(self.nodes.get(r - 1, {})),
        )  # fmt: skip

    def _feed(self, r: int, items: list[closer.Change]) -> None:
        if r not in self.states or r in self.closed:
            return
        state, effects = closer.close_step(self.states[r], closer.Changes(self.now, items))
        self.states[r] = state
        for e in effects:
            if isinstance(e, closer.CloseRound) and r not in self.closed:  # create-only
                self.closed[r] = e.record
                self.history.append(e.record)

    @rule(i=st.integers(0, K - 1))
    def join(self, i: int) -> None:
        r = self.pointer.round
        nid = f"n{i}"
        keys = self.nodes.setdefault(r, {})
        if nid in keys or r in self.closed:
            return
        keys[nid] = self._rev()
        if r not in self.closer:
            self.closer[r] = nid
            self._start(r)
        self._feed(r, [closer.Arrived(joiner(i, keys[nid]))])

    @rule(i=st.integers(0, K - 1))
    def lose(self, i: int) -> None:
        """A node's lease ends: its keys in every round go; a lost closer is replaced."""
        nid = f"n{i}"
        for r, keys in self.nodes.items():
            if keys.pop(nid, None) is None:
                continue
            self._feed(r, [closer.Departed(nid)])
            if r + 1 in self.states:
                self._feed(r + 1, [closer.ExpectedGone(nid)])
            if self.closer.get(r) == nid and r not in self.closed:
                del self.closer[r], self.states[r]
                if keys:  # a follower takes over, reading the round afresh
                    self.closer[r] = min(keys, key=keys.__getitem__)
                    self._start(r)
                    self._feed(r, [])

    @rule(seconds=st.sampled_from([1.0, 10.0, 31.0]))
    def time_passes(self, seconds: float) -> None:
        """Timeouts: the clock moves, and every open closer decides again."""
        self.now += seconds
        for r in list(self.states):
            self._feed(r, [])

    @precondition(lambda self: self.pointer.round in self.closed)
    @rule(waiting=st.booleans())
    def restart(self, waiting: bool) -> None:
        """A failure (or a waiting node) of the current round: two nodes race to move the pointer."""
        expected = self.pointer_version
        for _ in range(2):
            reason = REASON_NODE_WAITING if waiting else REASON_FAILURE
            new = budget.next_pointer(self.pointer, reason, "")
            if self.pointer_version == expected:  # compare-and-set
                self.pointer, self.pointer_version = new, self.pointer_version + 1

    @invariant()
    def one_closed_round_per_number(self) -> None:
        seen: dict[int, ClosedRound] = {}
        for rec in self.history:
            assert seen.setdefault(rec.round, rec) is rec, f"round {rec.round} closed twice"

    @invariant()
    def ranks_are_dense(self) -> None:
        for rec in self.closed.values():
            n = len(rec.members)
            assert 1 <= n <= P.max_nodes
            ids = [m.node_id for m in rec.members]
            assert len(set(ids)) == n
            table = ranks.assignments(rec.members)
            assert [a.group_rank for a in table] == list(range(n))
            assert rec.rank_tables == ranks.rank_tables(rec.members).__len__()


Rounds.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
TestRounds = Rounds.TestCase
