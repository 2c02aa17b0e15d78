"""The agent's events (docs/events.md): the sink's entry and the marks of rounds and restarts.

Functions of an :class:`~corral.agent.agent.Agent` (``agent``), bound on it as
methods; the events built from its objects are :mod:`corral.events.agent`'s,
which emit through ``agent._emit``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from corral.core import events as ev
from corral.core.model import RoundInfo
from corral.events.agent import round_closed as _round_closed

if TYPE_CHECKING:
    from corral.agent.agent import Agent

__all__ = ["emit", "restart_decided", "round_closed"]


def emit(agent: Agent, cls: type[ev.Event], round: int, **fields: object) -> None:
    """Hand an event to the sinks; nothing is built when nobody listens."""
    if agent.observers is not None and agent.observers.sink:
        agent.observers.emit(cls, round, **fields)


def round_closed(agent: Agent, rnd: RoundInfo, local_world_size: int) -> None:
    """This node is in round ``rnd``: remember it (later events name it), emit RoundClosed."""
    agent._round = rnd.round
    _round_closed(agent, rnd, local_world_size)


def restart_decided(agent: Agent, rnd: RoundInfo, cause: str, detail: str) -> None:
    """The job restarts after ``rnd`` (``cause``: a ChangeKind value or ``"failure"``)."""
    if cause != "job_ended":
        agent._emit(ev.RestartDecided, rnd.round, cause=cause, detail=detail,
                    restart_count=rnd.restart_count, max_restarts=rnd.restarts_allowed(agent.cfg.max_restarts))  # fmt: skip
