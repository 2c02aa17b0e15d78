"""Silence is a fault too: partitions and frozen agents, on hosts built as network namespaces.

tests/netns_harness.py builds N hosts on one bridge; a host is cut off by taking
its port off the bridge (its peers see only silence, nothing errors) and
healed by putting it back. Each host runs a real agent (``ip netns exec``,
``--local-addr`` its address) and real torch workers on gloo.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tests import netns_harness
from tests.helpers import CORRAL, EXAMPLE, corral_env
from tests.netns_harness import IFACE, Hosts

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


# A small real training: every step all-reduces over gloo; each worker appends
# "<monotonic> <restart> <world> <rank> <step> <pid>" to its host's progress file.
TRAIN = r"""
import os, sys, time
import torch, torch.distributed as dist
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
restart = os.environ["TORCHELASTIC_RESTART_COUNT"]
with open(os.path.join(sys.argv[1], "h" + os.environ["HARNESS_HOST"]), "a", buffering=1) as out:
    step = 0
    while True:
        t = torch.ones(1)
        dist.all_reduce(t)
        assert int(t.item()) == world
        out.write(f"{time.monotonic():.3f} {restart} {world} {rank} {step} {os.getpid()}\n")
        step += 1
        time.sleep(0.1)
"""

# The membership timeout (lease TTL) is keep_alive_interval x keep_alive_max_attempt = 4 s
# here (15 s by default); requests are bounded by read_timeout.
TTL = 4.0
CONF = "keep_alive_interval=0.5,keep_alive_max_attempt=8,read_timeout=2,last_call_timeout=1"
STORE = f"{netns_harness.SUBNET}.1:29400"


class Job:
    """A 2:3 job on the embedded store (hosted by host 1's agent), one agent per host."""

    def __init__(
        self,
        hosts: Hosts,
        d: Path,
        join_timeout: float = 30,
        backend: str = "c10d",
        endpoint: str = STORE,
    ) -> None:
        self.hosts, self.d = hosts, d
        self.backend, self.endpoint = backend, endpoint
        self.script = d / "train.py"
        self.script.write_text(TRAIN)
        self.progress = d / "progress"
        self.progress.mkdir()
        self.join_timeout = join_timeout
        self.agents: dict[int, subprocess.Popen[bytes]] = {}

    def start(self, i: int) -> None:
        h = self.hosts[i]
        cmd = [*CORRAL, "--nnodes", "2:3", "--nproc-per-node", "1", "--rdzv-backend", self.backend,
               "--rdzv-endpoint", self.endpoint, "--rdzv-id", "part", "--local-addr", h.addr,
               "--max-restarts", "20", "--shutdown-timeout", "2",
               "--rdzv-conf", f"{CONF},join_timeout={self.join_timeout}",
               str(self.script), str(self.progress)]  # fmt: skip
        env = corral_env(GLOO_SOCKET_IFNAME=IFACE, HARNESS_HOST=str(i), LOGLEVEL="INFO")
        with (
            open(self.d / f"agent{i}.out", "wb") as out,
            open(self.d / f"agent{i}.err", "wb") as err,
        ):
            self.agents[i] = subprocess.Popen(self.hosts.wrap(i, cmd), stdout=out, stderr=err,
                                              env=env, start_new_session=True)  # fmt: skip

    def log(self, i: int) -> str:
        return (self.d / f"agent{i}.err").read_text(errors="replace")

    def steps(self, i: int) -> list[tuple[float, int, int, int, int, int]]:
        """Host i's steps: (monotonic time, restart, world, rank, step, pid)."""
        path = self.progress / f"h{i}"
        if not path.exists():
            return []
        rows = []
        for line in path.read_text().splitlines():
            f = line.split()
            if len(f) == 6:
                rows.append((float(f[0]), *(int(x) for x in f[1:])))  # type: ignore[arg-type]
        return rows  # type: ignore[return-value]

    def until(self, what: str, cond: Callable[[], object], limit: float = 40) -> object:
        """Poll ``cond`` (bounded by ``limit`` s) until it is true; return its value."""
        end = time.monotonic() + limit
        while time.monotonic() < end:
            v = cond()
            if v:
                return v
            time.sleep(0.1)
        logs = "\n".join(f"--- agent {i}\n{self.log(i)[-2500:]}" for i in self.agents)
        raise AssertionError(f"not reached within {limit}s: {what}\n{logs}")

    def training(
        self, i: int, world: int, after: float
    ) -> tuple[float, int, int, int, int, int] | None:
        """Host i's first step at ``world`` after time ``after``, or None."""
        return next((s for s in self.steps(i) if s[0] > after and s[2] == world), None)

    def alive(self, pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"

    def pids_in(self, i: int) -> list[int]:
        r = subprocess.run(
            ["ip", "netns", "pids", self.hosts[i].ns], capture_output=True, text=True
        )
        return [int(p) for p in r.stdout.split()]


@pytest.fixture
def job(
    request: pytest.FixtureRequest, make_hosts: Callable[[int], Hosts], tmp_path: Path
) -> Iterator[Job]:
    """The 2:3 job, running; ``indirect`` parametrization sets its join_timeout."""
    pytest.importorskip("torch")
    j = Job(make_hosts(3), tmp_path, join_timeout=getattr(request, "param", 30))
    for i in (1, 2, 3):
        j.start(i)
    try:
        yield j
    finally:
        for p in j.agents.values():  # the hosts' teardown kills whatever is left in them
            if p.poll() is None:
                p.kill()
            p.wait(timeout=10)


def all_three(job: Job, after: float = 0.0) -> float:
    """Wait until every host trains at WORLD_SIZE 3; return when the last did."""
    firsts = [
        job.until(f"host {i} trains at world 3", lambda i=i: job.training(i, 3, after))
        for i in (1, 2, 3)
    ]  # type: ignore[misc]
    return max(s[0] for s in firsts)  # type: ignore[index]


@needs_netns
def test_a_blip_is_no_fault_and_a_cut_member_fences_itself_then_rejoins(job: Job) -> None:
    all_three(job)
    # a blip shorter than the membership timeout: the same round goes on
    restart = job.steps(3)[-1][1]
    job.hosts.cut(3)
    time.sleep(1.0)  # not a wait: the blip's length is what is tested
    job.hosts.heal(3)
    healed = time.monotonic()
    job.until(
        "host 3 trains after the blip", lambda: [s for s in job.steps(3) if s[0] > healed + 1]
    )
    assert {s[1] for s in job.steps(1) + job.steps(3)} == {restart}, "a blip restarted the job"
    # a cut longer than the timeout: the others go on at WORLD_SIZE 2
    worker = job.steps(3)[-1][5]
    cut = time.monotonic()
    job.hosts.cut(3)
    survivors = job.until("the others train at world 2", lambda: job.training(1, 2, cut))
    # the cut-off side fenced itself: its worker is gone while the cut lasts
    job.until("host 3's worker stops", lambda: not job.alive(worker))
    assert "not renewed for" in job.log(3) and "assuming this node was dropped" in job.log(3)
    assert job.agents[3].poll() is None  # the agent itself lives on
    heal = time.monotonic()
    job.hosts.heal(3)
    back = job.until("host 3 is back at world 3", lambda: job.training(3, 3, heal))
    assert back[1] > survivors[1] > restart  # type: ignore[index]  # a newcomer: a restart
    print(
        f"survivors' next step {survivors[0] - cut:.1f}s after the cut (TTL {TTL}s); "  # type: ignore[index]
        f"host 3's next step {back[0] - heal:.1f}s after the heal"
    )  # type: ignore[index]


@needs_netns
def test_a_frozen_agent_is_dropped_and_on_sigcont_fences_before_anything_else(job: Job) -> None:
    all_three(job)
    worker = job.steps(3)[-1][5]
    stop = time.monotonic()
    os.kill(job.agents[3].pid, signal.SIGSTOP)  # the agent only: its worker keeps running
    try:
        job.until("the others train at world 2", lambda: job.training(1, 2, stop))
        assert job.alive(worker)  # the stale worker is still there (its agent is frozen)
    finally:
        cont = time.monotonic()
        os.kill(job.agents[3].pid, signal.SIGCONT)
    job.until("the stale worker is gone", lambda: not job.alive(worker))
    gone = time.monotonic()
    log = job.log(3)
    fence = log.find("assuming this node was dropped")
    assert fence >= 0, log[-3000:]
    # before anything else: no report of the stale worker's end before the fence
    assert "failed with" not in log[:fence]
    job.until("host 3 is back at world 3", lambda: job.training(3, 3, cont))
    print(f"stale worker gone {gone - cont:.1f}s after SIGCONT")


@needs_netns
@pytest.mark.parametrize("job", [12], indirect=True)
def test_the_store_host_cut_then_healed_and_then_cut_for_good(job: Job) -> None:
    # healed within join_timeout: the job goes on with every node
    all_three(job)
    cut = time.monotonic()
    job.hosts.cut(1)
    time.sleep(TTL + 2)  # not a wait: a cut past the membership timeout is what is tested
    job.hosts.heal(1)
    heal = time.monotonic()
    all_three(job, after=heal)
    assert all(p.poll() is None for p in job.agents.values())
    assert "not renewed for" in job.log(2) and "not renewed for" in job.log(3)
    # never healed: nobody gives up before join_timeout, then each agent exits non-zero with
    # one line naming the store it could not reach, and leaves no process behind
    job.hosts.cut(1)
    cut = time.monotonic()
    for i in (2, 3):
        assert job.agents[i].wait(timeout=job.join_timeout + 30) != 0
        # not before join_timeout (counted from the last renewal: up to an interval before the cut)
        assert time.monotonic() - cut >= job.join_timeout - 1
        last = [ln for ln in job.log(i).splitlines() if ln.startswith("corral: error:")]
        assert len(last) == 1 and STORE in last[0], job.log(i)[-2000:]
        assert "join_timeout" in last[0]
        job.until(f"no process left on host {i}", lambda i=i: not job.pids_in(i), limit=10)  # type: ignore[misc]
    assert job.agents[1].wait(timeout=30) != 0
    job.until("no process left on host 1", lambda: not job.pids_in(1), limit=10)


SERVE = r"""
import asyncio
from corral.store.tcp.server import StoreServer
async def main():
    srv = StoreServer()
    await srv.start("10.77.0.1", 29400)
    print("up", flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""

WATCH = r"""
import asyncio, time
from corral.store.tcp.client import connect
async def main():
    store = await connect("10.77.0.1", 29400, timeout=10, request_timeout=5)
    await store.grant(1.0)  # a lease of TTL 1 s: the connection may stay silent 2 s
    async with store.watch("/k") as events:
        print("watching", flush=True)
        try:
            async for _ in events:
                pass
            print("ended quietly", flush=True)
        except Exception as exc:
            print("ended", type(exc).__name__, flush=True)
asyncio.run(main())
"""


@needs_netns
def test_a_half_open_store_connection_ends_within_its_silence_bound(
    make_hosts: Callable[[int], Hosts],
) -> None:
    """Cut off, an idle watch of the store would wait forever (TCP notices nothing for
    hours); its connection's silence bound (2 x the lease TTL) ends it."""
    hosts = make_hosts(2)
    procs = []
    try:
        for i, code in ((1, SERVE), (2, WATCH)):
            procs.append(subprocess.Popen(hosts.wrap(i, [sys.executable, "-c", code]),
                                          stdout=subprocess.PIPE, env=corral_env()))  # fmt: skip
            out = procs[-1].stdout
            assert out is not None and out.readline().split() in ([b"up"], [b"watching"])
        hosts.cut(2)
        out = procs[1].stdout
        assert out is not None
        assert procs[1].wait(timeout=30) == 0  # not forever
        assert out.read().split() == [b"ended", b"StoreUnavailable"]
    finally:
        for p in procs:
            p.kill()
            p.wait(timeout=10)
            if p.stdout is not None:
                p.stdout.close()


def start_etcd(hosts: Hosts, d: Path, procs: list[subprocess.Popen[bytes]]) -> str:
    """One etcd member per host (client port 12379, peer 12380 on the host's address),
    added to ``procs``; returns the agents' endpoint list once every member serves clients."""
    if shutil.which("etcd") is None:
        pytest.skip("no etcd binary (scripts/install-etcd)")
    n = len(hosts.hosts)
    peers = ",".join(f"m{h.index}=http://{h.addr}:12380" for h in hosts.hosts)
    logs = []
    for h in hosts.hosts:
        client, peer = f"http://{h.addr}:12379", f"http://{h.addr}:12380"
        log = d / f"etcd{h.index}.log"
        logs.append(log)
        with open(log, "wb") as f:
            procs.append(
                subprocess.Popen(
                    hosts.wrap(
                        h.index,
                        [
                            "etcd",
                            "--name",
                            f"m{h.index}",
                            "--data-dir",
                            str(d / f"etcd{h.index}"),
                            "--listen-client-urls",
                            client,
                            "--advertise-client-urls",
                            client,
                            "--listen-peer-urls",
                            peer,
                            "--initial-advertise-peer-urls",
                            peer,
                            "--initial-cluster",
                            peers,
                            "--initial-cluster-state",
                            "new",
                            "--initial-cluster-token",
                            hosts.tag,
                            "--heartbeat-interval",
                            "50",
                            "--election-timeout",
                            "500",
                        ],
                    ),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=f,
                )
            )
    end = time.monotonic() + 30
    ready = ("serving client traffic", "ready to serve client requests")
    while not all(any(m in p.read_text(errors="replace") for m in ready) for p in logs):
        assert time.monotonic() < end, "etcd members not ready within 30 s"
        time.sleep(0.1)
    return ",".join(f"{h.addr}:12379" for h in hosts.hosts[:n])


@needs_netns
def test_etcd_majority_goes_on_and_the_minority_fences_itself_then_rejoins(
    make_hosts: Callable[[int], Hosts], tmp_path: Path
) -> None:
    """A 3-member etcd cluster, one member per host; host 3 (its member and its agent)
    is cut off: the majority side keeps the quorum and trains at WORLD_SIZE 2; the
    minority agent fences itself (its worker stops while the cut lasts) and comes back
    as a newcomer after the heal."""
    pytest.importorskip("torch")
    hosts = make_hosts(3)
    members: list[subprocess.Popen[bytes]] = []
    agents: dict[int, subprocess.Popen[bytes]] = {}
    try:
        job = Job(hosts, tmp_path, backend="etcd", endpoint=start_etcd(hosts, tmp_path, members))
        agents = job.agents
        for i in (1, 2, 3):
            job.start(i)
        all_three(job)
        worker = job.steps(3)[-1][5]
        cut = time.monotonic()
        hosts.cut(3)
        survivors = job.until("the majority trains at world 2", lambda: job.training(1, 2, cut))
        job.until("the minority's worker stops", lambda: not job.alive(worker))
        assert "assuming this node was dropped" in job.log(3)
        assert job.agents[3].poll() is None
        heal = time.monotonic()
        hosts.heal(3)
        back = job.until("host 3 is back at world 3", lambda: job.training(3, 3, heal))
        assert back[1] > survivors[1]  # type: ignore[index]
        print(
            f"etcd: majority's next step {survivors[0] - cut:.1f}s after the cut; "  # type: ignore[index]
            f"host 3's next step {back[0] - heal:.1f}s after the heal"
        )  # type: ignore[index]
    finally:
        for p in [*agents.values(), *members]:
            p.kill()
            p.wait(timeout=10)


@needs_netns
def test_a_random_mix_of_crashes_and_partitions(job: Job) -> None:
    """Four faults drawn from a seeded mix (shortened to fit CI): a worker host's agent
    SIGKILLed and started again, a cut past the membership timeout, a blip. After each,
    every host trains at WORLD_SIZE 3 again, and no agent has exited."""
    seed = int(os.environ.get("CORRAL_PARTITION_SEED", "23"))
    rng = random.Random(seed)
    all_three(job)
    for n in range(4):
        kind, host = rng.choice(["crash", "cut", "blip"]), rng.choice([2, 3])
        print(f"seed {seed}, fault {n}: {kind} of host {host}")
        start = time.monotonic()
        if kind == "crash":
            job.agents[host].kill()  # the reaper ends its worker
            job.agents[host].wait(timeout=10)
            job.start(host)  # a new agent on the same host
        else:
            job.hosts.cut(host)
            time.sleep(1.0 if kind == "blip" else TTL + 2)  # not a wait: the fault's length
            job.hosts.heal(host)
        all_three(job, after=start if kind == "blip" else time.monotonic())
        alive = [i for i, p in job.agents.items() if p.poll() is None]
        assert alive == [1, 2, 3], "\n".join(job.log(i)[-2000:] for i in job.agents)


@needs_netns
def test_a_partition_healed_in_time_resumes_ddp_bit_identical(
    make_hosts: Callable[[int], Hosts], tmp_path: Path
) -> None:
    """examples/train_ddp.py (DDP on gloo, checkpoints) as a 2:2 job on two hosts; host 2 is
    cut past the membership timeout mid-training, then healed within join_timeout: it fences
    itself, comes back as a newcomer, the job resumes from its checkpoint and ends with
    parameters bit-identical to an uninterrupted run."""
    torch = pytest.importorskip("torch")
    hosts = make_hosts(2)
    steps = ["--steps", "240", "--ckpt-every", "20"]
    env = corral_env(GLOO_SOCKET_IFNAME=IFACE)
    ref = tmp_path / "ref"
    r = subprocess.run(
        hosts.wrap(1, [*CORRAL, "--standalone", "--nproc-per-node", "2", EXAMPLE, *steps,
                       "--ckpt-dir", str(ref / "ckpt"), "--out", str(ref / "p.pt")]),
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    agents: dict[int, subprocess.Popen[bytes]] = {}
    try:
        for i in (1, 2):
            cmd = [*CORRAL, "--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
                   "--rdzv-endpoint", STORE, "--rdzv-id", "ddp", "--local-addr", hosts[i].addr,
                   "--max-restarts", "5", "--rdzv-conf", f"{CONF},join_timeout=60", EXAMPLE,
                   *steps, "--ckpt-dir", str(tmp_path / "ckpt"), "--out", str(tmp_path / "p.pt"),
                   "--log-every", "10"]  # fmt: skip
            with open(tmp_path / f"a{i}.out", "wb") as o, open(tmp_path / f"a{i}.err", "wb") as e:
                agents[i] = subprocess.Popen(hosts.wrap(i, cmd), stdout=o, stderr=e, env=env,
                                             start_new_session=True)  # fmt: skip
        out = tmp_path / "a1.out"
        end = time.monotonic() + 90
        while "step 60\n" not in out.read_text():  # rank 0 (host 1) passed a checkpoint
            assert time.monotonic() < end and agents[1].poll() is None, out.read_text()
            time.sleep(0.05)
        hosts.cut(2)
        time.sleep(TTL + 2)  # not a wait: a cut past the membership timeout is the fault
        hosts.heal(2)
        for i in (1, 2):
            err = (tmp_path / f"a{i}.err").read_text
            assert agents[i].wait(timeout=90) == 0, err()[-3000:]
        assert "assuming this node was dropped" in (tmp_path / "a2.err").read_text()
        resumed = [int(m) for m in re.findall(r"restart [1-9]\d*: starting at step (\d+)",
                                              out.read_text())]  # fmt: skip
        assert resumed and min(resumed) >= 60, out.read_text()
        a = torch.load(ref / "p.pt", weights_only=True)
        b = torch.load(tmp_path / "p.pt", weights_only=True)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), "parameters differ from the reference"
    finally:
        for p in agents.values():
            p.kill()
            p.wait(timeout=10)
