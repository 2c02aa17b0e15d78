"""A rendezvous host that does not resolve yet (a scheduler's peer not yet in DNS).

Each agent runs in its own network and mount namespaces, with a hosts file of
the test's bind-mounted over /etc/hosts (no DNS is reachable in there, so a look-up
fails at once instead of stalling): the test decides when a name appears.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from tests.helpers import CORRAL, Procs, corral_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

SCRIPT = "import os; print('ran as', os.environ['RANK'], flush=True)\n"


def isolated(hosts: Path, cmd: list[str]) -> list[str]:
    inner = f'ip link set lo up && mount --bind {hosts} /etc/hosts && exec "$@"'
    return ["unshare", "--net", "--mount", "sh", "-c", inner, "sh", *cmd]


def agent(tmp: Path, host: str, wait: float) -> list[str]:
    script = tmp / "w.py"
    script.write_text(SCRIPT)
    return [
        *CORRAL,
        "--rdzv-backend", "c10d",
        "--rdzv-endpoint", f"{host}:29400",
        "--rdzv-id", "resolve",
        "--rdzv-conf", f"read_timeout={wait}",
        str(script),
    ]  # fmt: skip


def test_a_name_that_never_resolves_is_one_line_after_the_wait(
    procs: Procs, tmp_path: Path
) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n")
    t0 = time.monotonic()
    p = procs.start(
        isolated(hosts, agent(tmp_path, "never-there", 1.5)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=corral_env(),
    )
    _, err = p.communicate(timeout=30)
    took = time.monotonic() - t0
    assert p.returncode == 1, err
    text = err.decode()
    assert "corral: error: cannot resolve host 'never-there'" in text
    assert "Traceback" not in text
    assert 1.5 <= took < 15, took


def test_a_name_that_appears_later_is_waited_for(procs: Procs, tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n")
    p = procs.start(
        isolated(hosts, agent(tmp_path, "rank0-pod", 30)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=corral_env(),
    )
    assert p.stderr is not None
    line = p.stderr.readline().decode()
    assert "host 'rank0-pod' does not resolve" in line, line
    with hosts.open("a") as f:  # the pod is up: its name is in DNS now
        f.write("127.0.0.1 rank0-pod\n")
    out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    assert b"ran as 0" in out
