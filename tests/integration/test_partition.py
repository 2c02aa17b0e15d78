"""Silence is a fault too: partitions and frozen agents, on hosts built as network namespaces.

tests/netns_harness.py builds N hosts on one bridge; a host is cut off by taking
its port off the bridge (its peers see only silence, nothing errors) and
healed by putting it back. Each host runs a real agent (``ip netns exec``,
``--local-addr`` its address) and real torch workers on gloo.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest
from tests import netns_harness
from tests.netns_harness import Hosts

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

_why = netns_harness.unavailable()
needs_netns = pytest.mark.skipif(_why is not None, reason=_why or "")


@pytest.fixture
def make_hosts() -> Iterator[Callable[[int], Hosts]]:
    """``make_hosts(n)``: n hosts, removed with every process in them at teardown (also on failure)."""
    netns_harness.sweep_leftovers()
    made: list[Hosts] = []

    def make(n: int) -> Hosts:
        h = Hosts(n)
        made.append(h)
        return h

    try:
        yield make
    finally:
        for h in made:
            h.close()


def _connect(hosts: Hosts, frm: int, to: str, port: int, timeout: float) -> str:
    code = (
        "import socket,sys\n"
        f"s=socket.socket(); s.settimeout({timeout})\n"
        f"try: s.connect(({to!r},{port})); print('ok')\n"
        "except OSError as e: print(type(e).__name__)\n"
    )
    r = subprocess.run(hosts.wrap(frm, [sys.executable, "-c", code]), capture_output=True,
                       text=True, timeout=30)  # fmt: skip
    return r.stdout.strip()


@needs_netns
def test_harness_cut_is_silence_and_heal_restores(make_hosts: Callable[[int], Hosts]) -> None:
    hosts = make_hosts(2)
    listener = subprocess.Popen(
        hosts.wrap(1, [sys.executable, "-c",
                       "import socket,time\ns=socket.socket()\ns.bind(('10.77.0.1',5000))\n"
                       "s.listen(8)\nprint('up',flush=True)\ntime.sleep(60)"]),
        stdout=subprocess.PIPE,
    )  # fmt: skip
    assert listener.stdout is not None and listener.stdout.readline().strip() == b"up"
    # the address exists only inside its namespace
    root = subprocess.run(["ip", "-4", "addr"], capture_output=True, text=True).stdout
    assert "10.77.0." not in root
    assert _connect(hosts, 2, "10.77.0.1", 5000, 5) == "ok"
    hosts.cut(2)
    assert _connect(hosts, 2, "10.77.0.1", 5000, 1) in ("TimeoutError", "timeout")  # silence
    hosts.heal(2)
    assert _connect(hosts, 2, "10.77.0.1", 5000, 5) == "ok"
    names = [h.ns for h in hosts.hosts] + [hosts.switch]
    hosts.close()
    assert listener.wait(timeout=10) != 0  # killed with its namespace
    listener.stdout.close()
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(n in listed.split() for n in names)
