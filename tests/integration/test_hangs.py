"""Hang detection end to end: real agents, real workers, real torch on gloo (docs/hangs.md).

A DDP training on 2 agents x 2 workers (examples/train_ddp.py) whose rank 3
stops at step 40 of the first attempt (sleeping forever, or frozen by SIGSTOP)
is found hung, rank 3 is named with its stack, the job restarts from its
checkpoint and ends with exactly the parameters of a run that never stopped
(see ``reference``). A slow first
step and a script that never marks progress are not hangs; with the option off
nothing in the worker's environment changes.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from tests.helpers import CORRAL, EXAMPLE, NetNS, Procs, corral_env

torch = pytest.importorskip("torch")

pytestmark = [pytest.mark.torch, pytest.mark.slow, pytest.mark.timeout(150)]

STEPS = ["--steps", "120", "--ckpt-every", "20"]


def free_port(netns: NetNS) -> str:
    code = "import socket;s=socket.socket();s.bind(('127.0.0.1',0));print(s.getsockname()[1])"
    return subprocess.run(
        netns.wrap([sys.executable, "-c", code]), capture_output=True, text=True, check=True
    ).stdout.strip()


def run_2x2(
    netns: NetNS, d: Path, procs: Procs, *extra: str, detect: bool = True
) -> tuple[list[int], list[str], str]:
    """examples/train_ddp.py on 2 agents x 2 workers (127.0.0.1, 127.0.0.2), --hang-timeout 5.

    5 s, not less: on a loaded 2-core machine the final checksum and barrier may pause
    every mark for seconds. Returns the agents' exit codes, stderr, and stdout joined.
    """
    hangs = ("--hang-timeout", "5") if detect else ()
    port = free_port(netns)
    agents = []
    for n in (1, 2):
        with open(d / f"agent{n}.err", "wb") as err, open(d / f"agent{n}.out", "wb") as out:
            agents.append(
                procs.start(
                    netns.wrap(
                        [
                            *CORRAL,
                            *("--nnodes", "2", "--nproc-per-node", "2", "--rdzv-backend", "c10d"),
                            *("--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "hang"),
                            *("--local-addr", f"127.0.0.{n}", "--max-restarts", "1"),
                            *(*hangs, "--shutdown-timeout", "2"),
                            *(EXAMPLE, *STEPS, "--ckpt-dir", str(d / "ckpt")),
                            *("--out", str(d / "p.pt"), *extra),
                        ]
                    ),
                    stdout=out,
                    stderr=err,
                    env=corral_env(),
                )
            )
    codes = [a.wait(timeout=120) for a in agents]
    errs = [(d / f"agent{n}.err").read_text() for n in (1, 2)]
    return codes, errs, "".join((d / f"agent{n}.out").read_text() for n in (1, 2))


@pytest.fixture(scope="module")
def reference(netns: NetNS, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Parameters of the same 2 x 2 training run without interruption.

    Bit-exact at WORLD_SIZE 4 because examples/train_ddp.py averages gradients in
    rank order (its ``ordered_mean_hook``): gloo's own all-reduce sums in an order
    that changes when DDP lays its buckets out again after a resume.
    """
    d = tmp_path_factory.mktemp("reference")
    procs = Procs()
    try:
        codes, errs, outs = run_2x2(netns, d, procs, detect=False)
    finally:
        procs.cleanup()
    assert codes == [0, 0], "\n".join(e[-3000:] for e in errs)
    assert not any("failed with a hang" in e or "hang elsewhere" in e for e in errs), errs
    assert re.findall(r"restart (\d+): starting at step (\d+)", outs) == [("0", "0")] * 4, outs
    params: dict[str, object] = torch.load(d / "p.pt", weights_only=True)
    return params


@pytest.mark.parametrize("how", ["sleep", "sigstop"])
def test_ddp_rank_hangs_is_named_and_job_resumes(
    how: str, netns: NetNS, reference: dict[str, object], tmp_path: Path, procs: Procs
) -> None:
    marker = tmp_path / "hung"
    codes, errs, outs = run_2x2(
        netns,
        tmp_path,
        procs,
        *("--hang-at-step", "40", "--hang-rank", "3", "--hang-how", how),
        *("--hang-once-marker", str(marker)),
    )
    assert codes == [0, 0], "\n".join(e[-3000:] for e in errs)
    assert marker.exists()
    # detected and reported as a hang on the culprit's node (node 1: ranks 2 and 3), not as a signal
    report = errs[1]
    assert "failed with a hang" in report, report[-3000:]
    culprit = report[report.index("culprit: ") :]
    assert culprit.startswith("culprit: rank 3 (node 1, local rank 1"), culprit[:2000]
    stacks, _, others = culprit.partition("other ranks:")
    assert "hang_here (" in stacks and "train_ddp.py" in stacks
    assert ("T (stopped)" in stacks) == (how == "sigstop")
    for rank in (0, 1, 2):
        line = next(ln for ln in others.splitlines() if ln.strip().startswith(f"rank {rank} "))
        assert "step 40" in line and "_engine_run_backward" in line, line
    assert "exit code -9" not in report and "SIGKILL" not in report.split("round 0: hang")[0]
    # the other node did not report a failure of its own: it followed the culprit's node
    assert "hang elsewhere in the job (culprit: rank 3)" in errs[0]
    assert "failed with" not in errs[0]
    # the restart resumed from the checkpoint before the hang, and ended exactly as a run that
    # never stopped
    resumed = [int(m) for m in re.findall(r"restart 1: starting at step (\d+)", outs)]
    assert resumed == [40] * 4, outs
    b = torch.load(tmp_path / "p.pt", weights_only=True)
    assert all(torch.equal(reference[k], b[k]) for k in reference), "parameters differ"


SLOW_FIRST_STEP = """
import os, time, torch
rank = int(os.environ["RANK"])
m = torch.nn.Linear(2, 2)
opt = torch.optim.SGD(m.parameters(), lr=0.1)
if rank == 1:
    time.sleep(float(os.environ["FIRST_STEP"]))  # longer than --hang-timeout
end = time.monotonic() + float(os.environ["FIRST_STEP"]) + 1.0
while time.monotonic() < end:  # rank 0 marks steps all along (the detector is armed)
    opt.zero_grad(); m(torch.ones(2)).sum().backward(); opt.step()
    time.sleep(0.05)
print(f"rank {rank} done", flush=True)
"""

NO_PROGRESS = """
import os, time, torch, torch.distributed as dist
dist.init_process_group("gloo")
dist.barrier()
time.sleep(float(os.environ["IDLE"]))  # far longer than --hang-timeout, and no mark ever
dist.barrier()
dist.destroy_process_group()
print("idle done", flush=True)
os._exit(0)  # no interpreter teardown, where gloo can abort (examples/train_ddp.py)
"""


def run_standalone(
    netns: NetNS, tmp_path: Path, script: str, *opts: str, **env: str
) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "w.py"
    path.write_text(script)
    return subprocess.run(
        netns.wrap([*CORRAL, "--standalone", "--nproc-per-node", "2", *opts, str(path)]),
        capture_output=True,
        text=True,
        timeout=90,
        env=corral_env(**env),
    )


def test_slow_first_step_is_not_a_hang(netns: NetNS, tmp_path: Path) -> None:
    r = run_standalone(
        netns,
        tmp_path,
        SLOW_FIRST_STEP,
        "--hang-timeout",
        "2",
        "--hang-startup-timeout",
        "30",
        FIRST_STEP="4",  # rank 1's first step: twice the timeout, well within the allowance
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "hang" not in r.stderr
    assert sorted(r.stdout.split()) == sorted("rank 0 done rank 1 done".split())


def test_script_without_progress_is_never_hung(netns: NetNS, tmp_path: Path) -> None:
    r = run_standalone(
        netns,
        tmp_path,
        NO_PROGRESS,
        "--hang-timeout",
        "1",
        "--hang-startup-timeout",
        "1",
        IDLE="4",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "hang" not in r.stderr and r.stdout.count("idle done") == 2


PROBE = """
import json, os, sys
import __main__
print(json.dumps({
    "env": dict(os.environ), "argv": sys.argv, "path0": sys.path[0], "path": sys.path,
    "main": __main__.__file__, "cwd": os.getcwd(),
    "progress_loaded": "corral.progress" in sys.modules,
}), flush=True)
"""


def test_option_off_changes_nothing_and_on_only_what_the_contract_says(tmp_path: Path) -> None:
    """Off: no trace of hang detection. On: only CORRAL_PROGRESS_FILE differs (docs/contract.md)."""
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    seen = {}
    for mode, opts in (("off", []), ("on", ["--hang-timeout", "30"])):
        r = subprocess.run(
            [*CORRAL, "--standalone", "--nproc-per-node", "1", *opts, str(script), "a", "b"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
            env=corral_env(PYTHONPATH="/tmp/user-path"),
        )
        assert r.returncode == 0, r.stderr
        seen[mode] = json.loads(r.stdout)
    off, on = seen["off"], seen["on"]
    assert "CORRAL_PROGRESS_FILE" not in off["env"] and not off["progress_loaded"]
    assert off["env"]["PYTHONPATH"] == "/tmp/user-path"
    assert not any(p.endswith("hangs/_site") for p in off["path"] + on["path"])
    for key in ("argv", "path0", "main", "cwd"):
        assert off[key] == on[key], key
    assert on["path"] == off["path"]
    volatile = {
        "MASTER_PORT",
        "TORCHELASTIC_RUN_ID",
        "TORCHELASTIC_ERROR_FILE",
        "CORRAL_WORKER_TOKEN",
    }
    diff = {k for k in set(off["env"]) | set(on["env"]) if off["env"].get(k) != on["env"].get(k)}
    assert diff - volatile == {"CORRAL_PROGRESS_FILE"}
    assert on["env"]["CORRAL_PROGRESS_FILE"].endswith("/0/progress") and on["progress_loaded"]


STUCK = """
import os, time, torch
rank = int(os.environ["RANK"])
m = torch.nn.Linear(2, 2)
opt = torch.optim.SGD(m.parameters(), lr=0.1)
def stuck_in_io():
    while True:
        time.sleep(3600)
for step in range(1_000_000):
    if rank == 1 and step == 30:
        stuck_in_io()
    opt.zero_grad(); m(torch.ones(2)).sum().backward(); opt.step()
    time.sleep(0.01)
"""


def test_a_hang_with_no_restart_left_fails_the_job_as_a_hang(netns: NetNS, tmp_path: Path) -> None:
    """Rank 1 stops while rank 0 goes on: rank 1 is behind, named, and the job exits 124."""
    r = run_standalone(netns, tmp_path, STUCK, "--hang-timeout", "1", "--shutdown-timeout", "2")
    assert r.returncode == 124, r.stderr[-3000:]
    root = r.stderr[r.stderr.index("corral: worker rank 1") :]
    assert root.splitlines()[0].endswith("hung (no progress within --hang-timeout)"), root
    assert "culprit: rank 1 (node 0, local rank 1" in root and "stuck_in_io (" in root
    assert "step 30, no progress for" in root
    assert "failed with a hang" in r.stderr and "exit code -" not in r.stderr


FROZEN = """
import os, signal, sys, time
import corral
rank, restart = int(os.environ["LOCAL_RANK"]), int(os.environ["TORCHELASTIC_RESTART_COUNT"])
print(f"attempt {restart} rank {rank} started", flush=True)
if restart > 0:
    sys.exit(0)
step = 0
while True:
    corral.progress(step)
    step += 1
    if rank == 1 and step == 5:
        os.kill(os.getpid(), signal.SIGSTOP)  # frozen: cannot act on any signal but SIGKILL
    time.sleep(0.05)
"""


def test_a_frozen_rank_is_killed_at_once_and_the_next_attempt_starts(
    netns: NetNS, tmp_path: Path
) -> None:
    """Rank 1 frozen by SIGSTOP, --shutdown-timeout 60: the hung rank gets SIGKILL at once.

    Bounded by a 45 s timeout, less than the 60 s grace: waiting for the grace
    (the old SIGTERM to a frozen rank) cannot pass. Rank 0 gets SIGTERM and dies of it.
    """
    path = tmp_path / "w.py"
    path.write_text(FROZEN)
    r = subprocess.run(
        netns.wrap(
            [
                *(*CORRAL, "--standalone", "--nproc-per-node", "2", "--max-restarts", "1"),
                *("--hang-timeout", "1", "--shutdown-timeout", "60", str(path)),
            ]
        ),
        capture_output=True,
        text=True,
        timeout=45,
        env=corral_env(),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(r.stdout.split("\n"))[1:] == [
        f"attempt {a} rank {k} started" for a in (0, 1) for k in (0, 1)
    ], r.stdout
    assert "SIGKILL to hung worker(s) [1] at once" in r.stderr, r.stderr[-3000:]
