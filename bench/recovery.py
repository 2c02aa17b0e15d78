"""Recovery of a real DDP training: corral (defaults, and --no-prestart) and torchrun side by side.

    python bench/recovery.py [--reps 3] [--launchers corral,corral-fresh,torchrun]
                             [--variants record,plain]

A DDP training on gloo (2 workers, the model of examples/train_ddp.py, a
checkpoint every 20 steps) crashes on rank 1 at step 60 of the first attempt,
raising through torch's ``record`` (variant ``record``) or with no decorator
at all, as most scripts have none (variant ``plain``: figures named
``..._no_record``); the launcher restarts it (``--max-restarts 1``),
it resumes from the checkpoint and trains for 4 more seconds. A run whose
restart fails (torchrun's stale store, in most runs here) is tried again, up
to 3 times, and counted. Figures, medians
over the repetitions:

(a) ``launch_to_first_step``: from the launcher's start to the moment every
    rank has finished its first optimizer step;
(b) ``crash_to_next_first_step``: from the crash (the raising rank's own
    time.time()) to every rank's first step of the next attempt;
(c) ``steps_per_s_after_restart``: rank 0's optimizer steps per second over
    the restarted attempt (4 s from its first step), in which corral prepares
    the next attempt's standbys (and, not waiting for it, the failed attempt's
    workers finish dying); ``steady_steps_per_s_after_restart``: the same from
    1 s after the first step on, past that overlap;
(d) ``standby_uss`` / ``standbys_pss``: the memory the machine pays for the
    pre-started workers, read once while the next attempt's standbys wait
    (after the timed part): the unique set size of the largest waiting
    standby or zygote (its private pages, what killing it would free), and the
    sum of the proportional set sizes of the zygote and the waiting standbys
    (shared pages split between the processes that share them, workers
    included); not RSS, which counts shared pages once per process (corral only).

``corral`` is ``python -m corral`` with its defaults (pre-started workers), ``corral-fresh`` the same with
``--no-prestart``, ``torchrun`` is ``python -m torch.distributed.run``; all
get the same script and environment. Human lines first, then as the LAST line
one JSON object: {"bench": "recovery", "figures": [{"name", "unit", "corral",
"torchrun", "ratio"}]} ("corral" is corral's defaults; the corral-fresh
figures are their own rows, named ``..._no_prestart``; a figure is null when
that launcher failed in most repetitions).
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _figures import figure, print_figures
from agents import kill_marked
from launch import _env as launch_env

LAUNCHERS: dict[str, list[str]] = {
    "corral": [sys.executable, "-m", "corral"],
    "corral-fresh": [sys.executable, "-m", "corral", "--no-prestart"],
    "torchrun": [sys.executable, "-m", "torch.distributed.run"],
}

CRASH_STEP = 60
AFTER = 4.0  # the restarted attempt trains this long after its first step, then ends
TRIES = 3  # a launcher whose restart fails (torchrun's stale store) is tried again

# examples/train_ddp.py's model and data, instrumented: first-step times, a step log.
TRAIN = r"""
import json, os, sys, time
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.elastic.multiprocessing.errors import record
from torch.nn.parallel import DistributedDataParallel as DDP

IN, HIDDEN, OUT, BATCH = 64, 256, 8, 64
D = os.environ["BENCH_DIR"]

def batch(step, rank):
    g = torch.Generator().manual_seed(1234 * 1_000_003 + step * 1009 + rank)
    x = torch.randn(BATCH, IN, generator=g)
    w = torch.randn(IN, OUT, generator=torch.Generator().manual_seed(1234))
    return x, torch.sin(x @ w)

@record
def main():
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    torch.manual_seed(1234)
    model = nn.Sequential(nn.Linear(IN, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, HIDDEN), nn.Tanh(),
                          nn.Linear(HIDDEN, OUT))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    ckpt = os.path.join(D, "ckpt.pt")
    start = 0
    if os.path.exists(ckpt):
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"]); opt.load_state_dict(state["optim"])
        start = int(state["step"]) + 1
    ddp = DDP(model)
    dist.barrier()
    loss_fn = nn.MSELoss()
    times = []
    t_end = None
    step = start
    try:
        while True:
            if attempt == "0" and step == CRASH_STEP and rank == 1:
                with open(os.path.join(D, "crash"), "w") as f:
                    f.write(repr(time.time()))
                raise RuntimeError(f"injected crash at step {step}")
            x, y = batch(step, rank)
            opt.zero_grad(set_to_none=True)
            loss_fn(ddp(x), y).backward()
            opt.step()
            now = time.time()
            times.append(now)
            if len(times) == 1:
                with open(os.path.join(D, f"first_{attempt}_{rank}"), "w") as f:
                    f.write(repr(now))
                t_end = now + AFTER
            if rank == 0 and (step + 1) % 20 == 0:
                tmp = ckpt + ".tmp"
                torch.save({"model": model.state_dict(), "optim": opt.state_dict(), "step": step}, tmp)
                os.replace(tmp, ckpt)
            step += 1
            # every rank stops at the same step: rank 0 decides and tells the others
            stop = torch.tensor([1 if (attempt != "0" and rank == 0 and now >= t_end) else 0])
            dist.all_reduce(stop)
            if stop.item():
                break
        if rank == 0:
            with open(os.path.join(D, f"steps_{attempt}"), "w") as f:
                json.dump(times, f)
        dist.barrier()
    finally:
        del ddp
        dist.destroy_process_group()

if __name__ == "__main__":
    main()
    # gloo can abort in the interpreter's teardown after a clean end (exit 134): skip it
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
"""


# torchrun's restart fails in most runs here when its workers share the agent's
# store (stale keys of the first attempt: the defect corral fixes); its documented
# switch turns that sharing off, so that torchrun's figures exist at all.
TORCHRUN_ENV = {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}


def _env(extra: dict[str, str]) -> dict[str, str]:
    return launch_env({"LOGLEVEL": "WARNING", **extra})


def _standby_memory(agent: int) -> tuple[int, int]:
    """KiB: (the largest USS of one standby, the PSS of all of them) now.

    A standby is a child of the agent running _standby_boot.py (the zygote's
    forks are re-parented to the agent); USS is Private_Clean + Private_Dirty
    and PSS is Pss, both from /proc/<pid>/smaps_rollup.
    """
    uss_max = pss_sum = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
            if b"_standby_boot.py" not in cmd:
                continue
            stat = Path(f"/proc/{entry}/stat").read_text()
            if int(stat.rpartition(")")[2].split()[1]) != agent:
                continue
            # a pre-started worker keeps the standby's command line: a standby still
            # waiting (or the zygote) writes to its own unlinked temporary file
            if not os.readlink(f"/proc/{entry}/fd/1").endswith("(deleted)"):
                continue
            fields = {}
            for line in Path(f"/proc/{entry}/smaps_rollup").read_text().splitlines()[1:]:
                key, _, rest = line.partition(":")
                fields[key] = int(rest.split()[0])
        except (OSError, ValueError, IndexError):
            continue
        uss_max = max(uss_max, fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0))
        pss_sum += fields.get("Pss", 0)
    return uss_max, pss_sum


def _end(proc: subprocess.Popen[bytes], bench_dir: str) -> None:
    """Kill the launcher if it still runs, and any worker it left (torchrun orphans them)."""
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    kill_marked("BENCH_DIR", bench_dir)


def one_run(launcher: str, script: Path) -> dict[str, float] | None:
    with tempfile.TemporaryDirectory(prefix="bench-recovery-") as d:
        cmd = [
            *LAUNCHERS[launcher],
            "--standalone",
            "--nproc-per-node",
            "2",
            "--max-restarts",
            "1",
            "--monitor-interval",
            "0.1",
            str(script),
        ]
        err_file = Path(d, "launcher.err")
        t0 = time.time()
        with open(err_file, "w") as err_out:
            proc = subprocess.Popen(
                cmd,
                env=_env({"BENCH_DIR": d, **(TORCHRUN_ENV if launcher == "torchrun" else {})}),
                stdout=subprocess.DEVNULL,
                stderr=err_out,
                start_new_session=True,  # its process group: what it leaves behind is ended
            )
        uss = pss = 0
        deadline = time.monotonic() + 120
        sampled = False
        while proc.poll() is None and time.monotonic() < deadline:
            # smaps_rollup walks a process's page tables under its mmap lock: read it
            # once, when the timed part is over (the restarted attempt has written its
            # steps) and the next attempt's standbys wait, or the bench would slow the
            # training it measures
            if launcher == "corral" and not sampled and Path(d, "steps_1").exists():
                sampled = True
                uss, pss = _standby_memory(proc.pid)
            time.sleep(0.05)
        _end(proc, d)
        err = err_file.read_text(errors="replace")
        files = set(os.listdir(d))
        need = {"crash", "first_0_0", "first_0_1", "first_1_0", "first_1_1", "steps_1"}
        if proc.returncode != 0 or not need <= files:
            tail = err.strip().splitlines()[-1:]
            print(f"  {launcher}: exit {proc.returncode}, missing {sorted(need - files)}: {tail}")
            return None
        read = lambda name: float(Path(d, name).read_text())  # noqa: E731
        steps: list[float] = json.loads(Path(d, "steps_1").read_text())
        span = steps[-1] - steps[0]
        out = {
            "launch": max(read("first_0_0"), read("first_0_1")) - t0,
            "recovery": max(read("first_1_0"), read("first_1_1")) - read("crash"),
            "steps_per_s": (len(steps) - 1) / span if span > 0 else 0.0,
        }
        # the same from 1 s after the first step on: past the overlap with the failed
        # workers' teardown (which --prestart does not wait for) and the next standby's start
        steady = [t for t in steps if t >= steps[0] + 1.0]
        if len(steady) > 1 and steady[-1] > steady[0]:
            out["steady_steps_per_s"] = (len(steady) - 1) / (steady[-1] - steady[0])
        if launcher == "corral":
            out["uss"] = uss / 1024
            out["pss"] = pss / 1024
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--launchers", default="corral,corral-fresh,torchrun")
    parser.add_argument("--variants", default="record,plain")
    args = parser.parse_args()
    chosen = [n.strip() for n in args.launchers.split(",") if n.strip()]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    work = Path(tempfile.mkdtemp(prefix="bench-recovery-"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)  # however the bench ends
    text = TRAIN.replace("CRASH_STEP", str(CRASH_STEP)).replace("AFTER", repr(AFTER))
    scripts = {"record": work / "train.py", "plain": work / "train_plain.py"}
    scripts["record"].write_text(text)
    # no decorator: the exception reaches the top of the script uncaught
    scripts["plain"].write_text(text.replace("@record\n", ""))
    runs: dict[str, list[dict[str, float]]] = {
        f"{n}/{v}": [] for n in LAUNCHERS for v in ("record", "plain")
    }
    failures = dict.fromkeys(runs, 0)
    for _ in range(args.reps):  # alternate the launchers, so drifts of the machine spread evenly
        for variant in variants:
            for name in LAUNCHERS:
                if name in chosen:
                    for _ in range(TRIES):
                        r = one_run(name, scripts[variant])
                        if r is not None:
                            runs[f"{name}/{variant}"].append(r)
                            break
                        failures[f"{name}/{variant}"] += 1

    def med(name: str, key: str) -> float | None:
        vals = [r[key] for r in runs[name] if key in r]
        if len(vals) < max(1, args.reps // 2 + 1):
            return None
        return statistics.median(vals)

    rows = []
    for variant, suffix in (("record", ""), ("plain", "_no_record")):
        if variant not in variants:
            continue
        for who, mode in (("corral", ""), ("corral-fresh", "_no_prestart")):
            rows += [
                (f"launch_to_first_step{mode}{suffix}", "s", "launch", who, variant),
                (f"crash_to_next_first_step{mode}{suffix}", "s", "recovery", who, variant),
                (
                    f"steps_per_s_after_restart{mode}{suffix}",
                    "steps/s",
                    "steps_per_s",
                    who,
                    variant,
                ),
                (
                    f"steady_steps_per_s_after_restart{mode}{suffix}",
                    "steps/s",
                    "steady_steps_per_s",
                    who,
                    variant,
                ),
            ]
    rows += [
        ("standby_uss", "MiB", "uss", "corral", variants[0]),
        ("standbys_pss", "MiB", "pss", "corral", variants[0]),
    ]
    for key in runs:
        if key.split("/")[0] in chosen and key.split("/")[1] in variants:
            print(f"{key}: {len(runs[key])} good run(s), {failures[key]} failed run(s)")
    figures: list[dict[str, object]] = []
    for fig, unit, key, who, variant in rows:
        c = med(f"{who}/{variant}", key)
        t = med(f"torchrun/{variant}", key) if key not in ("uss", "pss") else None
        ratio = c / t if c is not None and t else None
        shown = f"{who} {c:.3f}" if c is not None else f"{who} n/a"
        shown += f"  torchrun {t:.3f}" if t is not None else "  torchrun n/a"
        print(f"{fig:44s} {shown} {unit}" + (f"  ratio {ratio:.2f}" if ratio else ""), flush=True)
        figures.append(figure(fig, unit, c, t))
    print_figures("recovery", figures)


if __name__ == "__main__":
    main()
