"""``--collapse-logs``: identical lines of many ranks printed once, in time, in order."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest
from tests.helpers import CORRAL, corral_env

from corral.core.compat import timeout
from corral.workers.collapse import LineCollapser, rank_set
from corral.workers.logs import RunLogs


@pytest.mark.parametrize(
    ("ranks", "prefix"),
    [([3], "[default3]:"), ([0, 1, 2, 3], "[default0-3]:"), ([5, 0, 2, 1], "[default0-2,5]:"),
     ([0, 2, 4], "[default0,2,4]:")],
)  # fmt: skip
def test_rank_set(ranks: list[int], prefix: str) -> None:
    assert rank_set("default", ranks) == prefix


class Console:
    def __init__(self) -> None:
        self.lines: list[tuple[float, bytes]] = []
        self.changed = asyncio.Event()

    def write(self, data: bytes) -> None:
        now = asyncio.get_running_loop().time()
        self.lines += [(now, line) for line in data.splitlines()]
        self.changed.set()

    async def wait_for(self, n: int) -> None:
        async with timeout(2):
            while len(self.lines) < n:
                self.changed.clear()
                await self.changed.wait()


async def test_a_line_of_every_rank_is_printed_once_at_once() -> None:
    c, con = LineCollapser("default", 8), Console()
    for r in range(8):
        c.feed(r, [b"loading checkpoint"], con.write)
    assert [line for _, line in con.lines] == [b"[default0-7]:loading checkpoint"]  # no wait


async def test_no_line_waits_longer_than_100ms() -> None:
    c, con = LineCollapser("default", 8), Console()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    c.feed(0, [b"only rank 0 says this"], con.write)
    c.feed(1, [b"only rank 0 says this"], con.write)
    assert con.lines == []
    # the line is due within 100 ms of its arrival: what the collapser asked the loop
    # for (when the loop gets to it on a busy machine is the loop's business)
    assert c._timer is not None and c._timer.when() - t0 <= 0.1
    await con.wait_for(1)
    ((_, line),) = con.lines
    assert line == b"[default0-1]:only rank 0 says this"


async def test_one_ranks_lines_keep_their_order() -> None:
    c, con = LineCollapser("default", 3), Console()
    c.feed(0, [b"A", b"B0", b"C"], con.write)
    c.feed(1, [b"A", b"B1", b"C"], con.write)  # C moves behind B1 to take rank 1
    c.feed(2, [b"C", b"A"], con.write)  # rank 2's C came first: it cannot join A's group first
    c.flush()
    got = [line.decode() for _, line in con.lines]
    assert got == ["[default0-1]:A", "[default0]:B0", "[default1]:B1", "[default0-2]:C",
                   "[default2]:A"]  # fmt: skip
    for r in range(3):  # every rank's own lines in the order it printed them
        mine = [g.split(":", 1)[1] for g in got if _in(r, g)]
        assert mine == {0: ["A", "B0", "C"], 1: ["A", "B1", "C"], 2: ["C", "A"]}[r]


class BrokenClock:
    """The loop's time, until ``broken``: then reading it raises (a bug in the timer's path)."""

    def __init__(self) -> None:
        self.broken = False

    def __call__(self) -> float:
        if self.broken:
            raise RuntimeError("clock bug")
        return asyncio.get_running_loop().time()


class Owner:
    def __init__(self) -> None:
        self.errors: list[Exception] = []
        self.told = asyncio.Event()

    def on_error(self, exc: Exception) -> None:
        self.errors.append(exc)
        self.told.set()

    async def wait(self) -> Exception:
        async with timeout(2):
            await self.told.wait()
        return self.errors[0]


async def test_a_failing_flush_timer_prints_what_it_held_and_tells_its_owner() -> None:
    clock, owner, con = BrokenClock(), Owner(), Console()
    c = LineCollapser("default", 8, window=0.0, clock=clock, on_error=owner.on_error)
    c.feed(0, [b"held"], con.write)
    c.feed(1, [b"held"], con.write)
    clock.broken = True  # the timer's read of the clock fails
    assert repr(await owner.wait()) == "RuntimeError('clock bug')"
    assert [line for _, line in con.lines] == [b"[default0-1]:held"]  # not lost
    clock.broken = False
    c.feed(2, [b"after"], con.write)  # and the collapser goes on
    await con.wait_for(2)
    assert con.lines[1][1] == b"[default2]:after"


async def test_a_failing_flush_timer_reaches_the_latest_attempts_owner(tmp_path: Path) -> None:
    # the console write fails in the timer's flush: the lines are dropped with a log
    # line, and the owner of the latest attempt (the worker group: its wait raises) is told
    def broken_console(data: bytes) -> None:
        raise OSError("console gone")

    logs = RunLogs("run", log_dir=str(tmp_path), collapse=True)
    try:
        first, latest = Owner(), Owner()
        logs.new_attempt(2, on_error=first.on_error)
        attempt = logs.new_attempt(2, on_error=latest.on_error)
        assert attempt.collapsers is not None
        attempt.collapsers[0].feed(0, [b"a line"], broken_console)
        assert repr(await latest.wait()) == "OSError('console gone')"
        assert first.errors == []
    finally:
        logs.close()


def _in(r: int, line: str) -> bool:
    spec = line.split(":")[0][len("[default") : -1]
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        if int(lo) <= r <= int(hi or lo):
            return True
    return False


@pytest.mark.slow
def test_corral_collapse_logs_with_8_ranks_keeps_every_line_in_the_files(tmp_path: Path) -> None:
    script = tmp_path / "w.py"
    script.write_text(
        "import os\nr = os.environ['LOCAL_RANK']\nprint('loading checkpoint')\n"
        "print('my rank is', r)\nprint('step 1 loss 0.5')\n"
    )
    out = subprocess.run(
        [*CORRAL, "--standalone", "--nproc-per-node", "8", "--collapse-logs", "-t", "1",
         "--log-dir", str(tmp_path / "logs"), str(script)],
        capture_output=True, text=True, timeout=60, env=corral_env(),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines.count("[default0-7]:loading checkpoint") == 1
    assert lines.count("[default0-7]:step 1 loss 0.5") == 1
    assert sorted(x for x in lines if "my rank" in x) == [
        f"[default{r}]:my rank is {r}" for r in range(8)
    ]
    assert len(lines) == 10
    files = sorted((tmp_path / "logs").glob("*/attempt_0/*/stdout.log"))
    assert len(files) == 8
    for f in files:
        r = f.parent.name
        assert f.read_text() == f"loading checkpoint\nmy rank is {r}\nstep 1 loss 0.5\n"
