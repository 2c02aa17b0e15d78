"""Partitions and frozen agents: corral and torchrun side by side, on hosts built as namespaces.

    sudo python bench/partition.py [--reps 1] [--launchers corral,torchrun]
                                   [--rdzv-conf keep_alive_interval=1,keep_alive_max_attempt=5]
                                   [--bound 60] [--steps 2000]

Three hosts are network namespaces on one bridge (tests/netns_harness.py; needs
root and ``ip``); each runs one agent of a 2:3 job (``--rdzv-backend c10d``, the
store on host 1: corral's embedded store; torchrun's TCPStore, with
``is_host=1`` on host 1) with one worker: a small real data-parallel training
on gloo whose ranks log every step with the host's monotonic time. It is
deterministic whatever the world size and the restarts: each step's gradient
is the mean of 6 shards' gradients (a shard's batch a function of the step and
the shard only, its gradient computed alone), all-gathered and summed in shard
order; rank 0 writes a checkpoint (a file per step) every 50 steps, and every
rank resumes from the newest. It ends at step ``--steps``, where rank 0 writes
a hash of the final parameters. Host 3 is cut off by taking its port off the
bridge (silence: nothing errors), then healed; then host 3's agent is frozen
with SIGSTOP, then resumed with SIGCONT. Meanwhile a step is taken every
0.1 s; after the last case the training runs flat out to its end. Figures,
medians over the repetitions:

(a) ``partition_to_survivors_step``: from the cut to host 1's first step at
    WORLD_SIZE 2;
(b) ``heal_to_rejoined_step``: from the heal to host 3's first step at
    WORLD_SIZE 3;
(c) ``sigstop_to_survivors_step``: from the SIGSTOP to host 1's first step at
    WORLD_SIZE 2;
(d) ``sigcont_to_stale_gone``: from the SIGCONT to the exit of host 3's stale
    worker;
(e) ``bit_identical`` (yes=1): the final parameters' hash equals that of the
    same training run without a fault (a plain 2-rank ``corral --standalone``
    run, once per invocation), in every repetition. corral: 1 or 0 (0 too
    when its job did not end); torchrun: null where its job never reached the
    end.

A figure (a) to (d) is null when it did not happen within ``--bound`` seconds
(and the cases after it are not run for that launcher; the training is then
let run to its end all the same). Targets (docs/rendezvous.md,
"Silence"): (a), (c) <= membership timeout + 5 s; (b) <= 10 s. Human lines
first, then as the LAST line one JSON object: {"bench": "partition",
"figures": [...]}.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))

from _figures import figure, print_figures  # noqa: E402
from tests.netns_harness import IFACE, Hosts, sweep_leftovers, unavailable  # noqa: E402

TRAIN = r"""
import hashlib, os, sys, time
import torch, torch.distributed as dist
from torch import nn

d, end = sys.argv[1], int(sys.argv[2])
SHARDS, EVERY, SEED = 6, 50, 23  # 6 shards a step: 3 or 2 per rank at WORLD_SIZE 2 or 3
torch.set_num_threads(1)
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
torch.manual_seed(SEED)
model = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 4))
target = torch.randn(16, 4, generator=torch.Generator().manual_seed(SEED))
opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
params = list(model.parameters())
ck = os.path.join(d, "ckpt")
os.makedirs(ck, exist_ok=True)
# A checkpoint per step, never rewritten but with the same bits (by a stale rank 0 too):
# rank 0 picks the newest, and every rank loads that one.
done = [int(n[:-3]) for n in os.listdir(ck) if n.endswith(".pt")] if rank == 0 else []
start = torch.tensor([max(done) + 1 if done else 0])
dist.broadcast(start, 0)
start = int(start.item())
if start:
    state = torch.load(os.path.join(ck, f"{start - 1}.pt"), weights_only=True)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optim"])
go = os.path.join(d, "go")
with open(os.path.join(d, "h" + os.environ["HARNESS_HOST"]), "a", buffering=1) as out:
    for step in range(start, end):
        # shard k's batch is a function of (step, k) only, its gradient computed alone; the
        # gradients of all shards are gathered and summed in shard order: the same bits
        # whatever the world size and whichever rank computed them
        grads = []
        for k in range(rank, SHARDS, world):
            g = torch.Generator().manual_seed(SEED * 1_000_003 + step * 1009 + k)
            x = torch.randn(8, 16, generator=g)
            loss = ((model(x) - torch.sin(x @ target)) ** 2).mean()
            grads.append(torch.cat([t.reshape(-1) for t in torch.autograd.grad(loss, params)]))
        mine = torch.stack(grads)
        parts = [torch.empty_like(mine) for _ in range(world)]
        dist.all_gather(parts, mine)  # rank r holds shards r, r + world, ...
        total = parts[0][0].clone()
        for k in range(1, SHARDS):
            total.add_(parts[k % world][k // world])
        total.div_(SHARDS)
        off = 0
        for p in params:
            p.grad = total[off : off + p.numel()].view_as(p).clone()
            off += p.numel()
        opt.step()
        if rank == 0 and (step + 1) % EVERY == 0:
            tmp = os.path.join(ck, f"{step}.tmp{os.getpid()}")
            torch.save({"model": model.state_dict(), "optim": opt.state_dict()}, tmp)
            os.replace(tmp, os.path.join(ck, f"{step}.pt"))
        out.write(f"{time.monotonic():.3f} {world} {step} {os.getpid()}\n")
        if not os.path.exists(go):
            time.sleep(0.1)  # paced while the faults run; flat out to the end after
if rank == 0:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(bytes(t.detach().contiguous().view(-1).view(torch.uint8).tolist()))
    with open(os.path.join(d, "final.tmp"), "w") as f:
        f.write(h.hexdigest())
    os.replace(os.path.join(d, "final.tmp"), os.path.join(d, "final"))
dist.barrier()
dist.destroy_process_group()
sys.stdout.flush()
os._exit(0)  # no gloo teardown at interpreter exit (it can abort a finished run)
"""

NAMES = (
    "partition_to_survivors_step",
    "heal_to_rejoined_step",
    "sigstop_to_survivors_step",
    "sigcont_to_stale_gone",
)
BIT = "bit_identical"


class Run:
    """One launcher's 2:3 job on three fresh hosts."""

    def __init__(self, launcher: str, conf: str, d: Path, steps: int) -> None:
        self.hosts = Hosts(3)
        self.d = d
        (d / "train.py").write_text(TRAIN)
        self.agents: dict[int, subprocess.Popen[bytes]] = {}
        for i in (1, 2, 3):
            self.agents[i] = self._start(launcher, conf, i, steps)

    def _start(self, launcher: str, conf: str, i: int, steps: int) -> subprocess.Popen[bytes]:
        h = self.hosts[i]
        mod = "corral" if launcher == "corral" else "torch.distributed.run"
        rconf = conf + (",is_host=1" if launcher == "torchrun" and i == 1 else "")
        cmd = [sys.executable, "-m", mod, "--nnodes", "2:3", "--nproc-per-node", "1",
               "--rdzv-backend", "c10d", "--rdzv-endpoint", f"{self.hosts[1].addr}:29400",
               "--rdzv-id", "bench", "--local-addr", h.addr, "--max-restarts", "20",
               "--rdzv-conf", rconf, str(self.d / "train.py"), str(self.d), str(steps)]  # fmt: skip
        env = clean_env(HARNESS_HOST=str(i))
        with open(self.d / f"{launcher}{i}.log", "ab") as log:
            return subprocess.Popen(self.hosts.wrap(i, cmd), stdout=log, stderr=log, env=env,
                                    start_new_session=True)  # fmt: skip

    def steps(self, i: int) -> list[tuple[float, int, int]]:
        """Host i's steps: (monotonic time, world size, worker pid)."""
        path = self.d / f"h{i}"
        rows = []
        for line in path.read_text().splitlines() if path.exists() else []:
            f = line.split()
            if len(f) == 4:
                rows.append((float(f[0]), int(f[1]), int(f[3])))
        return rows

    def first_at(self, i: int, world: int, after: float) -> float | None:
        return next((t for t, w, _ in self.steps(i) if t > after and w == world), None)

    def close(self) -> None:
        for p in self.agents.values():
            with_suppress(lambda p=p: os.kill(p.pid, signal.SIGCONT))
            p.kill()
            p.wait(timeout=10)
        self.hosts.close()


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PET_", "TORCHELASTIC_"))}
    env.update(GLOO_SOCKET_IFNAME=IFACE, PYTHONUNBUFFERED="1", **extra)
    return env


def reference(steps: int) -> str:
    """The final parameters' hash of the training run without a fault: a plain 2-rank
    corral run (``--standalone``, on one fresh host), flat out."""
    d = Path(tempfile.mkdtemp(prefix="partition-ref-"))
    hosts = Hosts(1)
    try:
        (d / "train.py").write_text(TRAIN)
        (d / "go").touch()
        cmd = [sys.executable, "-m", "corral", "--standalone", "--nproc-per-node", "2",
               str(d / "train.py"), str(d), str(steps)]  # fmt: skip
        r = subprocess.run(hosts.wrap(1, cmd), capture_output=True, text=True, timeout=300,
                           env=clean_env(HARNESS_HOST="ref"))  # fmt: skip
        if r.returncode != 0 or not (d / "final").exists():
            sys.exit(f"bench/partition.py: the reference run failed:\n{r.stderr[-3000:]}")
        return (d / "final").read_text()
    finally:
        hosts.close()
        shutil.rmtree(d, ignore_errors=True)


def with_suppress(fn: Callable[[], object]) -> None:
    try:
        fn()
    except OSError:
        pass


def until(cond: Callable[[], float | None], bound: float) -> float | None:
    end = time.monotonic() + bound
    while time.monotonic() < end:
        v = cond()
        if v is not None:
            return v
        time.sleep(0.05)
    return None


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def faults(launcher: str, run: Run, bound: float, out: dict[str, float | None]) -> None:
    """The four cases in turn, each figure into ``out``; stops at the first that fails."""
    if until(lambda: run.first_at(3, 3, 0) and run.first_at(1, 3, 0), bound) is None:
        print(f"{launcher}: never trained at world 3", flush=True)
        return
    cut = time.monotonic()
    run.hosts.cut(3)
    t = until(lambda: run.first_at(1, 2, cut), bound)
    heal = time.monotonic()
    run.hosts.heal(3)
    if t is None:
        print(f"{launcher}: no step at WORLD_SIZE 2 within {bound:.0f} s of the cut", flush=True)
        return
    out[NAMES[0]] = t - cut
    t = until(lambda: run.first_at(3, 3, heal), bound)
    if t is None:
        print(f"{launcher}: host 3 not back within {bound:.0f} s of the heal", flush=True)
        return
    out[NAMES[1]] = t - heal
    time.sleep(2)  # a steady round before the next fault
    stale = run.steps(3)[-1][2]
    stop = time.monotonic()
    os.kill(run.agents[3].pid, signal.SIGSTOP)
    t = until(lambda: run.first_at(1, 2, stop), bound)
    cont = time.monotonic()
    os.kill(run.agents[3].pid, signal.SIGCONT)
    if t is None:
        print(f"{launcher}: no step at WORLD_SIZE 2 within {bound:.0f} s of SIGSTOP", flush=True)
        return
    out[NAMES[2]] = t - stop
    gone = until(lambda: None if alive(stale) else time.monotonic(), bound)
    out[NAMES[3]] = None if gone is None else gone - cont


def one(launcher: str, conf: str, bound: float, steps: int, ref: str) -> dict[str, float | None]:
    out: dict[str, float | None] = dict.fromkeys((*NAMES, BIT))
    d = Path(tempfile.mkdtemp(prefix="partition-"))
    run = Run(launcher, conf, d, steps)
    try:
        faults(launcher, run, bound, out)
        # then the training runs flat out to its last step; rank 0 writes the final hash
        (d / "go").touch()
        done = until(
            lambda: 1.0 if all(p.poll() is not None for p in run.agents.values()) else None,
            bound + steps * 0.05,
        )
        final = (d / "final").read_text() if (d / "final").exists() else None
        codes = [p.poll() for p in run.agents.values()]
        print(f"{launcher}: agents' exit codes {codes}, final hash {final} (reference {ref})",
              flush=True)  # fmt: skip
        if done is None:
            print(f"{launcher}: the job did not end within its bound", flush=True)
        if final is not None:
            out[BIT] = float(final == ref)
        elif launcher == "corral":
            out[BIT] = 0.0  # corral must end the training: not ending is a failure
        return out
    finally:
        run.close()
        shutil.rmtree(d, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--launchers", default="corral,torchrun")
    parser.add_argument("--rdzv-conf", default="keep_alive_interval=1,keep_alive_max_attempt=5")
    parser.add_argument("--bound", type=float, default=60.0, help="seconds to wait for each case")
    parser.add_argument("--steps", type=int, default=2000, help="the training's last step")
    args = parser.parse_args()
    why = unavailable()
    if why:
        sys.exit(f"bench/partition.py: {why}")
    sweep_leftovers()
    ref = reference(args.steps)
    print(f"reference (2 ranks, no fault): final hash {ref}", flush=True)
    results: dict[str, list[dict[str, float | None]]] = {}
    for launcher in args.launchers.split(","):
        for rep in range(args.reps):
            r = one(launcher, args.rdzv_conf, args.bound, args.steps, ref)
            shown = ", ".join(f"{k} {'-' if v is None else f'{v:.2f}'}" for k, v in r.items())
            print(f"{launcher} rep {rep}: {shown}", flush=True)
            results.setdefault(launcher, []).append(r)

    def med(launcher: str, name: str) -> float | None:
        vals = [r[name] for r in results.get(launcher, [])]
        got = [v for v in vals if v is not None]
        return statistics.median(got) if got and len(got) * 2 > len(vals) else None

    def every(launcher: str) -> float | None:
        """1.0 where every repetition that ran to the end was bit-identical."""
        got = [r[BIT] for r in results.get(launcher, []) if r[BIT] is not None]
        return min(got) if got else None

    figures = [figure(n, "s", med("corral", n), med("torchrun", n)) for n in NAMES]
    print_figures("partition", [*figures, figure(BIT, "yes=1", every("corral"), every("torchrun"))])


if __name__ == "__main__":
    main()
