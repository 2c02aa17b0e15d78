"""Shared fixtures (helpers live in tests/helpers.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers import Hub, Procs


@pytest.fixture
def procs() -> Iterator[Procs]:
    """Processes started through this fixture are killed (with their process groups) at teardown."""
    tracker = Procs()
    try:
        yield tracker
    finally:
        tracker.cleanup()


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
