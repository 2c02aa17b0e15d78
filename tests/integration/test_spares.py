"""A spare takes a lost slot and only that; a node that keeps failing is quarantined.

Real agents through the CLI on loopback, each its own node (127.0.0.<n>), on
the embedded store. The test drives the failures: a hub worker exits with the
code the test releases it with, and each agent's workers carry ``node=<n>``
in their argv, so every report says which node it ran on. Node 1's workers
stop slowly, so that in a restart round the failing node and the spare are
back first: the round must still wait for node 1.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from tests.helpers import CORRAL, Hub, HubWorker, Procs, corral_env
from tests.integration.test_multi_node import FAST, Cluster
from tests.integration.test_restart_budget import status, until

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]


# The hub's worker; with ``slow-stop`` it takes a while to stop on SIGTERM, so that
# its node rejoins the restart round last (after the failing node and the spare).
SLOW_STOP = """
import signal, sys, time
def _slow(*_):
    time.sleep(1.5)
    sys.exit(143)
if "slow-stop" in sys.argv:
    signal.signal(signal.SIGTERM, _slow)
"""


def worker(c: Cluster) -> Path:
    path = c.tmp / "spare_worker.py"
    if not path.exists():
        path.write_text(SLOW_STOP + Hub.WORKER)
    return path


def start(c: Cluster, n: int, addr: int, *extra: str) -> subprocess.Popen[bytes]:
    """Agent ``n`` at 127.0.0.<addr> (two agents may share an address: a restart)."""
    return c.start(
        n,
        f"node={n}",
        *(["slow-stop"] if n == 1 else []),
        addr=addr,
        # node 1 without standbys, so that its stop comes before its rejoin
        flags=(*extra, *(["--no-prestart"] if n == 1 else [])),
        script=worker(c),
    )


def node(w: HubWorker) -> int:
    return int(w["argv"][0].split("=")[1])


def by_node(ws: list[HubWorker]) -> dict[int, HubWorker]:
    return {node(w): w for w in ws}


def test_a_failing_node_is_quarantined_and_the_spare_takes_its_slot(
    procs: Procs, hub: Hub, tmp_path: Path
) -> None:
    c = Cluster(procs, hub, tmp_path, "2:2", conf=FAST, max_restarts=5)
    c.extra = ("--quarantine-after", "2")
    start(c, 1, 1)  # node 1 hosts the store
    start(c, 2, 2, "--events-file", str(tmp_path / "events2.jsonl"))
    r0 = by_node(hub.collect(2))
    assert {n: int(w["GROUP_RANK"]) for n, w in r0.items()} == {1: 0, 2: 1}
    start(c, 3, 3)  # at MAX: it waits
    until(lambda: "closed without node" in c.stderr(3), "node 3 waits")

    r0[2].release(3)  # node 2 fails (1 in a row)
    r1 = by_node(hub.collect(2))
    # the failing node kept its slot, and the spare did not take the healthy node's
    assert {n: int(w["GROUP_RANK"]) for n, w in r1.items()} == {1: 0, 2: 1}, c.stderr(3)
    assert {w["TORCHELASTIC_RESTART_COUNT"] for w in r1.values()} == {"1"}

    r1[2].release(3)  # node 2 fails again: 2 in a row, a spare waits: quarantined
    r2 = by_node(hub.collect(2))
    # the spare took node 2's group rank; node 1 kept its own (and its RANK)
    assert {n: int(w["GROUP_RANK"]) for n, w in r2.items()} == {1: 0, 3: 1}
    assert {n: int(w["RANK"]) for n, w in r2.items()} == {1: 0, 3: 1}
    assert {w["WORLD_SIZE"] for w in r2.values()} == {"2"}  # full size
    # with --prestart (the tests' default), the waiting spare kept its standby ready
    assert re.search(r"started 1 worker\(s\) \(1 pre-started\) for round 2", c.stderr(3))
    until(lambda: "takes no part in the job" in c.stderr(2), "node 2 says it is out")
    said = [ln for ln in c.stderr(2).splitlines() if "takes no part" in ln]
    assert len(said) == 1 and "127.0.0.2" in said[0] and "2 failures" in said[0], said
    quarantined = [
        e for e in map(json.loads, (tmp_path / "events2.jsonl").read_text().splitlines())
        if e["kind"] == "NodeQuarantined"
    ]  # fmt: skip
    assert quarantined and {(e["addr"], e["failures"]) for e in quarantined} == {("127.0.0.2", 2)}
    text = status(c)
    assert "quarantined: node 127.0.0.2" in text, text

    # an agent restarted on the quarantined host is refused at join
    start(c, 4, 2)
    until(lambda: "is quarantined" in c.stderr(4), "the restarted agent is refused")
    assert c.agents[4].poll() is None  # it stays until the job ends

    for w in r2.values():
        w.release(0)
    assert c.wait(1) == 0, c.stderr(1)
    assert c.wait(3) == 0, c.stderr(3)
    assert c.wait(2) == 75, c.stderr(2)  # docs/contract.md: a quarantined node
    assert c.wait(4) == 75, c.stderr(4)
    assert re.search(r"round \d+: node \d+ of", c.stderr(4)) is None, c.stderr(4)  # never ran
    # after the quarantine only nodes 1 and 3 ran workers
    late = [w for w in hub.workers if int(w["TORCHELASTIC_RESTART_COUNT"]) >= 2]
    assert {node(w) for w in late} == {1, 3}


def test_without_a_spare_at_min_a_failing_node_keeps_being_retried(
    procs: Procs, hub: Hub, tmp_path: Path
) -> None:
    c = Cluster(procs, hub, tmp_path, "2:2", conf=FAST, max_restarts=2)
    c.extra = ("--quarantine-after", "1")
    start(c, 1, 1)
    start(c, 2, 2)
    for attempt in range(3):  # rounds 0, 1, 2: node 2 fails in each, always readmitted
        ws = by_node(hub.collect(2))
        assert {n: int(w["GROUP_RANK"]) for n, w in ws.items()} == {1: 0, 2: 1}
        assert {w["TORCHELASTIC_RESTART_COUNT"] for w in ws.values()} == {str(attempt)}
        ws[2].release(3)
    assert c.wait(1) == 3, c.stderr(1)  # the budget is spent: the root cause's code
    assert c.wait(2) == 3, c.stderr(2)
    assert "quarantined" not in c.stderr(1) + c.stderr(2)


def test_quarantine_after_negative_is_one_line_exit_2(tmp_path: Path) -> None:
    r = subprocess.run(
        [*CORRAL, "--quarantine-after", "-1", "--standalone", "x.py"],
        capture_output=True,
        text=True,
        timeout=30,
        env=corral_env(),
    )
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().count("\n") == 0 and "--quarantine-after -1" in r.stderr, r.stderr
