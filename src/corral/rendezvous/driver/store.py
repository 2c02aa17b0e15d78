"""The rendezvous's store requests: every call bounded by read_timeout, records decoded.

The only module of the rendezvous that calls the store (the driver's roles call it)."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import TypeVar

from corral.core.compat import timeout as _compat_timeout
from corral.core.errors import StoreTimeout
from corral.core.failures import FailureReport
from corral.core.keys import Keys
from corral.rendezvous.options import StoreOptions
from corral.rendezvous.protocol import budget
from corral.rendezvous.protocol.records import ClosedRound, Outcome, RoundPointer
from corral.store.api import KeyValue, Store, WatchEvent, WriteResult

__all__ = ["RunStore", "decode_closed"]

T = TypeVar("T")


class RunStore:
    """Store access for one run: ``read_timeout`` bounds each request (real time).

    A request that gets no answer in time raises StoreTimeout, so an
    unreachable store surfaces as a StoreError in bounded time, never a hang.
    A store that bounds its requests itself (``bounded_requests``: the built-in
    ones, opened with ``timeout=read_timeout``) is trusted to, and spared a
    timer per call.
    """

    def __init__(
        self,
        store: Store,
        run_id: str,
        conf: StoreOptions,
        *,
        max_restarts: int = -1,
        no_restart_code: int = -1,
    ) -> None:
        self.store = store
        # The job's first pointer (whoever joins first makes it) records the budget.
        self._first = RoundPointer(0, max_restarts=max_restarts, no_restart_code=no_restart_code)
        self._first_json = self._first.to_json()
        self.keys = Keys(conf.prefix, run_id)
        self._timeout = conf.read_timeout
        self._bounded = store.characteristics.bounded_requests

    async def _call(self, what: str, aw: Awaitable[T]) -> T:
        if self._bounded:
            return await aw
        try:
            async with _compat_timeout(self._timeout):
                return await aw
        except TimeoutError:
            raise StoreTimeout(
                f"store {what}: no answer within read_timeout ({self._timeout} s)"
            ) from None

    async def get(self, key: str, *, min_revision: int = 0) -> KeyValue | None:
        return await self._call("get", self.store.get(key, min_revision=min_revision))

    async def range(self, prefix: str) -> tuple[list[KeyValue], int]:
        return await self._call("range", self.store.range(prefix))

    async def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        return await self._call("put", self.store.put(key, value, lease=lease))

    async def put_many(self, items: Sequence[tuple[str, bytes]]) -> int:
        return await self._call("put_many", self.store.put_many(items))

    async def create(self, key: str, value: bytes, *, lease: int = 0) -> WriteResult:
        return await self._call("create", self.store.create(key, value, lease=lease))

    async def delete(self, key: str, *, prefix: bool = False) -> int:
        return await self._call("delete", self.store.delete(key, prefix=prefix))

    async def grant(self, ttl: float) -> int:
        return await self._call("grant", self.store.grant(ttl))

    async def keep_alive(self, lease: int) -> float:
        return await self._call("keep_alive", self.store.keep_alive(lease))

    async def revoke(self, lease: int) -> None:
        await self._call("revoke", self.store.revoke(lease))

    def watch(
        self, key: str, *, prefix: bool = False, start_revision: int = 0
    ) -> AbstractAsyncContextManager[AsyncIterator[WatchEvent]]:
        return self.store.watch(key, prefix=prefix, start_revision=start_revision)

    # --- records ---------------------------------------------------------------

    async def pointer(self, *, create: bool = False) -> tuple[RoundPointer, int]:
        """The round pointer and its mod revision (round 0 if absent; created if asked)."""
        return await self._pointer_of(await self.get(self.keys.round), create=create)

    async def _pointer_of(self, kv: KeyValue | None, *, create: bool) -> tuple[RoundPointer, int]:
        """The pointer as read (``kv``; None: absent, then created if asked)."""
        if kv is None:
            first = self._first
            if not create:
                return first, 0
            res = await self.create(self.keys.round, first.to_json())
            kv = res.kv
            if kv is None:  # pragma: no cover - a create always returns the key
                return first, 0
        return RoundPointer.from_json(kv.value), kv.mod_revision

    async def join_step(
        self, r: int, node_id: str, desc: bytes, lease: int
    ) -> tuple[WriteResult, WriteResult, RoundPointer, int, list[KeyValue], int]:
        """One request: create the round pointer (at round 0), this node's key
        and the closer's key of round r (under ``lease``), each only if absent;
        then read ``close/<r>/``.

        Returns the node's and the closer's create results, the pointer as it
        is after the step, its mod revision, the keys under ``close/<r>/`` and
        the revision they were read at.
        """
        k = self.keys
        creates = [
            (k.round, self._first_json, 0),  # the job's first join makes it
            (k.node(r, node_id), desc, lease),
            (k.closer(r), node_id.encode(), lease),
        ]
        (ptr_res, mine, closer), (close_kvs,), rev = await self._call(
            "create_and_read", self.store.create_and_read(creates, [k.close_prefix(r)])
        )
        assert ptr_res.kv is not None  # created, or there already
        ptr, ptr_rev = await self._pointer_of(ptr_res.kv, create=False)
        return mine, closer, ptr, ptr_rev, close_kvs, rev

    async def cas_pointer(self, new: RoundPointer, expected_rev: int) -> bool:
        res = await self._call(
            "compare_and_set",
            self.store.compare_and_set(self.keys.round, new.to_json(), expected_rev),
        )
        return res.succeeded

    async def outcome(self) -> Outcome | None:
        kv = await self.get(self.keys.outcome)
        return Outcome.from_json(kv.value) if kv is not None else None

    async def failed(self, r: int) -> Outcome:
        """The failed outcome of round ``r``: its earliest failure (by create revision)."""
        kvs, _ = await self.range(self.keys.failures(r))
        rc = budget.root_cause(
            (kv.create_revision, FailureReport.from_json(kv.value)) for kv in kvs
        )
        return Outcome("failed", r, rc, rc.exit_code if rc is not None else 1)

    async def outcome_of(self, end: RoundPointer) -> Outcome:
        """The outcome of a job whose pointer is terminal; written here if its writer died.

        Deterministic, so any node may complete it: success, or the earliest
        failure (by create revision) of the last round.
        """
        out = await self.outcome()
        if out is not None:
            return out
        last = end.round - 1
        new = Outcome("success", last) if end.detail == "success" else await self.failed(last)
        res = await self.create(self.keys.outcome, new.to_json())
        if res.succeeded or res.kv is None:
            return new
        return Outcome.from_json(res.kv.value)


def decode_closed(kv: KeyValue) -> ClosedRound:
    """The round record in ``kv`` (a closed summary or a full member list)."""
    return _decode(kv.value)


# Closed and member records are immutable, so one decode per value serves every
# handle in this process: simulated nodes (tests, bench) and an agent that
# rejoins. A memo of the pure decode, keyed by the bytes themselves (never
# confused across stores), not state: a real node decodes each record once anyway.
@functools.lru_cache(maxsize=16)
def _decode(value: bytes) -> ClosedRound:
    return ClosedRound.from_json(value)
