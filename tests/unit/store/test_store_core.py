"""Table-style tests of the pure store core: explicit ``now``, no I/O."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corral.core.errors import ConfigError, LeaseNotFound, StoreCompacted
from corral.store.api import EventType, WatchEvent
from corral.store.core import StoreCore


def collect(core: StoreCore, key: str, **kw: object) -> list[WatchEvent]:
    seen: list[WatchEvent] = []
    core.watch(key, seen.extend, **kw)  # type: ignore[arg-type]
    return seen


def test_revisions_grow_by_one_per_write() -> None:
    c = StoreCore()
    assert c.revision == 0
    assert c.put("a", b"1") == 1
    assert c.put("a", b"2") == 2
    kv = c.get("a")
    assert kv is not None and (kv.create_revision, kv.mod_revision, kv.value) == (1, 2, b"2")
    assert c.delete("missing") == 0 and c.revision == 2
    assert c.delete("a") == 1 and c.revision == 3


def test_create_and_cas() -> None:
    c = StoreCore()
    r = c.create("k", b"a")
    assert r.succeeded and r.kv is not None and r.revision == 1
    r2 = c.create("k", b"b")
    assert not r2.succeeded and r2.kv == r.kv and r2.revision == 1
    assert not c.compare_and_set("k", b"x", 0).succeeded
    ok = c.compare_and_set("k", b"x", 1)
    assert ok.succeeded and ok.kv is not None and ok.kv.mod_revision == 2
    stale = c.compare_and_set("k", b"y", 1)
    assert not stale.succeeded and stale.kv == ok.kv
    absent = c.compare_and_set("new", b"z", 0)
    assert absent.succeeded
    assert not c.compare_and_set("gone", b"z", 5).succeeded


def test_delete_prefix_is_one_revision() -> None:
    c = StoreCore()
    for k in ("p/a", "p/b", "q"):
        c.put(k, b"")
    seen = collect(c, "p/", prefix=True)
    assert c.delete("p/", prefix=True) == 2
    assert c.revision == 4
    assert [(e.type, e.kv.key, e.revision) for e in seen] == [
        (EventType.DELETE, "p/a", 4),
        (EventType.DELETE, "p/b", 4),
    ]
    assert [kv.key for kv in c.range("")[0]] == ["q"]


def test_lease_expiry_with_explicit_now() -> None:
    c = StoreCore()
    lid = c.grant(10.0, now=100.0)
    c.put("eph", b"x", lease=lid)
    c.put("keep", b"y")
    assert c.next_deadline() == 110.0
    assert c.expire(109.9) == []
    assert c.keep_alive(lid, now=105.0) == 10.0
    assert c.expire(110.0) == []  # kept alive until 115
    events = c.expire(115.0)
    assert [(e.type, e.kv.key) for e in events] == [(EventType.DELETE, "eph")]
    assert c.get("eph") is None and c.get("keep") is not None
    assert c.next_deadline() is None
    with pytest.raises(LeaseNotFound):
        c.keep_alive(lid, now=116.0)
    with pytest.raises(LeaseNotFound):
        c.put("x", b"", lease=lid)


def test_revoke_and_owner_release() -> None:
    c = StoreCore()
    conn = object()
    a = c.grant(5, now=0, owner=conn)
    b = c.grant(5, now=0)
    c.put("a", b"", lease=a)
    c.put("b", b"", lease=b)
    assert c.revoke_owned(conn) == 1
    assert c.get("a") is None and c.get("b") is not None
    assert c.revoke(b) == 1 and c.revoke(b) == 0


def test_rewrite_moves_key_between_leases() -> None:
    c = StoreCore()
    a = c.grant(5, now=0)
    c.put("k", b"1", lease=a)
    c.put("k", b"2")  # detached from a
    assert c.revoke(a) == 0
    assert c.get("k") is not None


def test_watch_from_past_revision_and_compaction() -> None:
    c = StoreCore(history=3)
    for i in range(5):
        c.put("k", str(i).encode())
    assert c.compacted == 2
    seen = collect(c, "k", start_revision=3)
    assert [e.revision for e in seen] == [3, 4, 5]
    with pytest.raises(StoreCompacted):
        collect(c, "k", start_revision=2)
    c.put("k", b"x")
    assert [e.revision for e in seen] == [3, 4, 5, 6]


def test_watch_future_start_and_cancel() -> None:
    c = StoreCore()
    seen: list[WatchEvent] = []
    wid = c.watch("k", seen.extend, start_revision=3)
    c.put("k", b"1")
    c.put("k", b"2")
    c.put("k", b"3")
    assert [e.revision for e in seen] == [3]
    c.cancel_watch(wid)
    c.put("k", b"4")
    assert len(seen) == 1 and c.watch_count == 0


@pytest.mark.parametrize("bad", ["", "x" * 1025, "é" * 513])
def test_invalid_keys(bad: str) -> None:
    with pytest.raises(ConfigError):
        StoreCore().put(bad, b"")


def test_invalid_ttl() -> None:
    with pytest.raises(ConfigError):
        StoreCore().grant(0, now=0)


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["put", "put_leased", "delete", "delete_prefix", "revoke"]),
            st.sampled_from(["", "a", "a/", "a/b", "a/b/c", "ab", "b", "é", "\0"]),
        ),
        max_size=60,
    )
)
def test_prefix_reads_match_a_scan(ops: list[tuple[str, str]]) -> None:
    """The sorted key index gives what a scan of a plain model gives, after any writes."""
    c = StoreCore()
    lease = c.grant(10, now=0)
    model: dict[str, bool] = {}  # key -> attached to the lease
    for op, key in ops:
        if not key and op.startswith("put"):
            continue
        if op == "put":
            c.put(key, b"v")
            model[key] = False
        elif op == "put_leased" and c.lease(lease) is not None:
            c.put(key, b"l", lease=lease)
            model[key] = True
        elif op == "delete":
            c.delete(key)
            model.pop(key, None)
        elif op == "delete_prefix":
            c.delete(key, prefix=True)
            model = {k: v for k, v in model.items() if not k.startswith(key)}
        elif op == "revoke":
            c.revoke(lease)
            model = {k: v for k, v in model.items() if not v}
        for prefix in ("", "a", "a/", "a/b", "b", "é", "z"):
            got = [kv.key for kv in c.range(prefix)[0]]
            assert got == sorted(k for k in model if k.startswith(prefix))
        assert len(c) == len(model)
