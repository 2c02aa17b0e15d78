"""The real client: examples/train_ddp.py (DDP on gloo, torch 2.13) under corral.

A run that is crashed once (a worker raises; or a whole agent is SIGKILLed and
replaced by a new node) resumes from its checkpoint and ends with parameters
bit-identical to a run that never stopped.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from tests.helpers import CORRAL, EXAMPLE, NetNS, Procs, corral_env

torch = pytest.importorskip("torch")

pytestmark = [pytest.mark.torch, pytest.mark.slow, pytest.mark.timeout(150)]

STEPS = ["--steps", "240", "--ckpt-every", "20"]


@pytest.fixture(scope="module")
def reference(netns: NetNS, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Parameters of an uninterrupted run (2 workers, WORLD_SIZE 2)."""
    d = tmp_path_factory.mktemp("reference")
    r = subprocess.run(
        netns.wrap(
            [
                *CORRAL,
                "--standalone",
                "--nproc-per-node",
                "2",
                EXAMPLE,
                *STEPS,
                "--ckpt-dir",
                str(d / "ckpt"),
                "--out",
                str(d / "p.pt"),
            ]
        ),
        capture_output=True,
        text=True,
        timeout=120,
        env=corral_env(LOGLEVEL="WARNING"),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    params: dict[str, object] = torch.load(d / "p.pt", weights_only=True)
    return params


def assert_same(a: dict[str, object], path: Path) -> None:
    b = torch.load(path, weights_only=True)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "parameters differ from the uninterrupted run"


def test_worker_crash_resumes_from_checkpoint(
    netns: NetNS, reference: dict[str, object], tmp_path: Path
) -> None:
    marker = tmp_path / "crashed"
    r = subprocess.run(
        netns.wrap(
            [
                *CORRAL,
                "--standalone",
                "--nproc-per-node",
                "2",
                "--max-restarts",
                "1",
                EXAMPLE,
                *STEPS,
                "--ckpt-dir",
                str(tmp_path / "ckpt"),
                "--out",
                str(tmp_path / "p.pt"),
                "--crash-at-step",
                "130",
                "--crash-once-marker",
                str(marker),
            ]
        ),
        capture_output=True,
        text=True,
        timeout=120,
        env=corral_env(),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert marker.exists()
    assert "restart 1: starting at step 120" in r.stdout
    assert "injected crash at step 130" in r.stderr  # the failure was seen and reported
    assert_same(reference, tmp_path / "p.pt")


def test_agent_killed_and_replaced_resumes(
    netns: NetNS, reference: dict[str, object], tmp_path: Path, procs: Procs
) -> None:
    """2 nodes of a 2:2 job; one agent is SIGKILLed mid-training and a new node takes its place."""
    port = subprocess.run(
        netns.wrap(
            [
                "python",
                "-c",
                "import socket;s=socket.socket();s.bind(('127.0.0.1',0));print(s.getsockname()[1])",
            ]
        ),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()

    def agent(n: int, out: object) -> subprocess.Popen[bytes]:
        with open(tmp_path / f"agent{n}.err", "wb") as err:
            return start(n, out, err)

    def start(n: int, out: object, err: object) -> subprocess.Popen[bytes]:
        return procs.start(
            netns.wrap(
                [
                    *CORRAL,
                    "--nnodes",
                    "2",
                    "--nproc-per-node",
                    "1",
                    "--rdzv-backend",
                    "c10d",
                    "--rdzv-endpoint",
                    f"127.0.0.1:{port}",
                    "--rdzv-id",
                    "ddp",
                    "--local-addr",
                    f"127.0.0.{n}",
                    # the lost node is restart 1 (every restart counts); one more for a
                    # transient gloo abort in torch (SIGABRT while the process group is
                    # set up, seen once in CI)
                    "--max-restarts",
                    "2",
                    "--rdzv-conf",
                    "keep_alive_interval=0.5,keep_alive_max_attempt=3,read_timeout=10",
                    EXAMPLE,
                    *STEPS,
                    "--ckpt-dir",
                    str(tmp_path / "ckpt"),
                    "--out",
                    str(tmp_path / "p.pt"),
                    "--log-every",
                    "10",
                ]
            ),
            stdout=out,
            stderr=err,
            env=corral_env(),
        )

    host = agent(1, subprocess.PIPE)
    victim = agent(2, subprocess.DEVNULL)
    assert host.stdout is not None
    seen = []
    while True:  # wait for training to pass a checkpoint (rank 0 is on the hosting node)
        line = host.stdout.readline().decode()
        assert line, (tmp_path / "agent1.err").read_text()
        seen.append(line)
        if line.strip() == "step 60":
            break
    victim.kill()  # the whole node is lost: agent and (by the reaper) its worker
    replacement = agent(3, subprocess.DEVNULL)
    rest = host.stdout.read().decode()
    assert host.wait(timeout=60) == 0, (tmp_path / "agent1.err").read_text()[-3000:]
    assert replacement.wait(timeout=60) == 0, (tmp_path / "agent3.err").read_text()[-3000:]
    assert "restart 0: starting at step 0" in "".join(seen)
    # the new round resumed from a checkpoint, not from scratch
    resumed = [int(m) for m in re.findall(r"restart \d+: starting at step (\d+)", rest)]
    assert resumed and min(resumed) >= 60, rest
    # the lost node counts one restart (however many nodes saw it); restart 2 appears
    # only if a worker really failed after it
    logs = "".join((tmp_path / f"agent{n}.err").read_text() for n in (1, 3))
    worker_failed = "failed with" in logs
    assert worker_failed or "restart 2:" not in rest, rest
    assert "restart 1: starting at step" in rest or worker_failed, rest
    assert_same(reference, tmp_path / "p.pt")
