"""The cost of events: corral's crash recovery with events to a file, and with metrics, vs none.

    python bench/events.py [--reps 7]

The crash-to-restart figure of bench/launch.py (a worker's crash to every worker
of the next attempt running, ``--standalone --nproc-per-node 4 --max-restarts 1``),
for corral in three settings and for torchrun, their runs alternating:
``none`` (no sink but the store journal, always on), ``file`` (``--events-file``)
and ``file_metrics`` (also ``--metrics-port 0 --metrics-addr 127.0.0.1``).
Human lines first, then as the LAST line one JSON object: {"bench": "events",
"figures": [{"name", "unit", "corral", "torchrun", "ratio"}]}: one figure per
setting beside torchrun, then ``events_file_over_none`` and
``events_file_metrics_over_none`` (corral's own ratios; the goal is within 1.05;
torchrun has no events, so its fields are null).
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _figures import figure, print_figures
from launch import CRASHER, _env, _run

CORRAL = [sys.executable, "-m", "corral"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]


def recovery(script: Path, extra: list[str], launcher: list[str] = CORRAL) -> float | None:
    with tempfile.TemporaryDirectory(prefix="bench-events-") as d:
        cmd = [*launcher, "--standalone", "--nproc-per-node", "4", "--max-restarts", "1",
               *[a.replace("{dir}", d) for a in extra], str(script)]  # fmt: skip
        code, _, err = _run(cmd, _env({"BENCH_DIR": d}))
        files = os.listdir(d)
        starts = [float(Path(d, f).read_text()) for f in files if f.startswith("start_1_")]
        if code != 0 or "crash" not in files or len(starts) != 4:
            print(f"  run {extra}: exit {code}: {err.strip()[-300:]}", file=sys.stderr)
            return None
        return max(starts) - float(Path(d, "crash").read_text())


SETTINGS = {
    "none": [],
    "file": ["--events-file", "{dir}/events/events.jsonl"],
    "file_metrics": ["--events-file", "{dir}/events/events.jsonl", "--metrics-port", "0",
                     "--metrics-addr", "127.0.0.1"],
}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-events-"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)  # however the bench ends
    crasher = work / "crasher.py"
    crasher.write_text(CRASHER)
    values: dict[str, list[float]] = {name: [] for name in [*SETTINGS, "torchrun"]}
    for _ in range(args.reps):
        for name, extra in SETTINGS.items():  # alternating, so drift hits all alike
            v = recovery(crasher, extra)
            if v is not None:
                values[name].append(v)
        v = recovery(crasher, [], TORCHRUN)
        if v is not None:
            values["torchrun"].append(v)
    med = {k: statistics.median(v) if v else None for k, v in values.items()}
    for name, v in med.items():
        shown = f"{v * 1000:.1f} ms" if v is not None else "failed"
        print(
            f"crash to every worker running again, events {name}: {shown} (median of {args.reps})"
        )

    def ratio(name: str) -> float | None:
        base, v = med["none"], med[name]
        return round(v / base, 3) if base and v is not None else None

    t = med["torchrun"]
    figures = [figure(f"crash_recovery_n4_events_{name}", "s", med[name], t) for name in SETTINGS]
    for name in ("file", "file_metrics"):
        figures.append(figure(f"events_{name}_over_none", "ratio", ratio(name), None))
    print_figures("events", figures)


if __name__ == "__main__":
    main()
