"""Rendezvous backends by name: ``--rdzv-backend <name>``, one registry for all of them.

Built-in backends (``static``, ``c10d``, ``etcd``) sit in the literal
:data:`BUILTIN` table as ``"module:function"`` strings, imported only when
opened (:mod:`corral.rendezvous.builtin`). Any other name is looked up in the
``corral.rendezvous`` entry-point group; the entry point's value is an async
factory::

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
entry points are read only when a name is not built in. The store backends have
the same shape of registry (:mod:`corral.store.registry`).
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Mapping
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Protocol, cast

from corral.core.errors import ConfigError

if TYPE_CHECKING:
    from corral.config import LaunchConfig
    from corral.core.clock import Clock
    from corral.core.model import NodeDesc
    from corral.rendezvous.api import Rendezvous
    from corral.rendezvous.builtin import Opened, RunContext

__all__ = [
    "BUILTIN",
    "ENTRY_POINT_GROUP",
    "RendezvousFactory",
    "is_plugin_backend",
    "known_backends",
    "load_backend",
    "open_rendezvous",
]

ENTRY_POINT_GROUP = "corral.rendezvous"

#: The built-in backends: name -> "module:function" of a :class:`BuiltinOpener`.
BUILTIN: dict[str, str] = {
    "static": "corral.rendezvous.builtin:open_static",
    "c10d": "corral.rendezvous.builtin:open_c10d",
    "etcd": "corral.rendezvous.builtin:open_etcd",
}


class RendezvousFactory(Protocol):
    """What a third-party rendezvous backend provides (see the module docstring)."""

    def __call__(
        self, cfg: LaunchConfig, node: NodeDesc, *, stack: AsyncExitStack, clock: Clock
    ) -> Awaitable[Rendezvous]: ...


class BuiltinOpener(Protocol):
    """A built-in backend: a plug-in's arguments plus the agent's environment."""

    def __call__(
        self,
        cfg: LaunchConfig,
        node: NodeDesc,
        *,
        stack: AsyncExitStack,
        clock: Clock,
        environ: Mapping[str, str],
        run: RunContext | None = None,
    ) -> Awaitable[Opened]: ...


def _plugins() -> dict[str, object]:
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def plugin_names() -> list[str]:
    """The backend names registered in the ``corral.rendezvous`` group."""
    return sorted(_plugins())


def known_backends() -> list[str]:
    """Every name ``--rdzv-backend`` accepts: the built-ins, then installed plug-ins."""
    return [*BUILTIN, *(n for n in plugin_names() if n not in BUILTIN)]


def is_plugin_backend(name: str) -> bool:
    """True if ``name`` is registered in the ``corral.rendezvous`` entry-point group."""
    return name in _plugins()


def load_backend(name: str) -> RendezvousFactory:
    """The third-party factory registered as ``name``.

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


async def open_rendezvous(
    cfg: LaunchConfig,
    node: NodeDesc,
    *,
    stack: AsyncExitStack,
    clock: Clock,
    environ: Mapping[str, str],
    run: RunContext | None = None,
) -> Opened:
    """Open ``cfg.rdzv_backend`` for ``node``: a built-in, else a plug-in by entry point.

    Every resource it opens is closed by ``stack``. ``run`` (the agent run's task
    group and event sink) goes to the built-ins; a plug-in gets the factory's
    arguments above, and the object it returns, if it is ``RunAware``, the run's.

    Raises:
        ConfigError: an unknown backend name (the message lists the plug-ins).
        LauncherError, StoreError: from the backend.
    """
    from corral.rendezvous.api import RunAware
    from corral.rendezvous.builtin import Opened

    target = BUILTIN.get(cfg.rdzv_backend)
    if target is not None:
        module, _, attr = target.partition(":")
        opener = cast("BuiltinOpener", getattr(importlib.import_module(module), attr))
        return await opener(cfg, node, stack=stack, clock=clock, environ=environ, run=run)
    factory = load_backend(cfg.rdzv_backend)
    rdzv = await factory(cfg, node, stack=stack, clock=clock)
    if run is not None and isinstance(rdzv, RunAware):  # e.g. a DynamicRendezvous it built
        rdzv.attach_run(run.tasks, run.events)
    return Opened(rdzv)
