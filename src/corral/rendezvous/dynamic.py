"""The dynamic rendezvous: rounds of nodes over any :class:`~corral.store.api.Store`.

The protocol, keys and costs are described in ``docs/rendezvous.md``. Three
layers, each with one job:

* :mod:`corral.rendezvous.protocol`: the records and the decisions, pure
  reducers per role (joiner, closer, running member, restart budget);
* :mod:`corral.rendezvous.driver`: the only code that talks to the store, one
  object per role (:class:`~.driver.joining.Joining`,
  :class:`~.driver.closing.Closer`, :class:`~.driver.running.Running`,
  :class:`~.driver.ending.Ending`) sharing one :class:`~.driver.session.Session`;
* :class:`~corral.rendezvous.driver.lease.Lease`: the lease and its keep-alive task.

:class:`DynamicRendezvous` composes them and keeps the public API.
"""

from __future__ import annotations

import contextlib
import logging
from types import TracebackType

from corral.core.aio import task_scope
from corral.core.clock import Clock, MonotonicClock, clock_timeout
from corral.core.compat import TaskGroup
from corral.core.errors import (
    ConfigError,
    LeaseNotFound,
    RendezvousClosed,
    RendezvousError,
    RendezvousTimeout,
)
from corral.core.events import EventSink
from corral.core.failures import FailureReport
from corral.core.model import Decision, NodeDesc, RoundChange, RoundInfo
from corral.rendezvous.driver.closing import Closer
from corral.rendezvous.driver.ending import Ending, Outcomes
from corral.rendezvous.driver.joining import Joining, SpareWait
from corral.rendezvous.driver.lease import Lease
from corral.rendezvous.driver.quarantine import Quarantines
from corral.rendezvous.driver.running import Running
from corral.rendezvous.driver.session import Session
from corral.rendezvous.driver.store import RunStore
from corral.rendezvous.options import RendezvousOptions, StoreOptions
from corral.rendezvous.protocol.budget import Budget
from corral.rendezvous.protocol.closer import CloseParams
from corral.rendezvous.protocol.records import Outcome, Quarantine
from corral.store.api import Store

__all__ = ["DynamicRendezvous"]

log = logging.getLogger(__name__)


class DynamicRendezvous:
    """One node's handle on a job's rendezvous, over any store (see docs/rendezvous.md).

    Args:
        store: the coordination store (shared by every node of the job).
        run_id: the job's id; keys live under ``<store_conf.prefix>/<run_id>/``.
        node: this node. ``master_port`` 0 means: offer a fresh free port each
            round (found by binding port 0 on ``node.addr``); non-zero is
            offered as is every round (the static backend).
        min_nodes, max_nodes: the round closes with MAX nodes, or MIN after
            the last call, or MIN when every expected node is back.
        max_restarts: restarts of the whole job's worker group, whatever their
            cause (a failure, a lost node, a node that joins); round 0 is none.
        conf: the rendezvous's timing (join_timeout, last_call_timeout,
            keep_alive_*, settle_time).
        store_conf: the key prefix and the store's read timeout.
        clock: monotonic clock for the last call, settle window, keep-alive
            and join_timeout (a FakeClock in tests).

        fixed_ranks: group rank = the integer before the first ``-`` of the
            node id (``"3-host-pid"`` is rank 3): the static backend.
        no_restart_code: ``--no-restart-exit-code`` (0: none): a round whose root
            cause is a worker that exited with it ends the job, with no restart.
            Like ``max_restarts``, the first round pointer records it and every
            node adopts the job's (the value of the node that started the job).
        quarantine_after: ``--quarantine-after`` (0: off): a node that is the
            root cause of that many failures of the job in a row is kept out,
            when the job can go on without it (docs/rendezvous.md).
        tasks: the task group the lease's keep-alive runs in (the agent's, one
            per run). None: the handle opens its own in :meth:`__aenter__`, or
            a plug-in's handle gets the run's (:meth:`attach_run`); a join on a
            handle with none raises RendezvousError.
        events: the agent's event sink (docs/events.md); None: silent.

    Use as ``async with DynamicRendezvous(...) as rdzv``, or pass ``tasks=`` and call
    :meth:`close`.
    """

    def __init__(
        self,
        store: Store,
        *,
        run_id: str,
        node: NodeDesc,
        min_nodes: int,
        max_nodes: int,
        max_restarts: int,
        conf: RendezvousOptions,
        store_conf: StoreOptions,
        clock: Clock | None = None,
        fixed_ranks: bool = False,
        no_restart_code: int = 0,
        quarantine_after: int = 0,
        tasks: TaskGroup | None = None,
        events: EventSink | None = None,
    ) -> None:
        if min_nodes < 1:
            raise ConfigError(f"min_nodes ({min_nodes}) must be >= 1")
        if max_nodes < min_nodes:
            raise ConfigError(f"max_nodes ({max_nodes}) must be >= min_nodes ({min_nodes})")
        if max_restarts < 0:
            raise ConfigError(f"max_restarts ({max_restarts}) must be >= 0")
        if "/" in node.node_id or not node.node_id:
            raise ConfigError(f"node id {node.node_id!r} must be non-empty and contain no '/'")
        clock = clock if clock is not None else MonotonicClock()
        requests = RunStore(
            store, run_id, store_conf, max_restarts=max_restarts, no_restart_code=no_restart_code
        )
        self._conf = conf
        self._clock = clock
        self._min, self._max = min_nodes, max_nodes
        self._tasks = tasks
        self._scope: contextlib.AsyncExitStack | None = None  # __aenter__'s task scope
        self._lease = Lease(requests, node.node_id, conf, clock, self._task_group)
        self._session = Session(
            store=requests,
            keys=requests.keys,
            run_id=run_id,
            node=node,
            min_nodes=min_nodes,
            max_nodes=max_nodes,
            conf=conf,
            clock=clock,
            lease=self._lease,
            budget=Budget(max_restarts, no_restart_code),
            events=events,
        )
        params = CloseParams(
            min_nodes=min_nodes,
            max_nodes=max_nodes,
            last_call_timeout=conf.last_call_timeout,
            settle_time=conf.settle_time,
            settle_cap=max(conf.settle_time * 10, conf.settle_time),
        )
        outcomes = Outcomes(self._session)
        quarantines = Quarantines(self._session, quarantine_after)
        self._running = Running(self._session, outcomes)
        closer = Closer(self._session, outcomes, params, fixed_ranks=fixed_ranks)
        self._quarantines = quarantines
        self._outcomes = outcomes
        self._joining = Joining(self._session, closer, self._running, outcomes, quarantines)
        self._ending = Ending(self._session, self._running, outcomes, quarantines)
        self._closed = False

    # --- public API -----------------------------------------------------------

    @property
    def events(self) -> EventSink | None:
        """The agent's EventSink (docs/events.md); None: silent."""
        return self._session.events

    def attach_run(self, tasks: TaskGroup | None, events: EventSink | None) -> None:
        """Take the agent run's task group and event sink, where this handle has none
        (a plug-in's handle: :class:`~corral.rendezvous.api.RunAware`). Before the
        first join."""
        if self._tasks is None:
            self._tasks = tasks
        if self._session.events is None:
            self._session.events = events

    @property
    def node_id(self) -> str:
        return self._session.node_id

    @property
    def lease(self) -> int:
        """This node's current lease id (0 before the first join or after eviction)."""
        return self._lease.id

    async def __aenter__(self) -> DynamicRendezvous:
        if self._tasks is None:
            stack = contextlib.AsyncExitStack()
            self._tasks = await stack.enter_async_context(task_scope())
            self._scope = stack
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
        scope, self._scope = self._scope, None
        if scope is not None:
            await scope.__aexit__(exc_type, exc, tb)

    async def _task_group(self) -> TaskGroup:
        """The task group the lease's keep-alive runs in."""
        if self._tasks is None:
            raise RendezvousError(
                "this DynamicRendezvous has no task group for its lease's keep-alive: "
                "use async with or pass tasks= (the agent run's task group)"
            )
        return self._tasks

    async def join(self) -> RoundInfo:
        """Join the next round and wait until it closes with this node in it.

        Raises: RendezvousTimeout (join_timeout), RendezvousClosed (the job
        succeeded), JobFailed (the job failed; carries the root cause),
        JobStopped (a handled signal stopped it), NodeQuarantined (this node's
        address is quarantined: raised once the job has ended), StoreError.
        """
        if self._closed:
            raise RendezvousClosed("this rendezvous handle is closed")
        await self._task_group()  # raises when it has none: before anything is written
        joining = self._joining
        while True:
            try:
                async with clock_timeout(self._clock, self._conf.join_timeout):
                    result = await joining.join()
            except TimeoutError:
                raise RendezvousTimeout(
                    f"join_timeout ({self._conf.join_timeout} s) passed in round {joining.round} "
                    f"before it closed with this node (min_nodes {self._min}, max_nodes {self._max})"
                    f"{joining.unreachable_text()}"
                ) from None
            if isinstance(result, RoundInfo):
                return result
            if isinstance(result, Quarantine):  # out of the deadline: until the job ends
                raise await self._quarantines.sit_out(result)
            assert isinstance(result, SpareWait)
            try:  # out of the deadline: a spare waits as long as the job runs
                await joining.wait_next_round(result)
            except LeaseNotFound:
                self._lease.evict()  # the next join takes a new lease

    async def watch_round(self, rnd: RoundInfo) -> RoundChange:
        """Return when ``rnd`` is superseded: a new round, a lost member, eviction, the job's end."""
        return await self._running.watch(rnd, done=False)

    async def report_failure(
        self, rnd: RoundInfo, failures: list[FailureReport], *, final: bool = False
    ) -> tuple[Decision, FailureReport | None]:
        """Publish failures of ``rnd`` and decide job-wide (see :class:`Rendezvous`).

        ``final``: end the job in failure now, whatever the budget (a policy gave up).
        """
        return await self._ending.report_failure(rnd, failures, final=final)

    async def report_success(self, rnd: RoundInfo) -> RoundChange | None:
        """Mark this node done in ``rnd``; wait until every member is (None) or the round changes."""
        return await self._ending.report_success(rnd)

    async def report_stop(self, signum: int, node: str) -> Outcome:
        """Stop the whole job on handled signal ``signum`` at ``node`` (``--on-signal stop``)."""
        return await self._ending.report_stop(signum, node)

    async def leave(self, rnd: RoundInfo, signum: int, node: str) -> Outcome | None:
        """Leave the job on handled signal ``signum`` (``--on-signal leave``), then close.

        Returns the job's outcome when leaving stopped it instead (fewer than MIN
        would be left, or no restart is), None when the node left (see
        :meth:`corral.rendezvous.driver.ending.Ending.leave`).
        """
        out = await self._ending.leave(rnd, signum, node)
        if out is None:
            await self.close()
        return out

    async def step_out(self, rnd: RoundInfo, reason: str) -> RoundChange:
        """Leave running round ``rnd`` as an unhealthy node, staying in the job
        (``--health-check``, docs/health.md)."""
        return await self._ending.step_out(rnd, reason)

    async def outcome(self) -> Outcome | None:
        """The job's outcome, if it has one (completing a half-written end)."""
        return await self._outcomes.outcome()

    async def close(self) -> None:
        """Leave: stop the keep-alive and revoke the lease (its keys vanish). Idempotent."""
        if self._closed:
            return
        self._closed = True
        await self._lease.stop()
        await self._joining.drop_close_events()  # before the revoke: it deletes a closer key
        await self._lease.close()
