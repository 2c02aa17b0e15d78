"""--no-restart-exit-code through the real CLI: 2 agents on loopback, --max-restarts 3.

A worker that exits with the code as the failure's root cause ends the job
with no restart on either node, and both agents exit with the code; another
exit code still restarts the job.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.helpers import Hub, Procs
from tests.integration.test_multi_node import Cluster, assert_one_round, ws

pytestmark = [pytest.mark.timeout(90), pytest.mark.slow]

CODE = ("--no-restart-exit-code", "42")


def test_the_code_ends_the_job_on_every_node_without_a_restart(
    procs: Procs, hub: Hub, tmp_path: Path
) -> None:
    c = Cluster(procs, hub, tmp_path, "2:2", max_restarts=3, extra=CODE)
    c.start(1)
    c.start(2)
    first = hub.collect(2, where=ws(2))
    assert_one_round(first, 2)
    assert {w["TORCHELASTIC_RESTART_COUNT"] for w in first} == {"0"}
    rank1 = next(w for w in first if w["RANK"] == "1")
    rank1.release(42)
    for n in (1, 2):
        assert c.wait(n) == 42, c.stderr(n)
    for n in (1, 2):
        err = c.stderr(n)
        assert "worker rank 1" in err and "exited with code 42" in err, err
        assert "round 1" not in err, err  # no restart round on either node
    # every worker that started connected to the hub: none of a second attempt did
    hub.sock.settimeout(0)
    with pytest.raises(BlockingIOError):
        hub.sock.accept()


def test_another_exit_code_still_restarts(procs: Procs, hub: Hub, tmp_path: Path) -> None:
    c = Cluster(procs, hub, tmp_path, "2:2", max_restarts=3, extra=CODE)
    c.start(1)
    c.start(2)
    first = hub.collect(2, where=ws(2))
    next(w for w in first if w["RANK"] == "1").release(7)
    second = hub.collect(2, where=lambda w: w["TORCHELASTIC_RESTART_COUNT"] == "1")
    assert_one_round(second, 2)
    for w in second:
        w.release(0)
    for n in (1, 2):
        assert c.wait(n) == 0, c.stderr(n)
