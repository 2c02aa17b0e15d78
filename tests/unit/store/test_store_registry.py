"""open_store: URL schemes, built-ins by name, unknown schemes explained."""

from __future__ import annotations

import pytest

from corral.core.errors import ConfigError
from corral.store import registry
from corral.store.memory import MemoryStore


async def test_memory_scheme() -> None:
    store = await registry.open_store("memory://")
    assert isinstance(store, MemoryStore)
    assert await store.put("k", b"v") == 1
    await store.close()


async def test_unknown_scheme_names_it_and_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"'nope'.*etcd, memory, tcp"):
        await registry.open_store("nope://x")


async def test_missing_scheme() -> None:
    with pytest.raises(ConfigError, match="no scheme"):
        await registry.open_store("127.0.0.1:29400")


def test_builtins_are_lazy_strings() -> None:
    assert registry.BUILTIN["etcd"] == "corral.store.etcd.client:open_etcd_store"
    assert all(isinstance(v, str) for v in registry.BUILTIN.values())
    assert {"memory", "tcp", "etcd"} <= set(registry.known_schemes())


async def test_tcp_url_without_host_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="no host"):
        await registry.open_store("tcp://:29400")
