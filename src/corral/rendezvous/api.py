"""What the agent needs from a rendezvous: rounds, changes, and the job-wide outcome.

A *round* is one membership of the job: the ordered list of nodes that run
the worker group together. Every backend (the dynamic one over any
:class:`corral.store.Store`, and ``static``) implements :class:`Rendezvous`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

from corral.core.model import ChangeKind, Decision, NodeDesc, RoundChange, RoundInfo

if TYPE_CHECKING:
    from corral.core.compat import TaskGroup
    from corral.core.events import EventSink
    from corral.core.failures import FailureReport

__all__ = [
    "ChangeKind",
    "Decision",
    "NodeDesc",
    "Rendezvous",
    "RoundChange",
    "RoundInfo",
    "RunAware",
]


class Rendezvous(Protocol):
    """One node's handle on the job's rendezvous.

    Usage by the agent: ``rnd = await join()``; start workers; race the group's
    result against ``await watch_round(rnd)``; on a local failure call
    ``report_failure`` and follow its decision; on local success call
    ``report_success``.
    """

    async def join(self) -> RoundInfo:
        """Join the next round and wait until it closes with this node in it.

        Raises: RendezvousTimeout (join_timeout passed), RendezvousClosed /
        JobFailed / JobStopped (the job already has an outcome: success, failure,
        or stopped by a handled signal), StoreError.
        """
        ...

    async def watch_round(self, rnd: RoundInfo) -> RoundChange:
        """Return when ``rnd`` is superseded (membership change, failure elsewhere, job end).

        Never returns while ``rnd`` is current and healthy; cancel it to stop watching.
        """
        ...

    async def report_failure(
        self, rnd: RoundInfo, failures: list[FailureReport], *, final: bool = False
    ) -> tuple[Decision, FailureReport | None]:
        """Publish this node's failures of round ``rnd`` and decide, job-wide, what comes next.

        If restarts are left, the job moves to the next round (counted once for
        the job, however many nodes fail) and the answer is RESTART. Otherwise
        the job's outcome becomes failure and the answer is FAIL with the
        job-wide root cause: the earliest failure by store order.

        ``final=True`` spends the budget now (a restart policy gave up): the
        outcome becomes failure with the job-wide root cause of round ``rnd``
        even if restarts are left or the job already moved to a later round;
        the answer is FAIL (unless the job had already ended). Raises JobStopped
        when a handled signal stopped the job meanwhile (not a failure).
        """
        ...

    async def report_success(self, rnd: RoundInfo) -> RoundChange | None:
        """Record that this node's workers all succeeded in ``rnd``; wait for the job's end.

        Returns None when every member of the round has succeeded (the job
        succeeded), or the change that superseded the round before that (the
        agent then joins the next round, as torchrun's exit barrier does).
        """
        ...

    async def close(self) -> None:
        """Leave: revoke this node's lease and close the store client."""
        ...


@runtime_checkable
class RunAware(Protocol):
    """A backend that takes the agent run's task group and event sink after it is opened.

    The built-in backends get both when they are constructed. A plug-in's factory
    (docs/api.md) has no such arguments; when the object it returns is ``RunAware``
    (a ``DynamicRendezvous`` or a ``StaticRendezvous`` is), the registry hands it
    the run's group and sink before the first join. What the backend was already
    given (``tasks=``, ``events=``, ``async with``) stays.
    """

    def attach_run(self, tasks: TaskGroup | None, events: EventSink | None) -> None: ...
