"""corral: a fault-tolerant, elastic launcher for distributed training (a drop-in for torchrun).

The public names are loaded lazily (``import corral`` stays cheap: the CLI's
start-up time is benchmarked); see docs/api.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from corral.core.record import record

if TYPE_CHECKING:
    from corral.agent.agent import Agent, AgentHooks
    from corral.agent.policy import BackoffPolicy, ImmediatePolicy, RestartPolicy, RestartVerdict
    from corral.api import launch, launch_async
    from corral.config import LaunchConfig
    from corral.core.errors import Interrupted, LauncherError, NodeRefused, WorkerFailed
    from corral.store.registry import open_store

__version__ = "0.1.0"

__all__ = [
    "Agent",
    "AgentHooks",
    "BackoffPolicy",
    "ImmediatePolicy",
    "Interrupted",
    "LaunchConfig",
    "LauncherError",
    "NodeRefused",
    "RestartPolicy",
    "RestartVerdict",
    "WorkerFailed",
    "__version__",
    "launch",
    "launch_async",
    "open_store",
    "progress",
    "record",
]

_LAZY: dict[str, str] = {
    "Agent": "corral.agent.agent",
    "AgentHooks": "corral.agent.agent",
    "BackoffPolicy": "corral.agent.policy",
    "ImmediatePolicy": "corral.agent.policy",
    "RestartPolicy": "corral.agent.policy",
    "RestartVerdict": "corral.agent.policy",
    "launch": "corral.api",
    "launch_async": "corral.api",
    "LaunchConfig": "corral.config",
    "Interrupted": "corral.core.errors",
    "LauncherError": "corral.core.errors",
    "NodeRefused": "corral.core.errors",
    "WorkerFailed": "corral.core.errors",
    "open_store": "corral.store.registry",
}


def __getattr__(name: str) -> Any:
    if name == "progress":  # the module itself is callable: corral.progress(step=None)
        return importlib.import_module("corral.progress")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'corral' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
