"""The Python 3.10 path (taskgroup backports), exercised on this interpreter.

``CORRAL_COMPAT_BACKPORTS=1`` makes corral use the backports of asyncio.timeout,
TaskGroup and Runner; a real launch, a restart and the store/rendezvous unit
suites then run through them in a subprocess.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from tests.helpers import CORRAL, REPO, corral_env

pytest.importorskip("taskgroup")
pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]  # real launches, suites re-run


def test_backports_are_selected() -> None:
    out = subprocess.run(
        [sys.executable, "-c", "import corral.core.compat as c; print(c.BACKPORTS, c.timeout.__module__)"],
        capture_output=True, text=True, env=corral_env(CORRAL_COMPAT_BACKPORTS="1"), check=True,
    )  # fmt: skip
    assert out.stdout.split() == ["True", "taskgroup.timeouts"]


def test_launch_and_restart_on_backports(tmp_path: Path) -> None:
    w = tmp_path / "w.py"
    w.write_text(
        "import os, sys\n"
        "if os.environ['TORCHELASTIC_RESTART_COUNT'] == '0' and os.environ['RANK'] == '1':\n"
        "    sys.exit(4)\n"
    )
    r = subprocess.run(
        [*CORRAL, "--standalone", "--nproc-per-node", "2", "--max-restarts", "1", str(w)],
        capture_output=True, text=True, timeout=60, env=corral_env(CORRAL_COMPAT_BACKPORTS="1"),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr


def test_store_and_rendezvous_suites_on_backports() -> None:
    env = corral_env(CORRAL_COMPAT_BACKPORTS="1")
    env.pop("PYTEST_CURRENT_TEST", None)
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
         "tests/unit/rendezvous", "tests/unit/store/test_tcp_store.py", "tests/contract", "-k", "not etcd"],
        capture_output=True, text=True, timeout=110, env=env, cwd=REPO,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
