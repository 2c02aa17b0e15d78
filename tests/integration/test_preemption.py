"""Preemption: a handled signal to one agent ends the whole job cleanly (docs/schedulers.md).

Three (or two) agents on loopback, each its own node (127.0.0.N). Workers
report to the hub when they run and, on SIGTERM, write a "checkpoint" file with
the time they got it, then exit 0 (or ignore SIGTERM, where a test says so).
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
from tests.helpers import CORRAL, Hub, Procs, corral_env
from tests.integration.test_multi_node import FAST, free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

WORKER = r"""
import json, os, signal, socket, sys, time
def on_term(signum, frame):
    name = f"r{os.environ['RANK']}-a{os.environ['TORCHELASTIC_RESTART_COUNT']}-{os.getpid()}"
    with open(os.path.join(os.environ["CKPT_DIR"], name), "w") as f:
        json.dump({"t": time.time(), "sig": signum, "world": os.environ["WORLD_SIZE"]}, f)
    os._exit(0)
for sig in (signal.SIGTERM, signal.SIGUSR1):
    signal.signal(sig, signal.SIG_IGN if os.environ.get("IGNORE_TERM") else on_term)
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(os.environ["HUB"])
keys = ("RANK", "WORLD_SIZE", "TORCHELASTIC_RESTART_COUNT", "GROUP_RANK")
s.sendall((json.dumps({k: os.environ.get(k) for k in keys} | {"pid": os.getpid()}) + "\n").encode())
data = s.recv(16)
sys.exit(int(data) if data.strip().isdigit() else 1)
"""


class Job:
    """Agents of one c10d job; agent 1 (127.0.0.1) hosts the store."""

    def __init__(self, procs: Procs, hub: Hub, tmp: Path, nnodes: str, *extra: str) -> None:

        self.procs, self.hub, self.tmp = procs, hub, tmp
        self.script = tmp / "ckpt_worker.py"
        self.script.write_text(WORKER)
        self.ckpt = tmp / "ckpt"
        self.ckpt.mkdir()
        self.port = free_port()
        self.nnodes, self.extra = nnodes, extra
        self.agents: dict[int, subprocess.Popen[bytes]] = {}

    def start(self, n: int, **env: str) -> None:
        err = open(self.tmp / f"agent{n}.err", "wb")
        cmd = [
            *CORRAL,
            "--nnodes", self.nnodes,
            "--rdzv-backend", "c10d",
            "--rdzv-endpoint", f"127.0.0.1:{self.port}",
            "--rdzv-id", f"preempt{self.port}",
            "--local-addr", f"127.0.0.{n}",
            "--rdzv-conf", FAST,
            *self.extra,
            str(self.script),
        ]  # fmt: skip
        full = corral_env(HUB=self.hub.path, TMPDIR=str(self.tmp), CKPT_DIR=str(self.ckpt), **env)
        self.agents[n] = self.procs.start(cmd, stdout=subprocess.DEVNULL, stderr=err, env=full)
        err.close()

    def stderr(self, n: int) -> str:
        return (self.tmp / f"agent{n}.err").read_text(errors="replace")

    def wait(self, n: int, timeout: float = 30) -> int:
        try:
            return self.agents[n].wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"agent {n} did not exit; its stderr:\n{self.stderr(n)}") from None

    def checkpoints(self) -> dict[str, dict[str, object]]:
        return {p.name: json.loads(p.read_text()) for p in self.ckpt.iterdir()}


def no_more_workers(hub: Hub) -> bool:
    """True if no worker is waiting to report (none started after those collected)."""
    hub.sock.setblocking(False)
    try:
        conn, _ = hub.sock.accept()
    except BlockingIOError:
        return True
    finally:
        hub.sock.setblocking(True)
    conn.close()
    return False


def test_sigterm_to_one_of_three_stops_every_node(procs: Procs, hub: Hub, tmp_path: Path) -> None:
    job = Job(procs, hub, tmp_path, "3", "--nproc-per-node", "2", "--max-restarts", "3")
    for n in (1, 2, 3):
        job.start(n)
    workers = hub.collect(6, timeout=40)
    assert sorted(int(w["RANK"]) for w in workers) == list(range(6))
    t0 = time.time()
    job.agents[1].send_signal(signal.SIGTERM)  # the store's host, the hardest case
    codes = {n: job.wait(n) for n in (1, 2, 3)}
    assert codes == {1: 143, 2: 143, 3: 143}, {n: job.stderr(n) for n in codes}
    ckpts = job.checkpoints()
    assert len(ckpts) == 6, ckpts  # every worker on every node checkpointed, once
    late = {k: round(float(c["t"]) - t0, 3) for k, c in ckpts.items() if float(c["t"]) - t0 > 1.0}  # type: ignore[arg-type]
    assert not late, f"workers got SIGTERM more than 1 s after the agent: {late}"
    assert all(c["sig"] == signal.SIGTERM for c in ckpts.values())
    assert all("-a0-" in k for k in ckpts), "nothing restarts"
    assert no_more_workers(hub)
    for n in (1, 2, 3):
        assert "job stopped by SIGTERM on node" in job.stderr(n), job.stderr(n)
        assert "lost" not in job.stderr(n).split("job stopped")[-1]


def test_worker_that_ignores_sigterm_is_ended_after_shutdown_timeout(
    procs: Procs, hub: Hub, tmp_path: Path
) -> None:
    job = Job(procs, hub, tmp_path, "2", "--shutdown-timeout", "1.5")
    job.start(1)
    job.start(2, IGNORE_TERM="1")
    hub.collect(2, timeout=40)
    t0 = time.monotonic()
    job.agents[1].send_signal(signal.SIGUSR1)  # Slurm's --signal=USR1@90 ahead of the end
    assert job.wait(1) == 128 + signal.SIGUSR1, job.stderr(1)
    assert job.wait(2) == 128 + signal.SIGUSR1, job.stderr(2)
    took = time.monotonic() - t0
    assert 1.5 <= took < 10, took
    assert "did not exit 1.5s after SIGUSR1; sending SIGKILL" in job.stderr(2), job.stderr(2)
    assert "job stopped by SIGUSR1 on node" in job.stderr(2)


def test_on_signal_leave_scales_down_then_stops_below_min(
    procs: Procs, hub: Hub, tmp_path: Path
) -> None:
    job = Job(procs, hub, tmp_path, "2:3", "--max-restarts", "3")  # leave: the default
    for n in (1, 2, 3):
        job.start(n)
    first = hub.collect(3, timeout=40, where=lambda w: w["WORLD_SIZE"] == "3")
    assert sorted(int(w["RANK"]) for w in first) == [0, 1, 2]
    job.agents[3].send_signal(signal.SIGTERM)
    assert job.wait(3) == 143, job.stderr(3)
    assert "this node leaves the job" in job.stderr(3)
    second = hub.collect(2, timeout=30, where=lambda w: w["WORLD_SIZE"] == "2")
    assert sorted(int(w["RANK"]) for w in second) == [0, 1]
    # the one that left checkpointed; the others were restarted by the launcher
    assert [k for k in job.checkpoints() if k.startswith("r2-")], job.checkpoints()
    # a second leave would take the job below MIN (2): the job stops on that signal
    job.agents[2].send_signal(signal.SIGTERM)
    assert job.wait(2) == 143, job.stderr(2)
    assert job.wait(1) == 143, job.stderr(1)
    assert "job stopped by SIGTERM on node" in job.stderr(1), job.stderr(1)


def test_the_store_host_cannot_leave_it_stops_the_job(
    procs: Procs, hub: Hub, tmp_path: Path
) -> None:
    job = Job(procs, hub, tmp_path, "2:3", "--max-restarts", "3")  # leave: the default
    for n in (1, 2, 3):
        job.start(n)
    hub.collect(3, timeout=40)
    job.agents[1].send_signal(signal.SIGTERM)  # agent 1 hosts the embedded store
    codes = {n: job.wait(n) for n in (1, 2, 3)}
    assert codes == {1: 143, 2: 143, 3: 143}, {n: job.stderr(n) for n in codes}
    assert "hosts the job's store and cannot leave" in job.stderr(1)
    assert len(job.checkpoints()) == 3  # every worker got SIGTERM and checkpointed
    for n in (2, 3):
        assert "job stopped by SIGTERM on node" in job.stderr(n)


def test_sigterm_to_every_node_at_once_one_stop(procs: Procs, hub: Hub, tmp_path: Path) -> None:
    """Slurm's scancel and preemption signal every task: the first stop recorded is the job's."""
    job = Job(procs, hub, tmp_path, "3")
    for n in (1, 2, 3):
        job.start(n)
    hub.collect(3, timeout=40)
    for n in (3, 2, 1):
        job.agents[n].send_signal(signal.SIGTERM)
    codes = {n: job.wait(n) for n in (1, 2, 3)}
    assert codes == {1: 143, 2: 143, 3: 143}, {n: job.stderr(n) for n in codes}
    lines = {
        line for n in (1, 2, 3) for line in job.stderr(n).splitlines() if line.startswith("corral:")
    }
    assert len(lines) == 1 and "job stopped by SIGTERM on node" in lines.pop()
    assert len(job.checkpoints()) == 3 and no_more_workers(hub)
