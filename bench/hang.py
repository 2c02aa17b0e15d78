"""Hang benchmarks: corral (--hang-timeout) and torchrun side by side (docs/hangs.md).

    python bench/hang.py [--reps 3] [--torchrun-wait 120] [--steps 20000]

(a) hang to recovery: 2 agents x 2 gloo workers (127.0.0.1 and 127.0.0.2, in a
    private network namespace when ``unshare --net`` is allowed), a training loop
    that all-reduces and steps an SGD optimizer; on the first attempt rank 3
    stops at step 20 (it records its time.time() and sleeps forever). The figure
    is the time from that moment to every worker of the next attempt running (the
    latest of their time.time() at start). corral runs with ``--hang-timeout 5
    --max-restarts 1`` (target: under 8 s). torchrun has no hang detector: it is
    given ``--torchrun-wait`` seconds, then stopped, and its figure is null
    ("not detected within N s").
(b) the cost of progress tracking: optimizer steps per second of a tiny training
    (one worker, a 16x16 linear layer, SGD, ``--steps`` steps timed inside the
    worker) under corral with ``--hang-timeout 60`` and without, and under
    torchrun (no tracking); runs alternate, medians over ``--reps``. The overhead
    figure is corral's off/on slowdown in percent (target: within 2 %); whole runs
    on a shared machine vary by a few percent, so a second figure measures the
    hook's cost inside one process: steps with the hook registered against steps
    without, alternating, each the best of three. Either is a few microseconds
    on a 130 us step (see INPROC), nothing on a step of milliseconds.

Human lines first, then as the LAST line one JSON object: {"bench": "hang",
"figures": [{"name", "unit", "corral", "torchrun", "ratio"}]} (null where a
launcher has no figure).
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _figures import figure, print_figures
from launch import _env

LAUNCHERS: dict[str, list[str]] = {
    "corral": [sys.executable, "-m", "corral"],
    "torchrun": [sys.executable, "-m", "torch.distributed.run"],
}

# Attempt 0: every rank trains; rank 3 records the moment it hangs at step 20 and sleeps
# forever (the others block in their next all-reduce). Attempt 1: each worker records its
# start and exits at once.
HANGER = """\
import os, sys, time
t0 = time.time()
d = os.environ["BENCH_DIR"]
rank = int(os.environ["RANK"])
attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
with open(os.path.join(d, f"start_{attempt}_{rank}"), "w") as f:
    f.write(repr(t0))
if attempt != "0":
    sys.exit(0)
import torch
import torch.distributed as dist
torch.set_num_threads(1)
dist.init_process_group("gloo")
m = torch.nn.Linear(16, 16)
opt = torch.optim.SGD(m.parameters(), lr=0.01)
for step in range(1_000_000):
    if rank == 3 and step == 20:
        with open(os.path.join(d, "hung"), "w") as f:
            f.write(repr(time.time()))
        while True:
            time.sleep(3600)
    loss = m(torch.ones(16)).sum()
    loss.backward()
    for p in m.parameters():
        dist.all_reduce(p.grad)
    opt.step()
    opt.zero_grad()
    time.sleep(0.01)
"""

# Steps per second of a tiny training, timed inside the worker.
STEPPER = """\
import os, time, torch
torch.set_num_threads(1)
m = torch.nn.Linear(16, 16)
opt = torch.optim.SGD(m.parameters(), lr=0.001)
x = torch.ones(16)
n = int(os.environ["BENCH_STEPS"])
for _ in range(200):
    opt.zero_grad(); m(x).sum().backward(); opt.step()
t = time.perf_counter()
for _ in range(n):
    opt.zero_grad(); m(x).sum().backward(); opt.step()
rate = n / (time.perf_counter() - t)
with open(os.path.join(os.environ["BENCH_DIR"], "rate"), "w") as f:
    f.write(repr(rate))
"""


# The per-step cost of the hook inside a training step: blocks of steps with corral's hook
# registered (as --hang-timeout installs it) and without, alternating, each the best of
# three. Called alone (timeit) the hook takes about 0.15 us; inside a step it costs a few
# us more, the cache misses of code the step's own work evicted, so it is measured there.
INPROC = """\
import os, time, torch
import corral.progress as progress
from torch.optim.optimizer import register_optimizer_step_post_hook
torch.set_num_threads(1)
m = torch.nn.Linear(16, 16)
opt = torch.optim.SGD(m.parameters(), lr=0.001)
x = torch.ones(16)
n = int(os.environ["BENCH_STEPS"]) // 20
def block():
    t = time.perf_counter()
    for _ in range(n):
        opt.zero_grad(); m(x).sum().backward(); opt.step()
    return (time.perf_counter() - t) / n
block()
off, on = [], []
for _ in range(6):
    off.append(min(block() for _ in range(3)))
    handle = register_optimizer_step_post_hook(progress._on_optimizer_step)
    on.append(min(block() for _ in range(3)))
    handle.remove()
print((min(on) / min(off) - 1.0) * 100.0)
"""


def hook_overhead(steps: int) -> float | None:
    """Percent: the progress hook's cost per optimizer step over one step's time (one process)."""
    with tempfile.TemporaryDirectory(prefix="bench-hook-") as d:
        env = _env({"BENCH_STEPS": str(steps), "CORRAL_PROGRESS_FILE": str(Path(d, "progress"))})
        proc = subprocess.run(
            [sys.executable, "-c", INPROC], env=env, capture_output=True, text=True, timeout=600
        )
        if proc.returncode != 0 or not Path(d, "progress").exists():
            print(f"  hook overhead: exit {proc.returncode} {proc.stderr[-300:]}", file=sys.stderr)
            return None
        return float(proc.stdout.strip())


def _netns_prefix() -> list[str]:
    """Run in a private network namespace holding only lo, when allowed (tests/helpers.py's
    private_netns says why)."""
    if shutil.which("unshare") is None:
        return []
    probe = subprocess.run(
        ["unshare", "--net", "sh", "-c", "ip link set lo up && echo ok"],
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0 or probe.stdout.strip() != "ok":
        return []
    return ["unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$@"', "sh"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def hang_to_recovery(launcher: str, script: Path, wait: float) -> float | None:
    """Seconds from rank 3's hang to every worker of attempt 1 running; None if not within ``wait``."""
    port = _free_port()  # inside a fresh namespace any port is free; outside, likely so
    with tempfile.TemporaryDirectory(prefix="bench-hang-") as d:
        opts = ["--max-restarts", "1", "--monitor-interval", "0.1"]
        if launcher == "corral":
            opts += ["--hang-timeout", "5", "--shutdown-timeout", "2"]
        # both agents in one namespace: a small shell starts them and waits
        agents = []
        for n in (1, 2):
            cmd = [
                *LAUNCHERS[launcher],
                *("--nnodes", "2", "--nproc-per-node", "2", "--rdzv-backend", "c10d"),
                *("--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", f"bench{port}"),
                *("--local-addr", f"127.0.0.{n}", *opts, str(script)),
            ]
            agents.append(" ".join(f"'{c}'" for c in cmd) + " &")
        shell = " ".join(agents) + " wait"
        err_path = Path(d, "agents.err")
        with open(err_path, "wb") as err_file:  # a file, not a pipe: orphans may keep it open
            proc = subprocess.Popen(
                [*_netns_prefix(), "bash", "-c", shell],
                env=_env({"BENCH_DIR": d}),
                stdout=subprocess.DEVNULL,
                stderr=err_file,
                start_new_session=True,
            )
        deadline = time.monotonic() + wait + 60  # + start-up and the time to the hang
        got = None
        try:
            while time.monotonic() < deadline:
                files = os.listdir(d)
                if "hung" in files and deadline - time.monotonic() > wait:
                    deadline = time.monotonic() + wait  # from the hang on: ``wait`` seconds
                starts = [f for f in files if f.startswith("start_1_")]
                if "hung" in files and len(starts) == 4:
                    hung = float(Path(d, "hung").read_text())
                    got = max(float(Path(d, f).read_text()) for f in starts) - hung
                    break
                if proc.poll() is not None:
                    break
                time.sleep(0.05)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
            _kill_orphans(str(script))  # torchrun leaves its workers behind when killed
        if got is None:
            tail = err_path.read_text(errors="replace").strip().splitlines()[-1:]
            print(f"  {launcher} hang: not recovered within {wait:.0f} s {tail}", file=sys.stderr)
        return got


def _kill_orphans(marker: str) -> None:
    """SIGKILL every process whose command line holds ``marker`` (this bench's worker script)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if marker in cmdline:
            try:
                os.kill(int(entry), signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def steps_per_second(launcher: str, script: Path, steps: int, tracking: bool) -> float | None:
    with tempfile.TemporaryDirectory(prefix="bench-steps-") as d:
        opts = ["--hang-timeout", "60"] if tracking else []
        cmd = [*LAUNCHERS[launcher], "--standalone", "--nproc-per-node", "1", *opts, str(script)]
        proc = subprocess.run(
            cmd,
            env=_env({"BENCH_DIR": d, "BENCH_STEPS": str(steps)}),
            capture_output=True,
            text=True,
            timeout=600,
        )
        rate = Path(d, "rate")
        if proc.returncode != 0 or not rate.exists():
            tail = proc.stderr.strip().splitlines()[-1:]
            print(f"  {launcher} steps: exit {proc.returncode} {tail}", file=sys.stderr)
            return None
        return float(rate.read_text())


def _median(values: list[float | None]) -> float | None:
    good = [v for v in values if v is not None]
    return statistics.median(good) if good and len(good) * 2 > len(values) else None


def _row(name: str, unit: str, c: float | None, t: float | None) -> dict[str, object]:
    ratio = c / t if c is not None and t else None
    shown = "  ".join(
        f"{k} {v:.4g} {unit}" if v is not None else f"{k} n/a"
        for k, v in (("corral", c), ("torchrun", t))
    )
    print(f"{name:28s} {shown}" + (f"  ratio {ratio:.3f}" if ratio else ""), flush=True)
    return figure(name, unit, c, t)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--torchrun-wait", type=float, default=120.0)
    parser.add_argument("--steps", type=int, default=20000)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-hang-"))

    atexit.register(shutil.rmtree, work, ignore_errors=True)  # however the bench ends
    hanger, stepper = work / "hanger.py", work / "stepper.py"
    hanger.write_text(HANGER)
    stepper.write_text(STEPPER)

    figures = []
    corral_hang = _median([hang_to_recovery("corral", hanger, 60.0) for _ in range(args.reps)])
    torchrun_hang = hang_to_recovery("torchrun", hanger, args.torchrun_wait)  # once: bounded
    figures.append(_row("hang_to_recovery_2x2", "s", corral_hang, torchrun_hang))
    if torchrun_hang is None:
        print(f"  torchrun: not detected within {args.torchrun_wait:.0f} s", flush=True)

    on: list[float | None] = []
    off: list[float | None] = []
    plain: list[float | None] = []
    runs = [
        (off, "corral", False),
        (on, "corral", True),
        (plain, "torchrun", False),
    ]
    for rep in range(args.reps):  # alternate, and rotate the order: no kind always goes first
        for out, launcher, tracking in runs[rep % 3 :] + runs[: rep % 3]:
            out.append(steps_per_second(launcher, stepper, args.steps, tracking=tracking))
    m_on, m_off, m_plain = _median(on), _median(off), _median(plain)
    figures.append(_row("steps_per_s_tracking_on", "steps/s", m_on, m_plain))
    figures.append(_row("steps_per_s_tracking_off", "steps/s", m_off, m_plain))
    overhead = (1.0 - m_on / m_off) * 100.0 if m_on and m_off else None
    figures.append(_row("tracking_overhead", "%", overhead, None))
    figures.append(_row("hook_cost_per_step", "%", hook_overhead(args.steps * 5), None))
    print_figures("hang", figures)


if __name__ == "__main__":
    main()
