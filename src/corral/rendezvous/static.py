"""``--rdzv-backend static``: a fixed world of ``nnodes``, group rank = ``--node-rank``.

It is the dynamic rendezvous with MIN = MAX = nnodes and fixed ranks, over the
store that node rank 0 hosts, so the static backend gets the same job-wide
restarts, one restart budget and one root cause as the dynamic one.

Ports (see docs/rendezvous.md): workers get ``MASTER_ADDR=--master-addr`` and
``MASTER_PORT=--master-port`` as the torchrun contract says; worker rank 0
serves torch's TCPStore there. The agents' store therefore cannot share that
port (corral does not hand its store to the workers): node rank 0 hosts it on
``--master-port + 1`` (:func:`static_store_endpoint`).
"""

from __future__ import annotations

from dataclasses import replace
from types import TracebackType

from corral.core.clock import Clock
from corral.core.compat import TaskGroup
from corral.core.errors import ConfigError
from corral.core.events import EventSink
from corral.core.failures import FailureReport
from corral.core.model import Decision, NodeDesc, RoundChange, RoundInfo
from corral.rendezvous.dynamic import DynamicRendezvous
from corral.rendezvous.options import RendezvousOptions, StoreOptions
from corral.rendezvous.protocol.records import Outcome
from corral.store.api import Store

__all__ = ["StaticRendezvous", "static_store_endpoint"]


def static_store_endpoint(master_addr: str, master_port: int) -> tuple[str, int]:
    """Where node rank 0 hosts the agents' store: ``master_addr:master_port + 1``."""
    if not 0 < master_port < 65535:
        raise ConfigError(f"--master-port ({master_port}) must be in 1..65534 (the store uses +1)")
    return master_addr, master_port + 1


class StaticRendezvous:
    """A fixed world: ``nnodes`` nodes, group rank = ``node_rank``.

    Args:
        store: the store hosted by node rank 0 (see :func:`static_store_endpoint`).
        run_id: the job id.
        node: this node (its id gets the prefix ``"<node_rank>-"``).
        node_rank: this node's group rank, 0..nnodes-1.
        nnodes: the world's size in nodes.
        master_addr, master_port: MASTER_ADDR/MASTER_PORT for every round.
        max_restarts: restarts of the whole job, whatever their cause.
        no_restart_code: ``--no-restart-exit-code`` (0: none; see DynamicRendezvous).
        conf: rendezvous timeouts.
        clock: for tests.
        tasks, events: the agent run's task group and event sink (see DynamicRendezvous).
    """

    def __init__(
        self,
        store: Store,
        *,
        run_id: str,
        node: NodeDesc,
        node_rank: int,
        nnodes: int,
        master_addr: str,
        master_port: int,
        max_restarts: int,
        conf: RendezvousOptions,
        store_conf: StoreOptions,
        clock: Clock | None = None,
        no_restart_code: int = 0,
        tasks: TaskGroup | None = None,
        events: EventSink | None = None,
    ) -> None:
        if not 0 <= node_rank < nnodes:
            raise ConfigError(
                f"--node-rank ({node_rank}) must be in 0..{nnodes - 1} (nnodes {nnodes})"
            )
        self._master = (master_addr, master_port)
        me = replace(node, node_id=f"{node_rank}-{node.node_id}", master_port=master_port)
        self._inner = DynamicRendezvous(
            store,
            run_id=run_id,
            node=me,
            min_nodes=nnodes,
            max_nodes=nnodes,
            max_restarts=max_restarts,
            conf=conf,
            store_conf=store_conf,
            clock=clock,
            fixed_ranks=True,
            no_restart_code=no_restart_code,
            tasks=tasks,
            events=events,
        )

    @property
    def dynamic(self) -> DynamicRendezvous:
        return self._inner

    async def join(self) -> RoundInfo:
        info = await self._inner.join()
        return replace(info, master_addr=self._master[0], master_port=self._master[1])

    async def watch_round(self, rnd: RoundInfo) -> RoundChange:
        return await self._inner.watch_round(rnd)

    async def report_failure(
        self, rnd: RoundInfo, failures: list[FailureReport], *, final: bool = False
    ) -> tuple[Decision, FailureReport | None]:
        return await self._inner.report_failure(rnd, failures, final=final)

    async def report_success(self, rnd: RoundInfo) -> RoundChange | None:
        return await self._inner.report_success(rnd)

    async def report_stop(self, signum: int, node: str) -> Outcome:
        return await self._inner.report_stop(signum, node)

    async def leave(self, rnd: RoundInfo, signum: int, node: str) -> Outcome | None:
        return await self._inner.leave(rnd, signum, node)

    async def step_out(self, rnd: RoundInfo, reason: str) -> RoundChange:
        return await self._inner.step_out(rnd, reason)

    async def close(self) -> None:
        await self._inner.close()

    def attach_run(self, tasks: TaskGroup | None, events: EventSink | None) -> None:
        """See :meth:`DynamicRendezvous.attach_run`."""
        self._inner.attach_run(tasks, events)

    async def __aenter__(self) -> StaticRendezvous:
        await self._inner.__aenter__()  # its own task scope, without tasks=
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._inner.__aexit__(exc_type, exc, tb)
