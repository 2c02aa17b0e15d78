"""The launch configuration: frozen, validated once at the edge, passed down.

* :mod:`corral.config.launch`: :class:`LaunchConfig` and the standalone rule;
* :mod:`corral.config.rdzv`: ``--rdzv-conf``, one typed group of options per reader;
* :mod:`corral.config.values`: the command line's values (booleans, ``host[:port]``,
  stream specs, signal lists).
"""

from corral.config.launch import RDZV_BACKENDS, START_METHODS, LaunchConfig, resolve_standalone
from corral.config.rdzv import (
    EtcdOptions,
    RdzvConf,
    RendezvousOptions,
    StoreOptions,
    TcpStoreOptions,
)
from corral.config.values import (
    BOOL_VALUES,
    DEFAULT_SIGNALS,
    Std,
    StdSpec,
    parse_bool,
    parse_signals,
    parse_std_spec,
    split_host_port,
)

__all__ = [
    "BOOL_VALUES",
    "DEFAULT_SIGNALS",
    "RDZV_BACKENDS",
    "START_METHODS",
    "EtcdOptions",
    "LaunchConfig",
    "RdzvConf",
    "RendezvousOptions",
    "Std",
    "StdSpec",
    "StoreOptions",
    "TcpStoreOptions",
    "parse_bool",
    "parse_signals",
    "parse_std_spec",
    "resolve_standalone",
    "split_host_port",
]
