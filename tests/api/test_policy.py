"""Restart policies: table tests of the pure decisions, FakeClock waits, one real run."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

import corral
from corral.agent.agent import AgentHooks
from corral.agent.policy import BackoffPolicy, ImmediatePolicy, RestartPolicy, RestartVerdict
from corral.config import LaunchConfig
from corral.core.clock import FakeClock
from corral.core.errors import ConfigError, WorkerFailed
from corral.core.failures import FailureReport
from corral.core.model import RoundInfo
from tests.api import fns

pytestmark = pytest.mark.timeout(60)


def fail(rank: int = 0, code: int = 1, message: str | None = "RuntimeError: x") -> FailureReport:
    return FailureReport(
        rank=rank,
        local_rank=rank,
        group_rank=0,
        host="h",
        node_id="n",
        pid=1,
        exitcode=code,
        message=message,
    )


A, B, C = fail(0), fail(1), fail(0, code=2)
A_OTHER_MSG = fail(0, message="RuntimeError: y")


@pytest.mark.parametrize(
    ("kwargs", "sequence", "expected"),
    [
        # (restart?, delay) after each failure of the sequence
        ({}, [A, B, A, B], [(True, 1.0), (True, 2.0), (True, 4.0), (True, 8.0)]),
        ({}, [A, A], [(True, 1.0), (False, 0.0)]),
        ({}, [A, B, B], [(True, 1.0), (True, 2.0), (False, 0.0)]),
        ({}, [A, C, A_OTHER_MSG], [(True, 1.0), (True, 2.0), (True, 4.0)]),
        ({"identical_limit": 3}, [A, A, A], [(True, 1.0), (True, 2.0), (False, 0.0)]),
        ({"identical_limit": 0}, [A, A, A], [(True, 1.0), (True, 2.0), (True, 4.0)]),
        (
            {"initial": 0.5, "factor": 3.0, "max_delay": 5.0},
            [A, B, A, B],
            [(True, 0.5), (True, 1.5), (True, 4.5), (True, 5.0)],
        ),
        ({"initial": 0.0}, [A, B], [(True, 0.0), (True, 0.0)]),
        ({"max_delay": 60.0}, [A, B] * 5, [(True, min(2.0**i, 60.0)) for i in range(10)]),
    ],
)
def test_backoff_decisions(
    kwargs: dict[str, float], sequence: list[FailureReport], expected: list[tuple[bool, float]]
) -> None:
    policy = BackoffPolicy(**kwargs)  # type: ignore[arg-type]
    got = [policy.on_failure([f]) for f in sequence]
    assert [(v.restart, v.delay) for v in got] == expected
    for v in got:
        if not v.restart:
            assert "times in a row" in v.reason


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"initial": -1.0}, "initial"),
        ({"factor": 0.5}, "factor"),
        ({"initial": 5.0, "max_delay": 1.0}, "max_delay"),
        ({"identical_limit": -1}, "identical_limit"),
    ],
)
def test_backoff_validation(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        BackoffPolicy(**kwargs)  # type: ignore[arg-type]


def test_immediate_policy_always_restarts_now() -> None:
    p = ImmediatePolicy()
    assert [p.on_failure([A]) for _ in range(3)] == [RestartVerdict()] * 3
    assert isinstance(p, RestartPolicy) and isinstance(BackoffPolicy(), RestartPolicy)


async def test_before_rejoin_sleeps_on_the_policys_clock() -> None:
    clock = FakeClock()
    policy = BackoffPolicy(initial=2.0, clock=clock)
    verdict = policy.on_failure([A])
    waiter = asyncio.ensure_future(policy.before_rejoin(verdict))
    await asyncio.sleep(0)
    assert clock.sleepers == 1 and not waiter.done()
    clock.advance(1.999)
    await asyncio.sleep(0)
    assert not waiter.done()
    clock.advance(0.001)
    await asyncio.wait_for(waiter, 1)
    # no wait for a give-up or a zero delay
    await asyncio.wait_for(policy.before_rejoin(RestartVerdict(restart=False, delay=5.0)), 1)
    await asyncio.wait_for(policy.before_rejoin(RestartVerdict(delay=0.0)), 1)
    assert clock.sleepers == 0


async def test_backoff_gives_up_on_a_repeating_failure(cfg: LaunchConfig) -> None:
    """Real run: the same failure twice ends the job with 3 restarts still in the budget."""
    kinds: list[tuple[int, str]] = []

    async def on_outcome(rnd: RoundInfo, kind: str, failures: list[FailureReport]) -> None:
        kinds.append((rnd.restart_count, kind))

    policy = BackoffPolicy(initial=0.05, factor=2.0, max_delay=0.2, identical_limit=2)
    job = replace(cfg, nproc_per_node=1, max_restarts=4)
    with pytest.raises(WorkerFailed) as info:
        await corral.launch_async(
            job, fns.same_failure, policy=policy, hooks=AgentHooks(on_outcome=on_outcome)
        )
    root = info.value.root_cause
    assert root is not None and root.message == "RuntimeError: deterministic bug"
    assert root.restart_count == 1  # the second attempt's failure ended the job
    assert kinds == [(0, "failed"), (1, "failed")]


async def test_backoff_restarts_a_changing_failure_until_the_budget_is_spent(
    cfg: LaunchConfig,
) -> None:
    policy = BackoffPolicy(initial=0.02, factor=2.0, max_delay=0.05, identical_limit=2)
    job = replace(cfg, nproc_per_node=1, max_restarts=2)
    with pytest.raises(WorkerFailed) as info:
        await corral.launch_async(job, fns.different_failure, policy=policy)
    root = info.value.root_cause
    assert root is not None and root.message == "RuntimeError: flaky, restart 2"
    assert policy.failures_seen == 3
