"""Launcher benchmarks: corral and torchrun side by side, medians over repetitions.

    python bench/launch.py [--reps 5] [--launchers corral,torchrun]

(a) wall time of ``--standalone --nproc-per-node N`` with a trivial worker, N = 1, 2, 8;
(b) crash to restart: time from a worker's crash (its own time.time() just before it
    exits) to the moment every worker of the next attempt is running (the latest of
    their time.time() at start), N = 4, ``--max-restarts 1``;
(c) the agent's peak memory: VmHWM of the launcher process (plus any helper process
    it starts that is not a worker), read from /proc while it runs, N = 4.

torchrun is ``python -m torch.distributed.run``, corral ``python -m corral``; both get
the same worker scripts and the same environment. Human lines first, then as the
LAST line one JSON object: {"bench": "launch", "figures": [{"name", "unit",
"corral", "torchrun", "ratio"}]} (a figure is null when that launcher failed).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

LAUNCHERS: dict[str, list[str]] = {
    "corral": [sys.executable, "-m", "corral"],
    "torchrun": [sys.executable, "-m", "torch.distributed.run"],
}

# Touches a file per rank, so a launcher that exits 0 without running workers is caught.
TRIVIAL = (
    "import os\nopen(os.path.join(os.environ['BENCH_DIR'], 'ran_' + os.environ['RANK']), 'w')\n"
)

# Attempt 0: rank 1 waits until all 4 have started, records its crash time and exits 1;
# the others sleep until stopped. Attempt 1: every worker records its start and exits.
CRASHER = """\
import os, sys, time
t = time.time()
d = os.environ["BENCH_DIR"]
rank = os.environ["RANK"]
attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
with open(os.path.join(d, f"start_{attempt}_{rank}"), "w") as f:
    f.write(repr(t))
if attempt == "0":
    if rank == "1":
        world = int(os.environ["WORLD_SIZE"])
        deadline = time.time() + 60
        while sum(n.startswith("start_0_") for n in os.listdir(d)) < world:
            if time.time() > deadline:
                break
            time.sleep(0.01)
        time.sleep(0.2)
        with open(os.path.join(d, "crash"), "w") as f:
            f.write(repr(time.time()))
        sys.exit(1)
    time.sleep(120)
"""

SLEEPER = "import time\ntime.sleep(1.0)\n"


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PET_", "TORCHELASTIC_"))}
    env["OMP_NUM_THREADS"] = "1"  # same for both; silences torchrun's notice
    env.update(extra or {})
    return env


def _run(cmd: list[str], env: dict[str, str], timeout: float = 180) -> tuple[int, float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    return proc.returncode, time.perf_counter() - t0, proc.stderr[-2000:]


def wall_time(launcher: str, n: int, script: Path) -> float | None:
    cmd = [*LAUNCHERS[launcher], "--standalone", "--nproc-per-node", str(n), str(script)]
    with tempfile.TemporaryDirectory(prefix="bench-wall-") as d:
        code, took, err = _run(cmd, _env({"BENCH_DIR": d}))
        ran = len(os.listdir(d))
    if code != 0 or ran != n:
        tail = err.strip().splitlines()[-1:]
        print(f"  {launcher} N={n}: exit {code}, {ran} workers ran: {tail}", file=sys.stderr)
        return None
    return took


def _wall(launcher: str, *, n: int, script: Path) -> float | None:
    return wall_time(launcher, n, script)


def restart_latency(launcher: str, script: Path) -> float | None:
    with tempfile.TemporaryDirectory(prefix="bench-restart-") as d:
        cmd = [
            *LAUNCHERS[launcher],
            "--standalone",
            "--nproc-per-node",
            "4",
            "--max-restarts",
            "1",
            "--monitor-interval",
            "0.1",
            str(script),
        ]
        code, _, err = _run(cmd, _env({"BENCH_DIR": d}))
        files = os.listdir(d)
        starts = [float(Path(d, f).read_text()) for f in files if f.startswith("start_1_")]
        if code != 0 or "crash" not in files or len(starts) != 4:
            tail = err.strip().splitlines()[-1:]
            print(
                f"  {launcher} restart: exit {code}, {len(starts)} restarted: {tail}",
                file=sys.stderr,
            )
            return None
        return max(starts) - float(Path(d, "crash").read_text())


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        if ppid == pid:
            out.append(int(entry))
    return out


def _status_kib(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _is_worker(pid: int, script: Path) -> bool:
    try:
        return str(script) in Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
    except OSError:
        return True


def peak_memory(launcher: str, script: Path) -> float | None:
    """MiB: the launcher's VmHWM plus the VmHWM of any non-worker helper it started."""
    cmd = [*LAUNCHERS[launcher], "--standalone", "--nproc-per-node", "4", str(script)]
    proc = subprocess.Popen(
        cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    hwm: dict[int, int] = {}
    while proc.poll() is None:
        hwm[proc.pid] = max(hwm.get(proc.pid, 0), _status_kib(proc.pid, "VmHWM"))
        for child in _children(proc.pid):
            if not _is_worker(child, script):
                hwm[child] = max(hwm.get(child, 0), _status_kib(child, "VmHWM"))
        time.sleep(0.02)
    err = proc.stderr.read() if proc.stderr else ""
    if proc.returncode != 0 or not hwm.get(proc.pid):
        print(f"  {launcher} memory: exit {proc.returncode}: {err.strip()[-300:]}", file=sys.stderr)
        return None
    return sum(hwm.values()) / 1024


def median(launcher: str, reps: int, measure: Callable[[str], float | None]) -> float | None:
    values = [measure(launcher) for _ in range(reps)]
    good = [v for v in values if v is not None]
    if len(good) < max(1, reps // 2 + 1):  # most repetitions must work
        return None
    return statistics.median(good)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--launchers", default="corral,torchrun")
    args = parser.parse_args()
    launchers = [name.strip() for name in args.launchers.split(",") if name.strip()]

    work = Path(tempfile.mkdtemp(prefix="bench-launch-"))
    trivial, crasher, sleeper = work / "trivial.py", work / "crasher.py", work / "sleeper.py"
    trivial.write_text(TRIVIAL)
    crasher.write_text(CRASHER)
    sleeper.write_text(SLEEPER)

    plan: list[tuple[str, str, Callable[[str], float | None]]] = []
    for n in (1, 2, 8):
        plan.append((f"wall_standalone_n{n}", "s", partial(_wall, n=n, script=trivial)))
    plan.append(("crash_to_restart_n4", "s", lambda name: restart_latency(name, crasher)))
    plan.append(("agent_peak_memory_n4", "MiB", lambda name: peak_memory(name, sleeper)))

    figures: list[dict[str, object]] = []
    for fig_name, unit, measure in plan:
        row: dict[str, float | None] = {}
        for launcher in LAUNCHERS:
            row[launcher] = median(launcher, args.reps, measure) if launcher in launchers else None
        c, t = row["corral"], row["torchrun"]
        ratio = c / t if c is not None and t else None
        shown = "  ".join(
            f"{k} {v:.3f} {unit}" if v is not None else f"{k} n/a" for k, v in row.items()
        )
        print(
            f"{fig_name:24s} {shown}" + (f"  ratio {ratio:.2f}" if ratio is not None else ""),
            flush=True,
        )
        figures.append(
            {
                "name": fig_name,
                "unit": unit,
                "corral": None if c is None else round(c, 4),
                "torchrun": None if t is None else round(t, 4),
                "ratio": None if ratio is None else round(ratio, 3),
            }
        )
    print(json.dumps({"bench": "launch", "figures": figures}))


if __name__ == "__main__":
    main()
