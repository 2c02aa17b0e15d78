"""A spare node in a lost slot, and a node that keeps failing: corral and torchrun side by side.

    python bench/spares.py [--launchers corral,torchrun] [--cases kill,fail]

A real DDP training on gloo (examples/train_ddp.py's model, 1 worker per
node) runs as a 2:2 job of three agents on loopback, each its own node
(``--local-addr 127.0.0.1/2/3``, c10d on node 1's store; torchrun's node 1
gets ``--rdzv-conf is_host=1``): nodes 1 and 2 train, node 3 arrives once
they do and waits (the job is at MAX). Every worker writes the time, RANK,
GROUP_RANK and TORCHELASTIC_RESTART_COUNT of each attempt's first optimizer
step. Both launchers run with their defaults (corral: pre-started workers,
``--quarantine-after 2``).

(a) ``kill``: node 2's agent and its worker get SIGKILL. Figures:
    ``kill_to_spare_first_step`` (s: from the kill to the first training step
    of node 3's worker), ``restarts_used_after_kill`` (node 1's
    TORCHELASTIC_RESTART_COUNT in its next attempt: corral counts per job,
    torchrun per agent) and ``survivor_kept_rank`` (1 when node 1's RANK is
    the same before and after). Then the bench stops the training.
(b) ``fail``: node 2's worker raises 3 steps into every attempt,
    ``--max-restarts 5``; a healthy attempt trains 40 steps and ends.
    ``failing_node_job_finished`` is 1 when the job finished at full size
    (an attempt of 2 nodes trained its 40 steps and the healthy nodes'
    launchers exited 0; a job still running after 150 s is ended and counts
    0), else 0; ``failing_node_restarts_used`` the highest
    TORCHELASTIC_RESTART_COUNT any worker started with.

One run of each (a few minutes in all). Human lines first, then as the LAST
line one JSON object: {"bench": "spares", "figures": [{"name", "unit",
"corral", "torchrun", "ratio"}]}; a figure is null when its run failed.
"""

from __future__ import annotations

import argparse
import atexit
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _figures import figure, print_figures
from agents import kill_marked, kill_pids, pids_marked
from launch import _env as launch_env

LAUNCHERS: dict[str, list[str]] = {
    "corral": [sys.executable, "-m", "corral"],
    "torchrun": [sys.executable, "-m", "torch.distributed.run"],
}
MARK = "BENCH_SPARES_NODE"  # <work dir>:<node>, on each agent and its workers
STEPS = 40  # a healthy attempt of the fail case trains this many steps
FAIL_AT = 3
# torchrun's restarts fail here when its workers share the agent's store (bench/recovery.py)
TORCHRUN_ENV = {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}

TRAIN = r"""
import json, os, sys, time
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

IN, HIDDEN, OUT, BATCH = 64, 256, 8, 64
D = os.environ["BENCH_DIR"]
NODE = os.environ["BENCH_NODE"]
FAIL = os.environ.get("BENCH_FAIL") == "1"
STEPS = int(os.environ["BENCH_STEPS"])

def main():
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    torch.manual_seed(1234)
    model = nn.Sequential(nn.Linear(IN, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, OUT))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    ddp = DDP(model)
    loss_fn = nn.MSELoss()
    step = 0
    while True:
        if FAIL and step == @FAIL_AT@:
            raise RuntimeError(f"node {NODE} fails on purpose at step {step}")
        g = torch.Generator().manual_seed(step * 1009 + rank)
        x = torch.randn(BATCH, IN, generator=g)
        opt.zero_grad(set_to_none=True)
        loss_fn(ddp(x), torch.sin(x[:, :OUT])).backward()
        opt.step()
        if step == 0:
            rec = {"t": time.time(), "rank": rank, "group_rank": os.environ["GROUP_RANK"],
                   "world": world, "attempt": attempt}
            with open(os.path.join(D, f"first_{attempt}_{NODE}"), "w") as f:
                json.dump(rec, f)
        step += 1
        time.sleep(0.05)  # two shared cores: leave room for the launchers
        end = step >= STEPS or (rank == 0 and os.path.exists(os.path.join(D, "stop")))
        flag = torch.tensor([1 if end else 0])
        dist.all_reduce(flag)
        if flag.item():
            break
    if rank == 0:
        with open(os.path.join(D, f"done_{attempt}"), "w") as f:
            json.dump({"world": world, "steps": step}, f)
    dist.barrier()
    dist.destroy_process_group()

if __name__ == "__main__":
    main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # gloo can abort in the interpreter's teardown after a clean end
""".replace("@FAIL_AT@", str(FAIL_AT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Job:
    """Three agents of one 2:2 job (nodes 1-3 at 127.0.0.1-3) under ``launcher``."""

    def __init__(self, launcher: str, work: Path, script: Path, max_restarts: int) -> None:
        self.launcher, self.script, self.max_restarts = launcher, script, max_restarts
        self.dir = Path(tempfile.mkdtemp(prefix=f"{launcher}-", dir=work))
        self.port = free_port()
        self.agents: dict[int, subprocess.Popen[bytes]] = {}

    def start(self, n: int, **env: str) -> None:
        conf = "is_host=1" if n == 1 else "is_host=0"
        cmd = [
            *LAUNCHERS[self.launcher],
            "--nnodes", "2:2",
            "--nproc-per-node", "1",
            "--rdzv-backend", "c10d",
            "--rdzv-endpoint", f"127.0.0.1:{self.port}",
            "--rdzv-id", f"spares{self.port}",
            "--local-addr", f"127.0.0.{n}",
            "--max-restarts", str(self.max_restarts),
            *(["--rdzv-conf", conf] if self.launcher == "torchrun" else []),
            str(self.script),
        ]  # fmt: skip
        extra = {
            "BENCH_DIR": str(self.dir),
            "BENCH_NODE": str(n),
            "BENCH_STEPS": str(env.pop("steps", 10**9)),
            MARK: f"{self.dir}:{n}",
            **(TORCHRUN_ENV if self.launcher == "torchrun" else {}),
            **env,
        }
        with open(self.dir / f"agent{n}.err", "wb") as err:
            self.agents[n] = subprocess.Popen(
                cmd,
                env=launch_env({"LOGLEVEL": "WARNING", **extra}),
                stdout=subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,
            )

    def first(self, attempt: int | str, n: int) -> dict[str, object] | None:
        p = self.dir / f"first_{attempt}_{n}"
        try:
            return dict(json.loads(p.read_text()))
        except (OSError, ValueError):
            return None

    def firsts(self, n: int) -> list[dict[str, object]]:
        out = []
        for p in self.dir.glob(f"first_*_{n}"):
            try:
                out.append(dict(json.loads(p.read_text())))
            except (OSError, ValueError):
                continue  # being written
        return sorted(out, key=lambda r: float(str(r["t"])))

    def wait_for(self, pred: object, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred():  # type: ignore[operator]
                return True
            if all(a.poll() is not None for a in self.agents.values()):
                return bool(pred())  # type: ignore[operator]
            time.sleep(0.02)
        return False

    def end(self, timeout: float = 60) -> dict[int, int | None]:
        codes: dict[int, int | None] = {}
        deadline = time.monotonic() + timeout
        for n, a in self.agents.items():
            try:
                codes[n] = a.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                codes[n] = None
        for n in self.agents:
            kill_marked(MARK, f"{self.dir}:{n}")  # what is left (torchrun orphans workers)
        return codes

    def tail(self, n: int) -> str:
        text = (self.dir / f"agent{n}.err").read_text(errors="replace").strip().splitlines()
        return text[-1] if text else ""


def case_kill(launcher: str, work: Path, script: Path) -> dict[str, float]:
    job = Job(launcher, work, script, max_restarts=3)
    out: dict[str, float] = {}
    try:
        job.start(1)
        job.start(2)
        if not job.wait_for(lambda: job.first(0, 1) and job.first(0, 2), 120):
            print(f"  {launcher} kill: round 0 did not train: {job.tail(1)!r}")
            return out
        job.start(3)
        time.sleep(3.0)  # node 3 has joined and waits (the job is at MAX)
        before = job.first(0, 1)
        assert before is not None
        pids = pids_marked(MARK, f"{job.dir}:2")  # node 2's agent, its worker (and standbys)
        t_kill = time.time()
        kill_pids(pids)
        if not job.wait_for(lambda: job.firsts(3), 120):
            print(f"  {launcher} kill: the spare never trained: {job.tail(1)!r}")
            return out
        spare = job.firsts(3)[0]
        out["kill_to_spare"] = float(str(spare["t"])) - t_kill

        def survivor() -> dict[str, object] | None:  # node 1's first attempt after the kill
            return next((r for r in job.firsts(1) if float(str(r["t"])) > t_kill), None)

        job.wait_for(survivor, 30)
        after = survivor()
        if after is not None:
            # TORCHELASTIC_RESTART_COUNT on the survivor: torchrun counts per agent (the
            # spare's own count stays 0 there), corral per job (the same on every node)
            out["restarts"] = float(str(after["attempt"]))
        out["kept_rank"] = 1.0 if after is not None and after["rank"] == before["rank"] else 0.0
        print(
            f"  {launcher} kill: spare's first step {out['kill_to_spare']:.2f} s after the "
            f"kill (its restart count {spare['attempt']}, RANK {spare['rank']}); node 1: "
            f"RANK {before['rank']} -> {after['rank'] if after else '?'}, restart count "
            f"{after['attempt'] if after else '?'}"
        )
    finally:
        (job.dir / "stop").write_text("")
        codes = job.end()
        print(f"  {launcher} kill: exit codes {codes}")
    return out


def case_fail(launcher: str, work: Path, script: Path) -> dict[str, float]:
    job = Job(launcher, work, script, max_restarts=5)
    out: dict[str, float] = {}
    codes: dict[int, int | None] = {}
    try:
        job.start(1, steps=str(STEPS))
        job.start(2, steps=str(STEPS), BENCH_FAIL="1")
        job.wait_for(lambda: job.first(0, 1) or job.first(0, 2), 120)
        job.start(3, steps=str(STEPS))
        codes = job.end(timeout=150)  # a job that hangs is ended here
    finally:
        if not codes:
            job.end(timeout=1)
    done = [json.loads(p.read_text()) for p in job.dir.glob("done_*")]
    full = any(d["world"] == 2 and d["steps"] >= STEPS for d in done)
    healthy = [codes.get(1), codes.get(3)]
    attempts = [int(str(r["attempt"])) for n in (1, 2, 3) for r in job.firsts(n)]
    out["finished"] = 1.0 if full and healthy == [0, 0] else 0.0
    out["restarts"] = float(max(attempts, default=0))
    print(
        f"  {launcher} fail: exit codes {codes} (None: still running after 150 s, killed), "
        f"finished at full size: {'yes' if out['finished'] else 'no'}, last attempt's "
        f"restart count {int(out['restarts'])}"
    )
    for n in (1, 2, 3):
        print(f"    node {n}: {job.tail(n)[:200]!r}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--launchers", default="corral,torchrun")
    parser.add_argument("--cases", default="kill,fail")
    args = parser.parse_args()
    chosen = [n.strip() for n in args.launchers.split(",") if n.strip()]
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    work = Path(tempfile.mkdtemp(prefix="bench-spares-"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)  # however the bench ends
    script = work / "train.py"
    script.write_text(TRAIN)
    got: dict[str, dict[str, dict[str, float]]] = {c: {} for c in cases}
    for case in cases:
        for name in chosen:
            fn = case_kill if case == "kill" else case_fail
            got[case][name] = fn(name, work, script)
    rows = [
        ("kill", "kill_to_spare_first_step", "s", "kill_to_spare"),
        ("kill", "restarts_used_after_kill", "restarts", "restarts"),
        ("kill", "survivor_kept_rank", "yes=1", "kept_rank"),
        ("fail", "failing_node_job_finished", "yes=1", "finished"),
        ("fail", "failing_node_restarts_used", "restarts", "restarts"),
    ]
    figures: list[dict[str, object]] = []
    for case, name, unit, key in rows:
        if case not in cases:
            continue
        c = got[case].get("corral", {}).get(key)
        t = got[case].get("torchrun", {}).get(key)
        fig = figure(name, unit, c, t)
        print(f"{name:32s} corral {c}  torchrun {t} {unit}  ratio {fig['ratio']}", flush=True)
        figures.append(fig)
    print_figures("spares", figures)


if __name__ == "__main__":
    main()
