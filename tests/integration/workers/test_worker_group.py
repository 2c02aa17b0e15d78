"""Real processes in a WorkerGroup: outcomes, stop, signals, error files, logs."""

from __future__ import annotations

import os
import signal
import textwrap
from pathlib import Path

import pytest

from corral.config import Std, StdSpec
from corral.workers import GroupState, RunLogs

from .conftest import Beacon, MakeGroup

pytestmark = pytest.mark.timeout(30)

# Worker snippets: tell the beacon "<rank> <word>", then act.
PRELUDE = "import os, signal, sys, time\nR = os.environ['LOCAL_RANK']\n"
SAY = "def say(w):\n    fd = os.open(os.environ['BEACON'], os.O_WRONLY)\n    os.write(fd, f'{R} {w}\\n'.encode())\n    os.close(fd)\n"
BLOCK = "signal.pause() if hasattr(signal, 'pause') else time.sleep(60)\n"


def code(body: str) -> str:
    return PRELUDE + SAY + textwrap.dedent(body)


async def test_success(make_group: MakeGroup) -> None:
    g = make_group(code("assert os.environ['WORLD_SIZE'] == '3'; print('ok', R)"), 3)
    await g.start()
    assert len(g.pids) == 3
    res = await g.wait()
    assert res.succeeded and res.failures == []
    assert res.exitcodes == {0: 0, 1: 0, 2: 0}
    await g.stop(1.0)
    assert g.state is GroupState.STOPPED


async def test_first_failure_and_siblings_not_reported(
    make_group: MakeGroup, beacon: Beacon
) -> None:
    g = make_group(
        code("""
        say('up')
        if R == '1':
            fd = os.open(os.environ['BEACON'], os.O_RDONLY)  # wait for the test's go: never comes
        if R == '2':
            print('dying', file=sys.stderr); sys.exit(7)
        signal.pause()
    """),
        3,
        rank_offset=10,
        group_rank=2,
        round=4,
        restart_count=1,
    )
    await g.start()
    res = await g.wait()
    assert not res.succeeded
    [f] = res.failures
    assert (f.rank, f.local_rank, f.exitcode, f.group_rank, f.round, f.restart_count) == (
        12,
        2,
        7,
        2,
        4,
        1,
    )
    assert (f.host, f.node_id, f.pid) == ("hostA", "node-a", g.pids[2])
    assert f.stderr_tail == "dying" and f.message is None
    await g.stop(2.0)
    assert g.failures == res.failures  # the siblings killed by stop are not failures


async def test_sigterm_then_sigkill_escalation(make_group: MakeGroup, beacon: Beacon) -> None:
    g = make_group(
        code("""
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        say('ready')
        signal.pause()
    """),
        2,
    )
    await g.start()
    await beacon.lines(2)
    loop_time = __import__("asyncio").get_running_loop().time
    t0 = loop_time()
    await g.stop(0.3)
    elapsed = loop_time() - t0
    assert 0.3 <= elapsed < 3.0
    assert all(w.returncode == -signal.SIGKILL for w in g.workers)
    assert g.failures == []
    await g.stop(0.3)  # idempotent
    res = await g.wait()
    assert not res.succeeded and res.failures == []


async def test_signal_forwarding(make_group: MakeGroup, beacon: Beacon) -> None:
    g = make_group(
        code("""
        signal.signal(signal.SIGUSR1, lambda *a: (say('usr1'), sys.exit(0)))
        say('ready')
        while True:
            signal.pause()
    """),
        2,
    )
    await g.start()
    await beacon.lines(2)
    g.send_signal(signal.SIGUSR1)
    assert sorted(await beacon.lines(2)) == ["0 usr1", "1 usr1"]
    res = await g.wait()
    assert res.succeeded


async def test_corral_record_error_file(make_group: MakeGroup) -> None:
    g = make_group(
        code("""
        from corral import record
        @record
        def main():
            raise ValueError(f'bad rank {R}')
        if R == '1':
            main()
    """),
        2,
    )
    await g.start()
    res = await g.wait()
    [f] = res.failures
    assert f.message == "ValueError: bad rank 1"
    assert f.traceback is not None and "in main" in f.traceback
    assert f.error_file is not None and f.error_file.endswith("attempt_0/1/error.json")
    assert f.stderr_tail is None


async def test_torch_shaped_error_file_written_by_hand(make_group: MakeGroup) -> None:
    g = make_group(
        code("""
        import json
        json.dump({'message': 'plain string message', 'timestamp': 5},
                  open(os.environ['TORCHELASTIC_ERROR_FILE'], 'w'))
        os.kill(os.getpid(), signal.SIGSEGV)
    """),
        1,
    )
    await g.start()
    [f] = (await g.wait()).failures
    assert f.message == "plain string message" and f.exitcode == -signal.SIGSEGV


@pytest.mark.torch
@pytest.mark.timeout(60)
async def test_real_torch_record(make_group: MakeGroup) -> None:
    pytest.importorskip("torch")
    g = make_group(
        code("""
        import torch
        from torch.distributed.elastic.multiprocessing.errors import record
        @record
        def main():
            raise RuntimeError('torch says no')
        main()
    """),
        1,
    )
    await g.start()
    [f] = (await g.wait()).failures
    assert f.message == "RuntimeError: torch says no"
    assert f.traceback is not None and "torch says no" in f.traceback
    assert f.exitcode == 1


async def test_spawn_error_is_a_failure(make_group: MakeGroup, short_tmp: Path) -> None:
    from corral.workers import WorkerGroup, WorkerSpec

    g0 = make_group("pass", 1)
    g = WorkerGroup(
        WorkerSpec(str(short_tmp / "nope"), no_python=True),
        g0.rnd,
        attempt=0,
        logs=RunLogs("x", log_dir=str(short_tmp)),
        reaper=g0.reaper,
        node_id="n",
        host="h",
        base_env={},
    )
    await g.start()
    [f] = (await g.wait()).failures
    assert f.exitcode == 127 and f.message is not None and "FileNotFoundError" in f.message
    await g.stop(0.1)


async def test_logs_redirect_tee_filter(
    make_group: MakeGroup, short_tmp: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    logs = RunLogs(
        "job",
        log_dir=str(short_tmp / "L"),
        role="default",
        redirects=StdSpec(Std.NONE, ((2, Std.ALL),)),
        tee=StdSpec(Std.ALL, ((2, Std.NONE),)),
        local_ranks_filter=frozenset({0, 2}),
    )
    g = make_group(
        code("print(f'out {R}'); print(f'err {R}', file=sys.stderr); print('no newline', end='')"),
        3,
        logs=logs,
    )
    await g.start()
    assert (await g.wait()).succeeded
    await g.stop(1.0)
    a = g.logs
    assert a is not None and a.dir == os.path.join(logs.run_dir, "attempt_0")
    read = lambda p: Path(p).read_text()  # noqa: E731
    assert read(a.stdout_path(0)) == "out 0\nno newline"
    assert read(a.stderr_path(1)) == "err 1\n"  # teed but filtered: file only
    assert read(a.stdout_path(2)) == "out 2\nno newline"  # redirected
    out, err = capfd.readouterr()
    assert "[default0]:out 0\n" in out and "[default0]:no newline\n" in out
    assert "[default0]:err 0\n" in err
    assert "1" not in out.replace("[default0]", "") and "err 1" not in err
    assert "out 2" not in out and "err 2" not in err
    # a second group start gets attempt_1, never overwriting attempt_0
    assert logs.new_attempt(1).dir.endswith("attempt_1")


async def test_stderr_passthrough_unchanged_and_tail(
    make_group: MakeGroup, capfd: pytest.CaptureFixture[str]
) -> None:
    lines = "".join(f"line {i}\\n" for i in range(80))
    g = make_group(code(f"sys.stderr.write('{lines}'); sys.exit(3)"), 1)
    await g.start()
    [f] = (await g.wait()).failures
    _, err = capfd.readouterr()
    assert "".join(f"line {i}\n" for i in range(80)) in err  # no prefix, unchanged
    assert f.stderr_tail is not None
    tail = f.stderr_tail.splitlines()
    assert len(tail) == 50 and tail[-1] == "line 79"


async def test_redirected_stderr_tail_from_file(make_group: MakeGroup, short_tmp: Path) -> None:
    logs = RunLogs("job", log_dir=str(short_tmp / "R"), redirects=StdSpec(Std.ALL))
    g = make_group(code("print('last words', file=sys.stderr); sys.exit(2)"), 1, logs=logs)
    await g.start()
    [f] = (await g.wait()).failures
    assert f.stderr_tail == "last words"


async def test_temp_log_dir_removed(make_group: MakeGroup) -> None:
    logs = RunLogs("tmpjob")
    g = make_group(code("pass"), 1, logs=logs)
    await g.start()
    assert (await g.wait()).succeeded
    await g.stop(1.0)
    base = logs.temporary
    assert base is not None and os.path.isdir(base)
    logs.close()
    assert not os.path.exists(base)


async def test_stop_kills_workers_children(make_group: MakeGroup, beacon: Beacon) -> None:
    import psutil

    g = make_group(
        code("""
        import subprocess
        child = subprocess.Popen([sys.executable, '-c', 'import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN); signal.pause()'])
        say(f'child {child.pid}')
        signal.pause()
    """),
        1,
    )
    await g.start()
    [line] = await beacon.lines(1)
    child = psutil.Process(int(line.split()[-1]))
    await g.stop(0.3)
    _gone, alive = psutil.wait_procs([child], timeout=2.0)
    assert not alive or all(p.status() == psutil.STATUS_ZOMBIE for p in alive)


async def test_run_path_and_module(make_group: MakeGroup, short_tmp: Path, beacon: Beacon) -> None:
    from corral.workers import WorkerGroup, WorkerSpec

    script = short_tmp / "script.py"
    script.write_text(
        "import os, sys\n"
        "fd = os.open(os.environ['BEACON'], os.O_WRONLY)\n"
        "os.write(fd, f'{__name__} {sys.argv[0]} {sys.argv[1:]}\\n'.encode())\n"
    )
    g0 = make_group("pass", 1)
    for kw in ({"run_path": True}, {}):
        spec = WorkerSpec(str(script), ("a", "${local_rank}"), **kw)  # type: ignore[arg-type]
        g = WorkerGroup(
            spec,
            g0.rnd,
            attempt=0,
            logs=RunLogs("x", log_dir=str(short_tmp)),
            reaper=g0.reaper,
            node_id="n",
            host="h",
            base_env={**os.environ, "BEACON": beacon.path},
        )
        await g.start()
        assert (await g.wait()).succeeded
        await g.stop(0.1)
        assert await beacon.lines(1) == [f"__main__ {script} ['a', '0']"]
