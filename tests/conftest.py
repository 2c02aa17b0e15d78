"""Shared fixtures (helpers live in tests/helpers.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers import Procs


@pytest.fixture
def procs() -> Iterator[Procs]:
    """Processes started through this fixture are killed (with their process groups) at teardown."""
    tracker = Procs()
    try:
        yield tracker
    finally:
        tracker.cleanup()
