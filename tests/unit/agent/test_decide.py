"""next_action: the agent's one decision after a round, as a table (pure: no I/O)."""

from __future__ import annotations

import pytest

from corral.agent.decide import (
    Action,
    Changed,
    Fail,
    Failed,
    JobOver,
    Rejoin,
    RoundOutcome,
    Stop,
    Stopped,
    Succeed,
    Succeeded,
    next_action,
)
from corral.agent.lifecycle import AgentState
from corral.agent.policy import RestartVerdict
from corral.core.failures import FailureReport
from corral.core.model import ChangeKind, Decision, RoundChange, RoundInfo

RND = RoundInfo("job", 3, 0, 2, (), 0, 4, "127.0.0.1", 1, 1)


def _failure(rank: int, node: str = "a") -> FailureReport:
    return FailureReport(
        rank=rank, local_rank=rank, group_rank=0, host="h", node_id=node, pid=100 + rank,
        exitcode=1, message="", traceback="", timestamp=0.0, round=3, restart_count=1,
    )  # fmt: skip


F0, F1, ELSEWHERE = _failure(0), _failure(1), _failure(5, node="b")
GO = RestartVerdict(restart=True, delay=2.0, reason="backoff")
GIVE_UP = RestartVerdict(restart=False, delay=0.0, reason="repeating")
LOST = RoundChange(ChangeKind.MEMBER_LOST, 4, "node b lost")
STOPPING, RENDEZVOUS = AgentState.STOPPING, AgentState.RENDEZVOUS

TABLE: list[tuple[str, AgentState, RoundOutcome, Action]] = [
    ("the job ended before this node joined", RENDEZVOUS, JobOver(), Succeed()),
    ("another node stopped the job", STOPPING, Stopped(15, "h2"), Stop(15, "h2")),
    (
        "a membership change",
        STOPPING,
        Changed(RND, LOST),
        Rejoin(RND, "member_lost", "node b lost"),
    ),
    ("success recorded", STOPPING, Succeeded(RND, {0: 1}, None), Succeed()),
    ("success superseded", STOPPING, Succeeded(RND, {0: 1}, LOST), Rejoin(RND)),
    (
        "a failure, the job restarts",
        STOPPING,
        Failed(RND, (F0, F1), Decision.RESTART, None, GO),
        Rejoin(RND, "failure", "rank 0 failed", GO),
    ),
    (
        "a failure, the job fails: this node's first is the root",
        STOPPING,
        Failed(RND, (F0, F1), Decision.FAIL, None, GIVE_UP),
        Fail((F0, F1)),
    ),
    (
        "the job fails with a root cause of another node's",
        STOPPING,
        Failed(RND, (F0, F1), Decision.FAIL, ELSEWHERE, GO),
        Fail((ELSEWHERE, F0, F1)),
    ),
    (
        "the job names one of this node's failures: it goes first, once",
        STOPPING,
        Failed(RND, (F0, F1), Decision.FAIL, F1, GO),
        Fail((F1, F0)),
    ),
]


@pytest.mark.parametrize(
    ("state", "outcome", "action"), [t[1:] for t in TABLE], ids=[t[0] for t in TABLE]
)
def test_next_action(state: AgentState, outcome: RoundOutcome, action: Action) -> None:
    assert next_action(state, outcome) == action


@pytest.mark.parametrize(
    ("state", "outcome"),
    [
        (STOPPING, JobOver()),  # a join's end, after a group ran
        (RENDEZVOUS, Succeeded(RND, {}, None)),  # a group's end, before it ran
        (AgentState.RUNNING, Changed(RND, LOST)),  # the group was not stopped
    ],
)
def test_an_outcome_that_cannot_happen_in_the_state_is_a_bug(
    state: AgentState, outcome: RoundOutcome
) -> None:
    with pytest.raises(ValueError, match="in agent state"):
        next_action(state, outcome)
