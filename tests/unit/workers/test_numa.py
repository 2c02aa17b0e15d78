"""--numa-binding: the CPU sets of torch 2.13's binding, from fake sysfs trees; the CLI option."""

from __future__ import annotations

import builtins
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from corral.cli import parse_args
from corral.config import LaunchConfig
from corral.core.errors import ConfigError
from corral.workers.numa import (
    NUMA_MODES,
    NumaMode,
    cpu_ranges,
    group_cpus,
    parse_cpu_ranges,
    visible_gpus,
    worker_cpus,
)
from corral.workers.spec import WorkerSpec


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


def build_sysfs(
    root: Path,
    *,
    nodes: dict[int, Iterable[int]],
    package: dict[int, int],
    siblings: dict[int, Iterable[int]],
    l3: dict[int, Iterable[int]],
    gpus: list[int],
    others: int = 2,
) -> Path:
    """A fake sysfs: NUMA nodes (cpulist, possible), CPU topology and caches, NVIDIA GPUs.

    ``gpus[i]`` is GPU i's ``numa_node``; ``others`` non-GPU PCI devices are mixed in.
    """
    for n, cpus in nodes.items():
        _write(root / f"devices/system/node/node{n}/cpulist", cpu_ranges(cpus))
    _write(root / "devices/system/node/possible", cpu_ranges(nodes))
    for cpu, pkg in package.items():
        topo = root / f"devices/system/cpu/cpu{cpu}/topology"
        _write(topo / "physical_package_id", str(pkg))
        _write(topo / "thread_siblings_list", cpu_ranges(siblings[cpu]))
        cache = root / f"devices/system/cpu/cpu{cpu}/cache"
        for i, (kind, level, shared) in enumerate(
            [
                ("Data", 1, siblings[cpu]),
                ("Instruction", 1, siblings[cpu]),
                ("Unified", 2, siblings[cpu]),
                ("Unified", 3, l3[cpu]),
            ]
        ):
            _write(cache / f"index{i}/type", kind)
            _write(cache / f"index{i}/level", str(level))
            _write(cache / f"index{i}/shared_cpu_list", cpu_ranges(shared))
        _write(cache / "uevent", "")  # not an index<N> entry
    pci = root / "bus/pci/devices"
    for i, node in enumerate(gpus):
        dev = pci / f"0000:{0x18 + 0x10 * i:02x}:00.0"
        _write(dev / "vendor", "0x10de")
        _write(dev / "class", "0x030200")
        _write(dev / "numa_node", str(node))
    for i in range(others):  # a NIC and a VGA chip of another vendor: not GPUs
        dev = pci / f"0000:{0x01 + i:02x}:00.0"
        _write(dev / "vendor", "0x15b3" if i % 2 == 0 else "0x1a03")
        _write(dev / "class", "0x020000" if i % 2 == 0 else "0x030000")
        _write(dev / "numa_node", "0")
    return root


def two_sockets(root: Path) -> Path:
    """2 sockets x 2 NUMA nodes x 4 cores x 2 threads (cpu c and c+16), two L3s of 2 cores
    per node; 8 GPUs, 4 per socket, 2 per node."""
    nodes = {n: [*range(4 * n, 4 * n + 4), *range(16 + 4 * n, 20 + 4 * n)] for n in range(4)}
    core = {c: c % 16 for c in range(32)}
    siblings = {c: [core[c], core[c] + 16] for c in range(32)}
    l3 = {c: [core[c] // 2 * 2, core[c] // 2 * 2 + 1, core[c] // 2 * 2 + 16, core[c] // 2 * 2 + 17] for c in range(32)}  # fmt: skip
    package = {c: core[c] // 8 for c in range(32)}
    return build_sysfs(
        root, nodes=nodes, package=package, siblings=siblings, l3=l3, gpus=[0, 0, 1, 1, 2, 2, 3, 3]
    )


def one_socket(root: Path, gpus: int = 4, numa_node: int = -1) -> Path:
    """1 socket, 1 NUMA node, 6 cores without SMT, L3s of 4 and 2 cores; GPUs on node -1."""
    cpus = range(6)
    return build_sysfs(
        root,
        nodes={0: cpus},
        package=dict.fromkeys(cpus, 0),
        siblings={c: [c] for c in cpus},
        l3={c: range(4) if c < 4 else range(4, 6) for c in cpus},
        gpus=[numa_node] * gpus,
    )


ALL32 = frozenset(range(32))
# two cores (four CPUs) per GPU, in GPU order
PAIRS = [f"{2 * p}-{2 * p + 1},{2 * p + 16}-{2 * p + 17}" for p in range(8)]


def cpus(mode: NumaMode, gpu: int, root: Path, allowed: Iterable[int] = ALL32, **kw: Any) -> str:
    return cpu_ranges(worker_cpus(mode, gpu, allowed=allowed, sysfs_root=str(root), **kw))


# --- the sets, mode by mode -----------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("node", ["0-3,16-19"] * 2 + ["4-7,20-23"] * 2 + ["8-11,24-27"] * 2 + ["12-15,28-31"] * 2),
        ("socket", ["0-7,16-23"] * 4 + ["8-15,24-31"] * 4),
        ("exclusive", PAIRS),  # each node's 4 cores split between its 2 GPUs
        ("core-complex", PAIRS),  # each node's two L3 complexes, one per GPU
    ],
)
def test_two_sockets_four_gpus_each(tmp_path: Path, mode: NumaMode, expected: list[str]) -> None:
    root = two_sockets(tmp_path)
    assert [cpus(mode, g, root) for g in range(8)] == expected


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("node", ["0-5"] * 4),  # numa_node -1: node 0, as torch
        ("socket", ["0-5"] * 4),
        ("exclusive", ["0-1", "2-3", "4", "5"]),  # 6 cores for 4 GPUs: the first two get one more
        ("core-complex", ["0-3", "4-5", "0-3", "4-5"]),  # the larger L3 first, round-robin
    ],
)
def test_one_socket_numa_node_minus_one(
    tmp_path: Path, mode: NumaMode, expected: list[str]
) -> None:
    root = one_socket(tmp_path)
    assert [cpus(mode, g, root) for g in range(4)] == expected


def test_only_the_agents_cpus_are_used(tmp_path: Path) -> None:
    root = two_sockets(tmp_path)
    allowed = set(range(16))  # no second hardware threads
    assert cpus("node", 0, root, allowed) == "0-3"
    assert cpus("exclusive", 1, root, allowed) == "2-3"
    assert cpus("socket", 7, root, allowed) == "8-15"


def test_cuda_visible_devices_renumbers_the_gpus(tmp_path: Path) -> None:
    root = two_sockets(tmp_path)
    got = group_cpus(
        "node",
        3,
        allowed=ALL32,
        environ={"CUDA_VISIBLE_DEVICES": "6,2,0"},
        sysfs_root=str(root),
    )
    assert got is not None and [cpu_ranges(c) for c in got] == [
        "12-15,28-31",
        "4-7,20-23",
        "0-3,16-19",
    ]
    # exclusive splits a node among its *visible* GPUs: GPU 6 is alone on node 3
    assert cpus("exclusive", 0, root, cuda_visible_devices="6") == "12-15,28-31"
    assert visible_gpus(["a", "b", "c"], "1,7,0") == ["b"]  # CUDA stops at an invalid index
    assert visible_gpus(["a", "b"], "") == []


def test_off_is_none(tmp_path: Path) -> None:
    assert group_cpus(None, 4, allowed=ALL32, environ={}, sysfs_root=str(tmp_path)) is None


# --- where torch's binding raises: one line ----------------------------------------------


@pytest.mark.parametrize(
    ("setup", "mode", "gpu", "kw", "needle"),
    [
        ("none", "node", 0, {}, "GPU 0: no such GPU (0 NVIDIA GPU(s)"),
        ("one", "node", 4, {}, "GPU 4: no such GPU (4 NVIDIA GPU(s)"),
        ("one", "node", 0, {"cuda_visible_devices": ""}, "GPU 0: no such GPU (0 NVIDIA GPU(s)"),
        ("one", "node", 0, {"cuda_visible_devices": "GPU-1234"}, "only device indices"),
        ("one", "node", 0, {"allowed": {7, 8}}, "no CPU to bind to"),
        ("tight", "exclusive", 0, {}, "has 6 physical core(s) for 8 GPUs"),
        ("nocache", "core-complex", 0, {}, "cannot list"),
    ],
)
def test_failures_are_one_line(
    tmp_path: Path, setup: str, mode: NumaMode, gpu: int, kw: dict[str, Any], needle: str
) -> None:
    if setup == "none":
        (tmp_path / "bus/pci/devices").mkdir(parents=True)
    elif setup == "tight":
        one_socket(tmp_path, gpus=8)
    else:
        one_socket(tmp_path)
    if setup == "nocache":
        for c in range(6):
            shutil.rmtree(tmp_path / f"devices/system/cpu/cpu{c}/cache")
    allowed = kw.pop("allowed", range(6))
    with pytest.raises(ConfigError) as info:
        worker_cpus(mode, gpu, allowed=allowed, sysfs_root=str(tmp_path), **kw)
    text = str(info.value)
    assert needle in text and text.startswith(f"--numa-binding {mode}: ") and "\n" not in text


def test_cpu_ranges_round_trip() -> None:
    assert cpu_ranges({0, 1, 2, 4, 6, 7}) == "0-2,4,6-7"
    assert parse_cpu_ranges("0-2,4,6-7\n") == {0, 1, 2, 4, 6, 7}
    assert cpu_ranges(()) == ""


# --- the oracle: torch's own binding code over the same fake trees ---------------------------


@pytest.mark.torch
def test_same_sets_as_torch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.numa.binding, its /sys reads redirected to the fake tree and its CUDA device
    properties faked from it, gives the very sets corral computes, for every mode and GPU."""
    binding = pytest.importorskip("torch.numa.binding")
    import types

    trees = {"two": (two_sockets(tmp_path / "two"), 8), "one": (one_socket(tmp_path / "one"), 4)}
    for name, (root, ngpus) in trees.items():
        addrs = sorted(os.listdir(root / "bus/pci/devices"))
        gpu_addrs = [a for a in addrs if (root / f"bus/pci/devices/{a}/vendor").read_text().strip() == "0x10de"]  # fmt: skip

        def reroute(path: str, _root: Path = root) -> str:
            return str(_root) + path[len("/sys") :] if path.startswith("/sys/") else path

        def fake_open(path: str, *a: Any, _r: Any = reroute, **k: Any) -> Any:
            return builtins.open(_r(path), *a, **k)

        def props(i: int, _g: list[str] = gpu_addrs) -> Any:
            dom, bus, dev = _g[i].split(":")[0], _g[i].split(":")[1], _g[i].split(":")[2][:2]
            return types.SimpleNamespace(
                pci_domain_id=int(dom, 16), pci_bus_id=int(bus, 16), pci_device_id=int(dev, 16)
            )

        fake_os = types.SimpleNamespace(
            listdir=lambda p, _r=reroute: os.listdir(_r(p)), path=os.path
        )
        monkeypatch.setattr(binding, "open", fake_open, raising=False)
        monkeypatch.setattr(binding, "os", fake_os)
        monkeypatch.setattr(binding.torch.cuda, "get_device_properties", props)
        monkeypatch.setattr(binding, "_get_gpu_count", lambda _n=ngpus: _n)
        monkeypatch.setattr(binding, "_get_allowed_cpu_indices_for_current_thread", lambda: set(ALL32))  # fmt: skip
        for mode in NUMA_MODES:
            opts = binding.NumaOptions(affinity_mode=binding.AffinityMode(mode))
            for g in range(ngpus):
                want = binding._get_logical_cpus_to_bind_to(gpu_index=g, numa_options=opts)
                got = worker_cpus(mode, g, allowed=ALL32, sysfs_root=str(root))
                assert got == want, (name, mode, g)


# --- configuration ----------------------------------------------------------------------


@pytest.mark.parametrize("spelling", ["--numa-binding", "--numa_binding"])
@pytest.mark.parametrize("mode", NUMA_MODES)
def test_cli_modes(spelling: str, mode: str) -> None:
    cfg = parse_args([spelling, mode, "train.py"], {})
    assert cfg.numa_binding == mode
    assert WorkerSpec.from_config(cfg, {}).numa_binding == mode
    assert parse_args([f"{spelling}={mode}", "train.py"], {}).numa_binding == mode


def test_off_by_default() -> None:
    assert parse_args(["train.py"], {}).numa_binding is None
    assert LaunchConfig(entrypoint="x").numa_binding is None


@pytest.mark.parametrize("bad", ["numa", "", "NODE"])
def test_unknown_mode_is_one_line(bad: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_args(["--numa-binding", bad, "train.py"], {})
    text = str(info.value)
    assert "expected one of node, socket, exclusive, core-complex" in text and "\n" not in text
    with pytest.raises(ConfigError):
        LaunchConfig(entrypoint="x", numa_binding=bad)  # type: ignore[arg-type]


def _corral(*argv: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("PET_")}
    return subprocess.run(
        [sys.executable, "-m", "corral", *argv],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**base, **env},
        timeout=60,
    )


def test_unknown_mode_exits_2(tmp_path: Path) -> None:
    (tmp_path / "ok.py").write_text("pass\n")
    proc = _corral("--numa-binding", "numa", "ok.py", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [
        "corral: error: --numa-binding 'numa': expected one of node, socket, exclusive, core-complex"
    ]


def test_binding_that_fails_exits_2_before_any_worker(tmp_path: Path) -> None:
    """No GPU visible: torchrun raises at the workers' start; corral says it in one line, exit 2."""
    (tmp_path / "ok.py").write_text("open('ran', 'w').close()\n")
    proc = _corral("--numa-binding", "node", "ok.py", cwd=tmp_path, CUDA_VISIBLE_DEVICES="")
    assert proc.returncode == 2, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("corral: error: ")]
    assert errors == [
        "corral: error: --numa-binding node: GPU 0: no such GPU (0 NVIDIA GPU(s) under "
        "/sys/bus/pci/devices, CUDA_VISIBLE_DEVICES applied)"
    ], proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "ran").exists()
