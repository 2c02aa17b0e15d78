"""Shared fixtures (helpers live in tests/helpers.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import pytest

from corral.core import compat as _compat
from tests.etcd_fixtures import stop_shared
from tests.helpers import Hub, NetNS, Procs


# Runs after tests/etcd/conftest.py's hook (registered later: called first) marks its tests
# etcd, and before pytest's own deselection by -m.
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that needs a real etcd or real torch is slow: ``-m \"not slow\"`` leaves it out."""
    for item in items:
        if item.get_closest_marker("etcd") or item.get_closest_marker("torch"):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session", autouse=True)
def _stop_shared_etcd() -> Iterator[None]:
    """The session's shared etcd (started on first use by any test) ends with the session."""
    yield
    stop_shared()


@pytest.fixture
def procs() -> Iterator[Procs]:
    """Processes started through this fixture are killed (with their process groups) at teardown."""
    tracker = Procs()
    try:
        yield tracker
    finally:
        tracker.cleanup()


@pytest.fixture(scope="module")
def netns() -> Iterator[NetNS]:
    """A private network namespace holding only ``lo``, shared by a module's real-torch tests."""
    procs = Procs()
    try:
        yield NetNS(procs)
    finally:
        procs.cleanup()


@pytest.fixture
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    # a short path: AF_UNIX paths are limited to 107 bytes
    import tempfile
    from pathlib import Path

    d = Path(tempfile.mkdtemp(prefix="hub", dir="/tmp"))
    h = Hub(d)
    try:
        yield h
    finally:
        h.close()
        import shutil

        shutil.rmtree(d, ignore_errors=True)


if _compat.BACKPORTS:  # the Python 3.10 path: every loop needs the backport's task factory

    def pytest_asyncio_loop_factories(
        config: pytest.Config, item: pytest.Item
    ) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
        from taskgroup.tasks import task_factory

        def backport_loop() -> asyncio.AbstractEventLoop:
            loop = asyncio.new_event_loop()
            loop.set_task_factory(task_factory)  # type: ignore[arg-type]
            return loop

        return {"backport": backport_loop}
