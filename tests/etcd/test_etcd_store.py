"""EtcdStore against real etcd servers: start-up failures, prefixes, TLS, auth."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.core.errors import AuthenticationFailed, ConfigError, StoreError, StoreUnavailable
from corral.store.api import Characteristics, EventType, Store
from corral.store.etcd.client import EtcdStore, open_etcd_store
from corral.store.registry import open_store
from tests.etcd_fixtures import EtcdCluster, enable_auth, free_ports, start_single
from tests.helpers import cancel_watch_opens


async def test_open_through_registry_and_characteristics(etcd_url: str) -> None:
    store = await open_store(etcd_url, timeout=10)
    try:
        assert isinstance(store, EtcdStore)
        assert isinstance(store, Store)
        assert store.characteristics == Characteristics(
            linearizable=True,
            leases=True,
            connection_leases=False,
            replicated=True,
            bounded_requests=True,
        )
    finally:
        await store.close()


async def test_unreachable_at_start_is_store_unavailable_within_timeout() -> None:
    ports = free_ports(2)  # nothing listens there
    url = f"etcd://127.0.0.1:{ports[0]},127.0.0.1:{ports[1]}"
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as info:
        await open_etcd_store(url, timeout=1.0)
    elapsed = time.monotonic() - started
    assert 0.9 <= elapsed < 3.0
    message = str(info.value)
    assert f"127.0.0.1:{ports[0]}" in message and f"127.0.0.1:{ports[1]}" in message
    assert "tried for 1.0 s" in message


async def test_every_member_gone_is_store_unavailable_within_timeout() -> None:
    with start_single() as cluster:
        store = await open_etcd_store(cluster.url(), timeout=1.5)
        try:
            await store.put("k", b"v")
            await asyncio.to_thread(cluster.members[0].kill)
            started = time.monotonic()
            with pytest.raises(StoreUnavailable, match=cluster.endpoints):
                await store.get("k")
            assert time.monotonic() - started < 4.0
        finally:
            await store.close()


async def test_prefixes_isolate_jobs(etcd_single: EtcdCluster) -> None:
    a = await open_etcd_store(etcd_single.url("/corral-test/iso-a"), timeout=10)
    b = await open_etcd_store(etcd_single.url("/corral-test/iso-b"), timeout=10)
    try:
        await a.delete("", prefix=True)
        await b.delete("", prefix=True)
        await a.put("round", b"1")
        assert await b.get("round") is None
        kvs, _ = await a.range("")
        assert [kv.key for kv in kvs] == ["round"]  # callers never see the prefix
        assert await b.delete("", prefix=True) == 0
        assert await a.delete("", prefix=True) == 1
    finally:
        await a.close()
        await b.close()


# --- TLS ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def etcd_tls() -> Iterator[EtcdCluster]:
    with start_single(tls=True) as cluster:
        yield cluster


async def test_tls_with_test_made_certificates(etcd_tls: EtcdCluster) -> None:
    assert etcd_tls.tls is not None
    url = etcd_tls.url("/corral-tls")
    assert "protocol=https" in url
    store = await open_etcd_store(url, timeout=10)
    try:
        async with store.watch("k") as events:
            rev = await store.put("k", b"secret")
            ev = await asyncio.wait_for(anext(events), 10)
        assert (ev.type, ev.revision, ev.kv.value) == (EventType.PUT, rev, b"secret")
    finally:
        await store.close()


async def test_tls_server_refuses_plaintext_client(etcd_tls: EtcdCluster) -> None:
    with pytest.raises(StoreUnavailable, match="no connection"):
        await open_etcd_store(f"etcd://{etcd_tls.endpoints}", timeout=1.0)


async def test_tls_missing_file_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cacert"):
        await open_etcd_store(f"etcd://127.0.0.1:1?cacert={tmp_path}/nope.pem", timeout=1.0)


# --- user/password authentication ----------------------------------------------


@pytest.fixture(scope="module")
def etcd_auth() -> Iterator[EtcdCluster]:
    with start_single() as cluster:
        enable_auth(cluster, password="s3cret:pw@")
        yield cluster


async def test_auth_right_password(etcd_auth: EtcdCluster) -> None:
    store = await open_etcd_store(etcd_auth.url("/corral-auth"), timeout=10)
    try:
        created = await store.create("k", b"v")
        assert created.succeeded
        lease = await store.grant(10)
        assert await store.keep_alive(lease) > 0
        await store.revoke(lease)
    finally:
        await store.close()


async def test_auth_wrong_password(etcd_auth: EtcdCluster) -> None:
    url = f"etcd://root:wrong@{etcd_auth.endpoints}"
    with pytest.raises(AuthenticationFailed, match="invalid user or password") as info:
        await open_etcd_store(url, timeout=5)
    assert etcd_auth.endpoints in str(info.value)


async def test_auth_no_credentials(etcd_auth: EtcdCluster) -> None:
    store = await open_etcd_store(etcd_auth.url(with_auth=False), timeout=5)
    try:
        with pytest.raises(AuthenticationFailed, match="requires authentication"):
            await store.get("k")
    finally:
        await store.close()


async def test_watch_survives_a_timed_out_read(etcd_url: str) -> None:
    store = await open_etcd_store(etcd_url, timeout=10)
    try:
        async with store.watch("k") as events:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(anext(events), 0.2)
            rev = await store.put("k", b"v")
            ev = await asyncio.wait_for(anext(events), 10)
            assert ev.revision == rev
    finally:
        await store.close()


async def test_close_ends_open_watch_with_store_unavailable(etcd_url: str) -> None:
    store = await open_etcd_store(etcd_url, timeout=10)
    async with store.watch("k") as events:
        pending = asyncio.ensure_future(anext(events))
        await asyncio.sleep(0)  # let the read start
        await store.close()
        with pytest.raises(StoreUnavailable, match="closed"):
            await asyncio.wait_for(pending, 10)


def _watch_metrics(cluster: EtcdCluster) -> tuple[int, int]:
    """(watch streams, watchers) as etcd itself counts them (its /metrics page)."""
    url = f"http://{cluster.members[0].endpoint}/metrics"
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    found = dict(
        re.findall(r"^etcd_debugging_mvcc_(watch_stream_total|watcher_total) (\S+)$", text, re.M)
    )
    return int(float(found["watch_stream_total"])), int(float(found["watcher_total"]))


async def test_watches_share_one_stream_per_connection() -> None:
    """50 watches of one client are 50 watchers on ONE etcd watch stream; each
    gets exactly its own events; closing watches cancels them on the server."""
    with start_single() as cluster:
        store = await open_etcd_store(cluster.url("/mux"), timeout=10)
        try:
            streams0, watchers0 = await asyncio.to_thread(_watch_metrics, cluster)
            async with contextlib.AsyncExitStack() as stack:
                watches = [await stack.enter_async_context(store.watch(f"k{i}")) for i in range(50)]
                assert await asyncio.to_thread(_watch_metrics, cluster) == (
                    streams0 + 1,
                    watchers0 + 50,
                )
                revs = [await store.put(f"k{i}", str(i).encode()) for i in range(50)]
                for i, events in enumerate(watches):
                    ev = await asyncio.wait_for(anext(events), 10)
                    assert (ev.kv.key, ev.kv.value, ev.revision) == (
                        f"k{i}",
                        str(i).encode(),
                        revs[i],
                    )
            # Closed: the cancels went on the stream before this create, which etcd
            # answers in order, so the server has dropped all 50 watchers by now.
            async with store.watch("last", prefix=True) as events:
                assert await asyncio.to_thread(_watch_metrics, cluster) == (
                    streams0 + 1,
                    watchers0 + 1,
                )
                rev = await store.put("last/x", b"")
                ev = await asyncio.wait_for(anext(events), 10)
                assert ev.revision == rev
        finally:
            await store.close()


async def test_watch_cancelled_while_opening_leaves_no_watcher() -> None:
    """A caller cancelled at any point of a watch's creation leaves no watcher on etcd."""
    with start_single() as cluster:
        store = await open_etcd_store(cluster.url("/mux"), timeout=10)
        try:
            async with store.watch("warm"):  # confirmed: counted in the baseline
                streams0, watchers0 = await asyncio.to_thread(_watch_metrics, cluster)
                await cancel_watch_opens(store, "k")
                async with store.watch("last"):  # answered after every earlier request
                    assert await asyncio.to_thread(_watch_metrics, cluster) == (
                        streams0,
                        watchers0 + 1,
                    )
        finally:
            await store.close()


async def test_every_request_is_bounded_by_the_store_timeout() -> None:
    """The store declares bounded_requests, so the rendezvous sets no timer of its
    own per call: a member that hangs (SIGSTOP) must still end each call in time."""
    with start_single() as cluster:
        store = await open_etcd_store(cluster.url("/bounded"), timeout=1.5)
        member = cluster.members[0]
        try:
            await store.put("k", b"v")
            await asyncio.to_thread(member.kill, signal.SIGSTOP)
            loop = asyncio.get_running_loop()
            for call in (store.get("k"), store.create("n", b"v"), store.grant(5)):
                started = loop.time()
                with pytest.raises(StoreError):
                    await asyncio.wait_for(call, 10)
                assert loop.time() - started < 5
        finally:
            member.resume()
            await store.close()
