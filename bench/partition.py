"""Partitions and frozen agents: corral and torchrun side by side, on hosts built as namespaces.

    sudo python bench/partition.py [--reps 1] [--launchers corral,torchrun]
                                   [--rdzv-conf keep_alive_interval=1,keep_alive_max_attempt=5]
                                   [--bound 60]

Three hosts are network namespaces on one bridge (tests/netns_harness.py; needs
root and ``ip``); each runs one agent of a 2:3 job (``--rdzv-backend c10d``, the
store on host 1: corral's embedded store; torchrun's TCPStore, with
``is_host=1`` on host 1) with one worker: a small real training on gloo
(an all-reduce per step, a step every 0.1 s), whose ranks log every step with
the host's monotonic time. Host 3 is cut off by taking its port off the bridge
(silence: nothing errors), then healed; then host 3's agent is frozen with
SIGSTOP, then resumed with SIGCONT. Figures, medians over the repetitions:

(a) ``partition_to_survivors_step``: from the cut to host 1's first step at
    WORLD_SIZE 2;
(b) ``heal_to_rejoined_step``: from the heal to host 3's first step at
    WORLD_SIZE 3;
(c) ``sigstop_to_survivors_step``: from the SIGSTOP to host 1's first step at
    WORLD_SIZE 2;
(d) ``sigcont_to_stale_gone``: from the SIGCONT to the exit of host 3's stale
    worker.

A figure is null when it did not happen within ``--bound`` seconds (and the
cases after it are not run for that launcher). Targets (docs/rendezvous.md,
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
import os, sys, time
import torch, torch.distributed as dist
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
with open(os.path.join(sys.argv[1], "h" + os.environ["HARNESS_HOST"]), "a", buffering=1) as out:
    step = 0
    while True:
        t = torch.ones(1)
        dist.all_reduce(t)
        out.write(f"{time.monotonic():.3f} {world} {step} {os.getpid()}\n")
        step += 1
        time.sleep(0.1)
"""

NAMES = (
    "partition_to_survivors_step",
    "heal_to_rejoined_step",
    "sigstop_to_survivors_step",
    "sigcont_to_stale_gone",
)


class Run:
    """One launcher's 2:3 job on three fresh hosts."""

    def __init__(self, launcher: str, conf: str, d: Path) -> None:
        self.hosts = Hosts(3)
        self.d = d
        (d / "train.py").write_text(TRAIN)
        self.agents: dict[int, subprocess.Popen[bytes]] = {}
        for i in (1, 2, 3):
            self.agents[i] = self._start(launcher, conf, i)

    def _start(self, launcher: str, conf: str, i: int) -> subprocess.Popen[bytes]:
        h = self.hosts[i]
        mod = "corral" if launcher == "corral" else "torch.distributed.run"
        rconf = conf + (",is_host=1" if launcher == "torchrun" and i == 1 else "")
        cmd = [sys.executable, "-m", mod, "--nnodes", "2:3", "--nproc-per-node", "1",
               "--rdzv-backend", "c10d", "--rdzv-endpoint", f"{self.hosts[1].addr}:29400",
               "--rdzv-id", "bench", "--local-addr", h.addr, "--max-restarts", "20",
               "--rdzv-conf", rconf, str(self.d / "train.py"), str(self.d)]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PET_", "TORCHELASTIC_"))}
        env.update(GLOO_SOCKET_IFNAME=IFACE, HARNESS_HOST=str(i), PYTHONUNBUFFERED="1")
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


def one(launcher: str, conf: str, bound: float) -> dict[str, float | None]:
    out: dict[str, float | None] = dict.fromkeys(NAMES)
    d = Path(tempfile.mkdtemp(prefix="partition-"))
    run = Run(launcher, conf, d)
    try:
        if until(lambda: run.first_at(3, 3, 0) and run.first_at(1, 3, 0), bound) is None:
            print(f"{launcher}: never trained at world 3", flush=True)
            return out
        cut = time.monotonic()
        run.hosts.cut(3)
        t = until(lambda: run.first_at(1, 2, cut), bound)
        heal = time.monotonic()
        run.hosts.heal(3)
        if t is None:
            print(
                f"{launcher}: no step at WORLD_SIZE 2 within {bound:.0f} s of the cut", flush=True
            )
            return out
        out[NAMES[0]] = t - cut
        t = until(lambda: run.first_at(3, 3, heal), bound)
        if t is None:
            print(f"{launcher}: host 3 not back within {bound:.0f} s of the heal", flush=True)
            return out
        out[NAMES[1]] = t - heal
        time.sleep(2)  # a steady round before the next fault
        stale = run.steps(3)[-1][2]
        stop = time.monotonic()
        os.kill(run.agents[3].pid, signal.SIGSTOP)
        t = until(lambda: run.first_at(1, 2, stop), bound)
        cont = time.monotonic()
        os.kill(run.agents[3].pid, signal.SIGCONT)
        if t is None:
            print(
                f"{launcher}: no step at WORLD_SIZE 2 within {bound:.0f} s of SIGSTOP", flush=True
            )
            return out
        out[NAMES[2]] = t - stop
        gone = until(lambda: None if alive(stale) else time.monotonic(), bound)
        out[NAMES[3]] = None if gone is None else gone - cont
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
    args = parser.parse_args()
    why = unavailable()
    if why:
        sys.exit(f"bench/partition.py: {why}")
    sweep_leftovers()
    results: dict[str, list[dict[str, float | None]]] = {}
    for launcher in args.launchers.split(","):
        for rep in range(args.reps):
            r = one(launcher, args.rdzv_conf, args.bound)
            shown = ", ".join(f"{k} {'-' if v is None else f'{v:.2f}s'}" for k, v in r.items())
            print(f"{launcher} rep {rep}: {shown}", flush=True)
            results.setdefault(launcher, []).append(r)

    def med(launcher: str, name: str) -> float | None:
        vals = [r[name] for r in results.get(launcher, [])]
        got = [v for v in vals if v is not None]
        return statistics.median(got) if got and len(got) * 2 > len(vals) else None

    print_figures(
        "partition", [figure(n, "s", med("corral", n), med("torchrun", n)) for n in NAMES]
    )


if __name__ == "__main__":
    main()
