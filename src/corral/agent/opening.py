"""This node's rendezvous and the job's store: open them, and the hosting agent's linger.

Functions of an :class:`~corral.agent.agent.Agent` (``agent``), called once
per run; every backend, built-in or plug-in, opens through the registry
(``corral.rendezvous.registry.open_rendezvous``), whose openers host or connect
to the store and start the liveness ring where it is needed.
"""

from __future__ import annotations

import logging
import os
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING

from corral.core.model import NodeDesc
from corral.core.net import local_address_towards, numeric_host
from corral.rendezvous.api import Rendezvous

if TYPE_CHECKING:
    from corral.agent.agent import Agent
    from corral.config import LaunchConfig

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


async def open_rendezvous(agent: Agent, stack: AsyncExitStack) -> Rendezvous:
    """Open ``cfg.rdzv_backend`` through the registry (built-ins and plug-ins alike)."""
    from corral.rendezvous.registry import open_rendezvous

    cfg = agent.cfg
    node = NodeDesc(
        node_id=agent.node_id,
        addr=node_addr(cfg),
        local_world_size=cfg.nproc_per_node,
        host=agent.host,
        pid=os.getpid(),
        master_port=0,  # 0: a fresh free port each round (CONTRACT.md)
    )
    opened = await open_rendezvous(cfg, node, stack=stack, clock=agent.clock, environ=agent.environ)
    agent._server = opened.server
    agent._liveness = opened.liveness
    if opened.store is not None:
        agent._store = opened.store
        if agent.observers is not None:
            agent.observers.attach_store(stack, opened.store)  # the journal (docs/events.md)
    if agent.observers is not None:
        agent.observers.attach_rendezvous(opened.rendezvous)
    return opened.rendezvous


async def linger(agent: Agent) -> None:
    """The store's host stays until the other agents have read the job's outcome."""
    if agent._server is not None:
        grace = min(agent.cfg.rdzv_conf.store.read_timeout, 10.0)
        if not await agent._server.wait_idle(grace):
            log.warning(
                "agents still connected %.0fs after the job ended; closing the store", grace
            )
