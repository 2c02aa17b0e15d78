"""Libraries that read torchrun's variables, run under corral: Lightning Fabric and Accelerate.

Each library must find the torchelastic environment corral sets up (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR/PORT, TORCHELASTIC_RUN_ID), join the process group through
``env://`` on gloo, train a tiny model a few steps and all-reduce. Every rank writes what
it saw to a JSON file that the test reads.

Two runs per library (they import slowly): pre-started workers (the default) with one
restart (rank 1 raises once, on the first attempt), and ``--no-prestart`` without one
(each with one restart to spare: see RUNS). torch's own ``env://`` with ``init_process_group("gloo")``
is covered by tests/integration/test_ddp.py (examples/train_ddp.py).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from tests.helpers import CORRAL, NetNS, corral_env

pytest.importorskip("torch")

pytestmark = [pytest.mark.torch, pytest.mark.slow, pytest.mark.timeout(150)]

# What both scripts share: the crash on the first attempt, and the observations file.
COMMON = r"""
import json, os, sys
from pathlib import Path

import torch

OUT = Path(sys.argv[1])
CRASH = sys.argv[2] == "crash"
RESTART = int(os.environ["TORCHELASTIC_RESTART_COUNT"])
ENV = {k: os.environ.get(k) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "GROUP_RANK",
                                      "TORCHELASTIC_RESTART_COUNT")}


def maybe_crash():
    if CRASH and RESTART == 0 and os.environ["RANK"] == "1":
        raise RuntimeError("rank 1 fails once on purpose")


def write(seen):
    OUT.joinpath(f"rank{os.environ['RANK']}-attempt{RESTART}.json").write_text(
        json.dumps(seen | {"env": ENV})
    )


def tiny_model():
    torch.manual_seed(int(os.environ["RANK"]))  # different on purpose: DDP must sync them
    return torch.nn.Linear(4, 1)


def batch(step):
    g = torch.Generator().manual_seed(100 * step + int(os.environ["RANK"]))
    return torch.randn(8, 4, generator=g), torch.randn(8, 1, generator=g)
"""

FABRIC = (
    COMMON
    + r"""
import torch.distributed as dist
from lightning_fabric import Fabric

fabric = Fabric(accelerator="cpu", strategy="ddp", devices=2, num_nodes=1)
fabric.launch()
maybe_crash()
model = tiny_model()
model, opt = fabric.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
for step in range(3):
    x, y = batch(step)
    loss = torch.nn.functional.mse_loss(model(x), y)
    opt.zero_grad()
    fabric.backward(loss)
    opt.step()
total = fabric.all_reduce(torch.tensor(float(fabric.global_rank + 1)), reduce_op="sum")
write({
    "global_rank": fabric.global_rank,
    "world_size": fabric.world_size,
    "local_rank": fabric.local_rank,
    "node_rank": fabric.node_rank,
    "cluster_env": type(fabric.strategy.cluster_environment).__name__,
    "external": fabric.strategy.cluster_environment.creates_processes_externally,
    "spawned": len(fabric.strategy.launcher.procs),
    "backend": dist.get_backend(),
    "all_reduce": total.item(),
    "params": [p.detach().flatten().tolist() for p in model.parameters()],
})
"""
)

ACCELERATE = (
    COMMON
    + r"""
import torch.distributed as dist
from accelerate import Accelerator
from accelerate.utils import DistributedType

accelerator = Accelerator(cpu=True)
maybe_crash()
model = tiny_model()
model, opt = accelerator.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1))
for step in range(3):
    x, y = batch(step)
    loss = torch.nn.functional.mse_loss(model(x), y)
    opt.zero_grad()
    accelerator.backward(loss)
    opt.step()
rank = torch.tensor([accelerator.process_index])
write({
    "num_processes": accelerator.num_processes,
    "process_index": accelerator.process_index,
    "local_process_index": accelerator.local_process_index,
    "multi_cpu": accelerator.distributed_type == DistributedType.MULTI_CPU,
    "backend": dist.get_backend(),
    "gather": accelerator.gather(rank).tolist(),
    "reduce": accelerator.reduce(rank + 1, reduction="sum").tolist(),
    "params": [p.detach().flatten().tolist() for p in model.parameters()],
})
"""
)

# (corral options, crash once): pre-started workers with a restart; fresh spawns without
# One restart more than the run needs: torch's gloo sometimes aborts a worker (SIGABRT,
# "terminate called without an active exception") while its process group is set up in
# a network namespace with no name service (seen once in CI; tests/integration/test_ddp.py
# allows the same). The checks read the attempt the job ended on.
RUNS = [
    pytest.param(["--max-restarts", "2"], True, id="prestart-restart"),
    pytest.param(["--no-prestart", "--max-restarts", "1"], False, id="no-prestart"),
]


def launch(netns: NetNS, tmp_path: Path, script: str, opts: list[str], crash: bool) -> int:
    """Run ``script`` under ``corral --standalone --nproc-per-node 2``; returns the attempt it
    ended on (the one that wrote the last observation of rank 0)."""
    path = tmp_path / "client.py"
    path.write_text(script)
    out = tmp_path / "out"
    out.mkdir()
    r = subprocess.run(
        netns.wrap(
            [
                *CORRAL,
                "--standalone",
                "--nproc-per-node",
                "2",
                *opts,
                str(path),
                str(out),
                "crash" if crash else "ok",
            ]
        ),
        capture_output=True,
        text=True,
        timeout=120,
        # the libraries never reach the network; the Hub stays offline
        env=corral_env(LOGLEVEL="WARNING", HF_HUB_OFFLINE="1"),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    if crash:
        assert "rank 1 fails once on purpose" in r.stderr
    ended = max(int(f.stem.rpartition("attempt")[2]) for f in out.glob("rank0-attempt*.json"))
    assert ended >= (1 if crash else 0)
    return ended


def observations(tmp_path: Path, attempt: int) -> list[dict[str, object]]:
    seen = []
    for rank in (0, 1):
        f = tmp_path / "out" / f"rank{rank}-attempt{attempt}.json"
        assert f.exists(), sorted(p.name for p in (tmp_path / "out").iterdir())
        seen.append(json.loads(f.read_text()))
    return seen


def expected_env(rank: int, attempt: int) -> dict[str, str]:
    return {
        "RANK": str(rank),
        "WORLD_SIZE": "2",
        "LOCAL_RANK": str(rank),
        "GROUP_RANK": "0",
        "TORCHELASTIC_RESTART_COUNT": str(attempt),
    }


@pytest.mark.parametrize(("opts", "crash"), RUNS)
def test_lightning_fabric(netns: NetNS, tmp_path: Path, opts: list[str], crash: bool) -> None:
    attempt = launch(netns, tmp_path, FABRIC, opts, crash)
    seen = observations(tmp_path, attempt)
    for rank, s in enumerate(seen):
        assert s["env"] == expected_env(rank, attempt)
        assert (s["global_rank"], s["world_size"], s["local_rank"], s["node_rank"]) == (
            rank,
            2,
            rank,
            0,
        )
        # Fabric detected torchelastic and left the processes to corral: its launcher
        # (_SubprocessScriptLauncher) spawned none of its own
        assert s["cluster_env"] == "TorchElasticEnvironment"
        assert (s["external"], s["spawned"]) == (True, 0)
        assert s["backend"] == "gloo"
        assert s["all_reduce"] == 3.0
    # DDP synchronised the differently seeded models and averaged the gradients
    assert seen[0]["params"] == seen[1]["params"]


@pytest.mark.parametrize(("opts", "crash"), RUNS)
def test_accelerate(netns: NetNS, tmp_path: Path, opts: list[str], crash: bool) -> None:
    attempt = launch(netns, tmp_path, ACCELERATE, opts, crash)
    seen = observations(tmp_path, attempt)
    for rank, s in enumerate(seen):
        assert s["env"] == expected_env(rank, attempt)
        assert (s["num_processes"], s["process_index"], s["local_process_index"]) == (2, rank, rank)
        assert s["multi_cpu"] is True
        assert s["backend"] == "gloo"
        assert s["gather"] == [0, 1]
        assert s["reduce"] == [3]
    assert seen[0]["params"] == seen[1]["params"]
