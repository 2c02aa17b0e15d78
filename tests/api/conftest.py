"""Fixtures for the Python API tests."""

from __future__ import annotations

import pytest

from corral.config import LaunchConfig


@pytest.fixture
def cfg() -> LaunchConfig:
    """Two workers on one node (a one-node config runs standalone), short shutdown."""
    return LaunchConfig(nproc_per_node=2, shutdown_timeout=5.0)
