"""The pure rendezvous core, table-driven: close decisions, ranks, restarts, records."""

from __future__ import annotations

import pytest

from corral.core.errors import RendezvousError
from corral.core.failures import FailureReport
from corral.core.keys import Keys
from corral.core.model import NodeDesc
from corral.rendezvous import protocol as m
from corral.rendezvous.protocol.records import (
    ASSIGNMENTS_PER_KEY,
    ClosedRound,
    Outcome,
    RankTable,
    RoundPointer,
    decode_node,
    encode_node,
    rank_table_count,
    rank_table_of,
)

P = m.CloseParams(min_nodes=2, max_nodes=4, last_call_timeout=30.0, settle_time=0.1, settle_cap=1.0)


@pytest.mark.parametrize(
    ("joined", "expected", "now", "min_at", "last", "close", "wake_at"),
    [
        (1, False, 0.0, None, 0.0, False, None),  # below min: only an event helps
        (1, True, 50.0, None, 0.0, False, None),  # below min even if "expected"
        (4, False, 0.0, 0.0, 0.0, True, None),  # max: at once, no settle
        (2, False, 10.0, 0.0, 0.0, False, 30.0),  # min, last call pending
        (2, False, 30.0, 0.0, 0.0, True, None),  # last call passed, quiet since 0
        (3, False, 30.0, 0.0, 29.95, False, 30.05),  # last call passed, still settling
        (3, False, 30.05, 0.0, 29.95, True, None),  # ... then quiet
        (3, False, 31.0, 0.0, 30.95, True, None),  # stream of arrivals: cap at 30 + 1
        (2, True, 5.0, 5.0, 5.0, False, 5.1),  # restart: all expected back, settle 0.1
        (2, True, 5.1, 5.0, 5.0, True, None),  # ... and close without the last call
        (3, True, 5.2, 5.0, 5.15, False, 5.25),  # a late wave arrival restarts the quiet window
    ],
)
def test_close_decision(
    joined: int,
    expected: bool,
    now: float,
    min_at: float | None,
    last: float,
    close: bool,
    wake_at: float | None,
) -> None:
    d = m.close_decision(
        joined=joined,
        expected_present=expected,
        now=now,
        min_reached_at=min_at,
        last_arrival_at=last,
        p=P,
    )
    assert d.close is close, d.why
    assert d.wake_at == pytest.approx(wake_at) if wake_at is not None else d.wake_at is None


def _n(i: str) -> NodeDesc:
    return NodeDesc(node_id=i, addr=f"10.0.0.{ord(i[0]) % 250}", local_world_size=2)


def _closed(ids: str) -> ClosedRound:
    members = tuple(_n(i) for i in ids)
    return ClosedRound(0, 0, members, members[0].addr, 1234)


@pytest.mark.parametrize(
    ("joins", "previous", "max_nodes", "ranks"),
    [
        ("abc", None, 4, "abc"),  # first round: join order
        ("cab", None, 4, "cab"),
        ("abcde", None, 3, "abc"),  # over max: the first to join
        ("cba", "abc", 4, "abc"),  # same nodes after a failure: same ranks
        ("cbad", "abc", 4, "abcd"),  # scale-up: newcomer appended
        ("ac", "abc", 4, "ac"),  # b lost: c takes the hole (only the highest moves)
        ("acde", "abcde", 5, "aecd"),  # b lost, no newcomer: e (highest) fills rank 1
        ("acdx", "abcd", 4, "axcd"),  # b lost, x new: x fills b's rank
        ("bcd", "abcd", 4, "dbc"),  # rank 0 lost: d fills 0, b and c keep theirs
        ("xabcd", "abcd", 4, "abcd"),  # survivors before newcomers when over max
    ],
)
def test_assign_ranks(joins: str, previous: str | None, max_nodes: int, ranks: str) -> None:
    joined = [m.Joiner(_n(c), rev) for rev, c in enumerate(joins, start=10)]
    prev = _closed(previous) if previous else None
    got = m.assign_ranks(joined, prev, max_nodes)
    assert "".join(n.node_id for n in got) == ranks


def test_assign_ranks_uses_create_revision_not_list_order() -> None:
    joined = [m.Joiner(_n("a"), 30), m.Joiner(_n("b"), 10), m.Joiner(_n("c"), 20)]
    assert [n.node_id for n in m.assign_ranks(joined, None, 3)] == ["b", "c", "a"]


def test_round_info_rank_offsets_with_mixed_local_world_sizes() -> None:
    members = (
        NodeDesc("a", "10.0.0.1", 4),
        NodeDesc("b", "10.0.0.2", 2),
        NodeDesc("c", "10.0.0.3", 1),
    )
    closed = ClosedRound(3, 2, members, "10.0.0.1", 4242)
    info = m.round_info("run", closed, "c")
    assert info is not None
    assert (info.group_rank, info.rank_offset, info.world_size) == (2, 6, 7)
    assert (info.master_addr, info.master_port, info.restart_count) == ("10.0.0.1", 4242, 2)
    assert m.round_info("run", closed, "zz") is None


@pytest.mark.parametrize("reason", ["failure", "member_lost", "node_waiting"])
def test_every_restart_counts_whatever_its_cause(reason: str) -> None:
    nxt = m.next_pointer(RoundPointer(5, 2, "start", max_restarts=4), reason, "why")
    assert nxt == RoundPointer(6, 3, reason, "why", 4)


@pytest.mark.parametrize("reason", ["start", "job_ended", "bogus"])
def test_next_pointer_takes_only_restart_reasons(reason: str) -> None:
    with pytest.raises(ValueError, match="restart reason"):
        m.next_pointer(RoundPointer(0), reason)


@pytest.mark.parametrize("status", ["success", "failed"])
def test_the_end_is_no_restart(status: str) -> None:
    end = m.end_pointer(RoundPointer(3, 2, "member_lost", "x", 5), status)
    assert end == RoundPointer(4, 2, "job_ended", status, 5)


@pytest.mark.parametrize(
    ("ptr", "max_restarts", "left"),
    [
        (RoundPointer(0, 0), 0, False),  # --max-restarts 0: round 0 only
        (RoundPointer(0, 0), 1, True),
        (RoundPointer(1, 1, "member_lost"), 1, False),  # one lost node spent a budget of 1
        (RoundPointer(4, 2, "node_waiting"), 3, True),
    ],
)
def test_budget_left(ptr: RoundPointer, max_restarts: int, left: bool) -> None:
    assert m.budget_left(ptr, max_restarts) is left


@pytest.mark.parametrize(
    ("failed_round", "ptr", "max_restarts", "step"),
    [
        (0, RoundPointer(0, 0), 1, m.FailureStep.RESTART),
        (0, RoundPointer(0, 0), 0, m.FailureStep.FAIL),
        (2, RoundPointer(2, 3), 3, m.FailureStep.FAIL),  # budget spent
        (2, RoundPointer(2, 2), 3, m.FailureStep.RESTART),
        (1, RoundPointer(2, 1), 0, m.FailureStep.ALREADY_MOVED),  # someone moved on: join it
        (1, RoundPointer(1, 1, "member_lost"), 1, m.FailureStep.FAIL),  # a scale event spent it
    ],
)
def test_failure_step(
    failed_round: int, ptr: RoundPointer, max_restarts: int, step: m.FailureStep
) -> None:
    assert m.failure_step(failed_round, ptr, max_restarts) is step
    assert m.restart_step(failed_round, ptr, max_restarts) is step


def _f(rank: int) -> FailureReport:
    return FailureReport(
        rank=rank, local_rank=0, group_rank=rank, host="h", node_id="n", pid=1, exitcode=1
    )


def test_root_cause_is_earliest_by_revision() -> None:
    assert m.root_cause([(9, _f(1)), (4, _f(2)), (7, _f(3))]) == _f(2)
    assert m.root_cause([]) is None


@pytest.mark.parametrize(
    ("members", "waiting", "max_nodes", "want"),
    [("ab", "c", 3, True), ("abc", "d", 3, False), ("ab", "a", 3, False)],
)
def test_scale_up_wanted(members: str, waiting: str, max_nodes: int, want: bool) -> None:
    assert m.scale_up_wanted([_n(c) for c in members], waiting, max_nodes) is want


@pytest.mark.parametrize(
    ("members", "waiting", "restarts", "max_restarts", "step"),
    [
        ("ab", "c", 0, 1, m.ScaleUp.ADMIT),  # room and budget: restart with c (counts one)
        ("ab", "c", 1, 1, m.ScaleUp.SPARE),  # room, budget spent: c waits as a spare
        ("ab", "c", 0, 0, m.ScaleUp.SPARE),  # --max-restarts 0: never admitted mid-job
        ("abc", "d", 0, 5, m.ScaleUp.NO_ROOM),  # at max_nodes
        ("abc", "d", 5, 5, m.ScaleUp.NO_ROOM),
        ("ab", "a", 0, 5, m.ScaleUp.NO_ROOM),  # already a member
    ],
)
def test_scale_up_step(
    members: str, waiting: str, restarts: int, max_restarts: int, step: m.ScaleUp
) -> None:
    ptr = RoundPointer(2, restarts, "failure")
    assert m.scale_up_step([_n(c) for c in members], waiting, 3, ptr, max_restarts) is step


@pytest.mark.parametrize(
    ("count", "max_nodes", "restarts", "max_restarts", "spare"),
    [(2, 3, 1, 1, True), (2, 3, 0, 1, False), (3, 3, 1, 1, False)],
)
def test_waiting_line_says_why_a_node_waits(
    count: int, max_nodes: int, restarts: int, max_restarts: int, spare: bool
) -> None:
    line = m.waiting_line("n9", 4, count, max_nodes, restarts, max_restarts)
    assert "\n" not in line and "n9" in line and "round 4" in line
    assert ("spare" in line and "budget is spent (1/1 restarts)" in line) is spare


def test_lost_node_report_names_the_node() -> None:
    members = (
        NodeDesc("a", "10.0.0.1", 4, host="ha", pid=11),
        NodeDesc("b", "10.0.0.2", 2, host="hb", pid=22),
        NodeDesc("c", "10.0.0.3", 1, host="hc", pid=33),
    )
    rep = m.lost_node_report(members, "b", 3, 1, 1)
    assert rep.lost and (rep.rank, rep.local_rank, rep.group_rank) == (4, -1, 1)
    assert (rep.node_id, rep.host, rep.pid, rep.round, rep.restart_count) == ("b", "hb", 22, 3, 1)
    assert rep.exit_code == 1
    assert rep.message is not None
    assert "node 1 (hb, 10.0.0.2, node id b) was lost in round 3" in rep.message
    assert "lease ended" in rep.message and "restart budget spent (1/1 restarts)" in rep.message
    assert FailureReport.from_json(rep.to_json()) == rep  # travels through the store
    why = m.lost_node_report(members, "a", 3, 1, 1, "every member of round 3 left")
    assert why.group_rank == 0 and why.message and "every member of round 3 left" in why.message
    with pytest.raises(ValueError, match="not a member"):
        m.lost_node_report(members, "zz", 3, 1, 1)


@pytest.mark.parametrize(
    ("count", "max_nodes", "restarts", "max_restarts", "spare"),
    [
        (2, 3, 1, 1, True),  # room, budget spent
        (2, 3, 0, 0, True),  # --max-restarts 0: every late node is a spare
        (2, 3, 0, 1, False),  # room and budget: it is admitted (node_waiting)
        (3, 3, 1, 1, False),  # full: it waits for room, with its join_timeout
    ],
)
def test_is_spare(
    count: int, max_nodes: int, restarts: int, max_restarts: int, spare: bool
) -> None:
    assert m.is_spare(count, max_nodes, restarts, max_restarts) is spare


def test_restarts_text() -> None:
    assert m.restarts_text(1, 3) == "1/3"


@pytest.mark.parametrize("n", [1, 2, ASSIGNMENTS_PER_KEY, ASSIGNMENTS_PER_KEY + 1, 1000])
def test_rank_tables_hold_every_assignment_once_where_its_member_looks(n: int) -> None:
    members = [NodeDesc(f"node{i}", "10.0.0.1", 1 + i % 3) for i in range(n)]
    tables = m.rank_tables(members)
    assert len(tables) == rank_table_count(n) == -(-n // ASSIGNMENTS_PER_KEY)
    want = m.assignments(members)
    for mem, a in zip(members, want, strict=True):
        assert tables[rank_table_of(mem.node_id, len(tables))].assignments[mem.node_id] == a
    assert sum(len(t.assignments) for t in tables) == n
    if n >= 1000:  # the hash spreads members: no table is far above the mean
        assert max(len(t.assignments) for t in tables) <= 3 * ASSIGNMENTS_PER_KEY
    for t in tables:
        assert RankTable.from_json(t.to_json()) == t


def test_rank_table_of_is_the_same_in_every_process() -> None:
    # crc32, not hash(): Python salts str hashes per process
    assert rank_table_of("node7", 64) == 53
    assert rank_table_of("a", 1) == 0


def test_records_round_trip() -> None:
    p = RoundPointer(4, 1, "failure", "x", max_restarts=3)
    assert RoundPointer.from_json(p.to_json()) == p
    # a pointer written without the budget (an older corral): not recorded
    old = b'{"version":1,"round":2,"restart_count":1,"reason":"failure","detail":""}'
    assert RoundPointer.from_json(old) == RoundPointer(2, 1, "failure", "", -1)
    c = _closed("abc")
    assert ClosedRound.from_json(c.to_json()) == c
    o = Outcome("failed", 3, _f(2), 7)
    assert Outcome.from_json(o.to_json()) == o
    assert decode_node(encode_node(_n("a"))) == _n("a")


@pytest.mark.parametrize(
    "data", [b"not json", b"[]", b'{"version": 2, "round": 1}', b'{"version": 1}']
)
def test_corrupt_records_are_reported(data: bytes) -> None:
    with pytest.raises(RendezvousError):
        RoundPointer.from_json(data)
    with pytest.raises(RendezvousError):
        RankTable.from_json(data)


@pytest.mark.parametrize(
    "data",
    [b'{"version": 1, "ranks": []}', b'{"version": 1, "ranks": {"a": [1]}}',
     b'{"version": 1, "ranks": {"a": ["x", 0, ""]}}'],
)  # fmt: skip
def test_corrupt_rank_tables_are_reported(data: bytes) -> None:
    with pytest.raises(RendezvousError):
        RankTable.from_json(data)


def test_keys() -> None:
    k = Keys("/corral", "job")
    assert k.round == "/corral/job/round"
    assert k.node(3, "n1") == "/corral/job/r/3/nodes/n1"
    assert k.closed(3).startswith(k.close_prefix(3))
    assert k.closer(3).startswith(k.close_prefix(3))
    assert k.close_prefix(3).startswith(k.closes)
    assert not k.closed(30).startswith(k.close_prefix(3))  # round 3's prefix is round 3's alone
    assert not k.node(3, "closer").startswith(k.closes)
    assert k.failure(3, "n1", 2) == "/corral/job/r/3/failures/n1/2"
    assert k.lost(3, "n1") == "/corral/job/r/3/failures/n1/lost"  # read with the failures
    assert k.lost(3, "n1").startswith(k.failures(3))
    with pytest.raises(RendezvousError):
        Keys("/corral", "a/b")
