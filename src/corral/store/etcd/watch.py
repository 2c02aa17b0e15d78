"""etcd watches, multiplexed: every watch of a session on one gRPC ``Watch`` stream.

etcd serves many watches on one bidirectional stream, told apart by watch id
(clientv3 does the same). Here the client picks the ids (etcd >= 3.4 accepts
``WatchCreateRequest.watch_id``), so creates are pipelined: a new watch costs
one message on an open stream instead of a new gRPC call. At K=1024 simulated
nodes on 32 connections that is 32 streams instead of 1024, on the client and
on etcd.

* :class:`WatchHub`: the stream of one session. One reader task dispatches
  answers to watches by id. After ``WATCH_IDLE`` of silence it asks the member
  for progress; no answer within ``REQUEST_ATTEMPT`` means the member hangs.
  When the stream ends (member lost, hung, no leader with ``hasleader``, or
  the session given up by another call), every watch on it is told, and the
  member is given up once, for all of them.
* :class:`EtcdWatch`: one watch (the async iterator of ``EtcdStore.watch``).
  It remembers the first revision it has not delivered; when its hub dies it
  is created again on the next member from that revision, so no event is lost
  or repeated.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any

import grpc  # type: ignore[import-untyped]
from aetcd import rpc

from corral.core.aio import task_scope
from corral.core.compat import timeout as _compat_timeout
from corral.core.errors import AuthenticationFailed, StoreCompacted, StoreError, StoreUnavailable
from corral.store.api import EventType, KeyValue, WatchEvent
from corral.store.etcd.connection import Connection, Session
from corral.store.etcd.grpc_errors import is_failover_error, translate_error

__all__ = ["EtcdWatch", "WatchHub"]

log = logging.getLogger(__name__)

#: The longest wait for a member to confirm a new watch before trying another.
CREATE_ATTEMPT = 5.0


class _HubDown(Exception):
    """The stream under a watch ended; ``reason`` says why (a grpc error or text)."""

    def __init__(self, reason: BaseException | str, *, failover: bool) -> None:
        super().__init__(str(reason))
        self.reason = reason
        self.failover = failover


class WatchHub:
    """One gRPC ``Watch`` stream of ``session``, carrying many watches by id.

    Made by :func:`hub_of`; ends (:attr:`down` set) when the stream ends,
    never to be reused. It holds one use of the session (``Connection.acquire``)
    while it lives, so a retired channel closes only after it.
    """

    def __init__(self, conn: Connection, session: Session) -> None:
        self._conn = conn
        self.session = session
        # "hasleader": the member ends the stream when it loses its leader,
        # instead of silently delivering nothing (as etcd's clientv3 does).
        self._call = session.watch.Watch(metadata=(*session.metadata, ("hasleader", "true")))
        self._watches: dict[int, EtcdWatch] = {}
        self._ids = itertools.count(1)
        # Requests go out through one writer task of run() (grpc allows one
        # write in flight per call), so callers never wait for a write.
        self._outbox: asyncio.Queue[Any] = asyncio.Queue()
        self.down: _HubDown | None = None
        self._fail_member = False  # give the member up when the stream ends
        self._heard = asyncio.get_running_loop().time()  # when the stream last brought a message
        #: the task of :meth:`run`, in the connection's task scope (set by :func:`hub_of`)
        self.task: asyncio.Task[None] | None = None
        conn.acquire(session)

    async def run(self) -> None:
        """The stream's life: read here, write and probe beside, in one task scope.

        Run by :func:`hub_of` in the connection's task scope. Any way it ends
        (the stream broke, :meth:`abort`, or a helper failed unexpectedly),
        every watch on it is told (and moves), and the session's use is
        released. An unexpected error of a helper or of the reader is logged,
        each one, and ends the stream; it is not raised (that would cancel the
        task that opened the store).
        """
        try:
            async with task_scope() as tg:
                writer = tg.create_task(self._guard(self._write_all(), "writer"))
                prober = tg.create_task(self._guard(self._probe(), "prober"))
                try:
                    await self._read_all()
                finally:
                    writer.cancel()
                    prober.cancel()
        except Exception as exc:
            self._failed("reader", exc)
        finally:
            self._call.cancel()
            self._end(_HubDown("watch stream stopped", failover=True))
            try:
                if self._fail_member and self.down is not None:
                    await self._conn.fail(self.session, self.down.reason)
            finally:
                await self._conn.release(self.session)

    async def _guard(self, coro: Coroutine[Any, Any, None], what: str) -> None:
        """Run a helper of the stream; if it fails unexpectedly, end the stream."""
        try:
            await coro
        except Exception as exc:
            self._failed(what, exc)

    def _failed(self, what: str, exc: Exception) -> None:
        log.error(
            "etcd: watch stream %s at %s failed: %r", what, self.session.endpoint, exc, exc_info=exc
        )
        self._end(_HubDown(f"watch stream {what} failed: {exc!r}", failover=True))
        self._call.cancel()  # ends the reader's read

    def add(self, watch: EtcdWatch) -> int:
        wid = next(self._ids)
        self._watches[wid] = watch
        return wid

    def send(self, request: Any) -> None:
        """Queue one request; a broken stream is reported by the reader, not here."""
        if self.down is None:
            self._outbox.put_nowait(request)

    async def _write_all(self) -> None:
        while True:
            request = await self._outbox.get()
            try:
                await self._call.write(request)
            except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError):
                return  # the stream is broken: the reader reports it

    def cancel(self, wid: int) -> None:
        """End watch ``wid`` (its answers, if any still come, are dropped)."""
        if self._watches.pop(wid, None) is not None:
            self.send(rpc.WatchRequest(cancel_request=rpc.WatchCancelRequest(watch_id=wid)))

    def abort(self, reason: str) -> None:
        """End the stream now (its session was given up, or the store closes)."""
        self._call.cancel()
        self._end(_HubDown(reason, failover=True))

    async def _read_all(self) -> None:
        # One read at a time, straight from the call: a message costs one await.
        # Silence is watched by _probe, which ends the stream (and so this read)
        # when a member does not answer.
        loop = asyncio.get_running_loop()
        while self.down is None:
            try:
                resp = await self._call.read()
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
                # The call was cancelled under us: abort(), _probe, or the
                # channel closed. Not a cancellation of this task.
                self._end(_HubDown("watch call cancelled", failover=True))
                continue
            except grpc.aio.AioRpcError as exc:
                self._end(_HubDown(exc, failover=is_failover_error(exc)))
                self._fail_member = is_failover_error(exc)
                continue
            self._heard = loop.time()
            if resp is grpc.aio.EOF:
                self._end(_HubDown("watch stream closed by the server", failover=True))
                self._fail_member = True
                continue
            watch = self._watches.get(resp.watch_id)
            if watch is not None:
                if resp.canceled and not resp.created:
                    del self._watches[resp.watch_id]  # etcd ended it
                watch.feed(resp)

    async def _probe(self) -> None:
        """After ``watch_idle`` of silence (with watches open), ask for progress;
        no message within ``request_attempt`` means the member hangs: end the
        stream, and give the member up."""
        loop = asyncio.get_running_loop()
        idle, attempt = self._conn.watch_idle, self._conn.request_attempt
        while True:
            quiet = loop.time() - self._heard
            if quiet < idle or not self._watches:  # an unused stream need not be checked
                await asyncio.sleep(idle - quiet if quiet < idle else idle)
                continue
            asked = loop.time()
            self.send(rpc.WatchRequest(progress_request=rpc.WatchProgressRequest()))
            await asyncio.sleep(attempt)
            if self._heard < asked and self.down is None:
                log.info(
                    "etcd: watch stream at %s did not answer for %.1f s; moving",
                    self.session.endpoint,
                    attempt,
                )
                self._fail_member = True
                self._end(_HubDown("no answer to a watch progress request", failover=True))
                self._call.cancel()  # ends the reader's read
                return

    def _end(self, down: _HubDown) -> None:
        if self.down is not None:
            return
        self.down = down
        watches, self._watches = list(self._watches.values()), {}
        for w in watches:
            w.hub_down(self, down)

    async def wait_closed(self) -> None:
        """Wait for :meth:`run` to end (after :meth:`abort`); it raises nothing."""
        if self.task is not None:
            await asyncio.wait({self.task})


def hub_of(conn: Connection, session: Session) -> WatchHub:
    """The live watch stream of ``session``, opened on first use: its :meth:`WatchHub.run`
    is a task in the connection's task scope (:meth:`Connection.spawn`).

    Raises: StoreUnavailable if the store is closed.
    """
    hub: WatchHub | None = session.watch_hub
    if hub is None or hub.down is not None:
        hub = WatchHub(conn, session)
        hub.task = conn.spawn(hub.run(), name=f"etcd watch stream at {session.endpoint}")
        session.watch_hub = hub
    return hub


class EtcdWatch:
    """One etcd watch on a :class:`WatchHub`; resumes on another member from the
    first revision not yet delivered."""

    def __init__(
        self,
        conn: Connection,
        to_kv: Callable[[Any], KeyValue],
        key: bytes,
        range_end: bytes,
        start: int,
        where: Callable[[], str],
    ) -> None:
        self._conn = conn
        self._to_kv = to_kv
        self._key = key
        self._range_end = range_end
        self._next = start  # first revision not yet delivered; 0 = from now
        self._where = where
        self._hub: WatchHub | None = None
        self._wid = 0
        self._created: asyncio.Future[Any] | None = None
        self._pending: deque[WatchEvent] = deque()
        self._broken: BaseException | None = None  # why the watch must be made again
        self._wake = asyncio.Event()
        self._closed = False

    # --- called by the hub -------------------------------------------------------

    def feed(self, resp: Any) -> None:
        if resp.created and self._created is not None and not self._created.done():
            self._created.set_result(resp)
            return
        if resp.canceled:
            # etcd cancelled this watch alone (compaction, or a reason of its own)
            self._hub = None
            self._broken = _Canceled(resp)
        else:
            self._take(resp)
        self._wake.set()

    def hub_down(self, hub: WatchHub, down: _HubDown) -> None:
        if self._created is not None and not self._created.done():
            self._created.set_exception(down)
        if self._hub is hub:
            self._hub = None
            self._broken = down
            self._wake.set()

    # --- the watch ---------------------------------------------------------------

    def _take(self, resp: Any) -> None:
        for ev in resp.events:
            kind = EventType.DELETE if ev.type == rpc.Event.DELETE else EventType.PUT
            self._pending.append(WatchEvent(kind, self._to_kv(ev.kv)))
            self._next = max(self._next, int(ev.kv.mod_revision) + 1)

    def _compacted(self, resp: Any) -> StoreCompacted:
        return StoreCompacted(
            f"etcd watch from revision {self._next}: history before revision "
            f"{resp.compact_revision} was compacted; re-read the state and watch again"
        )

    async def open(self) -> None:
        """Create the watch on some member, failing over until the deadline.

        Raises: StoreCompacted, AuthenticationFailed, StoreUnavailable, StoreError.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._conn.timeout
        reauthenticated = False
        while True:
            session = await self._conn.session(deadline)
            hub = hub_of(self._conn, session)
            wid = hub.add(self)
            self._created = created = loop.create_future()
            self._hub, self._wid = hub, wid
            hub.send(
                rpc.WatchRequest(
                    create_request=rpc.WatchCreateRequest(
                        key=self._key,
                        range_end=self._range_end,
                        start_revision=self._next,
                        watch_id=wid,
                    )
                )
            )
            try:
                async with _compat_timeout(max(0.1, min(deadline - loop.time(), CREATE_ATTEMPT))):
                    resp = await created
            except TimeoutError:
                self._hub = None
                hub.cancel(wid)
                await self._conn.fail(session, "no answer to a watch create")
                self._check_deadline(deadline, "no member confirmed the watch")
                continue
            except _HubDown as down:
                self._hub = None
                if not down.failover:
                    raise self._error(down) from None
                self._check_deadline(deadline, f"no member kept the watch ({down})")
                continue
            finally:
                self._created = None
            if resp.canceled:
                self._hub = None
                hub.cancel(wid)
                if resp.compact_revision:
                    raise self._compacted(resp)
                reason = resp.cancel_reason or "no reason given"
                low = reason.lower()
                if ("permission denied" in low or "auth token" in low) and not reauthenticated:
                    # A simple token that expired while idle: a new token, a new stream.
                    reauthenticated = True
                    await self._conn.reauthenticate(session)
                    hub.abort("auth token refreshed")
                    continue
                if "permission denied" in low:
                    raise AuthenticationFailed(
                        f"etcd watch at {session.endpoint}: permission denied for this user"
                    )
                raise StoreError(f"etcd watch at {session.endpoint} refused: {reason}")
            if self._next == 0:
                self._next = int(resp.header.revision) + 1
            return

    def _check_deadline(self, deadline: float, what: str) -> None:
        if asyncio.get_running_loop().time() >= deadline:
            raise StoreUnavailable(
                f"etcd watch at {self._where()}: {what} within {self._conn.timeout:.1f} s"
            )

    def _error(self, down: _HubDown) -> StoreError:
        endpoint = self._where()
        if isinstance(down.reason, grpc.aio.AioRpcError):
            return translate_error(down.reason, "watch", endpoint)
        return StoreError(f"etcd watch at {endpoint}: {down.reason}")

    def __aiter__(self) -> EtcdWatch:
        return self

    async def __anext__(self) -> WatchEvent:
        while not self._pending:
            if self._closed:
                raise StopAsyncIteration
            broken, self._broken = self._broken, None
            if isinstance(broken, _Canceled):
                if broken.resp.compact_revision:
                    raise self._compacted(broken.resp)
                reason = broken.resp.cancel_reason or "no reason given"
                log.info("etcd: watch cancelled by the member (%s); resuming", reason)
            elif isinstance(broken, _HubDown):
                if not broken.failover:
                    raise self._error(broken)
                log.info(
                    "etcd: watch lost its stream (%s); resuming at revision %d", broken, self._next
                )
            if self._hub is None:
                await self.open()
                continue
            self._wake.clear()
            await self._wake.wait()
        return self._pending.popleft()

    async def close(self) -> None:
        self._closed = True
        hub, self._hub = self._hub, None
        if hub is not None:
            hub.cancel(self._wid)


class _Canceled(Exception):
    """etcd cancelled one watch (its answer is ``resp``)."""

    def __init__(self, resp: Any) -> None:
        super().__init__(resp.cancel_reason or "watch canceled")
        self.resp = resp
