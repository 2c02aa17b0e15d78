"""Several agents on loopback (127.0.0.x), each its own node: kills, freezes, joins, timeouts."""

from __future__ import annotations

import contextlib
import json
import random
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.etcd_fixtures import etcd_available, find_leader, shared_single, start_cluster
from tests.helpers import CORRAL, Hub, HubWorker, Procs, corral_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]  # several real agents each

FAST = "keep_alive_interval=0.5,keep_alive_max_attempt=3,last_call_timeout=10,read_timeout=5,join_timeout=60"


def free_port(count: int = 1) -> int:
    """A port p with p .. p + count - 1 free now, below the kernel's ephemeral
    range, so that no outgoing connection is handed one of them before the
    agent that will listen there binds it."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20_000, 30_000)
        with contextlib.ExitStack() as stack:
            try:
                for p in range(port, port + count):
                    stack.enter_context(socket.socket()).bind(("127.0.0.1", p))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no {count} consecutive free ports in 20000-30000")


class Cluster:
    """Agents of one job, each with its own --local-addr 127.0.0.<n>."""

    def __init__(
        self,
        procs: Procs,
        hub: Hub,
        tmp: Path,
        nnodes: str,
        *,
        conf: str = FAST,
        max_restarts: int = 3,
        nproc: int = 1,
        extra: tuple[str, ...] = (),
        backend: str = "c10d",
        endpoint: str | None = None,
    ) -> None:
        self.procs, self.hub, self.tmp = procs, hub, tmp
        self.port = free_port()
        self.backend = backend
        self.endpoint = endpoint or f"127.0.0.1:{self.port}"
        self.run_id = f"job{self.port}"  # unique per test: etcd is shared by the session
        self.nnodes, self.conf, self.max_restarts, self.nproc = nnodes, conf, max_restarts, nproc
        self.extra = extra
        self.agents: dict[int, subprocess.Popen[bytes]] = {}

    def start(
        self,
        n: int,
        *worker_args: str,
        addr: int | None = None,
        flags: tuple[str, ...] = (),
        script: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        """Agent ``n`` at 127.0.0.<addr> (default ``n``), with ``flags`` after the
        cluster's own, running ``script`` (default the hub's worker)."""
        err = open(self.tmp / f"agent{n}.err", "wb")
        cmd = [
            *CORRAL,
            "--nnodes",
            self.nnodes,
            "--nproc-per-node",
            str(self.nproc),
            "--rdzv-backend",
            self.backend,
            "--rdzv-endpoint",
            self.endpoint,
            "--rdzv-id",
            self.run_id,
            "--local-addr",
            f"127.0.0.{addr or n}",
            "--max-restarts",
            str(self.max_restarts),
            "--rdzv-conf",
            self.conf,
            *self.extra,
            *flags,
            str(script or self.hub.script),
            *worker_args,
        ]
        p = self.procs.start(
            cmd,
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=corral_env(HUB=self.hub.path, TMPDIR=str(self.tmp)),
        )
        err.close()
        self.agents[n] = p
        return p

    def stderr(self, n: int) -> str:
        return (self.tmp / f"agent{n}.err").read_text(errors="replace")

    def wait(self, n: int, timeout: float = 30) -> int:
        try:
            return self.agents[n].wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"agent {n} did not exit; its stderr:\n{self.stderr(n)}") from None


ETCD_CONF = FAST.replace("keep_alive_interval=0.5", "keep_alive_interval=1")


@pytest.fixture(params=["c10d", "etcd"])
def cluster_factory(
    request: pytest.FixtureRequest, procs: Procs, hub: Hub, tmp_path: Path
) -> Iterator[object]:
    """Clusters of agents on the embedded store, and on a real etcd (the same tests)."""
    backend = request.param
    endpoint = None
    if backend == "etcd":
        if not etcd_available():
            pytest.skip("etcd binary not installed (scripts/install-etcd)")
        endpoint = shared_single().endpoints

    def make(nnodes: str, **kw: object) -> Cluster:
        if backend == "etcd" and "conf" in kw:
            kw["conf"] = str(kw["conf"]).replace("keep_alive_interval=0.5", "keep_alive_interval=1")
        kw.setdefault("conf", ETCD_CONF if backend == "etcd" else FAST)
        return Cluster(procs, hub, tmp_path, nnodes, backend=backend, endpoint=endpoint, **kw)  # type: ignore[arg-type]

    make.backend = backend  # type: ignore[attr-defined]
    yield make


def ws(n: int):
    return lambda w: w["WORLD_SIZE"] == str(n)


def assert_one_round(workers: list[HubWorker], world: int) -> None:
    assert sorted(int(w["RANK"]) for w in workers) == list(range(world))
    assert len({w["MASTER_PORT"] for w in workers}) == 1
    assert len({w["TORCHELASTIC_RESTART_COUNT"] for w in workers}) == 1


def test_sigkill_of_one_agent_survivors_rerun_at_world_2(cluster_factory, hub: Hub) -> None:
    c = cluster_factory("2:3")
    for n in (1, 2, 3):
        c.start(n)
    first = hub.collect(3, where=ws(3))
    assert_one_round(first, 3)
    victim = c.agents[3]
    victim.kill()
    victim.wait(timeout=10)
    second = hub.collect(2, where=ws(2))
    assert_one_round(second, 2)
    assert all(w["TORCHELASTIC_RESTART_COUNT"] == "1" for w in second), (
        "a lost node counts one restart"
    )
    assert {int(w["GROUP_RANK"]) for w in second} == {0, 1}
    for w in second:
        w.release(0)
    assert c.wait(1) == 0, c.stderr(1)
    assert c.wait(2) == 0, c.stderr(2)


def test_hung_agent_is_evicted_and_cannot_disturb(cluster_factory, hub: Hub) -> None:
    c = cluster_factory("2:3")
    for n in (1, 2, 3):
        c.start(n)
    first = hub.collect(3, where=ws(3))
    assert_one_round(first, 3)
    frozen = c.agents[3]
    frozen.send_signal(signal.SIGSTOP)
    try:
        second = hub.collect(2, where=ws(2))
        assert_one_round(second, 2)
    finally:
        frozen.send_signal(signal.SIGCONT)
    # the resumed agent finds itself evicted, stops its stale workers and joins as a new node:
    # a consistent round of 3 follows, with fresh ranks and a fresh MASTER_PORT
    third = hub.collect(3, where=lambda w: w["WORLD_SIZE"] == "3" and w not in first)
    assert_one_round(third, 3)
    assert third[0]["TORCHELASTIC_RESTART_COUNT"] == "2"  # its loss and its return: one each
    assert third[0]["MASTER_PORT"] not in {second[0]["MASTER_PORT"], first[0]["MASTER_PORT"]}
    for w in third:
        w.release(0)
    for n in (1, 2, 3):
        assert c.wait(n) == 0, c.stderr(n)


def test_fourth_agent_joins_running_job(cluster_factory, hub: Hub) -> None:
    c = cluster_factory("2:4", conf=FAST.replace("last_call_timeout=10", "last_call_timeout=1"))
    for n in (1, 2, 3):
        c.start(n)
    first = hub.collect(3, where=ws(3))
    assert_one_round(first, 3)
    c.start(4)
    second = hub.collect(4, where=ws(4))
    assert_one_round(second, 4)
    assert all(w["TORCHELASTIC_RESTART_COUNT"] == "1" for w in second)  # a scale-up counts one
    for w in second:
        w.release(0)
    for n in (1, 2, 3, 4):
        assert c.wait(n) == 0, c.stderr(n)


def test_store_host_killed_others_exit_with_clear_error(
    procs: Procs, hub: Hub, tmp_path: Path
) -> None:
    """The embedded store dies with its hosting agent (etcd has none: see the cluster test).

    The other agent fences itself, then tries the store until join_timeout, as in a
    partition (docs/rendezvous.md, "Silence"), and exits with one line naming it.
    """
    c = Cluster(
        procs, hub, tmp_path, "2:2", conf=FAST.replace("join_timeout=60", "join_timeout=15")
    )
    c.start(1)
    c.start(2)
    hub.collect(2, where=ws(2))
    c.agents[1].kill()
    code = c.wait(2, timeout=40)
    assert code == 1, c.stderr(2)
    err = c.stderr(2)
    (line,) = [ln for ln in err.splitlines() if ln.startswith("corral: error:")]
    assert "join_timeout (15.0 s) passed" in line and "the store could not be reached" in line
    assert f"127.0.0.1:{c.port}" in line, line
    assert "Traceback" not in err


def test_join_timeout(cluster_factory) -> None:
    c = cluster_factory("2:2", conf=FAST.replace("join_timeout=60", "join_timeout=1.5"))
    c.start(1)
    assert c.wait(1, timeout=30) == 1
    err = c.stderr(1)
    assert "timeout" in err.lower() or "timed out" in err.lower(), err
    assert "Traceback" not in err


def test_spent_budget_same_root_cause_everywhere(cluster_factory, hub: Hub) -> None:
    c = cluster_factory("2:2", max_restarts=1)
    c.start(1, "--fail-rank=1")
    c.start(2, "--fail-rank=1")
    # rank 1 fails in both attempts (rank 0 may be stopped before it reports)
    reports = hub.collect(2, where=lambda w: w["RANK"] == "1")
    for n in (1, 2):
        assert c.wait(n, timeout=40) == 3, c.stderr(n)
    for n in (1, 2):
        assert "rank 1 fails on purpose" in c.stderr(n), c.stderr(n)
    restarts = {w["TORCHELASTIC_RESTART_COUNT"] for w in reports}
    assert restarts == {"0", "1"}


@pytest.mark.skipif(not etcd_available(), reason="etcd binary not installed")
def test_etcd_cluster_loses_follower_then_leader_job_goes_on(
    procs: Procs, hub: Hub, tmp_path: Path
) -> None:
    """3 etcd members; a follower dies during the rendezvous, the leader while the job runs.

    The job goes on, and the rendezvous state survives: losing an agent afterwards
    still gives a consistent new round of the survivors.
    """
    with start_cluster(3) as etcd:
        c = Cluster(
            procs, hub, tmp_path, "2:3", conf=ETCD_CONF, backend="etcd", endpoint=etcd.endpoints
        )
        leader = find_leader(etcd)
        follower = next(m for m in etcd.members if m is not leader)
        c.start(1)
        follower.kill()  # during the rendezvous
        c.start(2)
        c.start(3)
        first = hub.collect(3, where=ws(3))
        assert_one_round(first, 3)
        leader.kill()  # while the job runs: the last member alone has no quorum until...
        follower.spawn()  # ...the follower comes back and a new leader is elected
        follower.wait_ready()
        c.agents[3].kill()
        try:
            second = hub.collect(2, where=ws(2))
        except TimeoutError:
            raise AssertionError("\n".join(c.stderr(n)[-3000:] for n in (1, 2))) from None
        assert_one_round(second, 2)
        for w in second:
            w.release(0)
        for n in (1, 2):
            assert c.wait(n, timeout=40) == 0, c.stderr(n)


def test_static_failure_anywhere_restarts_every_node(
    procs: Procs, hub: Hub, tmp_path: Path
) -> None:
    port = free_port(2)  # rank 0 hosts the agents' store on port + 1
    agents = []
    for rank in (0, 1):
        err = open(tmp_path / f"static{rank}.err", "wb")
        agents.append(
            procs.start(
                [
                    *CORRAL,
                    "--nnodes",
                    "2",
                    "--nproc-per-node",
                    "1",
                    "--node-rank",
                    str(rank),
                    "--master-addr",
                    "127.0.0.1",
                    "--master-port",
                    str(port),
                    "--max-restarts",
                    "1",
                    "--local-addr",
                    f"127.0.0.{rank + 1}",
                    str(hub.script),
                    "--fail-rank=1",
                ],
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=corral_env(HUB=hub.path, TMPDIR=str(tmp_path)),
            )
        )
        err.close()
    try:
        # rank 1 fails in each attempt; rank 0 may be stopped before it reports
        first = hub.collect(1, where=lambda w: w["RANK"] == "1")
        hub.collect(1, where=lambda w: w["RANK"] == "1" and w["TORCHELASTIC_RESTART_COUNT"] == "1")
    except TimeoutError:
        raise AssertionError(
            "\n".join((tmp_path / f"static{r}.err").read_text()[-3000:] for r in (0, 1))
        ) from None
    assert {w["TORCHELASTIC_RESTART_COUNT"] for w in first} == {"0"}
    assert {w["MASTER_PORT"] for w in first} == {str(port)}  # static: --master-port, as torchrun
    for p in agents:
        assert p.wait(timeout=30) == 3  # the budget is spent on the second failure
    node0 = (tmp_path / "static0.err").read_text()
    assert "round 1: node 0 of 2" in node0, node0  # node 0 restarted for node 1's failure
    assert "rank 1 fails on purpose" in node0  # and reports the job-wide root cause


def test_token_authenticates_agents_and_refuses_a_wrong_one(
    procs: Procs, hub: Hub, tmp_path: Path
) -> None:
    """With a shared token the store refuses any peer that cannot answer its HMAC challenge."""
    c = Cluster(procs, hub, tmp_path, "2:2", conf=FAST + ",token=s3cret-token")
    c.start(1)
    c.start(2)
    workers = hub.collect(2, where=ws(2))
    assert_one_round(workers, 2)
    intruder = Cluster(procs, hub, tmp_path, "2:2", conf=FAST + ",token=wrong-token")
    intruder.port, intruder.endpoint, intruder.run_id = c.port, c.endpoint, c.run_id
    intruder.start(9)
    assert intruder.wait(9, timeout=30) == 1
    err = intruder.stderr(9)
    assert "auth" in err.lower(), err
    assert "Traceback" not in err
    for w in workers:  # the job was not disturbed
        w.release(0)
    assert c.wait(1) == 0, c.stderr(1)
    assert c.wait(2) == 0, c.stderr(2)


def test_etcd_unreachable_at_start_is_a_clear_error(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    (tmp_path / "w.py").write_text("")
    r = subprocess.run(
        [*CORRAL, "--nnodes", "1", "--rdzv-backend", "etcd", "--rdzv-endpoint", f"127.0.0.1:{port}",
         "--rdzv-id", "x", "--rdzv-conf", "read_timeout=2", str(tmp_path / "w.py")],
        capture_output=True, text=True, timeout=30, env=corral_env(), cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 1, r.stderr
    assert f"127.0.0.1:{port}" in r.stderr
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) <= 2, r.stderr


@pytest.mark.skipif(not etcd_available(), reason="etcd binary not installed")
def test_etcd_sigkilled_agent_seen_before_its_lease_ttl(
    procs: Procs, hub: Hub, tmp_path: Path
) -> None:
    """etcd leases outlive connections (TTL 15 s by default); the liveness ring sees the death at once."""
    c = Cluster(procs, hub, tmp_path, "2:3", conf="last_call_timeout=10", backend="etcd",
                endpoint=shared_single().endpoints)  # fmt: skip
    for n in (1, 2, 3):
        c.start(n)
    assert_one_round(hub.collect(3, where=ws(3)), 3)
    c.agents[2].kill()
    try:
        # under the 15 s lease TTL, with slack for a loaded 2-core machine
        second = hub.collect(2, where=ws(2), timeout=12)
    except TimeoutError:
        raise AssertionError("\n".join(c.stderr(n)[-2000:] for n in (1, 3))) from None
    assert_one_round(second, 2)
    for w in second:
        w.release(0)
    for n in (1, 3):
        assert c.wait(n) == 0, c.stderr(n)


def test_status_shows_the_running_job(cluster_factory, hub: Hub) -> None:
    """`corral status` reads the job's round, nodes and failures from its store."""
    c = cluster_factory("2:2")
    c.start(1)
    c.start(2)
    workers = hub.collect(2, where=ws(2))
    cmd = [*CORRAL, "status", "--rdzv-backend", c.backend, "--rdzv-endpoint", c.endpoint,
           "--rdzv-id", c.run_id]  # fmt: skip
    text = subprocess.run(cmd, capture_output=True, text=True, timeout=30, env=corral_env())
    assert text.returncode == 0, text.stderr
    assert "state: RUNNING round 0" in text.stdout, text.stdout
    assert "restarts 0/3" in text.stdout, text.stdout  # used/allowed
    assert "world size 2" in text.stdout
    assert {"127.0.0.1", "127.0.0.2"} <= set(text.stdout.split())
    assert text.stdout.count(" live ") == 2
    snap = subprocess.run([*CORRAL, "status", "--json", *cmd[4:]], capture_output=True,
                          text=True, timeout=30, env=corral_env())  # fmt: skip
    data = json.loads(snap.stdout)
    assert data["round"] == 0 and data["world_size"] == 2 and len(data["nodes"]) == 2
    for w in workers:
        w.release(0)
    assert c.wait(1) == 0 and c.wait(2) == 0
    if c.backend == "etcd":  # the embedded store left with its hosting agent
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, env=corral_env())
        assert "state: SUCCEEDED in round 0" in done.stdout, done.stdout + done.stderr
