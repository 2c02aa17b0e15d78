"""torchrun's --duplicate-stdout-filters/--duplicate-stderr-filters with real workers.

The expected files are what torchrun 2.13 wrote for the same script, options
and filters (``python -m torch.distributed.run --standalone --nproc-per-node 2
--log-dir logs -t 0:3,1:1 --duplicate-stdout-filters 'apple,a,,b'
--duplicate-stderr-filters orange w.py``), run by hand:
``<run dir>/attempt_0/filtered_stdout.log`` held, in some interleaving of the
ranks, each rank's matching teed lines with the console prefix, ``\\r`` ending a
line as ``\\n`` does; ``filtered_stderr.log`` only rank 0's (rank 1's stderr is
not teed). One deliberate difference: torchrun writes a worker's unterminated
last line without a newline, so that the next rank's line joins it
(``[default0]:last apple 0[default1]:apple 1``); corral ends it.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from corral.config import Std, StdSpec
from corral.workers import Reaper, RunLogs, WorkerGroup, WorkerSpec
from corral.workers.prestart import prestart_plan
from corral.workers.standby import StandbyPool

from .conftest import round_info

pytestmark = pytest.mark.timeout(60)

SCRIPT = """\
import json, os, sys  # json: what the pre-started test pre-imports
r = os.environ["LOCAL_RANK"]
print(f"apple {r}")
print(f"banana {r}")
print(f"a,b {r}")
print(f"pear {r}", file=sys.stderr)
print(f"orange {r}", file=sys.stderr)
sys.stdout.write(f"x\\r apple cr {r}\\n")
sys.stdout.write(f"last apple {r}")
"""

# What torchrun wrote, rank by rank (the ranks' lines interleave in any order).
TORCHRUN_STDOUT = {
    0: ["[default0]:apple 0", "[default0]:a,b 0", "[default0]: apple cr 0", "[default0]:last apple 0"],
    1: ["[default1]:apple 1", "[default1]:a,b 1", "[default1]: apple cr 1", "[default1]:last apple 1"],
}  # fmt: skip
TORCHRUN_STDERR = {0: ["[default0]:orange 0"], 1: []}


def by_rank(text: str, nproc: int = 2) -> dict[int, list[str]]:
    """The file's lines per rank prefix, in file order; every line ends with a newline."""
    assert text == "" or text.endswith("\n"), repr(text)
    lines = text.splitlines()
    got = {r: [ln for ln in lines if ln.startswith(f"[default{r}]:")] for r in range(nproc)}
    assert sum(len(v) for v in got.values()) == len(lines), lines  # no other line
    return got


class Node:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.reaper = Reaper()
        self.reaper.start()
        (tmp / "w.py").write_text(SCRIPT)
        self.spec = WorkerSpec(
            str(tmp / "w.py"), (), local_world_size=2, python_exec=sys.executable
        )

    async def run(self, logs: RunLogs, pool: StandbyPool | None = None) -> WorkerGroup:
        devnull = os.open(os.devnull, os.O_WRONLY)  # the console: not what is checked here
        try:
            g = WorkerGroup(
                self.spec,
                round_info(2),
                attempt=0,
                logs=logs,
                reaper=self.reaper,
                node_id="n",
                host="h",
                base_env=dict(os.environ),
                console_out=devnull,
                console_err=devnull,
                standbys=pool,
            )
            await g.start()
            try:
                res = await asyncio.wait_for(g.wait(), 30)
            finally:
                await g.stop(2.0)
        finally:
            os.close(devnull)
        assert res.succeeded, res
        return g


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    n = Node(tmp_path)
    try:
        yield n
    finally:
        n.reaper.close()


def _logs(tmp: Path, tee: StdSpec, **kw: object) -> RunLogs:
    return RunLogs(
        "job",
        log_dir=str(tmp / "logs"),
        tee=tee,
        duplicate_stdout_filters=("apple", "a,b"),
        duplicate_stderr_filters=("orange",),
        **kw,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("prestart", [False, True], ids=["spawned", "prestarted"])
async def test_filtered_files_as_torchrun_writes_them(
    node: Node, tmp_path: Path, prestart: bool
) -> None:
    logs = _logs(tmp_path, StdSpec(Std.NONE, ((0, Std.ALL), (1, Std.OUT))))
    try:
        if prestart:
            plan = prestart_plan(node.spec, ("json",))
            assert plan is not None
            async with StandbyPool(plan, node.spec, dict(os.environ), node.reaper) as pool:
                g = await node.run(logs, pool)
                assert [w.prestarted for w in g.workers] == [True, True]
        else:
            g = await node.run(logs)
        assert g.logs is not None
        attempt = Path(g.logs.dir)
        assert attempt == Path(logs.run_dir) / "attempt_0"
        assert by_rank((attempt / "filtered_stdout.log").read_text()) == TORCHRUN_STDOUT
        assert by_rank((attempt / "filtered_stderr.log").read_text()) == TORCHRUN_STDERR
        # the tee files keep everything, byte for byte
        assert (attempt / "0" / "stdout.log").read_bytes() == (
            b"apple 0\nbanana 0\na,b 0\nx\r apple cr 0\nlast apple 0"
        )
    finally:
        logs.close()


async def test_only_teed_shown_ranks_and_empty_files_without_tee(
    node: Node, tmp_path: Path
) -> None:
    # torchrun duplicates what its tailers print: a rank outside --local-ranks-filter
    # is not tailed, so none of its lines are duplicated; redirected streams are not tailed.
    logs = _logs(
        tmp_path,
        StdSpec(Std.ALL),
        redirects=StdSpec(Std.ALL),
        local_ranks_filter=frozenset({1}),
    )
    try:
        g = await node.run(logs)
        assert g.logs is not None
        attempt = Path(g.logs.dir)
        assert by_rank((attempt / "filtered_stdout.log").read_text()) == {
            0: [],
            1: TORCHRUN_STDOUT[1],
        }
        assert (attempt / "filtered_stderr.log").read_text() == "[default1]:orange 1\n"
    finally:
        logs.close()
    # no tee: the files are still created (torchrun opens them), and stay empty
    logs = _logs(tmp_path, StdSpec(Std.NONE), redirects=StdSpec(Std.OUT))
    try:
        g = await node.run(logs)
        assert g.logs is not None
        attempt = Path(g.logs.dir)
        assert (attempt / "filtered_stdout.log").read_text() == ""
        assert (attempt / "filtered_stderr.log").read_text() == ""
    finally:
        logs.close()
