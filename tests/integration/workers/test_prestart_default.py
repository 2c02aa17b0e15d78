"""Pre-started workers as the default: they cost nothing where nothing is gained.

- import-time output of a pre-imported package is shown only to a worker that
  imports it, where a fresh spawn would print it (the CLI, compared byte for
  byte with ``--no-prestart``);
- a standby whose imports initialized a device runtime is never used (a
  stand-in ``torch`` whose CUDA says it is initialized);
- an uncaught exception is known when it reaches the top, not when the
  process has finished dying;
- where the script's imports cannot be read, the first attempt does not wait
  for a standby that is still importing.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from tests.helpers import CORRAL, corral_env

from corral.workers import WorkerSpec
from corral.workers.prestart import prestart_plan
from corral.workers.standby import StandbyPool

from . import test_prestart
from .test_prestart import BOTH, Node

node = test_prestart.node  # the fixture: standbys of their own, or from a zygote

pytestmark = [pytest.mark.timeout(90), pytest.mark.slow]

NOISY = """
import sys
print("noisy says hello", flush=True)
print("noisy warns", file=sys.stderr, flush=True)
"""


def _cli(tmp: Path, script: Path, *flags: str, env: dict[str, str]) -> dict[str, str]:
    logs = tmp / ("logs" + "".join(f.strip("-") for f in flags))
    r = subprocess.run(
        [*CORRAL, "--standalone", "-r", "3", "--log-dir", str(logs), *flags, str(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    [rank_dir] = logs.glob("*/attempt_0/0")
    return {
        "out": (rank_dir / "stdout.log").read_text(),
        "err": (rank_dir / "stderr.log").read_text(),
        "agent": r.stderr,
    }


@pytest.mark.parametrize(
    "body, shown",
    [
        ("print('before', flush=True)\nimport noisy\nprint('after')\n", True),
        ("print('only')\nif False:\n    import noisy\n", False),
        ("print('sub', flush=True)\nfrom noisy import __name__ as n\nprint(n)\n", True),
    ],
    ids=["imports-it", "never-imports-it", "from-import"],
)
def test_import_output_is_what_a_fresh_spawn_prints(tmp_path: Path, body: str, shown: bool) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "noisy.py").write_text(NOISY)
    script = tmp_path / "train.py"
    script.write_text(body)
    env = corral_env(PYTHONPATH=str(lib), PET_PRESTART_IMPORT="noisy")
    pre = _cli(tmp_path, script, env=env)
    fresh = _cli(tmp_path, script, "--no-prestart", env=env)
    assert "(1 pre-started)" in pre["agent"]
    assert (pre["out"], pre["err"]) == (fresh["out"], fresh["err"])
    assert ("noisy says hello" in pre["out"]) is shown
    assert ("noisy warns" in pre["err"]) is shown


def test_standby_holding_a_device_runtime_is_never_used(tmp_path: Path) -> None:
    fake = tmp_path / "lib" / "torch"
    fake.mkdir(parents=True)
    # a stand-in for a library that initializes CUDA when it is imported
    (fake / "__init__.py").write_text(
        "class cuda:\n    @staticmethod\n    def is_initialized():\n        return True\n"
    )
    script = tmp_path / "train.py"
    script.write_text("import torch\nprint('ran', torch.cuda.is_initialized())\n")
    env = corral_env(PYTHONPATH=str(tmp_path / "lib"))
    r = _cli(tmp_path, script, "--nproc-per-node", "2", env=env)
    assert "ran True" in r["out"]
    assert "initialized a device runtime in the standby (torch.cuda is initialized)" in r["agent"]
    assert "(0 pre-started)" in r["agent"]


SLOW_TEARDOWN = """
import atexit, json, signal, time  # json: what the pool pre-imports
def teardown():  # a library's slow teardown (gloo's takes about a second), deaf to SIGTERM
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(60)
atexit.register(teardown)
raise RuntimeError("boom at the top")
"""


@BOTH
async def test_uncaught_exception_known_before_the_teardown(node: Node, tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text(SLOW_TEARDOWN)
    spec = WorkerSpec(str(script), local_world_size=1)
    plan = prestart_plan(spec, ("json",))
    assert plan is not None
    async with StandbyPool(
        plan, spec, node.env, node.reaper, zygote=node.zygote, detach_stops=True
    ) as pool:
        g = node.group(spec, pool)
        await g.start()
        try:
            assert g.workers[0].prestarted
            res = await asyncio.wait_for(g.wait(), 30)
            pid = g.workers[0].pid
            assert pid is not None
            assert not res.succeeded
            [failure] = res.failures
            assert failure.message == "RuntimeError: boom at the top"
            assert failure.traceback is not None and 'raise RuntimeError("boom' in failure.traceback
            # known while the worker is still in its teardown
            assert psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        finally:
            await g.stop(1.0)  # it ignores SIGTERM in its teardown: SIGKILL after 1 s


async def test_unreadable_script_first_attempt_does_not_wait(node: Node, tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "slowmod.py").write_text("import time\ntime.sleep(60)\n")  # an import that takes long
    script = tmp_path / "train.py"
    script.write_text("print('ok')\nthis is not python (\n")  # the scan cannot read it
    spec = WorkerSpec(str(script), local_world_size=1)
    plan = prestart_plan(spec, ("slowmod",))
    assert plan is not None and plan.imports == ("slowmod",) and plan.wait is False
    node.env["PYTHONPATH"] = str(lib)
    async with StandbyPool(plan, spec, node.env, node.reaper, zygote=node.zygote) as pool:
        assert await pool.take() is None  # importing still: spawn fresh, keep it for later
        assert len(pool._standbys) == 1


def test_plan_imports_only_what_the_script_imports(tmp_path: Path) -> None:
    (tmp_path / "helper.py").write_text("import torch.nn as nn\n")
    uses = tmp_path / "uses.py"
    uses.write_text("import helper\n")
    plain = tmp_path / "plain.py"
    plain.write_text("import json\nprint(json.dumps(1))\n")
    cands = ("torch", "torch._dynamo")
    a = prestart_plan(WorkerSpec(str(uses)), cands)
    b = prestart_plan(WorkerSpec(str(plain)), cands)
    assert a is not None and a.imports == cands and a.wait
    assert b is not None and b.imports == () and b.wait
    # the launcher never imports torch to find out (a fresh interpreter, as the agent)
    probe = (
        "import sys; from corral.workers.prestart import prestart_plan; "
        "from corral.workers.spec import WorkerSpec; "
        f"p = prestart_plan(WorkerSpec({str(uses)!r}), ('torch', 'torch._dynamo')); "
        "assert p.imports and 'torch' not in sys.modules, sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", probe], check=True, timeout=60)
