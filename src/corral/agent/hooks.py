"""The agent's hooks (docs/api.md): what they are, and how the agent calls them.

:class:`AgentHooks` is re-exported by :mod:`corral.agent.agent` (and ``corral``);
:func:`before_start` and :func:`notify` are how the round runner calls them.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from corral.core.errors import LauncherError, NodeRefused
from corral.core.failures import FailureReport
from corral.core.model import RoundInfo

__all__ = ["AgentHooks", "before_start", "notify"]

log = logging.getLogger("corral.agent")


@dataclass
class AgentHooks:
    """Extension points (see docs/api.md).

    Attributes:
        before_start: awaited with the round before the worker group starts. To
            refuse to run (e.g. a failed health check) raise
            :class:`~corral.core.errors.NodeRefused` (any LauncherError is taken as a
            refusal): the agent leaves the rendezvous (the other nodes see a lost
            node) and ends with NodeRefused (the CLI: exit code 1 and the message).
        on_outcome: awaited with (round, kind, failures) after each group ends;
            kind is ``"succeeded"``, ``"failed"`` or a :class:`ChangeKind` value.
            Its exceptions are logged, never raised (alerting must not stop a job).
    """

    before_start: Callable[[RoundInfo], Awaitable[None]] | None = None
    on_outcome: Callable[[RoundInfo, str, list[FailureReport]], Awaitable[None]] | None = None


async def before_start(hooks: AgentHooks, rnd: RoundInfo) -> None:
    """Run ``hooks.before_start`` (if set); a refusal is raised as NodeRefused."""
    if hooks.before_start is None:
        return
    try:
        await hooks.before_start(rnd)
    except LauncherError as exc:
        log.error("round %d: before_start refused to run: %s", rnd.round, exc)
        if isinstance(exc, NodeRefused):
            raise
        raise NodeRefused(f"node refused round {rnd.round}: {exc}") from exc


async def notify(
    hooks: AgentHooks, rnd: RoundInfo, kind: str, failures: list[FailureReport]
) -> None:
    """Run ``hooks.on_outcome``; its exceptions are logged, never raised."""
    if hooks.on_outcome is not None:
        try:
            await hooks.on_outcome(rnd, kind, failures)
        except Exception:  # a hook must not take the job down
            log.exception("on_outcome hook failed")
