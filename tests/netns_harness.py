"""N hosts as network namespaces on one bridge: partitions without netem.

A *switch* namespace holds a bridge; each host is a namespace of its own with
one veth (``eth0``, address ``10.77.0.<i>/24``, i = 1..N) whose peer is a port
of that bridge in the switch namespace. The hosts' addresses exist only inside
their namespaces. :meth:`Hosts.cut` takes a host's port off the bridge
(``ip link set PORT nomaster``): its link stays up, nothing reports an error,
and its peers see only silence (a partition: every TCP connection goes
half-open). :meth:`Hosts.heal` puts the port back.

Names carry a unique tag (``c23<pid><n>``), so tests in parallel or left over
from a killed run never collide; :meth:`Hosts.close` kills every process in the
hosts' namespaces and deletes them, and :func:`sweep_leftovers` removes the
namespaces of runs whose process is gone. Needs root and ``ip`` (iproute2):
:func:`unavailable` says why not, for a skip.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

PREFIX = "c23"  # every namespace this harness makes starts with it
SUBNET = "10.77.0"
IFACE = "eth0"  # the host's interface in every host namespace (GLOO_SOCKET_IFNAME)
_seq = itertools.count()


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=20)


def unavailable() -> str | None:
    """Why namespaces cannot be made here (a skip reason), or None."""
    if shutil.which("ip") is None:
        return "no `ip` (iproute2): cannot build network namespaces"
    if os.geteuid() != 0:
        return "not root: cannot create network namespaces (ip netns add)"
    probe = f"{PREFIX}probe{os.getpid()}"
    r = _ip("netns", "add", probe, check=False)
    if r.returncode != 0:
        return f"cannot create a network namespace: {r.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


def sweep_leftovers() -> None:
    """Delete the namespaces of earlier runs whose process is gone (a SIGKILLed pytest)."""
    r = _ip("netns", "list", check=False)
    for line in r.stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if not name.startswith(PREFIX) or name.startswith(f"{PREFIX}probe"):
            continue
        pid = name[len(PREFIX) :].split("x")[0]
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            _kill_all_in(name)
            _ip("netns", "del", name, check=False)


def _kill_all_in(ns: str) -> None:
    r = _ip("netns", "pids", ns, check=False)
    for pid in r.stdout.split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


@dataclass(frozen=True)
class Host:
    index: int  # 1..N
    ns: str  # the host's namespace
    port: str  # its bridge port, in the switch namespace
    addr: str  # 10.77.0.<index>, only inside ns


class Hosts:
    """``n`` hosts on one bridge, made now; call :meth:`close` (also on failure)."""

    def __init__(self, n: int) -> None:
        self.tag = f"{PREFIX}{os.getpid()}x{next(_seq)}"
        self.switch = f"{self.tag}sw"
        self.hosts: list[Host] = []
        self._made: list[str] = []
        try:
            self._build(n)
        except BaseException:
            self.close()
            raise

    def _build(self, n: int) -> None:
        _ip("netns", "add", self.switch)
        self._made.append(self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")
        for i in range(1, n + 1):
            ns = f"{self.tag}h{i}"
            _ip("netns", "add", ns)
            self._made.append(ns)
            port = f"p{i}"
            # both ends made in the switch namespace, one moved straight into the host's:
            # no name ever exists in the root namespace
            _ip("-n", self.switch, "link", "add", port, "type", "veth", "peer", "name", IFACE,
                "netns", ns)  # fmt: skip
            _ip("-n", ns, "addr", "add", f"{SUBNET}.{i}/24", "dev", IFACE)
            _ip("-n", ns, "link", "set", IFACE, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", self.switch, "link", "set", port, "master", "br0", "up")
            self.hosts.append(Host(i, ns, port, f"{SUBNET}.{i}"))

    def __getitem__(self, i: int) -> Host:
        """Host ``i`` (1-based, as its address)."""
        return self.hosts[i - 1]

    def wrap(self, i: int, cmd: Sequence[str]) -> list[str]:
        """``cmd`` run in host ``i``'s namespace (``ip netns exec`` execs it: same pid)."""
        return ["ip", "netns", "exec", self[i].ns, *cmd]

    def cut(self, i: int) -> None:
        """Partition host ``i``: its port leaves the bridge; its link stays up."""
        _ip("-n", self.switch, "link", "set", self[i].port, "nomaster")

    def heal(self, i: int) -> None:
        """Put host ``i``'s port back on the bridge."""
        _ip("-n", self.switch, "link", "set", self[i].port, "master", "br0")

    def close(self) -> None:
        """Kill every process in the hosts' namespaces and delete them all. Idempotent."""
        for ns in reversed(self._made):
            _kill_all_in(ns)
        for ns in reversed(self._made):
            _ip("netns", "del", ns, check=False)
        self._made.clear()
