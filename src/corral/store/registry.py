"""Choose a store backend by URL scheme: ``open_store("tcp://10.0.0.1:29400")``.

Built-in backends sit in the literal :data:`BUILTIN` table as ``"module:function"``
strings and are imported only when their scheme is opened. Third-party backends
are found in the ``corral.stores`` entry-point group; the entry point's value is
an async factory ``(url, *, token=None, timeout=60.0) -> Store``, e.g.::

    [project.entry-points."corral.stores"]
    redis = "corral_redis:open_redis_store"

Importing this module registers nothing.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable
from typing import Protocol, cast
from urllib.parse import urlsplit

from corral.core.errors import ConfigError
from corral.store.api import Store

__all__ = ["BUILTIN", "ENTRY_POINT_GROUP", "StoreFactory", "known_schemes", "open_store"]

ENTRY_POINT_GROUP = "corral.stores"

BUILTIN: dict[str, str] = {
    "memory": "corral.store.memory:open_memory_store",
    "tcp": "corral.store.tcp.client:open_tcp_store",
    "etcd": "corral.store.etcd.client:open_etcd_store",
}


class StoreFactory(Protocol):
    """What a backend provides (built-in or plug-in): open a connected store for ``url``."""

    def __call__(
        self, url: str, *, token: str | None = ..., timeout: float = ...
    ) -> Awaitable[Store]: ...


def _plugin_schemes() -> dict[str, object]:
    # imported here: importlib.metadata (and the email package it loads) costs the
    # CLI's start-up several ms, and only a scheme that is not built in needs it
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def known_schemes() -> list[str]:
    """Every scheme :func:`open_store` accepts: built-ins and installed plug-ins."""
    return sorted(set(BUILTIN) | set(_plugin_schemes()))


def _load(scheme: str) -> StoreFactory:
    target = BUILTIN.get(scheme)
    if target is not None:
        module, _, attr = target.partition(":")
        return cast("StoreFactory", getattr(importlib.import_module(module), attr))
    plugins = _plugin_schemes()
    ep = plugins.get(scheme)
    if ep is None:
        raise ConfigError(
            f"unknown store scheme {scheme!r}; known schemes: {', '.join(known_schemes())} "
            f"(third-party stores register in the {ENTRY_POINT_GROUP!r} entry-point group)"
        )
    return cast("StoreFactory", ep.load())  # type: ignore[attr-defined]


async def open_store(url: str, *, token: str | None = None, timeout: float = 60.0) -> Store:
    """Open the store that ``url`` names (``memory://``, ``tcp://host:port``, ``etcd://...``).

    Args:
        url: the store URL; its scheme picks the backend.
        token: shared secret for backends that authenticate (tcp), or None.
        timeout: how long to keep trying to connect, in seconds.

    Returns: a connected :class:`~corral.store.api.Store`; the caller closes it.

    Raises:
        ConfigError: the URL has no scheme or an unknown one (the message lists
            the known schemes).
        StoreUnavailable, AuthenticationFailed: from the backend.
    """
    scheme = urlsplit(url).scheme.lower()
    if not scheme or "://" not in url:
        raise ConfigError(
            f"store URL {url!r} has no scheme; expected e.g. tcp://host:port "
            f"(known schemes: {', '.join(known_schemes())})"
        )
    factory = _load(scheme)
    return await factory(url, token=token, timeout=timeout)
