"""One registry per kind: the rendezvous backends by name, built-ins and plug-ins alike."""

from __future__ import annotations

from contextlib import AsyncExitStack

import pytest

from corral.config import LaunchConfig, resolve_standalone
from corral.core.clock import MonotonicClock
from corral.core.errors import ConfigError
from corral.core.model import NodeDesc
from corral.rendezvous.registry import BUILTIN, known_backends, open_rendezvous


def test_the_built_ins_are_in_the_table_and_listed_first() -> None:
    assert list(BUILTIN) == ["static", "c10d", "etcd"]
    assert known_backends()[:3] == ["static", "c10d", "etcd"]


def test_a_config_names_a_plug_in_without_reading_entry_points() -> None:
    # LaunchConfig no longer looks names up (config imported the registry: a cycle)
    cfg = LaunchConfig(rdzv_backend="nosuch", rdzv_endpoint="127.0.0.1:1")
    assert cfg.rdzv_backend == "nosuch"
    with pytest.raises(ConfigError, match="rdzv-backend"):
        LaunchConfig(rdzv_backend=" ")


async def test_opening_an_unknown_backend_names_the_entry_point_group() -> None:
    cfg = LaunchConfig(rdzv_backend="nosuch", rdzv_endpoint="127.0.0.1:1")
    node = NodeDesc("n", "127.0.0.1", 1)
    async with AsyncExitStack() as stack:
        with pytest.raises(ConfigError, match=r"corral\.rendezvous"):
            await open_rendezvous(cfg, node, stack=stack, clock=MonotonicClock(), environ={})


async def test_c10d_opens_through_the_registry_and_hosts_the_store() -> None:
    cfg = resolve_standalone(LaunchConfig(nproc_per_node=1))
    node = NodeDesc("n", "127.0.0.1", 1)
    async with AsyncExitStack() as stack:
        opened = await open_rendezvous(cfg, node, stack=stack, clock=MonotonicClock(), environ={})
        assert opened.server is not None and opened.store is not None
        assert opened.liveness is None  # the embedded store ends leases with connections
        assert type(opened.rendezvous).__name__ == "DynamicRendezvous"


@pytest.mark.parametrize(
    ("kw", "standalone"),
    [
        ({}, True),  # static, one node, no endpoint, no master port (torch 2.13)
        ({"standalone": True, "rdzv_backend": "static"}, True),
        ({"max_nodes": 2, "min_nodes": 2}, False),
        ({"master_port": 29500}, False),
        ({"rdzv_backend": "c10d", "rdzv_endpoint": "10.0.0.1:29400"}, False),
    ],
)
def test_the_standalone_rule_is_one_function(kw: dict[str, object], standalone: bool) -> None:
    cfg = resolve_standalone(LaunchConfig(**kw))  # type: ignore[arg-type]
    assert cfg.standalone is standalone
    if standalone:
        assert (cfg.rdzv_backend, cfg.rdzv_endpoint, cfg.rdzv_conf.tcp.is_host) == (
            "c10d",
            "127.0.0.1:0",
            True,
        )
        assert resolve_standalone(cfg) == cfg  # applied once: the run id stays
