"""A write whose answer was lost and that lands late never undoes a newer write (real etcd).

The fault is injected between the client and a real member: the client's first
write request "loses its answer" (the caller gets UNAVAILABLE, as when a member
dies under a call) and the request itself is kept, to be delivered later, after
the client has retried elsewhere and another client has written a newer value.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc  # type: ignore[import-untyped]
import pytest
from aetcd import rpc

from corral.store.etcd.client import EtcdStore, open_etcd_store
from tests.etcd_fixtures import EtcdCluster

pytestmark = pytest.mark.timeout(30)

_WRITES = ("Put", "Txn", "DeleteRange")


class LoseFirstWrite:
    """A session's KV stub: the first write's answer is lost, its request kept to land later.

    ``apply``: the first write is applied at once and only its answer is lost;
    else it is not sent at all until :meth:`land`.
    """

    def __init__(self, kv: Any, *, apply: bool = False) -> None:
        self._kv = kv
        self._apply = apply
        self.kept: tuple[str, Any, Any] | None = None

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._kv, name)
        if name not in _WRITES:
            return real

        async def write(req: Any, **kw: Any) -> Any:
            if self.kept is not None:
                return await real(req, **kw)
            copy = type(req)()
            copy.CopyFrom(req)
            self.kept = (name, copy, kw.get("metadata"))
            if self._apply:
                await real(req, **kw)
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.UNAVAILABLE,
                grpc.aio.Metadata(),
                grpc.aio.Metadata(),
                "connection reset by peer (test: the answer is lost)",
            )

        return write

    async def land(self, endpoint: str) -> Any:
        """Deliver the kept request now, on a channel of its own (the late landing)."""
        assert self.kept is not None, "no write was made"
        name, req, metadata = self.kept
        async with grpc.aio.insecure_channel(endpoint) as channel:
            return await getattr(rpc.KVStub(channel), name)(req, timeout=10, metadata=metadata)


@pytest.fixture
async def pair(etcd_single: EtcdCluster) -> AsyncIterator[tuple[EtcdStore, EtcdStore]]:
    """Two clients of one job's keys: the one under test and another writer."""
    url = etcd_single.url(f"/corral-test/{uuid.uuid4().hex[:12]}")
    store = await open_etcd_store(url, timeout=10)
    other = await open_etcd_store(url, timeout=10)
    try:
        yield store, other
    finally:
        await store.close()
        await other.close()


async def lose_first_write(store: EtcdStore, *, apply: bool = False) -> LoseFirstWrite:
    """Install the fault on the store's current session (its next write goes through it)."""
    loop = asyncio.get_running_loop()
    session = await store._conn.session(loop.time() + 5)
    lost = LoseFirstWrite(session.kv, apply=apply)
    session.kv = lost
    return lost


Step = Callable[[EtcdStore], Awaitable[object]]


@pytest.mark.parametrize(
    ("setup", "write", "newer", "want"),
    [
        pytest.param(
            lambda s: s.put("k", b"v0"),
            lambda s: s.put("k", b"v1"),
            lambda o: o.put("k", b"v2"),
            {"k": b"v2"},
            id="put",
        ),
        pytest.param(
            lambda s: s.put_many([("a", b"1"), ("b", b"1")]),
            lambda s: s.put_many([("a", b"2"), ("b", b"2")]),
            lambda o: o.put("a", b"3"),
            {"a": b"3", "b": b"2"},
            id="put_many",
        ),
        pytest.param(
            lambda s: s.put("k", b"v0"),
            lambda s: s.delete("k"),
            lambda o: o.put("k", b"v2"),
            {"k": b"v2"},
            id="delete",
        ),
        pytest.param(
            lambda s: s.put("p/x", b"v0"),
            lambda s: s.delete("p/", prefix=True),
            lambda o: o.put("p/y", b"new"),
            {"p/x": None, "p/y": b"new"},
            id="delete-prefix",
        ),
    ],
)
async def test_a_lost_write_that_lands_late_never_undoes_a_newer_one(
    pair: tuple[EtcdStore, EtcdStore],
    etcd_single: EtcdCluster,
    setup: Step,
    write: Step,
    newer: Step,
    want: dict[str, bytes | None],
) -> None:
    store, other = pair
    await setup(store)
    lost = await lose_first_write(store)
    await write(store)  # the first attempt's answer is lost; the retry succeeds
    assert lost.kept is not None
    await newer(other)  # someone writes after that call returned
    await lost.land(etcd_single.members[0].endpoint)  # ...then the first attempt lands
    for key, value in want.items():
        kv = await other.get(key)
        assert (kv.value if kv is not None else None) == value, key


async def test_a_lost_answer_of_an_applied_put_is_found_applied(
    pair: tuple[EtcdStore, EtcdStore], etcd_single: EtcdCluster, caplog: pytest.LogCaptureFixture
) -> None:
    store, other = pair
    await store.put("k", b"v0")
    caplog.set_level(logging.INFO, logger="corral.store.etcd.client")
    lost = await lose_first_write(store, apply=True)
    await store.put("k", b"v1")
    assert lost.kept is not None
    kv = await other.get("k")
    assert kv is not None and kv.value == b"v1"
    assert any("put was applied before failover" in r.getMessage() for r in caplog.records)
    # written twice in all (v0, v1): the retry found v1 there and did not write again
    async with grpc.aio.insecure_channel(etcd_single.members[0].endpoint) as channel:
        raw = await rpc.KVStub(channel).Range(rpc.RangeRequest(key=store._full("k")), timeout=10)
    assert raw.kvs[0].version == 2


async def test_a_put_still_overwrites_a_value_it_has_not_seen(
    pair: tuple[EtcdStore, EtcdStore],
) -> None:
    # The fence is the highest revision this client has seen; a value written since by
    # another client fails the first compare, and the put goes again after it.
    store, other = pair
    await store.put("k", b"mine-0")
    await other.put("k", b"theirs")
    await other.put("unrelated", b"x")
    revision = await store.put("k", b"mine-1")
    kv = await other.get("k")
    assert kv is not None and (kv.value, kv.mod_revision) == (b"mine-1", revision)
    assert await store.delete("k") == 1
    await other.put("k", b"again")
    await store.put("k2", b"y")
    assert await store.delete("k") == 1  # a delete of a key written since is still a delete
    assert await other.get("k") is None
