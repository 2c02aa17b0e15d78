"""``tcp://host:port``: :class:`TcpStore`, the client of the embedded store server.

One connection carries every request (pipelined by id) and every watch
(multiplexed by id). The host name, if any, is resolved once at connect; every
later (re)connection uses the numeric address. When the connection is lost,
pending requests fail with StoreUnavailable and open watches end with it; the
next request reconnects (leases of the old connection are gone: the server
ended them, so their keep-alives raise LeaseNotFound).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TypeVar
from urllib.parse import urlsplit

from corral.core.aio import task_scope
from corral.core.compat import timeout as _compat_timeout
from corral.core.errors import (
    AuthenticationFailed,
    ConfigError,
    ProtocolError,
    StoreError,
    StoreUnavailable,
)
from corral.core.net import SILENCE_BOUND, bound_silence, silence_bound
from corral.store.api import (
    Characteristics,
    KeyValue,
    WatchEvent,
    WriteResult,
    check_distinct,
)
from corral.store.stream import WatchStream
from corral.store.tcp import protocol as p
from corral.store.tcp.connection import Connection, error_of

__all__ = ["DEFAULT_PORT", "TcpStore", "connect", "open_tcp_store"]

DEFAULT_PORT = 29400
_ATTEMPT_TIMEOUT = 10.0
_CHARACTERISTICS = Characteristics(
    linearizable=True,
    leases=True,
    connection_leases=True,
    replicated=False,
    bounded_requests=True,  # each request: request_timeout (Connection.track)
)
_R = TypeVar("_R")


class TcpStore:
    """A :class:`~corral.store.api.Store` over one connection to a corral store server.

    Create with :func:`connect` or ``open_store("tcp://host:port")``.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        token: str | None,
        request_timeout: float,
        display: str | None = None,
    ) -> None:
        self._host = host  # numeric
        self._port = port
        self._token = token
        self.request_timeout = request_timeout
        self.address_text = display or f"{host}:{port}"
        self._conn: Connection | None = None
        self._next_id = 0
        self._closed = False
        self._lock = asyncio.Lock()
        # How long the connection may stay silent: SILENCE_BOUND, then 2 x the TTL of the
        # last lease granted on it (a blip shorter than the membership timeout never ends it).
        self._silence = SILENCE_BOUND

    @property
    def characteristics(self) -> Characteristics:
        return _CHARACTERISTICS

    @property
    def address(self) -> tuple[str, int]:
        return self._host, self._port

    # --- connection ------------------------------------------------------------

    async def _connect(self, deadline: float) -> Connection:
        """Connect with bounded exponential back-off until ``deadline`` (loop time)."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        delay = 0.02
        attempts = 0
        last: BaseException | None = None
        while True:
            attempts += 1
            remaining = deadline - loop.time()
            try:
                # One attempt may not eat the whole budget: a peer that accepts
                # but never answers the handshake is retried.
                async with _compat_timeout(max(min(remaining, _ATTEMPT_TIMEOUT), 0.001)):
                    _, conn = await loop.create_connection(
                        lambda: Connection(self, self._token), self._host, self._port
                    )
                    try:
                        await conn.ready
                    except BaseException:
                        if conn.transport is not None:
                            conn.transport.abort()
                        raise
                if conn.lost is not None:  # lost between its welcome and now: try again
                    raise conn.lost
                sock = conn.transport.get_extra_info("socket") if conn.transport else None
                if sock is not None:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                bound_silence(
                    sock, self._silence
                )  # a half-open connection ends (docs/rendezvous.md)
                return conn
            except (AuthenticationFailed, ProtocolError):
                raise
            except (OSError, StoreError, TimeoutError) as exc:
                last = exc
            if loop.time() + delay >= deadline:
                raise StoreUnavailable(
                    f"store at {self.address_text} unreachable: tried for "
                    f"{loop.time() - start:.1f}s ({attempts} attempts); last error: {last!r}"
                ) from last
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def _ensure(self) -> Connection:
        conn = self._conn
        if conn is not None:
            return conn
        if self._closed:
            raise StoreUnavailable(f"store client for {self.address_text} is closed")
        async with self._lock:
            if self._conn is None:
                loop = asyncio.get_running_loop()
                self._conn = await self._connect(loop.time() + self.request_timeout)
            return self._conn

    # --- requests ----------------------------------------------------------------

    def _live(self, conn: Connection) -> Connection:
        """``conn`` if it is still up; else forget it and raise StoreUnavailable at once.

        A connection can be lost after :meth:`_ensure` handed it out: a request
        registered on it would wait for ``request_timeout`` and end in StoreTimeout.
        """
        lost = conn.lost
        if lost is None:
            return conn
        if self._conn is conn:
            self._conn = None
        if isinstance(lost, StoreUnavailable):
            raise lost
        raise StoreUnavailable(str(lost)) from lost

    async def _call(self, msg: p.Message, rid: int) -> p.Message:
        conn = self._live(self._conn or await self._ensure())
        fut: asyncio.Future[p.Message] = conn.loop.create_future()
        conn.pending[rid] = fut
        assert conn.transport is not None
        conn.send(p.encode(msg))
        conn.track(fut, rid, self.request_timeout)
        try:
            reply = await fut
        finally:
            conn.pending.pop(rid, None)
            conn.untrack()
        if type(reply) is p.ErrorReply:
            raise error_of(reply.code, reply.message)
        return reply

    def _id(self) -> int:
        self._next_id += 1
        return self._next_id

    async def get(self, key: str, *, min_revision: int = 0) -> KeyValue | None:
        rid = self._id()  # the server always answers with the latest
        r = await self._call(p.Get(rid, key), rid)
        assert isinstance(r, p.KvReply)
        return r.kv

    async def range(self, prefix: str) -> tuple[list[KeyValue], int]:
        rid = self._id()
        r = await self._call(p.Range(rid, prefix), rid)
        assert isinstance(r, p.RangeReply)
        return list(r.kvs), r.revision

    async def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        rid = self._id()
        r = await self._call(p.Put(rid, key, value, lease), rid)
        assert isinstance(r, p.RevisionReply)
        return r.revision

    async def put_many(self, items: Sequence[tuple[str, bytes]]) -> int:
        # Pipelined on this connection: every request is sent before the first answer.
        # The first error cancels the other requests (their answers are then ignored).
        check_distinct(items)
        async with task_scope() as tg:
            puts = [tg.create_task(self.put(key, value)) for key, value in items]
        return max((t.result() for t in puts), default=0)

    async def create(self, key: str, value: bytes, *, lease: int = 0) -> WriteResult:
        rid = self._id()
        r = await self._call(p.Create(rid, key, value, lease), rid)
        assert isinstance(r, p.WriteReply)
        return r.result

    async def create_and_read(
        self, creates: Sequence[tuple[str, bytes, int]], prefixes: Sequence[str]
    ) -> tuple[list[WriteResult], list[list[KeyValue]], int]:
        # Pipelined on this connection, in order: the server answers the creates
        # before it reads. Not atomic: other clients' writes may come between.
        # The first error cancels the other requests.
        check_distinct(creates)
        async with task_scope() as tg:
            writes = [tg.create_task(self.create(k, v, lease=ls)) for k, v, ls in creates]
            reads = [tg.create_task(self.range(prefix)) for prefix in prefixes]
        results = [t.result() for t in writes]
        ranges = [t.result() for t in reads]
        if not ranges:
            return results, [], max((r.revision for r in results), default=0)
        return results, [kvs for kvs, _ in ranges], min(rev for _, rev in ranges)

    async def compare_and_set(
        self, key: str, value: bytes, expected_mod_revision: int, *, lease: int = 0
    ) -> WriteResult:
        rid = self._id()
        r = await self._call(p.CompareAndSet(rid, key, value, expected_mod_revision, lease), rid)
        assert isinstance(r, p.WriteReply)
        return r.result

    async def delete(self, key: str, *, prefix: bool = False) -> int:
        rid = self._id()
        r = await self._call(p.Delete(rid, key, prefix), rid)
        assert isinstance(r, p.CountReply)
        return r.count

    async def grant(self, ttl: float) -> int:
        rid = self._id()
        r = await self._call(p.Grant(rid, float(ttl)), rid)
        assert isinstance(r, p.LeaseReply)
        self._silence = silence_bound(ttl)
        conn = self._conn
        if conn is not None and conn.transport is not None:
            bound_silence(conn.transport.get_extra_info("socket"), self._silence)
        return r.lease

    async def keep_alive(self, lease: int) -> float:
        rid = self._id()
        r = await self._call(p.KeepAlive(rid, lease), rid)
        assert isinstance(r, p.LeaseReply)
        return r.ttl

    async def revoke(self, lease: int) -> None:
        rid = self._id()
        await self._call(p.Revoke(rid, lease), rid)

    def watch(
        self, key: str, *, prefix: bool = False, start_revision: int = 0
    ) -> AbstractAsyncContextManager[AsyncIterator[WatchEvent]]:
        return self._watch(key, prefix, start_revision)

    @asynccontextmanager
    async def _watch(
        self, key: str, prefix: bool, start_revision: int
    ) -> AsyncIterator[AsyncIterator[WatchEvent]]:
        conn = self._live(self._conn or await self._ensure())
        wid = self._id()
        stream = WatchStream()
        # Registered before the request goes out: events may precede the reply.
        conn.streams[wid] = stream
        try:
            # A caller cancelled while waiting for the reply leaves a watch the
            # server may have made: the cancel below ends it too (same order).
            await self._call(p.Watch(wid, key, prefix, start_revision), wid)
            yield stream
        finally:
            if conn.streams.pop(wid, None) is not None and conn.transport is not None:
                if not conn.transport.is_closing():
                    conn.send(p.encode(p.CancelWatch(wid)))

    async def close(self) -> None:
        """Close the connection: the server ends this client's leases at once."""
        self._closed = True
        conn, self._conn = self._conn, None
        if conn is not None and conn.transport is not None:
            conn.lost = StoreUnavailable(f"store client for {self.address_text} is closed")
            conn.transport.close()
            conn._end()

    async def __aenter__(self) -> TcpStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def _resolve(host: str, port: int, deadline: float) -> str:
    """A numeric address for ``host`` (looked up once; numeric hosts are returned as is)."""
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    try:
        async with _compat_timeout(max(deadline - loop.time(), 0.001)):
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, TimeoutError) as exc:
        raise StoreUnavailable(f"cannot resolve store host {host!r}: {exc!r}") from exc
    return str(infos[0][4][0])


async def connect(
    host: str,
    port: int,
    *,
    token: str | None = None,
    timeout: float = 60.0,
    request_timeout: float = 30.0,
) -> TcpStore:
    """Connect to a corral store server, retrying with back-off for up to ``timeout`` seconds.

    Args:
        host: numeric address (preferred) or a name, resolved once here.
        port: server port.
        token: shared secret, when the server requires one.
        timeout: how long to keep trying to connect.
        request_timeout: deadline of each request (StoreTimeout beyond it).

    Raises:
        StoreUnavailable: not reachable within ``timeout`` (names the address and how long).
        AuthenticationFailed: the server refused the token (not retried).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    numeric = await _resolve(host, port, deadline)
    display = f"{host}:{port}" if numeric == host else f"{host} ({numeric}):{port}"
    store = TcpStore(numeric, port, token=token, request_timeout=request_timeout, display=display)
    store._conn = await store._connect(deadline)
    return store


async def open_tcp_store(url: str, *, token: str | None = None, timeout: float = 60.0) -> TcpStore:
    """Registry factory for ``tcp://host[:port]`` (default port 29400)."""
    parts = urlsplit(url)
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError as exc:
        raise ConfigError(f"store URL {url!r}: bad port ({exc})") from exc
    if not parts.hostname:
        raise ConfigError(f"store URL {url!r} has no host; expected tcp://host:port")
    # ``timeout`` bounds the connect and each request (bounded_requests): the
    # agent opens the store with timeout=read_timeout.
    return await connect(
        parts.hostname, port, token=token, timeout=timeout, request_timeout=timeout
    )
