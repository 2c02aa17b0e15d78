"""Pre-started workers (--prestart): a standby becomes exactly the worker a fresh spawn would be."""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from corral.workers import Reaper, RunLogs, WorkerGroup, WorkerSpec
from corral.workers.standby import StandbyPool, prestart_plan

from .conftest import round_info

pytestmark = [pytest.mark.timeout(60), pytest.mark.slow]

# Everything a script can observe about how it was started.
DUMP = '''\
"""doc of the dump script"""
import ctypes, json, os, pickle, signal, sys
import __main__

class Point:
    def __init__(self, x):
        self.x = x

def main():
    libc = ctypes.CDLL(None)
    death = ctypes.c_int(0)
    libc.prctl(2, ctypes.byref(death), 0, 0, 0)  # PR_GET_PDEATHSIG
    dunder = ("__file__", "__doc__", "__spec__", "__cached__", "__package__", "__loader__",
              "__name__", "__annotations__", "__builtins__")
    out = {
        "name": __name__, "file": globals().get("__file__"), "argv": sys.argv,
        "orig_argv": sys.orig_argv[1:], "path0": sys.path[0], "path": sys.path,
        "cwd": os.getcwd(), "doc": __doc__, "spec": repr(__spec__),
        "main": sorted(k for k in vars(__main__) if not k.startswith("_") or k in dunder),
        "main_is_this": sys.modules["__main__"] is __main__,
        "loader": type(globals().get("__loader__")).__name__,
        "env": dict(os.environ),
        "leader": os.getpgid(0) == os.getpid() == os.getsid(0),
        "signals": {s.name: str(signal.getsignal(s)) for s in signal.valid_signals()
                    if isinstance(s, signal.Signals) and s not in (signal.SIGKILL, signal.SIGSTOP)},
        "blocked": sorted(int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, [])),
        "pdeathsig": death.value,
        "pickle": pickle.loads(pickle.dumps(Point(3))).x,
        "sched": os.sched_getscheduler(0),
        "tty": [sys.stdout.isatty(), sys.stderr.isatty()],
        "umask": os.umask(0o22),
    }
    with open(os.path.join(os.environ["OUT"], "dump" + os.environ["LOCAL_RANK"] + ".json"), "w") as f:
        json.dump(out, f, indent=1, sort_keys=True)
    print("out", os.environ["LOCAL_RANK"])
    print("err", os.environ["LOCAL_RANK"], file=sys.stderr)

if __name__ == "__main__":
    main()
'''


class Node:
    """A reaper, a log directory and the environment; groups run fresh or from a pool."""

    def __init__(self, tmp: Path, zygote: bool = False) -> None:
        self.zygote = zygote
        self.tmp = tmp
        self.reaper = Reaper()
        self.reaper.start()
        self.logs = RunLogs("pre", log_dir=str(tmp / "logs"))
        self.env = {**os.environ, "OUT": str(tmp)}

    def group(self, spec: WorkerSpec, pool: StandbyPool | None) -> WorkerGroup:
        """A group of ``spec`` on this node, not started."""
        return WorkerGroup(
            spec,
            round_info(spec.local_world_size),
            attempt=0,
            logs=self.logs,
            reaper=self.reaper,
            node_id="n",
            host="h",
            base_env=self.env,
            standbys=pool,
        )

    async def run(
        self, spec: WorkerSpec, pool: StandbyPool | None, expect_ok: bool = True
    ) -> WorkerGroup:
        g = self.group(spec, pool)
        await g.start()
        res = await asyncio.wait_for(g.wait(), 30)
        await g.stop(2.0)
        assert res.succeeded is expect_ok, (res, g.logs and g.logs.dir)
        return g

    def pool(self, spec: WorkerSpec, imports: tuple[str, ...] = ("json",)) -> StandbyPool:
        plan = prestart_plan(spec, imports)
        assert plan is not None
        return StandbyPool(plan, spec, self.env, self.reaper, zygote=self.zygote)

    def close(self) -> None:
        self.logs.close()
        self.reaper.close()


@pytest.fixture
async def node(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Node]:
    """Standbys of their own, or forked by a zygote (this process a subreaper, as the CLI)."""
    zygote = getattr(request, "param", "spawn") == "zygote"
    if zygote and _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        pytest.skip("cannot become a child subreaper")
    n = Node(tmp_path, zygote)
    try:
        yield n
    finally:
        n.close()
        if zygote:
            _libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


BOTH = pytest.mark.parametrize("node", ["spawn", "zygote"], indirect=True)
PR_SET_CHILD_SUBREAPER = 36
_libc = ctypes.CDLL(None, use_errno=True)


async def _ready(pool: StandbyPool) -> None:
    # a script that imports none of the pool's modules gets its standbys at the
    # first group start (docs/workers.md); these tests want them before it
    pool.fill(idle=False)
    async with asyncio.timeout(30):
        while not pool._standbys or not all(sb.ready for sb in pool._standbys):
            await asyncio.sleep(0.01)


def _dump(tmp: Path, rank: int) -> dict[str, Any]:
    d: dict[str, Any] = json.loads((tmp / f"dump{rank}.json").read_text())
    env = d["env"]
    env.pop("CORRAL_WORKER_TOKEN")  # one per group or standby: differs by design
    env["TORCHELASTIC_ERROR_FILE"] = env["TORCHELASTIC_ERROR_FILE"].replace(
        "attempt_1", "attempt_0"
    )
    d["spec"] = re.sub(r" at 0x[0-9a-f]+", "", d["spec"])  # an object's address
    return d


@BOTH
@pytest.mark.parametrize("mode", ["script", "module", "run_path"])
async def test_prestarted_worker_sees_what_a_fresh_one_sees(
    node: Node, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    pkg = tmp_path / "code"
    pkg.mkdir()
    (pkg / "dump.py").write_text(DUMP)
    monkeypatch.chdir(pkg)
    entry = "dump" if mode == "module" else "dump.py"
    spec = WorkerSpec(
        entry, ("a", "${local_rank}"), module=mode == "module", run_path=mode == "run_path",
        local_world_size=2, python_exec=sys.executable,
    )  # fmt: skip
    fresh = await node.run(spec, None)
    want = [_dump(tmp_path, r) for r in (0, 1)]
    async with node.pool(spec) as pool:
        await _ready(pool)
        pre = await node.run(spec, pool)
        assert [w.prestarted for w in pre.workers] == [True, True]
    got = [_dump(tmp_path, r) for r in (0, 1)]
    for g, w in zip(got, want, strict=True):
        assert {k: v for k, v in g.items() if v != w.get(k)} == {}, {k: w.get(k) for k in g}
    assert want[0]["argv"][1:] == ["a", "0"] and want[0]["leader"] and want[0]["pdeathsig"] == 9
    if mode == "script":
        assert want[0]["argv"][0] == "dump.py" and want[0]["file"] == str(pkg / "dump.py")
    for g in (fresh, pre):  # the attempt's logs: stderr went through the agent's pipe
        assert g.workers[0].stderr_tail() == "err 0"


@BOTH
async def test_multiprocessing_spawn_from_a_prestarted_worker(node: Node, tmp_path: Path) -> None:
    script = tmp_path / "mp.py"
    script.write_text(
        textwrap.dedent("""
        import multiprocessing as mp, os, sys

        class Box:
            def __init__(self, v):
                self.v = v

        def work(box, q):
            q.put((box.v * 2, __name__))

        if __name__ == "__main__":
            ctx = mp.get_context("spawn")
            q = ctx.Queue()
            p = ctx.Process(target=work, args=(Box(21), q))
            p.start()
            got = q.get(timeout=30)
            p.join()
            open(os.path.join(os.environ["OUT"], "mp" + os.environ["LOCAL_RANK"]), "w").write(repr(got))
    """)
    )
    spec = WorkerSpec(str(script), local_world_size=1)
    async with node.pool(spec, ()) as pool:
        await _ready(pool)
        g = await node.run(spec, pool)
        assert g.workers[0].prestarted
    assert (tmp_path / "mp0").read_text() == "(42, '__mp_main__')"


@BOTH
async def test_crash_while_importing_the_user_script(node: Node, tmp_path: Path) -> None:
    script = tmp_path / "bad.py"
    script.write_text("import os\nimport no_such_module_here\n")
    spec = WorkerSpec(str(script), local_world_size=1)
    fresh = await node.run(spec, None, expect_ok=False)
    async with node.pool(spec) as pool:
        await _ready(pool)
        pre = await node.run(spec, pool, expect_ok=False)
    [want], [got] = fresh.failures, pre.failures
    assert got.exitcode == want.exitcode == 1
    assert want.stderr_tail and "ModuleNotFoundError" in want.stderr_tail
    # The pre-started worker reported its exception as it reached the top, in an
    # error file (torch's record format): the same traceback, no bootstrap frames.
    assert got.error_file is not None and got.message == (
        "ModuleNotFoundError: No module named 'no_such_module_here'"
    )
    assert got.traceback is not None and got.traceback.strip() == want.stderr_tail.strip()


@BOTH
async def test_standby_dead_before_assignment_is_replaced_by_a_fresh_spawn(
    node: Node, tmp_path: Path
) -> None:
    (tmp_path / "dump.py").write_text(DUMP)
    spec = WorkerSpec(str(tmp_path / "dump.py"), local_world_size=2)
    async with node.pool(spec) as pool:
        await _ready(pool)
        victims = pool.alive
        os.kill(victims[0], signal.SIGKILL)
        async with asyncio.timeout(10):  # the pool hears of the death (its pidfd)
            while victims[0] in pool.alive:
                await asyncio.sleep(0.005)
        g = await node.run(spec, pool)
        assert sorted(w.prestarted for w in g.workers) == [False, True]
        assert victims[0] not in g.pids.values()
    assert _dump(tmp_path, 0)["name"] == "__main__"


AGENT = r"""
import asyncio, os, sys
from corral.workers import Reaper, WorkerSpec
from corral.workers.standby import StandbyPool, prestart_plan
from corral.workers.sweep import claim_children

async def main():
    if sys.argv[2] == "zygote":
        claim_children()  # as the CLI: the standbys are forked by a zygote
    reaper = Reaper(); reaper.start()
    spec = WorkerSpec(sys.argv[1], local_world_size=2)
    async with StandbyPool(prestart_plan(spec, ("json",)), spec, os.environ, reaper) as pool:
        while not all(sb.ready for sb in pool._standbys):
            await asyncio.sleep(0.01)
        zygote = [pool._zygote.pid] if pool._zygote is not None else []
        print(*pool.alive, *zygote, flush=True)
        await asyncio.Event().wait()

asyncio.run(main())
"""


@pytest.mark.parametrize("how", ["spawn", "zygote"])
def test_sigkill_of_the_agent_ends_its_standbys(tmp_path: Path, how: str) -> None:
    (tmp_path / "w.py").write_text("import json\nprint('never runs')\n")  # json: pre-imported
    agent = subprocess.Popen(
        [sys.executable, "-c", AGENT, str(tmp_path / "w.py"), how],
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    pids: list[int] = []
    try:
        assert agent.stdout is not None
        pids = [int(p) for p in agent.stdout.readline().split()]
        assert len(pids) == (3 if how == "zygote" else 2)  # the standbys (and the zygote)
        agent.kill()
        agent.wait()
        _gone, alive = psutil.wait_procs([psutil.Process(p) for p in pids], timeout=1.0)
        alive = [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]
        assert not alive, f"standbys alive 1 s after the agent's SIGKILL: {alive}"
    finally:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        agent.kill()
        agent.wait()
        if agent.stdout:
            agent.stdout.close()


@BOTH
async def test_error_file_is_the_failure_before_the_slow_exit(node: Node, tmp_path: Path) -> None:
    """With detached stops, a worker that wrote its error file has failed: no wait for its exit."""
    script = tmp_path / "slow.py"
    script.write_text(
        textwrap.dedent("""
        import os, signal, sys, time
        from corral import record

        @record
        def main():
            if os.environ["LOCAL_RANK"] == "1":
                raise ValueError("bad batch")
            signal.pause()

        try:
            main()
        finally:  # a teardown that takes its time (and ignores SIGTERM)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            time.sleep(60)
    """)
    )
    spec = WorkerSpec(str(script), local_world_size=2)
    plan = prestart_plan(spec, ())
    assert plan is not None
    pool = StandbyPool(
        plan, spec, node.env, node.reaper, zygote=node.zygote, detach_stops=True
    )  # fmt: skip
    async with pool:
        await _ready(pool)
        g = WorkerGroup(
            spec, round_info(2), attempt=0, logs=node.logs, reaper=node.reaper,
            node_id="n", host="h", base_env=node.env, standbys=pool,
        )  # fmt: skip
        await g.start()
        res = await asyncio.wait_for(g.wait(), 20)
        [f] = res.failures
        assert (f.local_rank, f.exitcode, f.message) == (1, 1, "ValueError: bad batch")
        assert g.workers[1].running  # still in its teardown
        await g.stop(0.2)  # detached: returns after the signal
        assert g.workers[1].running or g.state.name == "STOPPING"
        pids = list(g.pids.values())
    # leaving the pool waited for the detached stop: SIGKILL after 0.2 s, reaped
    assert all(w.returncode is not None for w in g.workers)
    assert not [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]


@pytest.mark.torch
@pytest.mark.parametrize("node", ["zygote"], indirect=True)
async def test_forked_standbys_do_not_share_random_state(node: Node, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    script = tmp_path / "rng.py"
    script.write_text(
        "import os, random, torch\n"
        "open(os.path.join(os.environ['OUT'], 'rng' + os.environ['LOCAL_RANK']), 'w').write("
        "repr((torch.initial_seed(), random.random())))\n"
    )
    spec = WorkerSpec(str(script), local_world_size=2)
    async with node.pool(spec, ("torch",)) as pool:
        await _ready(pool)
        g = await node.run(spec, pool)
        assert all(w.prestarted for w in g.workers)
    a, b = ((tmp_path / f"rng{r}").read_text() for r in (0, 1))
    assert a != b and eval(a)[0] != eval(b)[0] and eval(a)[1] != eval(b)[1]


HOOK = """
import json, os, sys
print(json.dumps({
    "PYTHONPATH": os.environ.get("PYTHONPATH"),
    "site_on_path": any(p.endswith("_site") for p in sys.path),
    "progress": "corral.progress" in sys.modules,
    "finder": [type(f).__name__ for f in sys.meta_path if "After" in type(f).__name__],
    "file": os.environ.get("CORRAL_PROGRESS_FILE", "").rsplit("/", 3)[-1],
}), file=sys.stderr)
"""


@BOTH
async def test_hang_detection_hook_composes(node: Node, tmp_path: Path) -> None:
    """With --hang-timeout the worker gets the progress hook, fresh or pre-started alike."""
    from corral.hangs import progress_env
    from corral.workers.spec import worker_env

    def env_builder(base: Any, spec: Any, rnd: Any, local_rank: int, error_file: str) -> Any:
        return {
            **worker_env(base, spec, rnd, local_rank, error_file),
            **progress_env(base, error_file),
        }

    script = tmp_path / "hook.py"
    script.write_text(HOOK)
    spec = WorkerSpec(str(script), local_world_size=1)
    seen = []
    for pool in (None, node.pool(spec, ())):
        g = WorkerGroup(
            spec, round_info(1), attempt=0, logs=node.logs, reaper=node.reaper,
            node_id="n", host="h", base_env=node.env, env_builder=env_builder, standbys=pool,
        )  # fmt: skip
        if pool is None:
            await g.start()
        else:
            async with pool:
                await _ready(pool)
                await g.start()
                assert g.workers[0].prestarted
        assert (await asyncio.wait_for(g.wait(), 30)).succeeded
        await g.stop(1.0)
        tail = g.workers[0].stderr_tail()
        assert tail is not None
        seen.append(json.loads(tail.splitlines()[-1]))
    assert seen[0] == seen[1]
    assert seen[0]["progress"] and seen[0]["finder"] and not seen[0]["site_on_path"]
    assert seen[0]["PYTHONPATH"] == os.environ.get("PYTHONPATH")
