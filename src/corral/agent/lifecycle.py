"""The agent's lifecycle: its states and every legal transition, in one place."""

from __future__ import annotations

import enum

__all__ = ["AgentState", "IllegalTransition", "StateMachine"]


class AgentState(enum.Enum):
    INIT = "init"
    RENDEZVOUS = "rendezvous"  # joining a round
    RUNNING = "running"  # the worker group runs
    STOPPING = "stopping"  # stopping the group (failure, membership change, signal)
    SUCCEEDED = "succeeded"
    FAILED = "failed"


_LEGAL: dict[AgentState, frozenset[AgentState]] = {
    AgentState.INIT: frozenset({AgentState.RENDEZVOUS, AgentState.FAILED}),
    AgentState.RENDEZVOUS: frozenset({AgentState.RUNNING, AgentState.FAILED, AgentState.SUCCEEDED}),
    AgentState.RUNNING: frozenset({AgentState.STOPPING, AgentState.SUCCEEDED}),
    AgentState.STOPPING: frozenset(
        {AgentState.RENDEZVOUS, AgentState.FAILED, AgentState.SUCCEEDED}
    ),
    AgentState.SUCCEEDED: frozenset(),
    AgentState.FAILED: frozenset(),
}


class IllegalTransition(RuntimeError):
    def __init__(self, src: AgentState, dst: AgentState) -> None:
        super().__init__(f"illegal agent transition {src.name} -> {dst.name}")


class StateMachine:
    """Holds the current state; ``to()`` checks the transition against the table."""

    def __init__(self) -> None:
        self.state = AgentState.INIT

    def to(self, dst: AgentState) -> AgentState:
        if dst not in _LEGAL[self.state]:
            raise IllegalTransition(self.state, dst)
        src, self.state = self.state, dst
        return src
