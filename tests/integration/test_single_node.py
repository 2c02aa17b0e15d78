"""The single-node path through the real CLI: real agent, real workers, real signals."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import textwrap
from pathlib import Path

import psutil
import pytest
from tests.helpers import CORRAL, Procs, corral_env

pytestmark = pytest.mark.timeout(60)


def script(tmp: Path, name: str, body: str) -> str:
    p = tmp / name
    p.write_text(textwrap.dedent(body))
    return str(p)


def run(
    args: list[str], tmp: Path, timeout: float = 45, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CORRAL, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=corral_env(TMPDIR=str(tmp), **env),
        cwd=tmp,
    )


ENV_DUMP = """
    import json, os, sys
    keys = [k for k in os.environ if k in (
        "LOCAL_RANK RANK ROLE_RANK GROUP_RANK LOCAL_WORLD_SIZE WORLD_SIZE ROLE_WORLD_SIZE "
        "GROUP_WORLD_SIZE ROLE_NAME MASTER_ADDR MASTER_PORT TORCHELASTIC_RESTART_COUNT "
        "TORCHELASTIC_MAX_RESTARTS TORCHELASTIC_RUN_ID TORCHELASTIC_USE_AGENT_STORE "
        "TORCHELASTIC_ERROR_FILE TORCH_NCCL_ASYNC_ERROR_HANDLING OMP_NUM_THREADS").split()]
    out = sys.argv[1]
    with open(f"{out}/env{os.environ['RANK']}.json", "w") as f:
        json.dump({k: os.environ[k] for k in keys} | {"argv": sys.argv[1:]}, f)
"""


def test_worker_environment(tmp_path: Path) -> None:
    s = script(tmp_path, "dump.py", ENV_DUMP)
    r = run(
        [
            "--standalone",
            "--nproc-per-node",
            "3",
            "--max-restarts",
            "2",
            s,
            str(tmp_path),
            "lr=${local_rank}",
        ],
        tmp_path,
    )
    assert r.returncode == 0, r.stderr
    envs = [json.loads((tmp_path / f"env{i}.json").read_text()) for i in range(3)]
    for i, e in enumerate(envs):
        assert e["RANK"] == e["ROLE_RANK"] == str(i)
        assert e["LOCAL_RANK"] == str(i)
        assert e["GROUP_RANK"] == "0"
        assert e["LOCAL_WORLD_SIZE"] == e["WORLD_SIZE"] == e["ROLE_WORLD_SIZE"] == "3"
        assert e["GROUP_WORLD_SIZE"] == "1"
        assert e["ROLE_NAME"] == "default"
        assert e["MASTER_ADDR"] == "127.0.0.1"
        assert e["TORCHELASTIC_RESTART_COUNT"] == "0"
        assert e["TORCHELASTIC_MAX_RESTARTS"] == "2"
        assert e["TORCHELASTIC_USE_AGENT_STORE"] == "False"
        assert e["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1"
        assert e["OMP_NUM_THREADS"] == "1"
        assert e["TORCHELASTIC_ERROR_FILE"].endswith(f"/{i}/error.json")
        assert e["argv"] == [str(tmp_path), f"lr={i}"]
    assert len({e["MASTER_PORT"] for e in envs}) == 1
    assert 0 < int(envs[0]["MASTER_PORT"]) < 65536
    assert len({e["TORCHELASTIC_RUN_ID"] for e in envs}) == 1
    left = sorted(
        p.name
        for p in tmp_path.iterdir()
        if p.name not in {"dump.py"} and not p.name.startswith("env")
    )
    assert left == [], f"temporary files left behind in TMPDIR: {left}"


def test_restarts_counted_and_success_after_retries(tmp_path: Path) -> None:
    s = script(
        tmp_path,
        "flaky.py",
        """
        import os, sys
        n = int(os.environ["TORCHELASTIC_RESTART_COUNT"])
        open(f"{sys.argv[1]}/seen{os.environ['RANK']}_{n}", "w").close()
        if n < 2 and os.environ["RANK"] == "1":
            sys.exit(5)
    """,
    )
    r = run(
        ["--standalone", "--nproc-per-node", "2", "--max-restarts", "2", s, str(tmp_path)], tmp_path
    )
    assert r.returncode == 0, r.stderr
    seen = sorted(p.name for p in tmp_path.glob("seen*"))
    assert {"seen1_0", "seen1_1", "seen1_2", "seen0_2"} <= set(seen)


def test_budget_spent_exit_code_is_workers(tmp_path: Path) -> None:
    s = script(
        tmp_path,
        "fail.py",
        """
        import os, sys
        if os.environ["LOCAL_RANK"] == "1":
            print("custom-marker-on-stderr", file=sys.stderr, flush=True)
            sys.exit(7)
        import time; time.sleep(30)
    """,
    )
    r = run(["--standalone", "--nproc-per-node", "2", "--max-restarts", "1", s], tmp_path)
    assert r.returncode == 7, r.stderr
    assert "custom-marker-on-stderr" in r.stderr
    assert "Traceback" not in r.stderr.split("custom-marker-on-stderr")[-1]
    # the sibling stopped by the agent is not reported as a failure: the root-cause block
    # names rank 1 only, and counts no other failed worker
    assert "corral: worker rank 1 (local rank 1," in r.stderr
    assert "corral: worker rank 0 " not in r.stderr
    assert "other worker" not in r.stderr


def test_signal_death_exit_code(tmp_path: Path) -> None:
    s = script(
        tmp_path,
        "die.py",
        """
        import os, signal
        os.kill(os.getpid(), signal.SIGKILL)
    """,
    )
    r = run(["--standalone", "--nproc-per-node", "1", s], tmp_path)
    assert r.returncode == 128 + 9, r.stderr
    assert "SIGKILL" in r.stderr


def test_root_cause_from_error_file(tmp_path: Path) -> None:
    s = script(
        tmp_path,
        "rec.py",
        """
        import os
        from corral import record

        @record
        def main():
            if os.environ["RANK"] == "1":
                raise ValueError("boom from rank one")

        main()
    """,
    )
    r = run(["--standalone", "--nproc-per-node", "2", s], tmp_path)
    assert r.returncode == 1, r.stderr
    assert "ValueError: boom from rank one" in r.stderr
    assert "rec.py" in r.stderr  # the traceback from the error file


def test_signal_forwarded_then_agent_exits_128_plus_n(tmp_path: Path, procs: Procs) -> None:
    s = script(
        tmp_path,
        "sig.py",
        """
        import os, signal, sys, time
        def on(sig, frame):
            open(f"{sys.argv[1]}/got{os.environ['RANK']}", "w").close()
            sys.exit(0)
        signal.signal(signal.SIGUSR1, on)
        print("ready", flush=True)
        time.sleep(60)
    """,
    )
    p = procs.start(
        [*CORRAL, "--standalone", "--nproc-per-node", "2", s, str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=corral_env(TMPDIR=str(tmp_path)),
    )
    assert p.stdout is not None
    # count words, not lines: two workers printing at the same instant may interleave
    # on the shared stdout ("readyready\n\n"), pre-started ones (--prestart) most of all
    out = b""
    while out.count(b"ready") < 2:
        line = p.stdout.readline()
        assert line, "agent ended before workers were ready"
        out += line
    p.send_signal(signal.SIGUSR1)
    assert p.wait(timeout=30) == 128 + signal.SIGUSR1
    assert (tmp_path / "got0").exists() and (tmp_path / "got1").exists()


TREE = """
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
print(f"pids {os.getpid()} {child.pid}", flush=True)
time.sleep(120)
"""


def start_tree(tmp_path: Path, procs: Procs) -> tuple[subprocess.Popen[bytes], list[int]]:
    """An agent of 2 workers that each start a sleeping child; the agent and the 4 pids."""
    s = script(tmp_path, "tree.py", TREE)
    p = procs.start(
        [*CORRAL, "--standalone", "--nproc-per-node", "2", s],
        stdout=subprocess.PIPE,
        env=corral_env(TMPDIR=str(tmp_path)),
    )
    assert p.stdout is not None
    pids: list[int] = []
    out = ""
    while len(pids) < 4:  # "pids A B" twice, maybe interleaved: read words, not lines
        line = p.stdout.readline().decode()
        assert line, "agent ended early"
        out += line
        pids = [int(x) for x in re.findall(r"\d+", out)]
    return p, pids


def test_no_orphans_after_agent_sigkill(tmp_path: Path, procs: Procs) -> None:
    p, pids = start_tree(tmp_path, procs)
    victims = [psutil.Process(pid) for pid in pids]
    # the agent's other children: its watchdog and (pre-started workers, the default)
    # the standby zygote and the next attempt's standbys; every one dies with it
    watchdog = [c for c in psutil.Process(p.pid).children() if c.pid not in pids]
    assert len(watchdog) >= 1, watchdog
    if os.environ.get("CORRAL_TEST_NO_PRESTART"):
        assert len(watchdog) == 1, watchdog  # --no-prestart: only the watchdog
    assert list(tmp_path.glob("corral_*")), "the agent's temporary log dir"
    p.kill()  # SIGKILL of the agent only, not its process group
    p.wait(timeout=10)
    _, alive = psutil.wait_procs(victims, timeout=1.0)
    alive = [v for v in alive if _not_zombie(v)]  # dead but not reaped by this sandbox's init
    assert alive == [], f"orphans survived the agent: {alive}"
    # the watchdog also removes the dead agent's temporary log dir, then exits
    _, left = psutil.wait_procs(watchdog, timeout=5.0)
    assert [w for w in left if _not_zombie(w)] == []
    assert list(tmp_path.glob("corral_*")) == [], "temporary log dir left behind"


def _not_zombie(p: psutil.Process) -> bool:
    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_log_layout_and_tee_prefix(tmp_path: Path) -> None:
    s = script(
        tmp_path,
        "talk.py",
        """
        import os, sys
        print(f"hello from {os.environ['LOCAL_RANK']} attempt {os.environ['TORCHELASTIC_RESTART_COUNT']}")
        print("to-stderr", file=sys.stderr)
        if os.environ["TORCHELASTIC_RESTART_COUNT"] == "0" and os.environ["LOCAL_RANK"] == "0":
            sys.exit(1)
    """,
    )
    logs = tmp_path / "logs"
    r = run(
        [
            "--standalone",
            "--nproc-per-node",
            "2",
            "--max-restarts",
            "1",
            "--log-dir",
            str(logs),
            "-t",
            "3",
            "--local-ranks-filter",
            "1",
            "--rdzv-id",
            "ignored",
            s,
        ],
        tmp_path,
    )
    assert r.returncode == 0, r.stderr
    (run_dir,) = list(logs.iterdir())
    # attempt 0: rank 0 failed (rank 1 may have been stopped before it printed); attempt 1: both
    for attempt, lr in ((0, 0), (1, 0), (1, 1)):
        d = run_dir / f"attempt_{attempt}" / str(lr)
        assert (d / "stdout.log").read_text().strip() == f"hello from {lr} attempt {attempt}"
        assert "to-stderr" in (d / "stderr.log").read_text()
    assert (run_dir / "attempt_0" / "1" / "stdout.log").exists()
    assert "[default1]:hello from 1 attempt 1" in r.stdout
    assert "[default0]:" not in r.stdout  # filtered from the console


def test_bad_script_is_one_line_exit_2(tmp_path: Path) -> None:
    r = run(["--standalone", str(tmp_path / "missing.py")], tmp_path)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1
    assert "Traceback" not in r.stderr


def test_module_mode(tmp_path: Path) -> None:
    pkg = tmp_path / "mypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "job.py").write_text(
        "import os, sys\nopen(sys.argv[1] + '/m' + os.environ['RANK'], 'w').close()\n"
    )
    r = run(
        ["--standalone", "--nproc-per-node", "2", "-m", "mypkg.job", str(tmp_path)],
        tmp_path,
        PYTHONPATH=str(tmp_path),
    )
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "m0").exists() and (tmp_path / "m1").exists()
