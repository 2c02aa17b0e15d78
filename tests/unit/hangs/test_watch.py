"""The detector's shell on a FakeClock: two nodes' HangWatch over one MemoryStore.

Progress files are real files written here (as a worker would); the workers,
their stacks and the clock are fakes, so every moment is driven by the test.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import pytest

from corral.core.clock import FakeClock
from corral.core.failures import FailureReport
from corral.core.model import RoundInfo
from corral.hangs import progress_file
from corral.hangs.detect import Limits
from corral.hangs.view import progress_lines, read_progress
from corral.hangs.watch import HangWatch
from corral.progress import FORMAT
from corral.store.memory import MemoryStore

BASE = "/corral/job/"
SITE = "/venv/lib/python3.11/site-packages"


@dataclass
class FakeWorker:
    local_rank: int
    pid: int
    running: bool = True


class FakeLogs:
    def __init__(self, d: Path) -> None:
        self.d = d

    def error_file(self, local_rank: int) -> str:
        (self.d / str(local_rank)).mkdir(parents=True, exist_ok=True)
        return str(self.d / str(local_rank) / "error.json")


class FakeGroup:
    def __init__(self, d: Path, pids: list[int]) -> None:
        self.logs = FakeLogs(d)
        self.workers = [FakeWorker(i, pid) for i, pid in enumerate(pids)]

    def error_file(self, local_rank: int) -> str:
        return self.logs.error_file(local_rank)

    def mark(self, local_rank: int, step: int, when: float, exiting: bool = False) -> None:
        path = progress_file(self.logs.error_file(local_rank))
        with open(path, "wb") as f:
            f.write(FORMAT.pack(step, step, when, 1, int(exiting)).ljust(64, b"\0"))


def rnd(group_rank: int, offset: int) -> RoundInfo:
    return RoundInfo("job", 0, group_rank, 2, (), offset, 4, "127.0.0.1", 1, 0)


def stack_of(pid: int) -> str:
    if pid == 1003:  # rank 3: asleep in its own code
        frames = [("hang_here", "/job/train.py:40"), ("main", "/job/train.py:145")]
    else:  # everyone else: waiting in DDP's all-reduce inside backward
        frames = [("_engine_run_backward", f"{SITE}/torch/autograd/graph.py:841")]
        frames.append(("main", "/job/train.py:150"))
    body = "".join(f"    {f} ({loc})\n" for f, loc in frames)
    return f'Thread {pid} (idle): "MainThread"\n{body}'


async def fake_dump(pid: int) -> tuple[str | None, str]:
    return stack_of(pid), ""


async def settle() -> None:
    for _ in range(50):
        await asyncio.sleep(0)


def watch(name: str, store: MemoryStore, clock: FakeClock, **kw: float) -> HangWatch:
    return HangWatch(
        Limits(5.0, 60.0),
        node_id=name,
        host=f"host-{name}",
        store=store,
        base=BASE,
        clock=clock,
        dumper=fake_dump,
        wall=lambda: 1000.0 + clock.now(),
        **kw,
    )


@pytest.fixture
def nodes(tmp_path: Path) -> tuple[FakeGroup, FakeGroup]:
    return FakeGroup(tmp_path / "a", [1000, 1001]), FakeGroup(tmp_path / "b", [1002, 1003])


async def test_the_culprits_node_reports_it_and_the_other_follows(
    nodes: tuple[FakeGroup, FakeGroup],
) -> None:
    clock = FakeClock(100.0)
    a, b = nodes
    async with MemoryStore(clock) as store:
        wa, wb = watch("node-a", store, clock), watch("node-b", store, clock)
        ta = asyncio.create_task(wa.watch(a, rnd(0, 0)))
        tb = asyncio.create_task(wb.watch(b, rnd(1, 2)))
        try:
            for step in range(1, 41):  # 40 synchronous steps, 0.1 s apart
                clock.advance(0.1)
                for g in nodes:
                    for w in g.workers:
                        g.mark(w.local_rank, step, clock.now())
                await settle()
            rows = await read_progress(store, BASE, 0)  # what `corral status` shows
            assert {(r, s) for r, s, _ in rows} <= {(r, s) for r in range(4) for s in range(41)}
            assert {r for r, _, _ in rows} == {0, 1, 2, 3}
            assert progress_lines(rows, 1000.0 + clock.now())[0].startswith("progress")
            clock.advance(4.9)  # every rank now waits for rank 3: no more marks
            await settle()
            assert not ta.done() and not tb.done()
            clock.advance(0.1)  # 5 s since the last mark: hung
            await settle()
            assert tb.done() and not ta.done()  # node b holds the culprit and reports it
            reports: list[FailureReport] = tb.result()
            assert [(f.rank, f.hang, f.exitcode) for f in reports] == [(3, True, 124)]
            assert reports[0].message is not None and "rank 3" in reports[0].message
            assert reports[0].message.startswith("hang: rank 3 (node 1, local rank 1")
            text = reports[0].traceback or ""
            assert text.startswith("culprit: rank 3") and "hang_here" in text.split("other")[0]
            assert text.count("_engine_run_backward") == 3  # one line per other rank
            # node a waits for the culprit's node to restart the job (its round watch
            # ends the race in the agent); only after `defer` does it report itself
            clock.advance(9.0)
            await settle()
            assert not ta.done()
            clock.advance(3.0)
            await settle()
            assert ta.done() and {f.rank for f in ta.result()} == {0, 1}
        finally:
            for t in (ta, tb):
                t.cancel()
            await asyncio.gather(ta, tb, return_exceptions=True)


async def test_a_hang_on_one_node_makes_the_others_dump_at_once(
    nodes: tuple[FakeGroup, FakeGroup],
) -> None:
    """Node a's ranks still mark progress; node b's rank 3 stops: a dumps when b publishes."""
    clock = FakeClock(0.0)
    a, b = nodes
    async with MemoryStore(clock) as store:
        wa, wb = watch("node-a", store, clock), watch("node-b", store, clock)
        ta = asyncio.create_task(wa.watch(a, rnd(0, 0)))
        tb = asyncio.create_task(wb.watch(b, rnd(1, 2)))
        try:
            for step in range(1, 62):
                clock.advance(0.1)
                for g, lr in ((a, 0), (a, 1), (b, 0)):
                    g.mark(lr, step, clock.now())
                if step <= 10:
                    b.mark(1, step, clock.now())
                await settle()
            assert tb.done()  # rank 3's last mark was at 1.0 s; now 6.1 s
            (report,) = tb.result()
            assert report.rank == 3
            text = report.traceback or ""
            # node a's record made it into the report: its ranks are listed with fresh ages
            assert "rank 0 (node 0, local rank 0, host host-node-a" in text
            assert "step 10, no progress for 5." in text.splitlines()[0]
            assert "rank 0 (node 0, local rank 0, host host-node-a, pid 1000): step 6" in text
        finally:
            for t in (ta, tb):
                t.cancel()
            await asyncio.gather(ta, tb, return_exceptions=True)


async def test_no_marks_never_hung_and_an_exiting_rank_is_not_watched(tmp_path: Path) -> None:
    clock = FakeClock(0.0)
    g = FakeGroup(tmp_path, [1000, 1001])
    w = HangWatch(
        Limits(1.0, 2.0), node_id="n", host="h", store=None, base=BASE, clock=clock,
        dumper=fake_dump,
    )  # fmt: skip
    task = asyncio.create_task(w.watch(g, rnd(0, 0)))
    try:
        for _ in range(100):  # 100 s: no mark ever, so no hang (startup 2 s is not armed)
            clock.advance(1.0)
            await settle()
        assert not task.done()
        g.mark(0, 1, clock.now())  # rank 0 arms detection...
        g.mark(1, 7, clock.now(), exiting=True)  # ...rank 1 finished its script: not watched
        await settle()
        clock.advance(0.9)
        await settle()
        assert not task.done()
        clock.advance(0.2)
        await settle()
        assert task.done()
        assert [(f.rank, f.local_rank) for f in task.result()] == [(0, 0)]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
