"""What the agent may ask of a rendezvous beyond the :class:`Rendezvous` protocol.

The built-in backends (dynamic and static) have every one of these; a
third-party backend may have none. Each is a ``runtime_checkable`` Protocol:
the agent checks ``isinstance(rdzv, ReportsStop)`` and, where a backend lacks
a feature, does what the feature's absence means (the other nodes see a lost
node). ``isinstance`` checks that the method exists, nothing more.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from corral.core.model import RoundChange, RoundInfo
from corral.rendezvous.protocol.records import Outcome

__all__ = ["KnowsOutcome", "Leaves", "ReportsStop", "StepsOut"]


@runtime_checkable
class ReportsStop(Protocol):
    """Records a job-wide stop for a handled signal (``--on-signal stop``)."""

    async def report_stop(self, signum: int, node: str) -> Outcome: ...


@runtime_checkable
class Leaves(Protocol):
    """Lets this node leave a running round for a handled signal (``--on-signal leave``)."""

    async def leave(self, rnd: RoundInfo, signum: int, node: str) -> Outcome | None: ...


@runtime_checkable
class StepsOut(Protocol):
    """Lets an unhealthy member leave its round (``--health-check``), counted as a restart."""

    async def step_out(self, rnd: RoundInfo, reason: str) -> RoundChange: ...


@runtime_checkable
class KnowsOutcome(Protocol):
    """Reads how the job ended (None: it has not)."""

    async def outcome(self) -> Outcome | None: ...
