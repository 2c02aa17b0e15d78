"""The worker side: corral.progress, the optimizer-step hook and the injected sitecustomize.

Each case runs a real interpreter with the environment the agent gives a worker
(:func:`corral.hangs.progress_env`), and reads the progress file as the agent does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tests.helpers import corral_env

from corral.core.model import RoundInfo
from corral.hangs import PROGRESS_ENV, SITE_DIR, progress_env
from corral.progress import read_mark
from corral.workers.spec import WorkerSpec, worker_env

pytestmark = pytest.mark.timeout(60)


def run(
    code: str, tmp_path: Path, *, on: bool = True, **extra: str
) -> subprocess.CompletedProcess[str]:
    base = corral_env(**extra)
    env = dict(base)
    if on:
        env.update(progress_env(base, str(tmp_path / "error.json")))
    script = tmp_path / "w.py"
    script.write_text(code)
    return subprocess.run(
        [sys.executable, "-u", str(script)], env=env, capture_output=True, text=True, timeout=45
    )


def test_progress_marks_and_steps(tmp_path: Path) -> None:
    r = run(
        "import corral\nfor _ in range(3): corral.progress()\ncorral.progress(step=10)\ncorral.progress()\n",
        tmp_path,
    )
    assert r.returncode == 0 and r.stdout == "" and r.stderr == "", r.stderr
    mark = read_mark(str(tmp_path / "progress"))
    assert mark is not None and (mark.marks, mark.step, mark.exiting) == (5, 11, True)


def test_progress_is_a_noop_when_not_launched_by_corral_and_cheap(tmp_path: Path) -> None:
    code = """
import os, sys, time
from corral import progress
import corral
assert corral.progress is progress and callable(progress)
assert "torch" not in sys.modules
def per_call():
    t = time.perf_counter()
    for _ in range(20000):
        progress()
    return (time.perf_counter() - t) / 20000
print(min(per_call() for _ in range(5)) * 1e6)
"""
    off = run(code, tmp_path, on=False)
    assert off.returncode == 0, off.stderr
    assert not (tmp_path / "progress").exists()
    on = run(code, tmp_path)
    assert on.returncode == 0, on.stderr
    assert float(off.stdout) < 10 and float(on.stdout) < 10  # microseconds per call
    mark = read_mark(str(tmp_path / "progress"))
    assert mark is not None and mark.marks == 100000


TRAIN = """
import json, os, sys
import torch
m = torch.nn.Linear(2, 2)
opt = torch.optim.SGD(m.parameters(), lr=0.1)
for _ in range(7):
    opt.zero_grad(); m(torch.ones(2)).sum().backward(); opt.step()
print(json.dumps({"pythonpath": os.environ.get("PYTHONPATH"), "site": [p for p in sys.path if p.endswith("hangs/_site")],
                  "custom": getattr(sys.modules.get("sitecustomize"), "USER", None)}))
"""


@pytest.mark.torch
def test_optimizer_steps_mark_progress_with_no_change_to_the_script(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    r = run(TRAIN, tmp_path)
    assert r.returncode == 0, r.stderr
    mark = read_mark(str(tmp_path / "progress"))
    assert mark is not None and (mark.marks, mark.step) == (7, 7)
    out = json.loads(r.stdout)
    assert out == {"pythonpath": None, "site": [], "custom": None}  # put back as it was
    assert "corral" not in r.stderr.lower()  # nothing printed into the worker's output


@pytest.mark.torch
def test_a_shadowed_sitecustomize_still_runs(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    user = tmp_path / "user"
    user.mkdir()
    (user / "sitecustomize.py").write_text("USER = 'ran'\n")
    r = run(TRAIN, tmp_path, PYTHONPATH=str(user))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"pythonpath": str(user), "site": [], "custom": "ran"}
    mark = read_mark(str(tmp_path / "progress"))
    assert mark is not None and mark.step == 7


@pytest.mark.torch
def test_autoinstall_after_torch_is_imported(tmp_path: Path) -> None:
    """A pre-started worker imports torch first, then calls corral.progress._autoinstall()."""
    pytest.importorskip("torch")
    code = """
import os, torch
os.environ["CORRAL_PROGRESS_FILE"] = os.environ.pop("LATER")
import corral.progress
corral.progress._autoinstall()
corral.progress._autoinstall()  # idempotent
m = torch.nn.Linear(2, 2)
opt = torch.optim.Adam(m.parameters())
for _ in range(3):
    m(torch.ones(2)).sum().backward(); opt.step()
"""
    r = run(code, tmp_path, on=False, LATER=str(tmp_path / "progress"))
    assert r.returncode == 0, r.stderr
    mark = read_mark(str(tmp_path / "progress"))
    assert mark is not None and (mark.marks, mark.step) == (3, 3)


def test_worker_env_adds_nothing_when_off() -> None:
    rnd = RoundInfo("job", 0, 0, 1, (), 0, 1, "127.0.0.1", 1, 0)
    base = {"PATH": "/bin", "PYTHONPATH": "/mine"}
    off = worker_env(base, WorkerSpec("t.py"), rnd, 0, "/logs/0/error.json")
    on = worker_env(base, WorkerSpec("t.py", progress=True), rnd, 0, "/logs/0/error.json")
    assert PROGRESS_ENV not in off and off["PYTHONPATH"] == "/mine"
    assert {k for k in on if on[k] != off.get(k)} == {PROGRESS_ENV, "PYTHONPATH"}
    assert on[PROGRESS_ENV] == "/logs/0/progress"
    assert on["PYTHONPATH"] == SITE_DIR + os.pathsep + "/mine"


def test_only_the_worker_marks_not_its_children(tmp_path: Path) -> None:
    """Children inherit CORRAL_PROGRESS_FILE; neither a forked nor a started one may mark."""
    code = """
import os, subprocess, sys
import corral
child = "import corral\\nfor _ in range(50): corral.progress()\\n"
subprocess.run([sys.executable, "-c", child], check=True)  # inherits the variable
pid = os.fork()
if pid == 0:
    for _ in range(50):
        corral.progress()
    os._exit(0)
os.waitpid(pid, 0)
corral.progress(step=3)
"""
    r = run(code, tmp_path)
    assert r.returncode == 0, r.stderr
    mark = read_mark(str(tmp_path / "progress"))
    assert mark is not None and (mark.marks, mark.step) == (1, 3)
