"""Fixtures for the etcd backend tests: real etcd servers on loopback.

Every test here is marked ``etcd`` and skipped, with the reason, when the
``etcd`` binary is not on PATH. Servers are shared where that is safe: one
single-member server for the session (each test uses its own key prefix) and
one server per module for the cluster, TLS and auth tests.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.etcd_fixtures import (
    EtcdCluster,
    etcd_available,
    shared_single,
)

_HERE = Path(__file__).parent
_PURE = {"test_url.py"}  # no server needed: not marked, never skipped
_SKIP = pytest.mark.skipif(
    not etcd_available(), reason="etcd binary not on PATH (install it with scripts/install-etcd)"
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        path = Path(str(item.fspath))
        if _HERE in path.parents and path.name not in _PURE:
            item.add_marker(pytest.mark.etcd)
            item.add_marker(_SKIP)


@pytest.fixture(scope="session")
def etcd_single() -> EtcdCluster:
    """One etcd for the whole session; use a fresh prefix (see ``etcd_url``)."""
    return shared_single()


@pytest.fixture
def etcd_url(etcd_single: EtcdCluster) -> str:
    """A URL on the shared server with a prefix unique to this test."""
    return etcd_single.url(f"/corral-test/{uuid.uuid4().hex[:12]}")
