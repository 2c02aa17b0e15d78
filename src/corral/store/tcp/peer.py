"""One peer of the embedded store server: handshake, request dispatch, watches, bounds.

:class:`Peer` is an ``asyncio.Protocol``: the loop's callbacks drive it, with no
task per connection. It answers each request from the server's
:class:`~corral.store.core.StoreCore`, queues watch events for one write per turn
of the loop, and is dropped, with a logged reason, the moment it breaks the
protocol or a bound of :class:`~corral.store.tcp.server.ServerLimits`, or when
its handshake timer fails (a bug); its leases end with it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from corral.core.aio import guarded
from corral.core.errors import (
    ConfigError,
    LauncherError,
    LeaseNotFound,
    ProtocolError,
    StoreCompacted,
    StoreError,
)
from corral.core.net import SILENCE_BOUND, bound_silence, silence_bound
from corral.store.tcp import protocol as p
from corral.store.tcp.auth import check_answer, new_nonce

if TYPE_CHECKING:
    from corral.store.tcp.server import StoreServer

__all__ = ["Peer"]

log = logging.getLogger("corral.store.tcp.server")  # a peer's lines are the server's

_HANDSHAKE_MAX_FRAME = 4096


class Peer(asyncio.Protocol):
    """One peer: handshake, request dispatch, watches, and its share of the bounds."""

    def __init__(self, server: StoreServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.decoder = p.Decoder(_HANDSHAKE_MAX_FRAME)
        self.authed = False
        self.nonce = new_nonce()
        self.out: list[bytes] = []
        self.queued = False
        self.watches: dict[int, int] = {}  # client watch id -> core watch id
        self.leases: set[int] = set()
        self.closed = False
        self.handshake_timer: asyncio.TimerHandle | None = None

    # --- asyncio.Protocol --------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they quack alike.
        self.transport = t = cast("asyncio.Transport", transport)
        peer = t.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        srv = self.server
        if len(srv.conns) >= srv.limits.max_connections:
            log.warning(
                "store: refusing %s: %d connections open (max_connections)",
                self.peer,
                len(srv.conns),
            )
            self.closed = True
            t.abort()
            return
        srv.conns.add(self)
        # a silent peer (partitioned, its host gone) is dropped: SILENCE_BOUND, then
        # 2 x its lease's TTL once it has one (h_grant); its leases end with it
        bound_silence(t.get_extra_info("socket"), SILENCE_BOUND)
        loop = asyncio.get_running_loop()
        self.handshake_timer = loop.call_later(
            srv.limits.handshake_timeout,
            guarded(
                self._handshake_late, self._timer_failed, f"store: {self.peer}'s handshake timer"
            ),
        )
        t.write(p.encode(p.Challenge(p.VERSION, self.nonce, srv.token is not None)))

    def connection_lost(self, exc: Exception | None) -> None:
        self._teardown()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            msgs = self.decoder.feed(data)
        except ProtocolError as exc:
            self.drop(f"protocol error: {exc}")
            return
        if not msgs:
            return
        if not self.authed:
            msgs = self._handshake(msgs)
            if not msgs:
                self.flush()
                return
        srv = self.server
        try:
            srv.shared.expire_due()
        except StoreError as exc:  # the lease timer failed: this store cannot serve
            self.drop(str(exc))
            return
        out = self.out
        handlers = _HANDLERS
        for m in msgs:
            h = handlers.get(type(m))
            if h is None:
                self.drop(f"unexpected {type(m).__name__} message")
                return
            try:
                out.append(h(self, m))
            except (StoreError, ConfigError) as exc:
                out.append(p.encode(p.ErrorReply(getattr(m, "id", 0), _code(exc), str(exc))))
            if self.closed:
                return
        self.flush()

    # --- handshake ---------------------------------------------------------------

    def _handshake(self, msgs: list[p.Message]) -> list[p.Message]:
        hello = msgs[0]
        if not isinstance(hello, p.Hello):
            self.drop(f"expected hello, got {type(hello).__name__}")
            return []
        if hello.version != p.VERSION:
            self._refuse(
                "version",
                f"protocol version {hello.version} unsupported; server speaks {p.VERSION}",
            )
            return []
        token = self.server.token
        if token is not None and not check_answer(token, self.nonce, hello.mac):
            self._refuse("auth", "authentication failed: wrong token")
            return []
        self.authed = True
        self.decoder.max_frame = self.server.limits.max_frame
        if self.handshake_timer is not None:
            self.handshake_timer.cancel()
            self.handshake_timer = None
        self.out.append(p.encode(p.Welcome(p.VERSION)))
        return msgs[1:]

    def _refuse(self, code: str, reason: str) -> None:
        if self.transport is not None:
            self.transport.write(p.encode(p.ErrorReply(0, code, reason)))
        self.drop(reason, abort=False)

    def _handshake_late(self) -> None:
        self.handshake_timer = None
        if not self.authed:
            self.drop(f"no handshake within {self.server.limits.handshake_timeout}s")

    def _timer_failed(self, exc: Exception) -> None:
        # a bug: a peer nobody times out could hold a connection slot for ever
        self.handshake_timer = None
        self.drop(f"its handshake timer failed (a bug in corral): {exc!r}")

    # --- output ------------------------------------------------------------------

    def queue(self, frame: bytes) -> None:
        """Queue a frame for a later flush (watch events from other peers' writes)."""
        self.out.append(frame)
        if not self.queued:
            self.queued = True
            self.server.schedule_flush(self)

    def flush(self) -> None:
        out = self.out
        if not out or self.closed:
            out.clear()
            return
        t = self.transport
        assert t is not None
        t.write(out[0] if len(out) == 1 else b"".join(out))
        out.clear()
        size = t.get_write_buffer_size()
        if size > self.server.limits.max_write_buffer:
            self.drop(f"peer does not read: {size} bytes queued (max_write_buffer)")

    def drop(self, reason: str, *, abort: bool = True) -> None:
        """Close the connection with a logged reason; its leases end at once."""
        if self.closed:
            return
        log.warning("store: dropping %s: %s", self.peer, reason)
        t = self.transport
        self._teardown()
        if t is not None:
            t.abort() if abort else t.close()

    def _teardown(self) -> None:
        if self.closed and self not in self.server.conns:
            return
        self.closed = True
        self.out.clear()
        srv = self.server
        srv.conns.discard(self)
        srv._idle.set()
        if self.handshake_timer is not None:
            self.handshake_timer.cancel()
            self.handshake_timer = None
        core = srv.core
        for wid in self.watches.values():
            core.cancel_watch(wid)
        self.watches.clear()
        for lid in self.leases:
            core.revoke(lid)
        self.leases.clear()

    # --- requests ----------------------------------------------------------------

    def _check_new_key(self, key: str) -> None:
        core = self.server.core
        if len(core) >= self.server.limits.max_keys and core.get(key) is None:
            raise _LimitError(f"store holds {len(core)} keys (max_keys); cannot add {key!r:.80}")

    def h_get(self, m: p.Get) -> bytes:
        return p.encode(p.KvReply(m.id, self.server.core.get(m.key)))

    def h_range(self, m: p.Range) -> bytes:
        kvs, rev = self.server.core.range(m.prefix)
        return p.encode(p.RangeReply(m.id, tuple(kvs), rev))

    def h_put(self, m: p.Put) -> bytes:
        self._check_new_key(m.key)
        return p.encode(p.RevisionReply(m.id, self.server.core.put(m.key, m.value, lease=m.lease)))

    def h_create(self, m: p.Create) -> bytes:
        self._check_new_key(m.key)
        return p.encode(p.WriteReply(m.id, self.server.core.create(m.key, m.value, lease=m.lease)))

    def h_cas(self, m: p.CompareAndSet) -> bytes:
        self._check_new_key(m.key)
        res = self.server.core.compare_and_set(
            m.key, m.value, m.expected_mod_revision, lease=m.lease
        )
        return p.encode(p.WriteReply(m.id, res))

    def h_delete(self, m: p.Delete) -> bytes:
        return p.encode(p.CountReply(m.id, self.server.core.delete(m.key, prefix=m.prefix)))

    def h_grant(self, m: p.Grant) -> bytes:
        srv = self.server
        core = srv.core
        if len(self.leases) >= srv.limits.max_leases_per_connection:
            self.leases = {lid for lid in self.leases if core.lease(lid) is not None}
            if len(self.leases) >= srv.limits.max_leases_per_connection:
                raise _LimitError(
                    f"connection holds {len(self.leases)} leases (max_leases_per_connection)"
                )
        lid = core.grant(m.ttl, srv.shared.clock.now(), owner=self)
        self.leases.add(lid)
        if self.transport is not None:
            bound_silence(self.transport.get_extra_info("socket"), silence_bound(m.ttl))
        srv.shared.kick()
        return p.encode(p.LeaseReply(m.id, lid, m.ttl))

    def h_keep_alive(self, m: p.KeepAlive) -> bytes:
        srv = self.server
        ttl = srv.core.keep_alive(m.lease, srv.shared.clock.now())
        return p.encode(p.LeaseReply(m.id, m.lease, ttl))

    def h_revoke(self, m: p.Revoke) -> bytes:
        self.server.core.revoke(m.lease)
        self.leases.discard(m.lease)
        return p.encode(p.DoneReply(m.id))

    def h_watch(self, m: p.Watch) -> bytes:
        srv = self.server
        if len(self.watches) >= srv.limits.max_watches_per_connection:
            raise _LimitError(
                f"connection has {len(self.watches)} watches (max_watches_per_connection)"
            )
        if m.id in self.watches:
            raise ProtocolError(f"watch id {m.id} is already in use on this connection")
        wid = m.id
        cb = srv.event_sink(self, wid)
        self.watches[wid] = srv.core.watch(
            m.key, cb, prefix=m.prefix, start_revision=m.start_revision
        )
        return p.encode(p.DoneReply(m.id))

    def h_cancel(self, m: p.CancelWatch) -> bytes:
        cid = self.watches.pop(m.watch_id, None)
        if cid is not None:
            self.server.core.cancel_watch(cid)
        return b""


class _LimitError(StoreError):
    """A per-connection or store-wide bound was reached (reply code ``limit``)."""


def _code(exc: LauncherError) -> str:
    if isinstance(exc, ConfigError):
        return "invalid"
    if isinstance(exc, LeaseNotFound):
        return "lease_not_found"
    if isinstance(exc, StoreCompacted):
        return "compacted"
    if isinstance(exc, _LimitError):
        return "limit"
    if isinstance(exc, ProtocolError):
        return "protocol"
    return "internal"


_HANDLERS: dict[type, Callable[[Peer, Any], bytes]] = {
    p.Get: Peer.h_get,
    p.Range: Peer.h_range,
    p.Put: Peer.h_put,
    p.Create: Peer.h_create,
    p.CompareAndSet: Peer.h_cas,
    p.Delete: Peer.h_delete,
    p.Grant: Peer.h_grant,
    p.KeepAlive: Peer.h_keep_alive,
    p.Revoke: Peer.h_revoke,
    p.Watch: Peer.h_watch,
    p.CancelWatch: Peer.h_cancel,
}
