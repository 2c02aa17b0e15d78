"""The built-in rendezvous backends, opened for an agent: ``static``, ``c10d``, ``etcd``.

:func:`corral.rendezvous.registry.open_rendezvous` finds these through its
literal table, as it finds third-party backends through entry points. A
built-in opener gets more than a plug-in (the agent's environment, for the
store's token) and returns more (:class:`Opened`): the store, the embedded
store server when this agent hosts it (the agent lingers on it at the job's
end), and the liveness ring where leases outlive connections (etcd).

Every resource opened here is closed by ``stack``, in reverse order.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING

from corral.core.clock import Clock
from corral.core.errors import LauncherError, StoreUnavailable
from corral.core.model import NodeDesc
from corral.core.net import is_local_address, numeric_host, resolve_once
from corral.rendezvous.api import Rendezvous
from corral.rendezvous.liveness import PeerLiveness
from corral.store.api import Store
from corral.store.tcp.server import StoreServer, tcp_url

if TYPE_CHECKING:
    from corral.config import LaunchConfig
    from corral.core.compat import TaskGroup
    from corral.core.events import EventSink

__all__ = ["Opened", "open_c10d", "open_etcd", "open_static"]

log = logging.getLogger("corral.agent")


@dataclass
class Opened:
    """An opened rendezvous and what the agent needs beside it.

    Attributes:
        rendezvous: the backend's :class:`~corral.rendezvous.api.Rendezvous`.
        store: the store it runs on (None for a plug-in: its own business).
        server: the embedded store server this agent hosts, else None.
        liveness: the liveness ring, where the store's leases outlive
            connections; the agent runs ``liveness.watch(round)`` beside each round.
    """

    rendezvous: Rendezvous
    store: Store | None = None
    server: StoreServer | None = None
    liveness: PeerLiveness | None = None


@dataclass(frozen=True, slots=True)
class RunContext:
    """What the agent's run hands a built-in backend: the run's task group (the lease's
    keep-alive runs in it) and the event sink (docs/events.md)."""

    tasks: TaskGroup | None = None
    events: EventSink | None = None


async def open_static(
    cfg: LaunchConfig,
    node: NodeDesc,
    *,
    stack: AsyncExitStack,
    clock: Clock,
    environ: Mapping[str, str],
    run: RunContext | None = None,
) -> Opened:
    """``static``: node rank 0 hosts the store at ``master_addr:master_port + 1``."""
    from corral.rendezvous.static import StaticRendezvous, static_store_endpoint

    master_addr = resolve_once(cfg.master_addr)  # once, at start-up
    master_port = cfg.master_port or 29500
    endpoint = static_store_endpoint(master_addr, master_port)
    store, server = await _open_tcp(
        cfg, node.addr, stack, environ, endpoint=endpoint, is_host=cfg.node_rank == 0
    )
    static = StaticRendezvous(
        store,
        run_id=cfg.rdzv_id,
        node=node,
        node_rank=cfg.node_rank,
        nnodes=cfg.max_nodes,
        master_addr=master_addr,
        master_port=master_port,
        max_restarts=cfg.max_restarts,
        no_restart_code=cfg.no_restart_exit_code or 0,
        conf=cfg.rdzv_conf.rendezvous,
        store_conf=cfg.rdzv_conf.store,
        clock=clock,
        tasks=run.tasks if run else None,
        events=run.events if run else None,
    )
    await stack.enter_async_context(static)  # its own task scope when the run gives none
    live = await _liveness(cfg, node.addr, stack, store, lambda: static.dynamic.lease)
    return Opened(static, store, server, live)


async def open_c10d(
    cfg: LaunchConfig,
    node: NodeDesc,
    *,
    stack: AsyncExitStack,
    clock: Clock,
    environ: Mapping[str, str],
    run: RunContext | None = None,
) -> Opened:
    """``c10d``: the embedded tcp store, hosted by the agent whose address is the endpoint."""
    store, server = await _open_tcp(cfg, node.addr, stack, environ)
    return await _dynamic(cfg, node, stack, clock, store, server, run)


async def open_etcd(
    cfg: LaunchConfig,
    node: NodeDesc,
    *,
    stack: AsyncExitStack,
    clock: Clock,
    environ: Mapping[str, str],
    run: RunContext | None = None,
) -> Opened:
    """``etcd``: an etcd v3 cluster (every member listed in the endpoint)."""
    from corral.store.etcd.url import etcd_url_from_conf
    from corral.store.registry import open_store

    conf = cfg.rdzv_conf
    url = etcd_url_from_conf(cfg.rdzv_endpoint, conf.etcd, conf.store.prefix)
    store = await open_store(url, timeout=conf.store.read_timeout)
    stack.push_async_callback(store.close)
    return await _dynamic(cfg, node, stack, clock, store, None, run)


async def _dynamic(
    cfg: LaunchConfig,
    node: NodeDesc,
    stack: AsyncExitStack,
    clock: Clock,
    store: Store,
    server: StoreServer | None,
    run: RunContext | None,
) -> Opened:
    from corral.rendezvous.dynamic import DynamicRendezvous

    dyn = DynamicRendezvous(
        store,
        run_id=cfg.rdzv_id,
        node=node,
        min_nodes=cfg.min_nodes,
        max_nodes=cfg.max_nodes,
        max_restarts=cfg.max_restarts,
        no_restart_code=cfg.no_restart_exit_code or 0,
        quarantine_after=cfg.quarantine_after,
        conf=cfg.rdzv_conf.rendezvous,
        store_conf=cfg.rdzv_conf.store,
        clock=clock,
        tasks=run.tasks if run else None,
        events=run.events if run else None,
    )
    await stack.enter_async_context(dyn)  # its own task scope when the run gives none
    live = await _liveness(cfg, node.addr, stack, store, lambda: dyn.lease)
    return Opened(dyn, store, server, live)


async def _liveness(
    cfg: LaunchConfig, addr: str, stack: AsyncExitStack, store: Store, lease: Callable[[], int]
) -> PeerLiveness | None:
    """Where a lease outlives its connection (etcd), the ring that sees a dead agent at once."""
    if store.characteristics.connection_leases:
        return None
    live = PeerLiveness(
        store, run_id=cfg.rdzv_id, addr=addr, lease=lease, prefix=cfg.rdzv_conf.store.prefix
    )
    await live.start()
    stack.push_async_callback(live.close)
    return live


async def _open_tcp(
    cfg: LaunchConfig,
    addr: str,
    stack: AsyncExitStack,
    environ: Mapping[str, str],
    *,
    endpoint: tuple[str, int] | None = None,
    is_host: bool | None = None,
) -> tuple[Store, StoreServer | None]:
    """Host the embedded store (and use it in-process) or connect to it.

    This agent hosts it when ``is_host`` says so, else when ``rdzv_conf.tcp.is_host``
    does, else for ``--standalone``, else when the endpoint's host is one of this
    machine's addresses (``--local-addr``'s, if given). A taken port on an
    automatic choice means another agent hosts it: this one connects.
    """
    from corral.store.registry import open_store

    conf = cfg.rdzv_conf.tcp
    timeout = cfg.rdzv_conf.store.read_timeout
    token = conf.resolve_token(environ)
    host, port = endpoint or cfg.endpoint_host_port
    host_num = numeric_host(host) if host else "127.0.0.1"
    if host_num is None:
        host_num = resolve_once(host)
    if is_host is None:
        is_host = conf.is_host
    if is_host is None:
        is_host = cfg.standalone or (
            host_num == addr if cfg.local_addr else is_local_address(host_num)
        )
    if is_host:
        server = StoreServer()
        try:
            await server.start(host_num, port, token=token)
        except (OSError, StoreUnavailable) as exc:
            if conf.is_host or port == 0:
                raise LauncherError(f"cannot host the store on {host_num}:{port}: {exc}") from exc
            log.info("store port %s:%d taken (%s); joining as a client", host_num, port, exc)
        else:
            stack.push_async_callback(server.close)
            bound_host, bound_port = server.address
            (log.debug if cfg.standalone else log.info)(
                "hosting the rendezvous store on tcp://%s:%d", bound_host, bound_port
            )
            local = server.local_store()
            stack.push_async_callback(local.close)
            return local, server
    url = tcp_url(host_num, port)
    try:
        store = await open_store(url, token=token, timeout=timeout)
    except StoreUnavailable as exc:
        raise LauncherError(f"rendezvous store unreachable: {exc}") from exc
    stack.push_async_callback(store.close)
    return store, None
