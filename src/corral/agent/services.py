"""What a node runs beside its workers, behind one object built once per agent run.

:class:`NodeServices` holds the node's optional services and is the only way
the round runner (agent/runner.py) reaches them:

* ``--health-check``: the :class:`~corral.agent.health.HealthWatch` (its checks
  run in the run's task group); a node joins only when healthy, and leaves a
  running round when it turns unhealthy;
* ``--hang-timeout``: the :class:`~corral.hangs.watch.HangWatch`, raced against
  each running group;
* the liveness ring's watch (:class:`~corral.rendezvous.liveness.PeerLiveness`),
  raced likewise; it never returns, its error fails the round;
* ``--prestart``: the :class:`~corral.workers.standby.StandbyPool` (the
  group takes its workers from it), made while a join waits;
* the GPU memory of the previous attempt (:class:`~corral.workers.gpu_reclaim.GpuReclaim`).

The metrics and the event sinks (:class:`~corral.events.observe.Observers`)
reach the services through the callbacks given to their constructors.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from corral.agent.health import HealthWatch, Unhealthy, wait_to_join
from corral.core.aio import first_of
from corral.core.failures import FailureReport
from corral.core.model import RoundInfo
from corral.rendezvous.api import Rendezvous

if TYPE_CHECKING:
    from corral.hangs.watch import HangWatch
    from corral.rendezvous.liveness import PeerLiveness
    from corral.workers.gpu_reclaim import GpuReclaim
    from corral.workers.group import WorkerGroup
    from corral.workers.standby import StandbyPool

__all__ = ["Hung", "NodeServices", "Verdict"]


@dataclass(frozen=True, slots=True)
class Hung:
    """Hang detection's verdict: this node's hang failures (docs/hangs.md)."""

    failures: tuple[FailureReport, ...]


#: What a service's watch of a running group ends with.
Verdict = Hung | Unhealthy


class NodeServices:
    """This node's services for one agent run (each None when it is off).

    Args:
        health: the health watch (``--health-check``).
        hangs: the hang detector (``--hang-timeout``).
        liveness: the liveness ring (a backend that has one).
        standbys: the standby pool (always there: it also holds detached stops).
        reclaim: the previous attempt's GPU memory (a no-op without GPUs).
    """

    def __init__(
        self,
        *,
        health: HealthWatch | None = None,
        hangs: HangWatch | None = None,
        liveness: PeerLiveness | None = None,
        standbys: StandbyPool | None = None,
        reclaim: GpuReclaim | None = None,
    ) -> None:
        self.health = health
        self.hangs = hangs
        self.liveness = liveness
        self.standbys = standbys
        self.reclaim = reclaim

    # -- around a join ---------------------------------------------------------------

    async def ready_to_join(self, rdzv: Rendezvous) -> None:
        """An unhealthy node does not join (docs/health.md): wait until it is healthy
        (or the job has ended meanwhile)."""
        if self.health is not None:
            await wait_to_join(self.health, rdzv)

    @contextlib.contextmanager
    def joining(self) -> Iterator[None]:
        """A join that waits (a spare, a slow gathering) is idle time: the standbys the
        pool deferred (nothing to pre-import) are made then, not later."""
        filling = self.standbys.fill_later() if self.standbys is not None else None
        try:
            yield
        finally:
            if filling is not None:
                filling.cancel()

    # -- around a group ------------------------------------------------------------------

    async def before_start(self) -> None:
        """The previous attempt's GPU memory is freed."""
        if self.reclaim is not None:
            await self.reclaim.wait()

    def stopping(self, group: WorkerGroup) -> None:
        """``group`` is about to be stopped: remember its processes while they are alive."""
        if self.reclaim is not None:
            self.reclaim.remember(group)

    def watch(self, group: WorkerGroup, rnd: RoundInfo) -> Awaitable[Verdict] | None:
        """What to race against the running ``group`` (None: nothing runs beside it).

        It returns a :data:`Verdict` (hung ranks, an unhealthy node) or never; its
        error (the liveness ring's, a bug of a watch) fails the round's race.
        """
        racers: list[Awaitable[Verdict]] = []
        if self.liveness is not None:
            racers.append(self.liveness.watch(rnd))  # never returns
        if self.hangs is not None:
            racers.append(self._hangs(self.hangs, group, rnd))
        if self.health is not None:
            racers.append(self.health.unhealthy())
        if not racers:
            return None
        if len(racers) == 1:
            return racers[0]
        return self._first(racers)

    @staticmethod
    async def _hangs(hangs: HangWatch, group: WorkerGroup, rnd: RoundInfo) -> Hung:
        return Hung(tuple(await hangs.watch(group, rnd)))

    @staticmethod
    async def _first(racers: list[Awaitable[Verdict]]) -> Verdict:
        _, verdict = await first_of(*racers)  # by position when several end at once
        return cast(Verdict, verdict)
