"""Every store connection has a bound on silence: TCP keepalive and TCP_USER_TIMEOUT.

SILENCE_BOUND (30 s) until a lease is granted on it, then 2 x that lease's TTL, on
both ends: past the membership timeout, so a blip shorter than it never ends a
healthy connection (docs/rendezvous.md, "Silence"). That the bound really ends a
half-open connection is tested in a partition: tests/integration/test_partition.py.
"""

from __future__ import annotations

import socket

import pytest

from corral.core.net import SILENCE_BOUND
from corral.store.tcp.client import connect
from corral.store.tcp.server import StoreServer

pytestmark = pytest.mark.timeout(20)

needs_user_timeout = pytest.mark.skipif(
    not hasattr(socket, "TCP_USER_TIMEOUT"), reason="no TCP_USER_TIMEOUT on this platform"
)


def bound_of(sock: socket.socket) -> tuple[int, float]:
    """(SO_KEEPALIVE, TCP_USER_TIMEOUT in seconds) of ``sock``."""
    keep = sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
    return keep, sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) / 1000


@needs_user_timeout
async def test_store_connections_are_bounded_then_follow_the_lease_ttl() -> None:
    srv = StoreServer()
    await srv.start("127.0.0.1", 0)
    store = await connect(*srv.address, timeout=5, request_timeout=5)
    try:
        await store.get("/k")  # connected
        conn = store._conn
        assert conn is not None and conn.transport is not None
        client = conn.transport.get_extra_info("socket")
        (peer,) = srv.conns
        assert peer.transport is not None
        server = peer.transport.get_extra_info("socket")
        assert bound_of(client) == (1, SILENCE_BOUND)
        assert bound_of(server) == (1, SILENCE_BOUND)
        await store.grant(4.0)  # a lease of TTL 4 s: 8 s of silence, on both ends
        assert bound_of(client) == (1, 8.0)
        assert bound_of(server) == (1, 8.0)
    finally:
        await store.close()
        await srv.close()
