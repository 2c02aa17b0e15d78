"""--max-restarts bounds every restart of the job, whatever its cause (real agents on loopback).

A 2:3 job with ``--max-restarts 1``: a lost node is restart 1 (the count is
the same on every node); then a node that arrives waits as a spare, and a
second lost node ends the job with a root cause that names it.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from tests.helpers import CORRAL, Hub, HubWorker, Procs, corral_env
from tests.integration.test_multi_node import FAST, Cluster, assert_one_round, ws

pytestmark = [pytest.mark.timeout(90), pytest.mark.slow]

CONF = FAST.replace("last_call_timeout=10", "last_call_timeout=1")


def until(pred: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll ``pred`` until it holds (a deadline, no fixed sleep)."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout} s: {what}")
        time.sleep(0.05)


def status(c: Cluster) -> str:
    cmd = [*CORRAL, "status", "--rdzv-endpoint", c.endpoint, "--rdzv-id", c.run_id]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=30, env=corral_env())
    assert r.returncode == 0, r.stderr
    return r.stdout


def lose_one_then_spare(c: Cluster, hub: Hub) -> list[HubWorker]:
    """Agents 1-3 run round 0; agent 3 is lost (restart 1 of 1, the count equal on every
    node); agent 4 arrives and waits as a spare. Returns round 1's workers."""
    for n in (1, 2, 3):  # agent 1 hosts the store (the endpoint is its address)
        c.start(n)
    first = hub.collect(3, where=ws(3))
    assert_one_round(first, 3)
    assert {w["TORCHELASTIC_RESTART_COUNT"] for w in first} == {"0"}  # round 0 is no restart
    c.agents[3].kill()
    c.agents[3].wait(timeout=10)
    second = hub.collect(2, where=ws(2))
    assert_one_round(second, 2)
    assert {w["TORCHELASTIC_RESTART_COUNT"] for w in second} == {"1"}  # a lost node counts
    c.start(4)
    until(lambda: "waits as a spare" in c.stderr(4), "agent 4 waits as a spare")
    spare = [ln for ln in c.stderr(4).splitlines() if "waits as a spare" in ln]
    assert len(spare) == 1 and "(1/1 restarts)" in spare[0], spare
    until(
        lambda: any("not admitted" in c.stderr(n) for n in (1, 2)),
        "the running round's rank 0 saw the spare and did not restart for it",
    )
    text = status(c)
    assert "restarts 1/1" in text, text
    assert "waiting for the next round" in text and "127.0.0.4" in text, text
    return second


def test_a_spare_waits_while_the_budget_is_spent_and_ends_0_with_the_job(
    procs: Procs, hub: Hub, tmp_path: Path
) -> None:
    c = Cluster(procs, hub, tmp_path, "2:3", conf=CONF, max_restarts=1)
    second = lose_one_then_spare(c, hub)
    for w in second:
        w.release(0)
    for n in (1, 2, 4):
        assert c.wait(n) == 0, c.stderr(n)
    # the spare never ran a round, and the members never restarted for it
    assert "round 2" not in c.stderr(1) + c.stderr(2)
    assert re.search(r"round \d+: node \d+ of", c.stderr(4)) is None, c.stderr(4)


def test_a_second_lost_node_with_the_budget_spent_fails_the_job_naming_it(
    procs: Procs, hub: Hub, tmp_path: Path
) -> None:
    c = Cluster(procs, hub, tmp_path, "2:3", conf=CONF, max_restarts=1)
    lose_one_then_spare(c, hub)
    c.agents[2].kill()
    for n in (1, 4):  # the spare ends with the job, with the same root cause
        assert c.wait(n) == 1, c.stderr(n)
        err = c.stderr(n)
        lines = [ln for ln in err.splitlines() if "was lost" in ln]
        assert any(
            "127.0.0.2" in ln and "restart budget spent (1/1 restarts)" in ln for ln in lines
        ), err
        assert "Traceback" not in err
