"""examples/train_ddp.py under torchrun and corral: a crashed-and-resumed run ends bit-identical."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

pytestmark = [pytest.mark.torch, pytest.mark.slow]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "train_ddp.py"
LAUNCHERS = {
    "torchrun": [sys.executable, "-m", "torch.distributed.run"],
    "corral": [sys.executable, "-m", "corral"],
}


def _train(launcher: str, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PET_", "TORCHELASTIC_"))}
    cmd = [
        *LAUNCHERS[launcher],
        "--standalone",
        "--nproc-per-node",
        "2",
        "--max-restarts",
        "1",
        str(EXAMPLE),
        "--steps",
        "120",
        "--ckpt-every",
        "20",
        "--ckpt-dir",
        str(out.parent / "ckpt"),
        "--out",
        str(out),
        *extra,
    ]
    # A session of its own, so a hung launcher can be stopped with all its workers
    # (torchrun orphans them when it is killed).
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        err += "\nTIMEOUT: the launcher hung and was killed"
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _params(path: Path) -> dict[str, object]:
    state: dict[str, object] = torch.load(path, weights_only=True)
    return state


@pytest.mark.parametrize("launcher", ["torchrun", "corral"])
def test_crash_and_resume_is_exact(launcher: str, tmp_path: Path) -> None:
    plain, crashed = tmp_path / "plain", tmp_path / "crashed"
    plain.mkdir()
    crashed.mkdir()
    first = _train(launcher, plain / "p.pt")
    assert first.returncode == 0, first.stderr[-3000:]
    marker = crashed / "marker"
    second = _train(
        launcher, crashed / "p.pt", "--crash-at-step", "70", "--crash-once-marker", str(marker)
    )
    if launcher == "torchrun" and second.returncode != 0:
        # torch 2.13 reuses the agent's TCPStore across restarts without a per-attempt
        # prefix (torch/distributed/rendezvous.py), so attempt 1's gloo may read attempt 0's
        # addresses: connectFullMesh refused, or a hang. corral serves a fresh store per round.
        pytest.xfail(
            f"torchrun's restart after a crash failed (stale agent store): {second.stderr[-300:]}"
        )
    assert second.returncode == 0, second.stderr[-3000:]
    assert marker.exists()
    assert "restart 1: starting at step 60" in second.stdout
    a, b = _params(plain / "p.pt"), _params(crashed / "p.pt")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)  # type: ignore[call-overload]
