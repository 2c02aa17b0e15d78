"""One gRPC channel to one etcd member at a time, with failover and error translation.

etcd clients talk to any member; a write reaches the leader through it. So on
connecting we ask the member for the leader and move there when the leader is
one of the listed endpoints (one hop less per write and linearizable read;
best effort). When the member we use goes away (connection refused or reset,
``no leader``, no answer within the attempt timeout) we retire its channel and
connect to the next endpoint in the list, round-robin, until the operation's
deadline.

Calls are retried on the next member only when that is safe; the store layer
says so per call (reads and lease calls: yes; puts, deletes, create and
compare-and-set: yes, as fenced or conditional transactions whose outcome is
re-checked; see ``EtcdStore`` and :mod:`corral.store.etcd.fenced`).

Every grpc error is translated here, with ``raise ... from exc``, into
:mod:`corral.core.errors`; which errors mean "fail over", and the corral error for
the others, is :mod:`corral.store.etcd.grpc_errors`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import grpc  # type: ignore[import-untyped]
from aetcd import rpc

from corral.core.aio import task_scope
from corral.core.compat import TaskGroup
from corral.core.compat import timeout as _compat_timeout
from corral.core.errors import ConfigError, StoreTimeout, StoreUnavailable
from corral.store.etcd.grpc_errors import is_failover_error, short_reason, translate_error
from corral.store.etcd.url import EtcdTarget

__all__ = [
    "REQUEST_ATTEMPT",
    "WATCH_IDLE",
    "Connection",
    "Session",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Longest wait for one member to accept a connection before trying the next.
CONNECT_ATTEMPT = 1.5
#: Longest wait for one request on one member before failing over (a hung member).
REQUEST_ATTEMPT = 5.0
#: After this long without a message, a watch asks its member for progress; no
#: answer within REQUEST_ATTEMPT means the member hangs, and the watch moves.
WATCH_IDLE = 10.0

_CHANNEL_OPTIONS = (
    # Find a dead peer under an idle watch: ping every 10 s (etcd refuses pings
    # more often than every 5 s), give up 5 s later.
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.keepalive_permit_without_calls", 0),
    # Retry quickly after a refused connection; we fail over ourselves.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1_000),
    ("grpc.enable_retries", 0),
)


@dataclass(eq=False)
class Session:
    """A connected, authenticated channel to one member."""

    channel: Any
    endpoint: str
    metadata: tuple[tuple[str, str], ...]
    generation: int
    kv: Any = None
    lease: Any = None
    watch: Any = None
    maintenance: Any = None
    users: int = 0
    retired: bool = False
    #: the session's watch stream (corral.store.etcd.watch.WatchHub), aborted when
    #: the session is given up so that its watches resume elsewhere
    watch_hub: Any = None

    def __post_init__(self) -> None:
        self.kv = rpc.KVStub(self.channel)
        self.lease = rpc.LeaseStub(self.channel)
        self.watch = rpc.WatchStub(self.channel)
        self.maintenance = rpc.MaintenanceStub(self.channel)


def _read(path: str | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"etcd TLS {what} file {path!r} cannot be read: {exc.strerror}") from exc


class Connection:
    """Connects to one member of ``target`` at a time; fails over to the next."""

    def __init__(self, target: EtcdTarget, *, timeout: float) -> None:
        self.target = target
        self.timeout = timeout
        #: REQUEST_ATTEMPT and WATCH_IDLE of this connection (tests shorten them).
        self.request_attempt = REQUEST_ATTEMPT
        self.watch_idle = WATCH_IDLE
        self._credentials: Any = None
        if target.tls:
            self._credentials = grpc.ssl_channel_credentials(
                root_certificates=_read(target.cacert, "cacert"),
                private_key=_read(target.key, "key"),
                certificate_chain=_read(target.cert, "cert"),
            )
        # Start at the first endpoint listed, then go round the list; but move
        # to the leader when the member reached names one we list (see
        # _leader_index). (Starting each client at a random member spreads
        # reads and watches, but every write a follower takes is forwarded to
        # the leader: at K=1024 on a 3-member cluster sharing 2 cores it was
        # about 15% slower.)
        self._index = 0
        self._generation = 0
        self._session: Session | None = None
        self._lock = asyncio.Lock()
        self._closed = False
        self._retired: set[Session] = set()
        # The scope of the connection's tasks (one per watch stream): entered by
        # open(), left by close() once every stream has ended.
        self._scope: AsyncExitStack | None = None
        self._tasks: TaskGroup | None = None

    async def open(self) -> None:
        """Enter the task scope of the connection's watch streams (again: nothing)."""
        if self._scope is not None or self._closed:
            return
        scope = AsyncExitStack()
        self._tasks = await scope.enter_async_context(task_scope())
        self._scope = scope

    def spawn(self, coro: Coroutine[Any, Any, None], *, name: str) -> asyncio.Task[None]:
        """Run ``coro`` (a watch stream's life, which raises nothing) in the connection's scope.

        Raises: StoreUnavailable if the store is closed; RuntimeError if it was never opened.
        """
        if self._closed:
            coro.close()
            raise StoreUnavailable("the etcd store is closed")
        if self._tasks is None:
            coro.close()
            raise RuntimeError("etcd connection not opened (open_etcd_store opens it)")
        return self._tasks.create_task(coro, name=name)

    # --- sessions --------------------------------------------------------------

    def _channel(self, endpoint: str) -> Any:
        if self._credentials is not None:
            return grpc.aio.secure_channel(endpoint, self._credentials, options=_CHANNEL_OPTIONS)
        return grpc.aio.insecure_channel(endpoint, options=_CHANNEL_OPTIONS)

    async def session(self, deadline: float) -> Session:
        """The current session, connecting (trying members in turn) until ``deadline``.

        Raises: StoreUnavailable when no member answers before the deadline;
        AuthenticationFailed when a member refuses the credentials.
        """
        if self._closed:
            raise StoreUnavailable("the etcd store is closed")
        session = self._session
        if session is not None:
            return session
        async with self._lock:
            if self._session is not None:
                return self._session
            self._session = await self._connect(deadline)
            return self._session

    async def _connect(self, deadline: float) -> Session:
        loop = asyncio.get_running_loop()
        started = loop.time()
        endpoints = [f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.target.endpoints]
        last_error = "no attempt made"
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise StoreUnavailable(
                    f"cannot reach etcd at {','.join(endpoints)} "
                    f"(tried for {loop.time() - started:.1f} s; last error: {last_error})"
                )
            endpoint = endpoints[self._index % len(endpoints)]
            channel = self._channel(endpoint)
            attempt = min(remaining, CONNECT_ATTEMPT)
            try:
                async with _compat_timeout(attempt):
                    await channel.channel_ready()
                    metadata = await self._authenticate(channel, endpoint)
            except (TimeoutError, grpc.aio.AioRpcError) as exc:
                await channel.close()
                if isinstance(exc, grpc.aio.AioRpcError) and not is_failover_error(exc):
                    raise translate_error(exc, "authenticate", endpoint) from exc
                how = "TLS handshake or TCP connect" if self.target.tls else "TCP connect"
                last_error = (
                    f"{endpoint}: {exc.details()}"
                    if isinstance(exc, grpc.aio.AioRpcError)
                    else f"{endpoint}: no connection ({how}) within {attempt:.1f} s"
                )
                self._index += 1
                continue
            leader = await self._leader_index(channel, metadata, endpoints, deadline)
            if leader is not None:
                moved = await self._open(endpoints[leader], min(deadline - loop.time(), attempt))
                if moved is not None:
                    await channel.close()
                    self._index = leader
                    endpoint = endpoints[leader]
                    channel, metadata = moved
            self._generation += 1
            log.info("etcd: connected to %s", endpoint)
            return Session(channel, endpoint, metadata, self._generation)

    async def _open(
        self, endpoint: str, attempt: float
    ) -> tuple[Any, tuple[tuple[str, str], ...]] | None:
        """A connected, authenticated channel to ``endpoint``, or None (closed) on any failure."""
        channel = self._channel(endpoint)
        try:
            async with _compat_timeout(max(attempt, 0.0)):
                await channel.channel_ready()
                return channel, await self._authenticate(channel, endpoint)
        except (TimeoutError, grpc.aio.AioRpcError):
            await channel.close()
            return None

    async def _leader_index(
        self,
        channel: Any,
        metadata: tuple[tuple[str, str], ...],
        endpoints: list[str],
        deadline: float,
    ) -> int | None:
        """The index in ``endpoints`` of the leader, if the member on ``channel`` is not it.

        Every write goes through the leader, and a linearizable read asks it
        too: a client on a follower costs the cluster an extra hop for each.
        Best effort: None when there is one endpoint, this member leads, there
        is no leader now, the leader's client URLs match no listed endpoint
        (etcd may advertise other names), or either call fails.
        """
        if len(endpoints) < 2:
            return None
        loop = asyncio.get_running_loop()
        timeout = min(CONNECT_ATTEMPT, deadline - loop.time())
        if timeout <= 0:
            return None
        try:
            status = await rpc.MaintenanceStub(channel).Status(
                rpc.StatusRequest(), timeout=timeout, metadata=metadata
            )
            if status.leader in (0, status.header.member_id):
                return None
            members = await rpc.ClusterStub(channel).MemberList(
                rpc.MemberListRequest(), timeout=timeout, metadata=metadata
            )
        except grpc.aio.AioRpcError as exc:
            log.debug("etcd: no leader lookup (%s)", short_reason(exc))
            return None
        for member in members.members:
            if member.ID == status.leader:
                for url in member.clientURLs:
                    netloc = urlsplit(url).netloc
                    if netloc in endpoints:
                        return endpoints.index(netloc)
        return None

    async def _authenticate(self, channel: Any, endpoint: str) -> tuple[tuple[str, str], ...]:
        if self.target.user is None:
            return ()
        resp = await rpc.AuthStub(channel).Authenticate(
            rpc.AuthenticateRequest(name=self.target.user, password=self.target.password or ""),
            timeout=CONNECT_ATTEMPT,
        )
        return (("token", resp.token),)

    async def fail(self, session: Session, reason: BaseException | str) -> None:
        """Give up on ``session``'s member: the next call connects to the next member."""
        async with self._lock:
            if self._session is session:
                log.warning("etcd: leaving %s: %s", session.endpoint, short_reason(reason))
                self._session = None
                self._index += 1
                session.retired = True
                # Move the watches too: a member one call found dead or hung
                # would keep an idle watch silent until keep-alive noticed.
                if session.watch_hub is not None:
                    session.watch_hub.abort("member given up")
                if session.users == 0:
                    await session.channel.close()
                else:  # closed by release() when its last call ends; see there
                    self._retired.add(session)

    def acquire(self, session: Session) -> None:
        session.users += 1

    async def release(self, session: Session) -> None:
        # A retired channel is closed only once nothing uses it: closing a grpc
        # channel cancels its calls with CancelledError, which would look like
        # a cancellation of the caller.
        session.users -= 1
        if session.retired and session.users == 0 and session in self._retired:
            self._retired.discard(session)
            await session.channel.close()

    async def reauthenticate(self, session: Session) -> None:
        """Refresh an expired auth token on the same channel."""
        async with self._lock:
            session.metadata = await self._authenticate(session.channel, session.endpoint)

    async def close(self) -> None:
        self._closed = True
        async with self._lock:
            sessions = list(self._retired)
            if self._session is not None:
                sessions.append(self._session)
            self._session = None
            self._retired.clear()
        for s in sessions:
            if s.watch_hub is not None:
                s.watch_hub.abort("the etcd store is closed")
                await s.watch_hub.wait_closed()
            await s.channel.close()
        scope, self._scope, self._tasks = self._scope, None, None
        if scope is not None:  # every stream has ended: the scope only waits for them
            await scope.aclose()

    # --- calls -----------------------------------------------------------------

    async def call(
        self,
        what: str,
        op: Callable[[Session, float, bool], Awaitable[T]],
        *,
        retry: bool = True,
    ) -> T:
        """Run ``op(session, attempt_timeout, retried)``, failing over between members.

        ``retried`` is True once an earlier attempt may have reached a member
        (its outcome unknown), so a conditional write can re-check it.
        Raises: corral.core.errors.StoreError subclasses only.
        """
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + self.timeout
        retried = False
        reauthenticated = False
        while True:
            session = self._session
            if session is None or self._closed:
                session = await self.session(deadline)
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise StoreTimeout(
                    f"etcd {what} at {self.target.endpoint_names()}: "
                    f"no answer within {self.timeout:.1f} s"
                )
            self.acquire(session)
            try:
                return await op(session, min(remaining, self.request_attempt), retried)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is None or task.cancelling() or not self._closed:
                    raise
                # close() closed the channel under this call: not our caller's cancellation.
                raise StoreUnavailable(f"etcd {what}: the store was closed") from None
            except grpc.aio.AioRpcError as exc:
                low = (exc.details() or "").lower()
                if "invalid auth token" in low and not reauthenticated:
                    reauthenticated = True
                    await self.reauthenticate(session)
                    continue
                if not is_failover_error(exc):
                    raise translate_error(exc, what, session.endpoint) from exc
                await self.fail(session, exc)
                if not retry:
                    raise StoreUnavailable(
                        f"etcd {what} at {session.endpoint}: connection lost, the request "
                        f"may or may not have been applied ({short_reason(exc)})"
                    ) from exc
                if loop.time() >= deadline:
                    if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                        raise StoreTimeout(
                            f"etcd {what}: no answer within {self.timeout:.1f} s "
                            f"(last member tried: {session.endpoint})"
                        ) from exc
                    raise StoreUnavailable(
                        f"etcd {what} at {self.target.endpoint_names()}: no member served "
                        f"the request within {self.timeout:.1f} s ({short_reason(exc)})"
                    ) from exc
                retried = True
            finally:
                await self.release(session)
