"""``etcd://``: the :class:`~corral.store.api.Store` contract on etcd v3.

Each contract operation maps to etcd's own primitive, so the meaning is etcd's:

* revisions are etcd's header revision, ``create_revision`` and ``mod_revision``;
* ``create`` and ``compare_and_set`` are one transaction each: compare
  ``create_revision == 0`` (or ``mod_revision == expected``), then put and read
  the key back, else read the current key;
* leases are etcd leases (grant, keep-alive, revoke); TTLs are whole seconds,
  rounded up (etcd may raise a TTL to its minimum, see ``keep_alive``'s answer);
* watches are etcd watches from a revision, as async iterators;
* every key lives under the URL's prefix (default ``/corral``); callers see
  keys without it.

Failover: see :mod:`corral.store.etcd.connection`. Reads and lease calls are
simply retried on the next member. Puts and deletes are fenced
(:mod:`corral.store.etcd.fenced`): each attempt is a transaction that writes
only if the key has not changed since the highest revision the client has
seen, so an attempt whose answer was lost and that lands late never
overwrites a newer value. A conditional write whose
answer was lost is re-run there, and found applied when the key holds exactly
this call's value and lease (:mod:`corral.store.etcd.conditional`). Watches
resume on the next member from the revision after the last event they
delivered, so no event is lost or repeated.

Client library: the protocol messages and stubs are aetcd's generated gRPC
code (``aetcd.rpc``); aetcd's own ``Client`` is not used because it has no TLS,
takes a single endpoint and never refreshes auth tokens.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import grpc  # type: ignore[import-untyped]
from aetcd import rpc

from corral.core.aio import task_scope
from corral.core.errors import ConfigError, LeaseNotFound, StoreError
from corral.store.api import (
    Characteristics,
    KeyValue,
    WatchEvent,
    WriteResult,
    check_distinct,
)
from corral.store.etcd.conditional import conditional_put, write_result
from corral.store.etcd.connection import Connection, Session
from corral.store.etcd.fenced import FENCE_ROUNDS, Fence, fenced_txn
from corral.store.etcd.url import EtcdTarget, etcd_url_from_conf, parse_etcd_url
from corral.store.etcd.watch import EtcdWatch

__all__ = ["EtcdStore", "etcd_url_from_conf", "open_etcd_store"]

log = logging.getLogger(__name__)

_CHARACTERISTICS = Characteristics(
    linearizable=True,
    leases=True,
    connection_leases=False,
    replicated=True,
    bounded_requests=True,  # Connection.call: its timeout, over every attempt
)


#: Puts per transaction in put_many: etcd's default --max-txn-ops.
_TXN_OPS = 128


def _range_end(key: bytes) -> bytes:
    """etcd's end of the range of every key starting with ``key``."""
    end = bytearray(key)
    for i in reversed(range(len(end))):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\0"  # every key


class EtcdStore:
    """A :class:`~corral.store.api.Store` backed by an etcd v3 cluster.

    Build it with :func:`open_etcd_store`. ``timeout`` bounds each operation,
    failover included.
    """

    def __init__(self, target: EtcdTarget, *, timeout: float = 60.0) -> None:
        self._target = target
        self._conn = Connection(target, timeout=timeout)
        self._ns = target.prefix.rstrip("/") + "/"
        self._ns_bytes = self._ns.encode()
        self._fence = Fence()  # the highest revision seen: fences puts and deletes

    @property
    def characteristics(self) -> Characteristics:
        return _CHARACTERISTICS

    @property
    def target(self) -> EtcdTarget:
        return self._target

    async def open(self) -> None:
        """Enter the store's task scope (its watch streams run in it; :meth:`close`
        leaves it) and connect to a member. :func:`open_etcd_store` calls it.

        Raises: StoreUnavailable, AuthenticationFailed.
        """
        await self._conn.open()
        await self.connect()

    async def connect(self) -> None:
        """Connect to a member now (else the first call does).

        Raises: StoreUnavailable, AuthenticationFailed.
        """
        loop = asyncio.get_running_loop()
        await self._conn.session(loop.time() + self._conn.timeout)

    # --- keys ------------------------------------------------------------------

    def _full(self, key: str) -> bytes:
        return self._ns_bytes + key.encode()

    def _set_prefix(self, req: Any, prefix: str) -> Any:
        """Make RangeRequest ``req`` read every key under ``prefix``; return it."""
        full = self._full(prefix)
        req.key, req.range_end = full, _range_end(full)
        return req

    def _kv(self, kv: Any) -> KeyValue:
        return KeyValue(
            key=bytes(kv.key)[len(self._ns_bytes) :].decode(),
            value=bytes(kv.value),
            create_revision=kv.create_revision,
            mod_revision=kv.mod_revision,
            lease=kv.lease,
        )

    # --- reads -----------------------------------------------------------------

    async def get(self, key: str, *, min_revision: int = 0) -> KeyValue | None:
        full = self._full(key)
        req = rpc.RangeRequest(key=full)
        local = rpc.RangeRequest(key=full, serializable=True) if min_revision > 0 else None

        async def op(s: Session, timeout: float, _retried: bool) -> KeyValue | None:
            resp = None
            if local is not None:
                # The member's own state, if it has applied min_revision: no
                # round to the leader. A lagging member: read through the leader.
                resp = await s.kv.Range(local, timeout=timeout, metadata=s.metadata)
                if resp.header.revision < min_revision:
                    resp = None
            if resp is None:
                resp = await s.kv.Range(req, timeout=timeout, metadata=s.metadata)
            self._fence.note(resp.header.revision)
            return self._kv(resp.kvs[0]) if resp.kvs else None

        return await self._conn.call("get", op)

    async def range(self, prefix: str) -> tuple[list[KeyValue], int]:
        req = self._set_prefix(rpc.RangeRequest(), prefix)

        async def op(s: Session, timeout: float, _retried: bool) -> tuple[list[KeyValue], int]:
            resp = await s.kv.Range(req, timeout=timeout, metadata=s.metadata)
            return [self._kv(kv) for kv in resp.kvs], self._fence.note(resp.header.revision)

        return await self._conn.call("range", op)

    # --- writes ----------------------------------------------------------------

    async def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        # Fenced (module docstring): an attempt that lands late cannot undo a newer value.
        full = self._full(key)
        write = rpc.RequestOp(request_put=rpc.PutRequest(key=full, value=value, lease=lease))

        def applied(found: list[list[KeyValue]]) -> bool:
            return bool(found[0]) and (found[0][0].value, found[0][0].lease) == (value, lease)

        resp = await self._fenced("put", [(full, b"")], [write], applied)
        return int(resp.header.revision)

    async def put_many(self, items: Sequence[tuple[str, bytes]]) -> int:
        # Transactions of at most _TXN_OPS puts (etcd's default --max-txn-ops is
        # 128), sent together: a few requests and raft entries instead of one per key.
        # Each transaction is fenced as a put is (module docstring).
        check_distinct(items)

        async def one(chunk: Sequence[tuple[str, bytes]]) -> int:
            full = [self._full(key) for key, _ in chunk]
            writes = [
                rpc.RequestOp(request_put=rpc.PutRequest(key=k, value=v))
                for k, (_, v) in zip(full, chunk, strict=True)
            ]

            def applied(found: list[list[KeyValue]]) -> bool:
                return all(
                    kvs and (kvs[0].value, kvs[0].lease) == (v, 0)
                    for kvs, (_, v) in zip(found, chunk, strict=True)
                )

            resp = await self._fenced("put_many", [(k, b"") for k in full], writes, applied)
            return int(resp.header.revision)

        chunks = [items[i : i + _TXN_OPS] for i in range(0, len(items), _TXN_OPS)]
        async with task_scope() as tg:  # the first error cancels the other chunks
            tasks = [tg.create_task(one(c)) for c in chunks]
        return max((t.result() for t in tasks), default=0)

    async def create(self, key: str, value: bytes, *, lease: int = 0) -> WriteResult:
        return await self.compare_and_set(key, value, 0, lease=lease)

    async def create_and_read(
        self, creates: Sequence[tuple[str, bytes, int]], prefixes: Sequence[str]
    ) -> tuple[list[WriteResult], list[list[KeyValue]], int]:
        # One transaction (one raft entry): a nested transaction per create
        # (etcd >= 3.3), then the ranges, which see the creates.
        check_distinct(creates)
        txn = rpc.TxnRequest()
        for key, value, lease in creates:
            conditional_put(txn.success.add().request_txn, self._full(key), value, 0, lease)
        for prefix in prefixes:
            self._set_prefix(txn.success.add().request_range, prefix)
        n = len(creates)

        async def op(
            s: Session, timeout: float, retried: bool
        ) -> tuple[list[WriteResult], list[list[KeyValue]], int]:
            resp = await s.kv.Txn(txn, timeout=timeout, metadata=s.metadata)
            revision = self._fence.note(int(resp.header.revision))
            results = [
                write_result(r.response_txn, value, 0, lease, revision, retried, key, self._kv)
                for r, (key, value, lease) in zip(resp.responses[:n], creates, strict=True)
            ]
            kvs = [[self._kv(kv) for kv in r.response_range.kvs] for r in resp.responses[n:]]
            return results, kvs, revision

        return await self._conn.call("create_and_read", op)

    async def compare_and_set(
        self, key: str, value: bytes, expected_mod_revision: int, *, lease: int = 0
    ) -> WriteResult:
        txn = conditional_put(
            rpc.TxnRequest(), self._full(key), value, expected_mod_revision, lease
        )
        what = "create" if expected_mod_revision == 0 else "compare_and_set"

        async def op(s: Session, timeout: float, retried: bool) -> WriteResult:
            resp = await s.kv.Txn(txn, timeout=timeout, metadata=s.metadata)
            revision = self._fence.note(int(resp.header.revision))
            return write_result(
                resp, value, expected_mod_revision, lease, revision, retried, key, self._kv
            )

        return await self._conn.call(what, op)

    async def delete(self, key: str, *, prefix: bool = False) -> int:
        # Fenced (module docstring): a delete that lands late cannot remove a newer key.
        full = self._full(key)
        end = _range_end(full) if prefix else b""
        write = rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=full, range_end=end))
        resp = await self._fenced("delete", [(full, end)], [write], None)
        return int(resp.responses[0].response_delete_range.deleted)

    async def _fenced(
        self,
        what: str,
        targets: Sequence[tuple[bytes, bytes]],
        writes: Sequence[Any],
        applied: Callable[[list[list[KeyValue]]], bool] | None,
    ) -> Any:
        """Run ``writes`` as fenced transactions (:mod:`corral.store.etcd.fenced`) until
        one succeeds, or a retried attempt is found applied (``applied`` of the keys
        the failure branch read); return that TxnResponse. ``applied`` None: a
        retried attempt is never taken as applied, and the failure branch reads
        nothing (a fenced delete of a prefix would read back every value under it)."""
        fence = self._fence.seen
        for _ in range(FENCE_ROUNDS):
            txn = fenced_txn(fence, targets, writes, reads=applied is not None)

            async def op(s: Session, timeout: float, retried: bool, txn: Any = txn) -> Any:
                resp = await s.kv.Txn(txn, timeout=timeout, metadata=s.metadata)
                return resp, retried

            resp, retried = await self._conn.call(what, op)
            revision = self._fence.note(int(resp.header.revision))
            if resp.succeeded:
                return resp
            if retried and applied is not None:
                found = [[self._kv(kv) for kv in r.response_range.kvs] for r in resp.responses]
                if applied(found):
                    log.info("etcd: %s was applied before failover", what)
                    return resp
            fence = revision  # written since the fence: by someone else; write again after it
        raise StoreError(f"etcd {what}: the keys kept changing ({FENCE_ROUNDS} attempts)")

    # --- leases ----------------------------------------------------------------

    async def grant(self, ttl: float) -> int:
        if not ttl > 0:
            raise ConfigError(f"lease ttl ({ttl}) must be > 0 seconds")
        # A grant retried after a lost answer may leave one unused lease; it ends by its TTL.
        req = rpc.LeaseGrantRequest(TTL=max(1, math.ceil(ttl)))

        async def op(s: Session, timeout: float, _retried: bool) -> int:
            resp = await s.lease.LeaseGrant(req, timeout=timeout, metadata=s.metadata)
            if resp.error:
                raise StoreError(f"etcd lease grant at {s.endpoint} failed: {resp.error}")
            return int(resp.ID)

        return await self._conn.call("lease grant", op)

    async def keep_alive(self, lease: int) -> float:
        req = rpc.LeaseKeepAliveRequest(ID=lease)

        async def op(s: Session, timeout: float, _retried: bool) -> float:
            call = s.lease.LeaseKeepAlive(iter([req]), timeout=timeout, metadata=s.metadata)
            try:
                resp = await call.read()
            finally:
                call.cancel()
            if resp is grpc.aio.EOF or resp.TTL <= 0:
                raise LeaseNotFound(f"etcd lease {lease:x} has ended (expired or revoked)")
            return float(resp.TTL)

        return await self._conn.call("lease keep-alive", op)

    async def revoke(self, lease: int) -> None:
        req = rpc.LeaseRevokeRequest(ID=lease)

        async def op(s: Session, timeout: float, _retried: bool) -> None:
            try:
                await s.lease.LeaseRevoke(req, timeout=timeout, metadata=s.metadata)
            except grpc.aio.AioRpcError as exc:
                if "lease not found" not in (exc.details() or ""):
                    raise

        await self._conn.call("lease revoke", op)

    # --- watches ---------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def watch(
        self, key: str, *, prefix: bool = False, start_revision: int = 0
    ) -> AsyncIterator[AsyncIterator[WatchEvent]]:
        full = self._full(key)
        stream = EtcdWatch(
            self._conn,
            self._kv,
            full,
            _range_end(full) if prefix else b"",
            start_revision,
            self._target.endpoint_names,
        )
        try:
            await stream.open()  # cancelled half-way, it may be registered: close it too
            yield stream
        finally:
            await stream.close()

    async def close(self) -> None:
        await self._conn.close()

    async def __aenter__(self) -> EtcdStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def open_etcd_store(
    url: str, *, token: str | None = None, timeout: float = 60.0
) -> EtcdStore:
    """Open an etcd v3 store and connect to one of its members.

    Args:
        url: ``etcd://[user:password@]host:port[,host:port...][/prefix]``
            ``[?protocol=https&cacert=...&cert=...&key=...]``.
        token: unused (etcd authenticates users with the URL's user and password);
            accepted so every backend has the same factory signature.
        timeout: how long to try to connect, and the deadline of every later
            operation (failover included), in seconds.

    Returns: a connected :class:`EtcdStore`; the caller closes it.

    Raises:
        ConfigError: bad URL, or unreadable TLS files.
        StoreUnavailable: no member answered within ``timeout``.
        AuthenticationFailed: a member refused the user or password.
    """
    del token
    store = EtcdStore(parse_etcd_url(url), timeout=timeout)
    try:
        await store.open()
    except BaseException:
        await store.close()
        raise
    return store
