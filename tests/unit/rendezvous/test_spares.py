"""A spare takes a lost slot and only a lost slot; quarantine: the pure decisions, by table."""

from __future__ import annotations

import pytest

from corral.core.errors import RendezvousError
from corral.core.keys import Keys
from corral.core.model import NodeDesc
from corral.rendezvous import protocol as m
from corral.rendezvous.protocol.records import ClosedRound, Quarantine, RoundPointer

P = m.CloseParams(min_nodes=2, max_nodes=2, last_call_timeout=30.0, settle_time=0.1, settle_cap=1.0)


def _n(i: str) -> NodeDesc:
    return NodeDesc(node_id=i, addr=f"10.0.0.{ord(i) - ord('a') + 1}", local_world_size=2)


@pytest.mark.parametrize(
    ("joined", "back", "now", "min_at", "close", "wake_at"),
    [
        # MAX joined and every member of the previous round back: at once
        (2, True, 0.0, 0.0, True, None),
        # MAX joined, but one joiner is a spare and a member is still on its
        # way back: wait for it (bounded by the last call), never close on the spare
        (2, False, 0.0, 0.0, False, 30.0),
        (2, False, 29.0, 0.0, False, 30.0),
        # the member never came back (its key is there, it is not): the last call closes
        (2, False, 30.0, 0.0, True, None),
        (3, False, 0.0, 0.0, False, 30.0),  # over MAX changes nothing
    ],
)
def test_close_at_max_waits_for_the_previous_members(
    joined: int, back: bool, now: float, min_at: float | None, close: bool, wake_at: float | None
) -> None:
    d = m.close_decision(
        joined=joined,
        expected_present=back,  # every expected node is back exactly when the members are
        now=now,
        min_reached_at=min_at,
        last_arrival_at=0.0,
        p=P,
        members_back=back,
    )
    assert d.close is close, d.why
    assert d.wake_at == pytest.approx(wake_at) if wake_at is not None else d.wake_at is None


def test_members_back_settles_like_any_restart() -> None:
    # members back with a spare too (3 > MAX): close at once; the spare is left out by rank
    d = m.close_decision(
        joined=3,
        expected_present=True,
        now=0.0,
        min_reached_at=0.0,
        last_arrival_at=0.0,
        p=P,
        members_back=True,
    )
    assert d.close


@pytest.mark.parametrize(
    ("previous", "live", "quarantined", "holders"),
    [
        ("ab", "ab", "", "ab"),  # a failure: both keep their slots
        ("ab", "a", "", "a"),  # b lost (its key went): its slot is free
        ("ab", "ab", "b", "a"),  # b quarantined: its slot is free though it lives
        ("ab", "abc", "", "ab"),  # c waits: not a member, holds no slot
        ("abc", "", "", ""),  # everyone gone
    ],
)
def test_slot_holders(previous: str, live: str, quarantined: str, holders: str) -> None:
    prev = [_n(c) for c in previous]
    addrs = [_n(c).addr for c in quarantined]
    assert m.slot_holders(prev, list(live), addrs) == set(holders)


@pytest.mark.parametrize(
    ("joins", "previous", "ranks"),
    [
        ("bca", "ab", "ab"),  # failure, a spare joined first: the members keep their slots
        ("cba", "ab", "ab"),
        ("cb", "ab", "cb"),  # a (rank 0) lost: the spare takes rank 0, b keeps rank 1
        ("ac", "ab", "ac"),  # b lost or quarantined: the spare takes rank 1
        ("ca", "ab", "ac"),  # ... whatever the join order
    ],
)
def test_a_spare_takes_the_lost_slot_and_only_it(joins: str, previous: str, ranks: str) -> None:
    joined = [m.Joiner(_n(c), rev) for rev, c in enumerate(joins, start=10)]
    members = tuple(_n(c) for c in previous)
    prev = ClosedRound(0, 0, members, members[0].addr, 1234)
    got = m.assign_ranks(joined, prev, 2)
    assert "".join(n.node_id for n in got) == ranks


def _ptr(reason: str = "failure", cause: str = "", streak: int = 0) -> RoundPointer:
    return RoundPointer(3, 3, reason, "", 5, cause=cause, streak=streak)


@pytest.mark.parametrize(
    ("ptr", "cause", "streak"),
    [
        (_ptr("start"), "10.0.0.2", 1),  # the job's first failure
        (_ptr("failure", "10.0.0.2", 1), "10.0.0.2", 2),  # the same node again: in a row
        (_ptr("failure", "10.0.0.2", 4), "10.0.0.2", 5),
        (_ptr("failure", "10.0.0.1", 3), "10.0.0.2", 1),  # another node: a new row
        (_ptr("member_lost", "", 0), "10.0.0.2", 1),  # a lost node broke the row
        (_ptr("node_waiting", "", 0), "10.0.0.2", 1),
        (_ptr("failure", "", 0), "", 1),  # no cause known: never a row
    ],
)
def test_failure_streak(ptr: RoundPointer, cause: str, streak: int) -> None:
    assert m.failure_streak(ptr, cause) == streak


@pytest.mark.parametrize(
    ("streak", "after", "members", "min_nodes", "spare", "out"),
    [
        (2, 2, 2, 2, True, True),  # N in a row, a spare waits: out
        (1, 2, 2, 2, True, False),  # not yet N
        (2, 2, 2, 2, False, False),  # at MIN with no spare: retried as today
        (2, 2, 3, 2, False, True),  # MIN still met without it
        (5, 0, 3, 1, True, False),  # 0 turns it off
        (3, 2, 2, 2, True, True),  # past N (a spare came late): out now
        (1, 1, 1, 1, False, False),  # a one-node job never quarantines its only node
    ],
)
def test_quarantine_wanted(
    streak: int, after: int, members: int, min_nodes: int, spare: bool, out: bool
) -> None:
    assert m.quarantine_wanted(streak, after, members, min_nodes, spare) is out


def test_next_pointer_carries_the_row() -> None:
    ptr = _ptr("failure", "10.0.0.2", 1)
    nxt = m.next_pointer(ptr, "failure", "why", cause="10.0.0.2", streak=2)
    assert (nxt.round, nxt.restart_count, nxt.cause, nxt.streak) == (4, 4, "10.0.0.2", 2)
    assert RoundPointer.from_json(nxt.to_json()) == nxt
    assert (
        m.next_pointer(nxt, "member_lost").cause,
        m.next_pointer(nxt, "member_lost").streak,
    ) == (
        "",
        0,
    )
    # a pointer written before quarantine existed reads with no row
    old = b'{"version":1,"round":2,"restart_count":1,"reason":"failure","detail":""}'
    assert (RoundPointer.from_json(old).cause, RoundPointer.from_json(old).streak) == ("", 0)


def test_quarantine_record_round_trip_and_line() -> None:
    q = Quarantine("127.0.0.2", "n2", "h2", 4, 2, "rank 1 exited with 3")
    assert Quarantine.from_json(q.to_json()) == q
    assert q.line() == (
        "node 127.0.0.2 (n2) is quarantined: the root cause of 2 failures of the job in a row, "
        "the last in round 4: rank 1 exited with 3"
    )
    with pytest.raises(RendezvousError, match="quarantine"):
        Quarantine.from_json(b'{"version":1,"addr":"x"}')
    assert Keys("/corral", "job").quarantine_key("127.0.0.2") == "/corral/job/quarantine/127.0.0.2"
