"""Extension points: a health check refusing a node; on_outcome for alerting."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

import corral
from corral.agent.agent import AgentHooks
from corral.config import LaunchConfig, RdzvConf, RendezvousOptions, TcpStoreOptions
from corral.core.errors import NodeRefused, WorkerFailed
from corral.core.failures import FailureReport
from corral.core.model import RoundInfo
from tests.api import fns

pytestmark = pytest.mark.timeout(60)


async def unhealthy(rnd: RoundInfo) -> None:
    raise NodeRefused(f"GPU 3 failed its health check (round {rnd.round})")


async def test_refusing_node_raises_node_refused(cfg: LaunchConfig) -> None:
    with pytest.raises(NodeRefused, match="health check"):
        await corral.launch_async(cfg, fns.rank_times, 1, hooks=AgentHooks(before_start=unhealthy))


async def test_cli_exit_code_for_a_refusing_node(
    cfg: LaunchConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    from corral.agent.agent import Agent
    from corral.api import _prepare

    with _prepare(cfg, fns.rank_times, (1,)) as prepared:
        code = await Agent(prepared, hooks=AgentHooks(before_start=unhealthy)).run()
    assert code == 1
    assert "health check" in capsys.readouterr().err


async def test_other_node_treats_refusal_as_a_lost_node() -> None:
    """Two agents (nnodes 1:2): B refuses round 0 and leaves; A restarts alone and finishes."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = RdzvConf(rendezvous=RendezvousOptions(last_call_timeout=0.3, join_timeout=30))
    job = LaunchConfig(
        min_nodes=1,
        max_nodes=2,
        nproc_per_node=1,
        rdzv_backend="c10d",
        rdzv_endpoint=f"127.0.0.1:{port}",
        rdzv_id="refusal",
        rdzv_conf=conf,
        shutdown_timeout=5.0,
        max_restarts=1,  # B's leaving restarts A's group: that counts (one of one)
    )
    host = replace(job, rdzv_conf=conf.with_host())
    guest = replace(job, rdzv_conf=replace(conf, tcp=TcpStoreOptions(is_host=False)))
    seen: list[str] = []

    async def record_outcome(rnd: RoundInfo, kind: str, failures: list[FailureReport]) -> None:
        seen.append(f"{rnd.round}:{rnd.group_world_size}:{kind}")

    both_joined = asyncio.Event()
    joined = 0

    async def count(rnd: RoundInfo) -> None:
        nonlocal joined
        joined += 1
        if rnd.group_world_size == 2:
            both_joined.set()

    async def refuse_once_both_joined(rnd: RoundInfo) -> None:
        raise NodeRefused("disk full")

    a = asyncio.ensure_future(
        corral.launch_async(
            host,
            fns.world_size_when_alone,
            hooks=AgentHooks(before_start=count, on_outcome=record_outcome),
        )
    )
    b = asyncio.ensure_future(
        corral.launch_async(
            guest, fns.world_size_when_alone, hooks=AgentHooks(before_start=refuse_once_both_joined)
        )
    )
    try:
        with pytest.raises(NodeRefused, match="disk full"):
            await asyncio.wait_for(b, 30)
        assert await asyncio.wait_for(a, 30) == {0: 1}
    finally:
        for t in (a, b):
            t.cancel()
        await asyncio.gather(a, b, return_exceptions=True)
    assert both_joined.is_set()
    assert seen[0] == "0:2:member_lost" and seen[-1].endswith(":1:succeeded")


async def test_on_outcome_sees_failures_and_its_errors_are_contained(cfg: LaunchConfig) -> None:
    alerts: list[tuple[str, list[int]]] = []

    async def alert(rnd: RoundInfo, kind: str, failures: list[FailureReport]) -> None:
        alerts.append((kind, [f.rank for f in failures]))
        raise RuntimeError("the pager is down")  # must not change the job's result

    with pytest.raises(WorkerFailed):
        await corral.launch_async(cfg, fns.fail_on_rank, 0, hooks=AgentHooks(on_outcome=alert))
    assert alerts == [("failed", [0])]
