"""Third-party backends found through entry points, in subprocesses with a test package."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.helpers import REPO, corral_env

pytestmark = pytest.mark.timeout(60)

PLUGIN = '''
"""A third-party store (memory, shared per URL in this process) and rendezvous backend."""
from corral.store.memory import MemoryStore

OPENED = []
_STORES = {}


async def open_store(url, *, token=None, timeout=60.0):
    OPENED.append(url)
    return _STORES.setdefault(url, MemoryStore())


async def open_rendezvous(cfg, node, *, stack, clock):
    import sys
    from corral.rendezvous.dynamic import DynamicRendezvous
    from corral.store.registry import open_store as corral_open_store

    store = await corral_open_store(f"teststore://{cfg.rdzv_id}")
    rdzv = DynamicRendezvous(
        store, run_id=cfg.rdzv_id, node=node, min_nodes=cfg.min_nodes, max_nodes=cfg.max_nodes,
        max_restarts=cfg.max_restarts, conf=cfg.rdzv_conf.rendezvous,
        store_conf=cfg.rdzv_conf.store, clock=clock,
    )  # docs/api.md's pattern: the run's task group and event sink reach it (RunAware)
    stack.push_async_callback(rdzv.close)
    # its own --rdzv-conf key (no built-in reads it), and corral's typed groups
    zone = cfg.rdzv_conf.extra_value("plugin_zone")
    timing = cfg.rdzv_conf.rendezvous.join_timeout
    print(f"plugin rendezvous for {cfg.rdzv_id} in {zone}, {timing}", file=sys.stderr, flush=True)
    return rdzv
'''

ENTRY_POINTS = """
[corral.stores]
teststore = corral_testplugin:open_store

[corral.rendezvous]
testrdzv = corral_testplugin:open_rendezvous
"""


@pytest.fixture
def plugin_path(tmp_path: Path) -> Path:
    """A directory holding an 'installed' package: the module and its dist-info."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "corral_testplugin.py").write_text(PLUGIN)
    dist = site / "corral_testplugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: corral-testplugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(ENTRY_POINTS)
    return site


def _env(site: Path) -> dict[str, str]:
    env = corral_env()
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(REPO / "src")])
    return env


def test_open_store_by_a_third_party_scheme(plugin_path: Path) -> None:
    code = textwrap.dedent(
        """
        import asyncio
        from corral import open_store
        from corral.store.registry import known_schemes
        import corral_testplugin

        async def main():
            store = await open_store("teststore://job-1")
            await store.put("k", b"v")
            assert (await store.get("k")).value == b"v"
            await store.close()
            print(corral_testplugin.OPENED, known_schemes())

        asyncio.run(main())
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=_env(plugin_path),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert "['teststore://job-1']" in out.stdout and "'teststore'" in out.stdout


def test_cli_runs_with_a_third_party_rendezvous_backend(plugin_path: Path, tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    script = tmp_path / "train.py"
    script.write_text(
        "import os, sys\n"
        "sys.stdout.write(f\"rank {os.environ['RANK']} of {os.environ['WORLD_SIZE']}\\n\")\n"
    )
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "corral",
            "--rdzv-backend",
            "testrdzv",
            "--rdzv-id",
            "job-7",
            "--nproc-per-node",
            "2",
            "--rdzv-conf",
            "plugin_zone=eu-1,join_timeout=9",
            "--events-file",
            str(events),
            str(script),
        ],
        env=_env(plugin_path),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert "plugin rendezvous for job-7 in eu-1, 9.0" in out.stderr
    assert "warning" not in out.stderr  # the plug-in's own key is its to read, not unknown
    assert sorted(line for line in out.stdout.splitlines() if line.startswith("rank")) == [
        "rank 0 of 2",
        "rank 1 of 2",
    ]
    # the plug-in's DynamicRendezvous emits the rendezvous's events into the run's sink
    kinds = {json.loads(line)["kind"] for line in events.read_text().splitlines()}
    assert {"NodeJoined", "RoundClosed", "JobEnded"} <= kinds, kinds


def test_unknown_backend_names_the_entry_point_group(plugin_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "corral", "--rdzv-backend", "nosuch", "x.py"],
        env=_env(plugin_path),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2
    assert "corral.rendezvous" in out.stderr
