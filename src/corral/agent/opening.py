"""This node's rendezvous and the job's store: open them, and the hosting agent's linger.

Called once per agent run; every backend, built-in or plug-in, opens through the registry
(``corral.rendezvous.registry.open_rendezvous``), whose openers host or connect
to the store and start the liveness ring where it is needed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING

from corral.core.clock import Clock
from corral.core.model import NodeDesc
from corral.core.net import local_address_towards, numeric_host

if TYPE_CHECKING:
    from corral.config import LaunchConfig
    from corral.core.compat import TaskGroup
    from corral.events.observe import Observers
    from corral.rendezvous.builtin import Opened
    from corral.store.tcp.server import StoreServer

__all__ = ["linger", "node_addr", "open_rendezvous"]

log = logging.getLogger("corral.agent")


def node_addr(cfg: LaunchConfig) -> str:
    """The address the other nodes reach this one at (MASTER_ADDR when it is rank 0)."""
    wait = cfg.rdzv_conf.store.read_timeout  # a name may not be in DNS yet (net.resolve_once)
    if cfg.local_addr:
        return numeric_host(cfg.local_addr) or local_address_towards(cfg.local_addr, wait)
    if cfg.rdzv_backend == "static":
        return local_address_towards(cfg.master_addr, wait)
    host, _ = cfg.endpoint_host_port
    return local_address_towards(host or "127.0.0.1", wait)


async def open_rendezvous(
    cfg: LaunchConfig,
    *,
    node_id: str,
    host: str,
    clock: Clock,
    environ: Mapping[str, str],
    stack: AsyncExitStack,
    observers: Observers | None,
    tasks: TaskGroup | None = None,
) -> Opened:
    """Open ``cfg.rdzv_backend`` through the registry (built-ins and plug-ins alike);
    ``stack`` closes what it opened. A built-in rendezvous runs its lease's keep-alive
    in ``tasks`` (the run's task group) and emits to the observers' sink; the
    observers get the job's store (the journal)."""
    from corral.rendezvous.builtin import RunContext
    from corral.rendezvous.registry import open_rendezvous

    node = NodeDesc(
        node_id=node_id,
        addr=node_addr(cfg),
        local_world_size=cfg.nproc_per_node,
        host=host,
        pid=os.getpid(),
        master_port=0,  # 0: a fresh free port each round (docs/contract.md)
    )
    run = RunContext(tasks=tasks, events=observers.sink if observers is not None else None)
    opened = await open_rendezvous(cfg, node, stack=stack, clock=clock, environ=environ, run=run)
    if observers is not None and opened.store is not None:
        observers.attach_store(stack, opened.store)  # the journal (docs/events.md)
    return opened


async def linger(server: StoreServer | None, cfg: LaunchConfig) -> None:
    """The store's host stays until the other agents have read the job's outcome."""
    if server is not None:
        grace = min(cfg.rdzv_conf.store.read_timeout, 10.0)
        if not await server.wait_idle(grace):
            log.warning(
                "agents still connected %.0fs after the job ended; closing the store", grace
            )
