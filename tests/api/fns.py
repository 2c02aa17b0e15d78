"""Worker functions for tests/api (module level, so that workers can unpickle them)."""

from __future__ import annotations

import os
import time


def rank_times(x: int) -> tuple[int, int, int]:
    """(RANK, WORLD_SIZE, RANK * x)."""
    rank = int(os.environ["RANK"])
    return rank, int(os.environ["WORLD_SIZE"]), rank * x


def fail_on_rank(bad: int) -> str:
    if int(os.environ["RANK"]) == bad:
        inner_helper_that_raises()
    return "ok"


def inner_helper_that_raises() -> None:
    raise ValueError(f"rank {os.environ['RANK']} is broken")


def same_failure() -> None:
    raise RuntimeError("deterministic bug")


def different_failure() -> None:
    raise RuntimeError(f"flaky, restart {os.environ['TORCHELASTIC_RESTART_COUNT']}")


def read_env(name: str) -> str | None:
    return os.environ.get(name)


def world_size_when_alone() -> int:
    """Return WORLD_SIZE once alone; in a larger round, wait to be stopped (a round change)."""
    ws = int(os.environ["WORLD_SIZE"])
    if ws != 1:
        time.sleep(60)  # the agent stops this worker when the refusing node leaves
    return ws


def block() -> None:
    time.sleep(60)  # stopped by the agent (cancellation) long before


def report_and_block(hub_path: str) -> None:
    """Tell the test's hub this worker runs (its pid), then block until stopped."""
    import json
    import os
    import socket

    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(hub_path)
    s.sendall((json.dumps({"pid": os.getpid()}) + "\n").encode())
    time.sleep(60)
