"""Backends for the one store contract suite (``test_store.py``).

Every test in ``test_store.py`` runs once per entry of :data:`BACKENDS`. A backend
is an async context manager factory: ``async with make_backend() as backend``
yields a :class:`Backend` for one test, over a fresh store, and stops whatever it
started on exit.

Adding a backend (e.g. etcd)
----------------------------
Write a class with the :class:`Backend` methods and append it to ``BACKENDS``
with its marks::

    BACKENDS.append(pytest.param(EtcdBackend, id="etcd", marks=pytest.mark.etcd))

``open()`` returns a new client of this test's store (several calls: several
clients of the same data); ``let_time_pass(s)`` makes ``s`` seconds pass for
lease expiry (a FakeClock advance, or a real sleep for a real server);
``compact(rev)`` discards history up to ``rev``. Tests use keys under the
``ns`` fixture and compare revisions only relatively, so a shared server works.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

import pytest

from corral.core.clock import FakeClock
from corral.store.api import Store
from corral.store.memory import MemoryStore


class Backend(Protocol):
    async def open(self) -> Store: ...

    async def let_time_pass(self, seconds: float) -> None: ...

    async def compact(self, revision: int) -> None: ...

    async def __aenter__(self) -> Backend: ...

    async def __aexit__(self, *exc: object) -> None: ...


class MemoryBackend:
    def __init__(self) -> None:
        self.clock = FakeClock()
        self.root = MemoryStore(self.clock)
        self.clients: list[MemoryStore] = []

    async def open(self) -> Store:
        s = self.root.session()
        self.clients.append(s)
        return s

    async def let_time_pass(self, seconds: float) -> None:
        self.clock.advance(seconds)

    async def compact(self, revision: int) -> None:
        self.root.core.compact(revision)

    async def __aenter__(self) -> MemoryBackend:
        return self

    async def __aexit__(self, *exc: object) -> None:
        for c in self.clients:
            await c.close()
        await self.root.close()


class TcpBackend:
    """The embedded tcp server on 127.0.0.1 (free port) with a FakeClock, and TcpStore clients."""

    def __init__(self) -> None:
        from corral.store.tcp.server import StoreServer

        self.clock = FakeClock()
        self.server = StoreServer(clock=self.clock)
        self.clients: list[Store] = []

    async def open(self) -> Store:
        from corral.store.tcp.client import connect

        host, port = self.server.address
        s = await connect(host, port, token="contract-token", timeout=10)
        self.clients.append(s)
        return s

    async def let_time_pass(self, seconds: float) -> None:
        self.clock.advance(seconds)

    async def compact(self, revision: int) -> None:
        self.server.core.compact(revision)

    async def __aenter__(self) -> TcpBackend:
        await self.server.start("127.0.0.1", 0, token="contract-token")
        return self

    async def __aexit__(self, *exc: object) -> None:
        for c in self.clients:
            await c.close()
        await self.server.close()


#: Append ``pytest.param(BackendClass, id=..., marks=...)`` to add a backend.
BACKENDS: list[Any] = [
    pytest.param(MemoryBackend, id="memory"),
    pytest.param(TcpBackend, id="tcp"),
]

# etcd: one real server for the session (tests/etcd_fixtures.py), a fresh key prefix per test.
from tests.etcd_fixtures import EtcdContractBackend, etcd_available  # noqa: E402

BACKENDS.append(
    pytest.param(
        EtcdContractBackend,
        id="etcd",
        marks=[
            pytest.mark.etcd,
            pytest.mark.skipif(
                not etcd_available(), reason="etcd binary not on PATH (run scripts/install-etcd)"
            ),
        ],
    )
)


@pytest.fixture(params=BACKENDS)
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    make: Callable[[], AbstractAsyncContextManager[Backend]] = request.param
    async with make() as b:
        yield b


@pytest.fixture
def store_factory(backend: Backend) -> Callable[[], Awaitable[Store]]:
    """An async factory of clients of this test's fresh store."""
    return backend.open


@pytest.fixture
async def store(store_factory: Callable[[], Awaitable[Store]]) -> Store:
    return await store_factory()


@pytest.fixture
def ns() -> str:
    """A key prefix unique to the test."""
    return f"/t/{uuid.uuid4().hex[:8]}/"
