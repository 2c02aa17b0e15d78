"""The joiner's and the failure report's reducers, table-driven
(corral.rendezvous.protocol.joiner, corral.rendezvous.protocol.failing)."""

from __future__ import annotations

import pytest

from corral.core.failures import FailureReport
from corral.core.model import Decision, NodeDesc
from corral.rendezvous.protocol import failing
from corral.rendezvous.protocol import joiner as j
from corral.rendezvous.protocol.budget import Budget
from corral.rendezvous.protocol.records import (
    REASON_FAILURE,
    REASON_JOB_ENDED,
    ClosedRound,
    Outcome,
    Quarantine,
    RoundPointer,
)


def node(i: int) -> NodeDesc:
    return NodeDesc(node_id=f"n{i}", addr=f"10.0.0.{i}", local_world_size=1)


P0 = RoundPointer(0, max_restarts=2)
FULL = ClosedRound(0, 0, (node(1), node(2)), "10.0.0.1", 1, tag="t", rank_tables=1)


def joined(
    lease: int = 7, former: frozenset[int] = frozenset(), **read: object
) -> tuple[j.JoinerState, list[j.Effect]]:
    state, effects = j.start_join(
        node_id="n1",
        run_id="job",
        max_nodes=3,
        budget=Budget(2),
        retry_delay=1.0,
        expect=0,
        former=former,
    )
    assert effects == [j.EnsureLease()]
    state, effects = j.joiner_step(state, j.LeaseReady(lease))
    assert effects == [j.CheckQuarantine()]
    state, effects = j.joiner_step(state, j.QuarantineChecked(None))
    assert effects == [j.RequestJoin(0, lease)]
    fields: dict[str, object] = dict(
        round=0, created=True, existing_lease=None, closer_created=False, pointer=P0,
        pointer_revision=1, closed=None, revision=5,
    )  # fmt: skip
    fields.update(read)
    return j.joiner_step(state, j.JoinRead(**fields))  # type: ignore[arg-type]


def test_follower_follows_and_reads_its_place_from_the_record() -> None:
    state, effects = joined()
    assert effects == [j.Joined(0, P0, 1, Budget(2)), j.Follow(0, 5)]
    state, effects = j.joiner_step(state, j.CloseSeen(j.ClosedRef(FULL, 4), 4))
    assert effects == [j.Follow(0, 5)]  # the join's read had it: skipped
    state, effects = j.joiner_step(state, j.CloseSeen(j.ClosedRef(FULL, 9), 9))
    assert isinstance(effects[0], j.Remember)
    (placed,) = effects[1:]
    assert isinstance(placed, j.Placed)
    assert (placed.info.group_rank, placed.info.group_world_size) == (0, 2)
    assert state.phase is j.Phase.DONE


def test_first_joiner_closes() -> None:
    _, effects = joined(closer_created=True)
    assert effects[-1] == j.Close(P0, 7)


def test_closer_that_left_is_taken_over() -> None:
    state, _ = joined()
    state, effects = j.joiner_step(state, j.CloserLeft(8))
    assert effects == [j.TakeOver(0, 7)]
    _, effects = j.joiner_step(state, j.TakeOverResult(False))
    assert effects == [j.Follow(0, 5)]
    state, effects = j.joiner_step(state, j.TakeOverResult(True))
    assert effects[-1] == j.Close(P0, 7)


def test_compacted_watch_reads_close_again() -> None:
    state, _ = joined()
    state, effects = j.joiner_step(state, j.Compacted())
    assert effects == [j.ReadClose(0)]
    _, effects = j.joiner_step(state, j.CloseRead(None, False, 12))
    assert effects == [j.TakeOver(0, 7)]
    state, effects = j.joiner_step(state, j.CloseRead(None, True, 12))
    assert effects == [j.Follow(0, 12)]


@pytest.mark.parametrize(
    ("read", "want"),
    [
        ({"pointer": RoundPointer(2)}, [j.Retract(0, True, False), j.RequestJoin(2, 7)]),
        (
            {"pointer": RoundPointer(2, reason=REASON_JOB_ENDED), "closer_created": True},
            [j.Retract(0, True, True), j.RaiseOutcome(RoundPointer(2, reason=REASON_JOB_ENDED))],
        ),
        (
            {"created": False, "existing_lease": 8},
            [j.Refuse("node id 'n1' is already used by another live agent")],
        ),
    ],
)
def test_request_that_does_not_join(read: dict[str, object], want: list[j.Effect]) -> None:
    assert joined(**read)[1] == want


def test_own_key_under_a_former_lease_is_revoked_and_the_join_asked_again() -> None:
    """After this node fenced itself (its lease not renewed for the TTL, the store
    unable to take the revoke), its key in the round can outlive it under its old
    lease: that is this node's own key, not another live agent's (it was refused as
    one, and the agent exited)."""
    state, effects = joined(former=frozenset({3, 5}), created=False, existing_lease=5)
    assert effects == [j.RevokeFormer(5), j.RequestJoin(0, 7)]
    fields: dict[str, object] = dict(
        round=0, created=True, existing_lease=None, closer_created=False, pointer=P0,
        pointer_revision=1, closed=None, revision=6,
    )  # fmt: skip
    _, effects = j.joiner_step(state, j.JoinRead(**fields))  # type: ignore[arg-type]
    assert any(isinstance(e, j.Joined) for e in effects)  # joined this time
    # A lease this node never held is another agent's, former leases or not.
    assert joined(former=frozenset({3, 5}), created=False, existing_lease=8)[1] == [
        j.Refuse("node id 'n1' is already used by another live agent")
    ]


def test_closed_round_reads_one_rank_table() -> None:
    summary = FULL.summary()
    state, effects = joined(created=False, closed=j.ClosedRef(summary, 3))
    assert effects[-1] == j.ReadRankTable(0, "t", 0, 3)
    _, effects = j.joiner_step(state, j.RankTableRead(None))
    assert effects == [j.ReadMembers(0, summary)]


def test_evicted_node_finds_the_round_closed_and_waits_for_the_next() -> None:
    state, effects = joined(closed=j.ClosedRef(FULL, 3))  # created now: not a member
    assert effects[1] == j.Retract(0, True, False)
    assert isinstance(effects[-2], j.PutWaiting) and effects[-1] == j.ReadLive(0)
    state, effects = j.joiner_step(state, j.LiveRead(["n9", "n2"], 20))
    assert effects == [j.WatchMember(0, "n2", 20)]
    state, effects = j.joiner_step(state, j.MemberLeft())
    assert effects == [j.ReadLive(0)]
    state, effects = j.joiner_step(state, j.LiveRead([], 21))
    assert effects == [j.EndLost(0, FULL, "n1", "every member of round 0 left"), j.EnsureLease()]
    assert state.waiting


def test_spare_when_the_budget_is_spent() -> None:
    spent = RoundPointer(0, 2, REASON_FAILURE, max_restarts=2)
    _, effects = joined(pointer=spent, closed=j.ClosedRef(FULL, 3))
    assert effects[-1] == j.Spare(0, FULL, 1, 7)
    state, effects = j.start_waiting(
        node_id="n1", run_id="job", max_nodes=3, budget=Budget(2), retry_delay=1.0,
        spare=j.Spare(0, FULL, 1, 7), pointer=spent,
    )  # fmt: skip
    assert "waits as a spare" in effects[0].line  # type: ignore[union-attr]
    assert j.joiner_step(state, j.PointerMoved())[1] == [j.Rejoin()]
    assert j.joiner_step(state, j.LeaseLost())[1] == [j.EvictLease(), j.Rejoin()]
    assert j.joiner_step(state, j.Unreachable("x", 0.0))[1] == [j.Rejoin(error=True)]


def test_unreachable_store_is_retried_after_a_delay_and_said_once() -> None:
    state, _ = joined()
    state, effects = j.joiner_step(state, j.Unreachable("no answer", 10.0))
    assert isinstance(effects[0], j.Warn) and effects[1:] == [j.WakeAt(11.0)]
    state, effects = j.joiner_step(state, j.Unreachable("no answer", 12.0))
    assert effects == [j.WakeAt(13.0)]
    _, effects = j.joiner_step(state, j.Timer(13.0))
    assert effects == [j.EnsureLease()]


def test_quarantined_node_joins_nothing() -> None:
    rec = Quarantine("10.0.0.1", "n1", "h", 3, 2, "exit 1")
    state, _ = j.start_join(
        node_id="n1", run_id="job", max_nodes=3, budget=Budget(2), retry_delay=1.0, expect=0
    )
    state, _ = j.joiner_step(state, j.LeaseReady(7))
    assert j.joiner_step(state, j.QuarantineChecked(rec))[1] == [j.Quarantined(rec)]


# --- the failure report ------------------------------------------------------------------


def fail(ptr: RoundPointer, *, final: bool = False, code: int = 0) -> list[failing.Effect]:
    state, effects = failing.start_failing(3, "n1", 2, code, final=final)
    state, effects = failing.failing_step(state, failing.MemberChecked(True))
    assert effects[0] == failing.Publish()
    return failing.failing_step(state, failing.PointerRead(ptr, 40))[1]


def test_failure_restarts_through_the_quarantine_judge() -> None:
    ptr = RoundPointer(3, 1, REASON_FAILURE)
    state, _ = failing.start_failing(3, "n1", 2, 0, final=False)
    state, _ = failing.failing_step(state, failing.MemberChecked(True))
    state, effects = failing.failing_step(state, failing.PointerRead(ptr, 40))
    assert effects == [failing.Judge(ptr)]
    state, effects = failing.failing_step(state, failing.Judged())
    (cas,) = effects
    assert isinstance(cas, failing.CasPointer) and cas.new.round == 4 and cas.revision == 40
    _, effects = failing.failing_step(state, failing.CasResult(True))
    assert effects == [
        failing.Opened(4, "failure on n1 in round 3"),
        failing.Decided(Decision.RESTART),
    ]
    _, effects = failing.failing_step(state, failing.CasResult(False))
    assert effects == [failing.ReadPointer()]


@pytest.mark.parametrize(
    ("ptr", "final", "first"),
    [
        (RoundPointer(3, 2, REASON_FAILURE), False, "end"),  # budget spent
        (RoundPointer(3, 1, REASON_FAILURE), True, "end"),  # a policy gave up
        (RoundPointer(4, 2, REASON_FAILURE), False, failing.Decided(Decision.RESTART)),
        (RoundPointer(4, 2, REASON_FAILURE), True, failing.FixOutcome()),
        (RoundPointer(4, 2, REASON_JOB_ENDED, "failed"), False, "ended"),
    ],
)
def test_failure_turns(ptr: RoundPointer, final: bool, first: object) -> None:
    effects = fail(ptr, final=final)
    if first == "end":
        (cas,) = effects
        assert isinstance(cas, failing.CasPointer) and cas.new.reason == REASON_JOB_ENDED
    elif first == "ended":
        assert effects == [failing.ReadEnded(ptr)]
    else:
        assert effects[0] == first


def test_zombie_publishes_nothing() -> None:
    state, _ = failing.start_failing(3, "n1", 2, 0, final=False)
    _, effects = failing.failing_step(state, failing.MemberChecked(False))
    assert isinstance(effects[0], failing.Warn) and effects[1] == failing.Decided(Decision.RESTART)


def test_no_restart_exit_code_ends_the_job() -> None:
    state, _ = failing.start_failing(3, "n1", 2, 7, final=False)
    state, effects = failing.failing_step(state, failing.MemberChecked(True))
    assert effects == [failing.Publish(), failing.ReadRoot()]
    root = FailureReport(rank=0, local_rank=0, group_rank=0, host="h", node_id="n1", pid=1,
                         exitcode=7)  # fmt: skip
    state, effects = failing.failing_step(state, failing.RootRead(root))
    assert state.final and effects[-1] == failing.ReadPointer()


def test_job_stopped_meanwhile_is_not_a_failure() -> None:
    state, _ = failing.start_failing(3, "n1", 2, 0, final=False)
    state, _ = failing.failing_step(state, failing.MemberChecked(True))
    ended = RoundPointer(4, 1, REASON_JOB_ENDED, "stopped")
    state, _ = failing.failing_step(state, failing.PointerRead(ended, 40))
    out = Outcome("stopped", 3, None, 143, signal=15, node="h")
    assert failing.failing_step(state, failing.EndedRead(out))[1] == [failing.Stopped(15, "h")]


def test_pointer_that_keeps_changing_gives_up() -> None:
    state, _ = failing.start_failing(3, "n1", 2, 0, final=True)
    state, _ = failing.failing_step(state, failing.MemberChecked(True))
    effects: list[failing.Effect] = [failing.ReadPointer()]
    for _ in range(failing.ATTEMPTS):
        assert effects == [failing.ReadPointer()]
        state, _ = failing.failing_step(state, failing.PointerRead(RoundPointer(3), 1))
        state, effects = failing.failing_step(state, failing.CasResult(False))
    assert effects == [failing.GiveUp()]
