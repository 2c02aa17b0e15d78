"""Third-party rendezvous backends by name: ``--rdzv-backend <name>``.

The built-in backends (``static``, ``c10d``, ``etcd``) are wired into the agent.
Any other name is looked up in the ``corral.rendezvous`` entry-point group; the
entry point's value is an async factory::

    async def open_my_rendezvous(
        cfg: LaunchConfig,          # the whole launch config (endpoint, id, rdzv_conf, nnodes...)
        node: NodeDesc,             # this node as it joins (id, address, local world size)
        *,
        stack: AsyncExitStack,      # push cleanups here (closing the store, leaving)
        clock: Clock,               # the agent's monotonic clock
    ) -> Rendezvous: ...

registered in the backend's own package, e.g.::

    [project.entry-points."corral.rendezvous"]
    myrdzv = "my_pkg.rdzv:open_my_rendezvous"

The returned object implements :class:`corral.rendezvous.api.Rendezvous`
(``join``, ``watch_round``, ``report_failure(..., final=False)``,
``report_success``, ``close``). Importing this module registers nothing, and
entry points are read only when a name is not built in.
"""

from __future__ import annotations

from collections.abc import Awaitable
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Protocol, cast

from corral.errors import ConfigError

if TYPE_CHECKING:
    from corral.clock import Clock
    from corral.config import LaunchConfig
    from corral.rendezvous.api import NodeDesc, Rendezvous

__all__ = ["ENTRY_POINT_GROUP", "RendezvousFactory", "is_plugin_backend", "load_backend"]

ENTRY_POINT_GROUP = "corral.rendezvous"


class RendezvousFactory(Protocol):
    """What a rendezvous backend provides (see the module docstring)."""

    def __call__(
        self, cfg: LaunchConfig, node: NodeDesc, *, stack: AsyncExitStack, clock: Clock
    ) -> Awaitable[Rendezvous]: ...


def _plugins() -> dict[str, object]:
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def plugin_names() -> list[str]:
    """The backend names registered in the ``corral.rendezvous`` group."""
    return sorted(_plugins())


def is_plugin_backend(name: str) -> bool:
    """True if ``name`` is registered in the ``corral.rendezvous`` entry-point group."""
    return name in _plugins()


def load_backend(name: str) -> RendezvousFactory:
    """The factory registered as ``name``.

    Raises:
        ConfigError: no such entry point (the message lists the registered ones).
    """
    ep = _plugins().get(name)
    if ep is None:
        known = ", ".join(plugin_names()) or "none installed"
        raise ConfigError(
            f"--rdzv-backend {name}: not a built-in backend and not registered in the "
            f"{ENTRY_POINT_GROUP!r} entry-point group ({known})"
        )
    return cast("RendezvousFactory", ep.load())  # type: ignore[attr-defined]
