"""``--numa-binding``: the CPUs each worker may run on, from sysfs (torch 2.13's rules).

The computation is torch's ``torch/numa/binding.py`` (2.13) rule for rule, read
from a sysfs root given as an argument (``/sys``; a fake tree in tests), with
the CPUs the agent may use (its affinity) given as an argument too:

* ``node``: the CPUs of the NUMA node of the worker's GPU (GPU index = local rank).
* ``socket``: the CPUs of every NUMA node of that node's socket (the
  ``physical_package_id`` of the node's lowest allowed CPU; every node in
  ``devices/system/node/possible`` is looked at).
* ``exclusive``: the node's physical cores (grouped by ``thread_siblings_list``)
  split evenly among the GPUs of that node, in GPU order; the lowest GPUs get
  one extra core when they do not divide evenly.
* ``core-complex``: one group of CPUs sharing the node's largest unified/data
  cache (an L3 complex) per GPU, largest groups first, round-robin.

A GPU's NUMA node is ``bus/pci/devices/<address>/numa_node``; ``-1`` (one-node
machines) counts as node 0, as in torch. Every set is intersected with the
agent's affinity. Where torch raises (no GPU for a local rank, a missing sysfs
file, fewer cores than GPUs, an empty set), :func:`worker_cpus` raises a
one-line :class:`ConfigError`.

What differs from torch, because the launcher never imports torch: GPUs are
NVIDIA PCI display/3D controllers (vendor ``0x10de``) in PCI address order,
narrowed by ``CUDA_VISIBLE_DEVICES`` indices (torch asks CUDA for each
device's PCI address; the orders agree except with ``CUDA_DEVICE_ORDER``
unset on a node of mixed GPU models). The binding itself is applied with
``sched_setaffinity`` rather than ``numactl --physcpubind``, so numactl need
not be installed (torch refuses to bind without it).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from typing import Literal, TypeVar, get_args

from corral.core.errors import ConfigError

__all__ = [
    "NUMA_MODES",
    "NumaMode",
    "Sysfs",
    "check_mode",
    "cpu_ranges",
    "group_cpus",
    "parse_cpu_ranges",
    "worker_cpus",
]

NumaMode = Literal["node", "socket", "exclusive", "core-complex"]
#: The modes of torch's ``AffinityMode``, in its order.
NUMA_MODES: tuple[NumaMode, ...] = get_args(NumaMode)

_NVIDIA = "0x10de"
_GPU_CLASSES = ("0x0300", "0x0302")  # VGA, 3D controller

K = TypeVar("K")


def check_mode(mode: str | None) -> NumaMode | None:
    """``mode`` if it is one of :data:`NUMA_MODES` (or None); else a one-line ConfigError."""
    if mode is None:
        return None
    for m in NUMA_MODES:
        if m == mode:
            return m
    raise ConfigError(f"--numa-binding {mode!r}: expected one of {', '.join(NUMA_MODES)}")


def parse_cpu_ranges(text: str) -> set[int]:
    """``"0-2,4"`` -> ``{0, 1, 2, 4}`` (a sysfs cpu list; blank parts skipped)."""
    out: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            lo, hi = part.split("-")
            out.update(range(int(lo), int(hi) + 1))
        else:
            out.add(int(part))
    return out


def cpu_ranges(cpus: Iterable[int]) -> str:
    """``{0, 1, 2, 4}`` -> ``"0-2,4"`` (what numactl's ``--physcpubind`` takes)."""
    runs: list[list[int]] = []
    for c in sorted(cpus):
        if runs and runs[-1][1] == c - 1:
            runs[-1][1] = c
        else:
            runs.append([c, c])
    parts = [str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in runs]
    return ",".join(parts)


class Sysfs:
    """The few sysfs files the binding reads, under ``root`` (the only I/O here)."""

    def __init__(self, root: str = "/sys") -> None:
        self.root = root

    def _path(self, rel: str) -> str:
        return os.path.join(self.root, rel)

    def read(self, rel: str) -> str:
        """The file's text; ``_Missing`` (a ConfigError) when it cannot be read."""
        try:
            with open(self._path(rel)) as f:
                return f.read().strip()
        except OSError as exc:
            raise _Missing(f"cannot read {self._path(rel)} ({exc.strerror})") from exc

    def listdir(self, rel: str) -> list[str]:
        try:
            return sorted(os.listdir(self._path(rel)))
        except OSError as exc:
            raise _Missing(f"cannot list {self._path(rel)} ({exc.strerror})") from exc

    def gpus(self) -> list[str]:
        """PCI addresses of the NVIDIA GPUs, in address order (nvidia-smi's order)."""
        found = []
        try:
            devices = sorted(os.listdir(self._path("bus/pci/devices")))
        except OSError:
            return []
        for addr in devices:
            try:
                vendor = self.read(f"bus/pci/devices/{addr}/vendor")
                cls = self.read(f"bus/pci/devices/{addr}/class")
            except ConfigError:
                continue
            if vendor.lower() == _NVIDIA and cls.lower().startswith(_GPU_CLASSES):
                found.append(addr)
        return found


class _Missing(ConfigError):
    """A sysfs file the binding needs could not be read."""


def visible_gpus(all_gpus: list[str], cuda_visible_devices: str | None) -> list[str]:
    """The GPUs a worker's CUDA sees, by index: ``CUDA_VISIBLE_DEVICES`` applied as CUDA does.

    Unset: all. Integer entries pick GPUs; the list ends at the first index that
    names no GPU (CUDA ignores the rest). Other entries (``GPU-<uuid>``, ``MIG-``)
    cannot be mapped to a PCI address here: ConfigError.
    """
    if cuda_visible_devices is None:
        return list(all_gpus)
    out: list[str] = []
    for entry in cuda_visible_devices.split(","):
        entry = entry.strip()
        try:
            index = int(entry)
        except ValueError:
            if not entry:
                break
            raise ConfigError(
                f"--numa-binding: CUDA_VISIBLE_DEVICES={cuda_visible_devices!r}: only device "
                "indices can be mapped to PCI devices; use indices or unset --numa-binding"
            ) from None
        if not 0 <= index < len(all_gpus):
            break
        out.append(all_gpus[index])
    return out


class _Topology:
    """torch's helper functions, over one :class:`Sysfs` and the agent's allowed CPUs."""

    def __init__(self, sysfs: Sysfs, gpus: list[str], allowed: frozenset[int]) -> None:
        self.fs = sysfs
        self.gpus = gpus
        self.allowed = allowed

    def node_of_gpu(self, gpu: int) -> int:
        if not 0 <= gpu < len(self.gpus):
            raise ConfigError(
                f"no such GPU ({len(self.gpus)} NVIDIA GPU(s) under "
                f"{self.fs._path('bus/pci/devices')}, CUDA_VISIBLE_DEVICES applied)"
            )
        # -1 on one-node machines: node 0, as torch
        return max(int(self.fs.read(f"bus/pci/devices/{self.gpus[gpu]}/numa_node")), 0)

    def node_cpus(self, node: int) -> set[int]:
        return parse_cpu_ranges(self.fs.read(f"devices/system/node/node{node}/cpulist")) & set(
            self.allowed
        )

    def gpus_on_node(self, node: int) -> list[int]:
        return [g for g in range(len(self.gpus)) if self.node_of_gpu(g) == node]

    def socket_of_node(self, node: int) -> int:
        cpus = self.node_cpus(node)
        if not cpus:
            raise ConfigError(f"NUMA node {node} has no CPU this agent may use")
        return int(self.fs.read(f"devices/system/cpu/cpu{min(cpus)}/topology/physical_package_id"))

    def core_of(self, cpu: int) -> int:
        return min(
            parse_cpu_ranges(
                self.fs.read(f"devices/system/cpu/cpu{cpu}/topology/thread_siblings_list")
            )
        )

    def cache_of(self, cpu: int) -> int:
        """The lowest CPU sharing ``cpu``'s highest-level unified or data cache."""
        base = f"devices/system/cpu/cpu{cpu}/cache"
        level, shared = -1, set[int]()
        for entry in self.fs.listdir(base):
            if not entry.startswith("index") or not entry[5:].isdecimal():
                continue
            if self.fs.read(f"{base}/{entry}/type") not in ("Unified", "Data"):
                continue
            lv = int(self.fs.read(f"{base}/{entry}/level"))
            if lv <= level:
                continue
            level = lv
            shared = parse_cpu_ranges(self.fs.read(f"{base}/{entry}/shared_cpu_list"))
        if not shared:
            raise ConfigError(f"CPU {cpu} has no unified or data cache under {self.fs._path(base)}")
        return min(shared)


def _group_by(values: Iterable[int], key: Callable[[int], K]) -> dict[K, set[int]]:
    groups: dict[K, set[int]] = {}
    for v in values:
        groups.setdefault(key(v), set()).add(v)
    return groups


def _cpus(topo: _Topology, mode: NumaMode, gpu: int) -> set[int]:
    node = topo.node_of_gpu(gpu)
    if mode == "node":
        return topo.node_cpus(node)
    if mode == "socket":
        socket = topo.socket_of_node(node)
        possible = parse_cpu_ranges(topo.fs.read("devices/system/node/possible"))
        out: set[int] = set()
        for n in sorted(possible):
            if topo.socket_of_node(n) == socket:
                out |= topo.node_cpus(n)
        return out
    peers = topo.gpus_on_node(node)
    rel = peers.index(gpu)
    allowed = topo.node_cpus(node)
    if mode == "exclusive":
        cores = [cpus for _, cpus in sorted(_group_by(allowed, topo.core_of).items())]
        per, extra = divmod(len(cores), len(peers))
        if per < 1:
            raise ConfigError(
                f"NUMA node {node} has {len(cores)} physical core(s) for {len(peers)} GPUs"
            )
        start = rel * per + min(rel, extra)
        end = start + per + (1 if rel < extra else 0)
        return {c for cpus in cores[start:end] for c in cpus}
    caches = sorted(_group_by(allowed, topo.cache_of).items(), key=lambda kv: (-len(kv[1]), kv[0]))
    if not caches:
        return set()
    return caches[rel % len(caches)][1]


def worker_cpus(
    mode: NumaMode,
    gpu_index: int,
    *,
    allowed: Iterable[int],
    cuda_visible_devices: str | None = None,
    sysfs_root: str = "/sys",
) -> frozenset[int]:
    """The CPUs the worker using GPU ``gpu_index`` is bound to with ``--numa-binding mode``.

    Args:
        allowed: the CPUs the agent may use (``os.sched_getaffinity(0)``).
        cuda_visible_devices: the agent's ``CUDA_VISIBLE_DEVICES`` (None: unset).
        sysfs_root: where sysfs is mounted (a fake tree in tests).

    Raises:
        ConfigError: one line, where torch's binding raises (see the module doc).
    """
    fs = Sysfs(sysfs_root)
    try:
        topo = _Topology(fs, visible_gpus(fs.gpus(), cuda_visible_devices), frozenset(allowed))
        cpus = _cpus(topo, mode, gpu_index)
    except ValueError as exc:  # a malformed sysfs value
        raise ConfigError(
            f"--numa-binding {mode}: GPU {gpu_index}: bad sysfs value ({exc})"
        ) from exc
    except ConfigError as exc:
        raise ConfigError(f"--numa-binding {mode}: GPU {gpu_index}: {exc}") from exc
    if not cpus:
        raise ConfigError(
            f"--numa-binding {mode}: GPU {gpu_index}: no CPU to bind to (none of its CPUs "
            f"is in this agent's affinity {cpu_ranges(topo.allowed)})"
        )
    return frozenset(cpus)


def group_cpus(
    mode: NumaMode | None,
    nproc: int,
    *,
    allowed: Iterable[int],
    environ: Mapping[str, str],
    sysfs_root: str = "/sys",
) -> list[frozenset[int]] | None:
    """Every local rank's CPUs (local rank ``r`` uses GPU ``r``, as torch); None when off."""
    if mode is None:
        return None
    allowed = frozenset(allowed)
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    return [
        worker_cpus(mode, r, allowed=allowed, cuda_visible_devices=visible, sysfs_root=sysfs_root)
        for r in range(nproc)
    ]
