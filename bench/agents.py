#!/usr/bin/env python3
"""Multi-agent benchmarks: corral and torchrun side by side, in one invocation.

Figures (medians over a few repetitions, in seconds):

* ``b K=<k>``: K agents on loopback (``--nnodes K --nproc-per-node 1``, c10d
  backend, each with its own ``--local-addr 127.0.0.<n>``), from the start of
  the first agent to the last worker running.
* ``c idle`` / ``c allreduce``: one node of three (``--nnodes 2:3``) is lost
  (SIGKILL of its agent, and by default of its worker too, as when a host
  dies), to the survivors' workers running again in a new attempt.  ``idle``
  workers run forever doing nothing; ``allreduce`` workers loop on a gloo
  all_reduce, which is how torchrun notices a lost peer at all; a second
  allreduce figure runs to the survivors' gloo group re-formed at WORLD_SIZE 2
  (the new round really works).  torchrun's agent 1 is given ``is_host=1``
  (the others ``is_host=0``) so that, as with corral, the node lost is never
  the one hosting the c10d store.
* ``d``: a third agent joins a running ``--nnodes 2:3`` job, to all three
  workers running at WORLD_SIZE 3.  torchrun runs as is (its cached agent
  store) and, in a second figure, with ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1``.
* ``c idle etcd-1 (corral on etcd; torchrun n/a)`` and friends: corral's (c)
  and (d) on ``--rdzv-backend etcd`` against one etcd (``--store etcd``) and a
  3-member etcd cluster (``--store etcd3``) that the bench starts on loopback
  ports; the torchrun column is null.  etcd leases outlive connections (15 s
  TTL by default); corral's liveness ring (src/corral/rendezvous/liveness.py) sees
  a SIGKILLed agent at once anyway.

Usage: ``python bench/agents.py`` (everything, about 5 minutes on 2 cores);
``--parts b,c,d``, ``--tools corral,torchrun``, ``--store embedded,etcd,etcd3``,
``--ks 2,8,16``, ``--reps 3``, ``--budget``, ``--cap``; ``--help`` for more.

Workers report their start (a CLOCK_MONOTONIC timestamp, comparable across
processes) on a Unix datagram socket that the bench awaits, together with the
pidfds of the agents, so nothing in a measurement sleeps.  Every launcher, and
etcd, runs inside a private network namespace holding only ``lo``, since
torch's TCPStore reverse-resolves peers and can stall 5 s on DNS.  Every
process the bench starts carries a marker in its environment; the bench kills
them all by pid (SIGKILL) after each repetition and at exit.

Prints human lines, then, last, one JSON line::

    {"bench": "agents", "figures": [{"name": ..., "unit": "s", "corral": ...,
     "torchrun": ..., "ratio": ...}, ...]}

A figure is null when a repetition failed or hit its cap; a figure that fails
once is not repeated.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
Report = dict[str, Any]
Values = dict[str, float | None]  # figure key ("" for the main one) -> seconds, None: failed

TOOLS: dict[str, list[str]] = {
    "corral": [sys.executable, "-m", "corral"],
    "torchrun": [sys.executable, "-m", "torch.distributed.run"],
}
SESSION_VAR = "CORRAL_BENCH_SESSION"
RUN_VAR = "CORRAL_BENCH_RUN"
AGENT_VAR = "CORRAL_BENCH_AGENT"
SOCK_VAR = "CORRAL_BENCH_SOCK"
UNSHARED_STORE = {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
SETUP_TIMEOUT = 120.0  # getting a job to its first round; not a measurement

WORKER = r"""
import json, os, signal, socket, sys, time

T0 = time.monotonic()
KEYS = ("RANK", "WORLD_SIZE", "GROUP_RANK", "MASTER_PORT", "TORCHELASTIC_RESTART_COUNT")


def report(phase, t):
    msg = {"phase": phase, "t": t, "pid": os.getpid(),
           "run": os.environ.get("@RUN@", ""), "agent": os.environ.get("@AGENT@", "")}
    msg.update({k: os.environ.get(k, "") for k in KEYS})
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(json.dumps(msg).encode(), os.environ["@SOCK@"])


report("start", T0)
if sys.argv[1] == "idle":
    while True:
        signal.pause()
import torch
import torch.distributed as dist

dist.init_process_group("gloo")
report("ready", time.monotonic())
x = torch.ones(16)
while True:
    dist.all_reduce(x)
    time.sleep(0.01)  # pacing of the worker's own loop
"""
WORKER = WORKER.replace("@RUN@", RUN_VAR).replace("@AGENT@", AGENT_VAR).replace("@SOCK@", SOCK_VAR)


class Failed(Exception):
    """A repetition that did not reach its end state (timeout, an agent exited)."""


# -- processes -----------------------------------------------------------------


def _environ_has(pid: int, marker: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return marker in f.read().split(b"\0")
    except OSError:
        return False


def pids_marked(var: str, value: str) -> list[int]:
    """Live processes whose environment holds ``var=value`` (ours, by construction)."""
    marker = f"{var}={value}".encode()
    me = os.getpid()
    return [
        int(d)
        for d in os.listdir("/proc")
        if d.isdigit() and int(d) != me and _environ_has(int(d), marker)
    ]


def kill_pids(pids: Sequence[int], timeout: float = 15.0) -> None:
    """SIGKILL each pid and wait (on pidfds) until each has exited."""
    fds: list[int] = []
    for pid in pids:
        with contextlib.suppress(OSError):
            fds.append(os.pidfd_open(pid))
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    sel = selectors.DefaultSelector()
    try:
        for fd in fds:
            sel.register(fd, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for key, _ in sel.select(left):
                sel.unregister(key.fd)
    finally:
        sel.close()
        for fd in fds:
            os.close(fd)


def kill_marked(var: str, value: str) -> None:
    """Kill every process marked ``var=value``, again while new ones appear (a child
    forked between a scan and its parent's death is caught by the next scan)."""
    for _ in range(10):
        pids = pids_marked(var, value)
        if not pids:
            return
        kill_pids(pids)


class Namespace:
    """A private network namespace holding only ``lo``, kept alive by an anchor process."""

    def __init__(self, env: dict[str, str]) -> None:
        self.anchor = subprocess.Popen(
            ["unshare", "--net", "sh", "-c", "ip link set lo up && echo up && exec sleep infinity"],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        assert self.anchor.stdout is not None
        line = self.anchor.stdout.readline()
        if line.strip() != b"up":
            self.close()
            raise RuntimeError("could not set up a network namespace (unshare --net needs root)")

    def prefix(self) -> list[str]:
        return ["nsenter", f"--net=/proc/{self.anchor.pid}/ns/net", "--"]

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.anchor.kill()
        self.anchor.wait()
        if self.anchor.stdout is not None:
            self.anchor.stdout.close()


class Inbox:
    """The Unix datagram socket that workers report to."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.reports: list[Report] = []

    def drain(self) -> None:
        while True:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return
            with contextlib.suppress(ValueError):
                self.reports.append(json.loads(data))

    def close(self) -> None:
        self.sock.close()
        with contextlib.suppress(OSError):
            self.path.unlink()


@dataclass
class Agent:
    n: int
    proc: subprocess.Popen[bytes]
    log: Path


@dataclass
class Run:
    """One repetition: its agents, its reports, and a marker to kill them all by."""

    bench: Bench
    name: str
    token: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    agents: dict[int, Agent] = field(default_factory=dict)

    def start(self, cmd: list[str], n: int, extra_env: dict[str, str] | None = None) -> Agent:
        env = dict(self.bench.env)
        env.update({RUN_VAR: self.token, AGENT_VAR: str(n)})
        env.update(extra_env or {})
        log = self.bench.tmp / f"{self.name}-{self.token}-agent{n}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [*self.bench.ns.prefix(), *cmd],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.bench.tmp,
                start_new_session=True,
            )
        agent = Agent(n, proc, log)
        self.agents[n] = agent
        return agent

    def mine(self) -> list[Report]:
        self.bench.inbox.drain()
        return [r for r in self.bench.inbox.reports if r.get("run") == self.token]

    def wait(self, pred: Callable[[list[Report]], T | None], timeout: float, what: str) -> T:
        """Wait for ``pred(reports)`` to hold; fail if a watched agent exits or on timeout."""
        sel = selectors.DefaultSelector()
        fds: dict[int, Agent] = {}
        try:
            sel.register(self.bench.inbox.sock, selectors.EVENT_READ)
            for agent in self.agents.values():
                if agent.proc.poll() is None:
                    fd = os.pidfd_open(agent.proc.pid)
                    fds[fd] = agent
                    sel.register(fd, selectors.EVENT_READ)
                else:
                    self._exited(agent, what)
            deadline = time.monotonic() + timeout
            while True:
                found = pred(self.mine())
                if found is not None:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Failed(f"{what}: not reached within {timeout:g} s")
                for key, _ in sel.select(left):
                    if key.fd in fds:
                        agent = fds[key.fd]
                        agent.proc.wait()
                        self._exited(agent, what)
        finally:
            sel.close()
            for fd in fds:
                os.close(fd)

    def _exited(self, agent: Agent, what: str) -> None:
        found = self.mine()  # a report that raced the exit still counts for the caller
        raise Failed(
            f"{what}: agent {agent.n} exited with code {agent.proc.returncode}"
            f" ({len(found)} worker reports so far); log tail:\n{tail(agent.log)}"
        )

    def kill_node(self, n: int, worker_pids: Sequence[int], with_workers: bool) -> None:
        """SIGKILL agent ``n`` (and its workers, as a lost host) at once."""
        pids = [self.agents[n].proc.pid, *(worker_pids if with_workers else ())]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.agents[n].proc.wait()
        del self.agents[n]

    def close(self) -> None:
        kill_marked(RUN_VAR, self.token)
        for agent in self.agents.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(agent.proc.pid, signal.SIGKILL)
            agent.proc.wait()
        self.bench.inbox.reports = [
            r for r in self.bench.inbox.reports if r.get("run") != self.token
        ]


def tail(path: Path, lines: int = 12) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join("    | " + line for line in text[-lines:])


# -- etcd ----------------------------------------------------------------------


class Etcd:
    """``size`` etcd members on loopback ports inside the namespace, temp data dirs."""

    READY = (b"ready to serve client requests", b"serving client traffic")

    def __init__(self, bench: Bench, size: int) -> None:
        self.bench = bench
        self.root = Path(tempfile.mkdtemp(prefix="etcd-", dir=bench.tmp))
        ports = [bench.next_port() for _ in range(2 * size)]
        names = [f"m{i}" for i in range(size)]
        initial = ",".join(f"{m}=http://127.0.0.1:{ports[2 * i + 1]}" for i, m in enumerate(names))
        self.endpoint = ",".join(f"127.0.0.1:{ports[2 * i]}" for i in range(size))
        self.procs: list[subprocess.Popen[bytes]] = []
        self.readers: list[threading.Thread] = []
        events: list[threading.Event] = []
        cluster_token = f"bench-{uuid.uuid4().hex[:8]}"
        try:
            for i, member in enumerate(names):
                client, peer = (
                    f"http://127.0.0.1:{ports[2 * i]}",
                    f"http://127.0.0.1:{ports[2 * i + 1]}",
                )
                cmd = [
                    "etcd", "--name", member, "--data-dir", str(self.root / member),
                    "--listen-client-urls", client, "--advertise-client-urls", client,
                    "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                    "--initial-cluster", initial, "--initial-cluster-state", "new",
                    "--initial-cluster-token", cluster_token,
                    "--heartbeat-interval", "50", "--election-timeout", "500",
                ]  # fmt: skip
                proc = subprocess.Popen(
                    [*bench.ns.prefix(), *cmd],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    env=bench.env,
                    start_new_session=True,
                )
                self.procs.append(proc)
                ready = threading.Event()
                events.append(ready)
                log = self.root / f"{member}.log"
                reader = threading.Thread(target=self._drain, args=(proc, ready, log), daemon=True)
                reader.start()
                self.readers.append(reader)
            for i, ready in enumerate(events):
                if not ready.wait(30) or self.procs[i].poll() is not None:
                    raise RuntimeError(f"etcd member m{i} did not start; see {self.root}")
        except BaseException:
            self.close()
            raise

    def _drain(self, proc: subprocess.Popen[bytes], ready: threading.Event, log: Path) -> None:
        # Drained to the end so etcd never blocks on a full stderr pipe.
        assert proc.stderr is not None
        with open(log, "wb") as out:
            for line in proc.stderr:
                out.write(line)
                if any(m in line for m in self.READY):
                    ready.set()
        ready.set()

    def close(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
        for reader in self.readers:
            reader.join(timeout=5)
        for proc in self.procs:
            if proc.stderr is not None:
                proc.stderr.close()
        shutil.rmtree(self.root, ignore_errors=True)


# -- the bench -----------------------------------------------------------------


@dataclass
class Options:
    parts: list[str]
    tools: list[str]
    stores: list[str]
    ks: list[int]
    reps: int
    budget: float
    cap: float
    cap_allreduce: float
    last_call: float
    victim: str
    etcd_conf: str
    keep_logs: bool


class Bench:
    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.session = uuid.uuid4().hex[:12]
        self.tmp = Path(tempfile.mkdtemp(prefix="corral-bench-agents-"))
        (self.tmp / "worker.py").write_text(WORKER)
        self.worker = self.tmp / "worker.py"
        self.env = dict(os.environ)
        self.env.update(
            {
                SESSION_VAR: self.session,
                SOCK_VAR: str(self.tmp / "inbox.sock"),
                "GLOO_SOCKET_IFNAME": "lo",
                "PYTHONUNBUFFERED": "1",
                "TMPDIR": str(self.tmp),  # the launchers' own log dirs go away with it
            }
        )
        self._port = 20000
        self.inbox = Inbox(self.tmp / "inbox.sock")
        try:
            self.ns = Namespace(self.env)
        except BaseException:
            self.inbox.close()
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise
        self.etcd: dict[str, Etcd] = {}

    def next_port(self) -> int:
        # A fresh port for every job: the namespace is ours, and ports of earlier
        # repetitions may still sit in TIME_WAIT.  Below the ephemeral range.
        self._port += 1
        return self._port

    def close(self) -> None:
        try:
            kill_marked(SESSION_VAR, self.session)
            for etcd in self.etcd.values():
                etcd.close()
        finally:
            self.ns.close()
            self.inbox.close()
            if self.opts.keep_logs:
                print(f"logs kept in {self.tmp}", flush=True)
            else:
                shutil.rmtree(self.tmp, ignore_errors=True)

    def store(self, name: str) -> tuple[str, str]:
        """(backend, endpoint) for a store name; ``embedded`` is corral's c10d."""
        if name == "embedded":
            return "c10d", f"127.0.0.1:{self.next_port()}"
        if name not in self.etcd:
            self.etcd[name] = Etcd(self, 3 if name == "etcd3" else 1)
        return "etcd", self.etcd[name].endpoint

    def conf(self, tool: str, backend: str, n: int, *items: str) -> str:
        """``--rdzv-conf`` for agent ``n``: ``items``, plus ``--etcd-conf`` on etcd.

        torchrun's agents get ``is_host`` so that agent 1 hosts the c10d store
        (as corral's does: its --local-addr is the endpoint's host); left to
        itself, whichever torchrun agent binds first hosts it, and (c) would
        now and then kill the store with the node.
        """
        extra = [self.opts.etcd_conf] if backend == "etcd" and self.opts.etcd_conf else []
        if tool == "torchrun" and backend == "c10d":
            extra.append(f"is_host={int(n == 1)}")
        return ",".join([*items, *extra])

    def cmd(
        self,
        tool: str,
        n: int,
        nnodes: str,
        backend: str,
        endpoint: str,
        rdzv_id: str,
        conf: str,
        mode: str,
    ) -> list[str]:
        cmd = [
            *TOOLS[tool],
            "--nnodes", nnodes, "--nproc-per-node", "1",
            "--rdzv-backend", backend, "--rdzv-endpoint", endpoint, "--rdzv-id", rdzv_id,
            "--local-addr", f"127.0.0.{n}", "--max-restarts", "3",
        ]  # fmt: skip
        if conf:
            cmd += ["--rdzv-conf", conf]
        return [*cmd, str(self.worker), mode]

    @contextlib.contextmanager
    def run(self, name: str) -> Iterator[Run]:
        run = Run(self, name)
        try:
            yield run
        finally:
            run.close()


def at_world(
    world: int,
    agents: Sequence[int],
    phase: str = "start",
    exclude: frozenset[int] = frozenset(),
) -> Callable[[list[Report]], list[Report] | None]:
    """A predicate: one worker per agent running in one round of WORLD_SIZE ``world``.

    A round is told apart by (MASTER_PORT, TORCHELASTIC_RESTART_COUNT); reports
    from ``exclude`` pids (an earlier round) do not count, and the ranks must be
    0..world-1 (one worker per agent).
    """

    def pred(reports: list[Report]) -> list[Report] | None:
        rounds: dict[tuple[str, str], dict[int, Report]] = {}
        for r in reports:
            if r["phase"] != phase or r["WORLD_SIZE"] != str(world) or r["pid"] in exclude:
                continue
            members = rounds.setdefault((r["MASTER_PORT"], r["TORCHELASTIC_RESTART_COUNT"]), {})
            members.setdefault(int(r["agent"]), r)
            if all(n in members for n in agents):
                found = [members[n] for n in agents]
                if sorted(int(x["RANK"]) for x in found) == list(range(world)):
                    return found
        return None

    return pred


# -- scenarios: each returns seconds or raises Failed ----------------------------


def since(t0: float, reports: list[Report]) -> float:
    """Seconds from ``t0`` to the last of the workers' own start timestamps."""
    return max(float(r["t"]) for r in reports) - t0


def scenario_b(bench: Bench, tool: str, k: int) -> Values:
    backend, endpoint = bench.store("embedded")
    with bench.run(f"b{k}-{tool}") as run:
        t0 = time.monotonic()
        for n in range(1, k + 1):
            run.start(bench.cmd(tool, n, str(k), backend, endpoint, run.token, "", "idle"), n)
        reports = run.wait(at_world(k, range(1, k + 1)), SETUP_TIMEOUT, f"{k} workers running")
        return {"": since(t0, reports)}


def scenario_c(bench: Bench, tool: str, mode: str, store: str) -> Values:
    backend, endpoint = bench.store(store)
    phase = "ready" if mode == "allreduce" else "start"
    with bench.run(f"c-{mode}-{store}-{tool}") as run:
        for n in (1, 2, 3):
            conf = bench.conf(tool, backend, n)
            run.start(bench.cmd(tool, n, "2:3", backend, endpoint, run.token, conf, mode), n)
        first = run.wait(at_world(3, (1, 2, 3), phase), SETUP_TIMEOUT, "first round of 3 running")
        before = frozenset(r["pid"] for r in run.mine())
        victim = [r["pid"] for r in first if r["agent"] == "3"]
        t0 = time.monotonic()
        run.kill_node(3, victim, with_workers=bench.opts.victim == "node")
        cap = bench.opts.cap_allreduce if mode == "allreduce" else bench.opts.cap
        reports = run.wait(at_world(2, (1, 2), "start", before), cap, "survivors running again")
        values: Values = {"": since(t0, reports)}
        if mode == "allreduce":  # does the new round work? to the survivors' group re-formed
            again = at_world(2, (1, 2), "ready", before)
            try:
                values["gloo"] = since(t0, run.wait(again, cap, "gloo group at WORLD_SIZE 2"))
            except Failed as exc:
                print(f"    {tool}: {exc}", flush=True)
                values["gloo"] = None
        return values


def scenario_d(bench: Bench, tool: str, store: str, env: dict[str, str]) -> Values:
    backend, endpoint = bench.store(store)
    last_call = f"last_call_timeout={bench.opts.last_call:g}"

    def cmd(n: int) -> list[str]:
        conf = bench.conf(tool, backend, n, last_call)
        return bench.cmd(tool, n, "2:3", backend, endpoint, run.token, conf, "idle")

    with bench.run(f"d-{store}-{tool}") as run:
        for n in (1, 2):
            run.start(cmd(n), n, env)
        run.wait(at_world(2, (1, 2)), SETUP_TIMEOUT, "first round of 2 running")
        before = frozenset(r["pid"] for r in run.mine())
        t0 = time.monotonic()
        run.start(cmd(3), 3, env)
        reports = run.wait(
            at_world(3, (1, 2, 3), "start", before), bench.opts.cap, "3 workers at WORLD_SIZE 3"
        )
        return {"": since(t0, reports)}


def repeat(bench: Bench, label: str, fn: Callable[[], Values]) -> Values:
    """Medians of up to ``reps`` repetitions within the figure's time budget.

    A key is None when a repetition failed it; a figure that fails once is not
    repeated.
    """
    runs: list[Values] = []
    spent = 0.0
    for rep in range(bench.opts.reps):
        started = time.monotonic()
        try:
            values = fn()
        except Failed as exc:
            print(f"  {label}: rep {rep + 1} FAILED: {exc}", flush=True)
            runs.append({"": None})
            break
        runs.append(values)
        took = time.monotonic() - started
        spent += took
        shown = "  ".join(
            f"{k or 'value'} {'FAILED' if v is None else f'{v:.3f} s'}" for k, v in values.items()
        )
        print(f"  {label}: rep {rep + 1}: {shown}", flush=True)
        if None in values.values() or spent + took > bench.opts.budget:
            break
    keys = {k for values in runs for k in values}
    result: Values = {}
    for key in keys:
        got = [values.get(key) for values in runs]
        ok = [v for v in got if v is not None]
        result[key] = statistics.median(ok) if len(ok) == len(got) else None
    return result


@dataclass
class Figure:
    name: str
    corral: float | None = None
    torchrun: float | None = None

    def as_json(self) -> dict[str, Any]:
        ratio = None
        if self.corral is not None and self.torchrun is not None and self.torchrun > 0:
            ratio = round(self.corral / self.torchrun, 4)
        return {
            "name": self.name,
            "unit": "s",
            "corral": None if self.corral is None else round(self.corral, 4),
            "torchrun": None if self.torchrun is None else round(self.torchrun, 4),
            "ratio": ratio,
        }


def measure(bench: Bench) -> list[Figure]:
    opts = bench.opts
    figures: list[Figure] = []

    def both(
        name: str, scenario: Callable[[str], Values], extra: dict[str, str] | None = None
    ) -> dict[str, Figure]:
        """Run ``scenario`` for each tool; one Figure per key of its values."""
        names = {"": name, **(extra or {})}
        figs = {key: Figure(n) for key, n in names.items()}
        print(f"[{name}]", flush=True)
        for tool in opts.tools:
            values = repeat(bench, tool, partial(scenario, tool))
            for key, fig in figs.items():
                setattr(fig, tool, values.get(key))
        figures.extend(figs.values())
        return figs

    if "b" in opts.parts and "embedded" in opts.stores:
        for k in opts.ks:
            both(f"b K={k}", partial(scenario_b, bench, k=k))
    if "c" in opts.parts and "embedded" in opts.stores:
        both("c idle", partial(scenario_c, bench, mode="idle", store="embedded"))
        gloo = "c allreduce, to the survivors' gloo group re-formed at WORLD_SIZE 2"
        both(
            "c allreduce",
            partial(scenario_c, bench, mode="allreduce", store="embedded"),
            {"gloo": gloo},
        )
    if "d" in opts.parts and "embedded" in opts.stores:
        d = both("d", partial(scenario_d, bench, store="embedded", env={}))[""]
        if "torchrun" in opts.tools:
            name = "d (torchrun with TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1; corral as in d)"
            print(f"[{name}]", flush=True)
            unshared = partial(scenario_d, bench, "torchrun", "embedded", UNSHARED_STORE)
            figures.append(Figure(name, d.corral, repeat(bench, "torchrun", unshared)[""]))
    if "corral" in opts.tools:
        for store in ("etcd", "etcd3"):
            if store not in opts.stores:
                continue
            label = ("etcd-1" if store == "etcd" else "etcd-3") + (
                f" [{opts.etcd_conf}]" if opts.etcd_conf else ""
            )
            for part, title, fn in (
                ("c", "c idle", partial(scenario_c, bench, "corral", "idle", store)),
                ("d", "d", partial(scenario_d, bench, "corral", store, {})),
            ):
                if part not in opts.parts:
                    continue
                name = f"{title} {label} (corral on etcd; torchrun n/a)"
                print(f"[{name}]", flush=True)
                try:
                    value = repeat(bench, "corral", fn)[""]
                except RuntimeError as exc:  # etcd did not start
                    print(f"  corral: {exc}", flush=True)
                    value = None
                figures.append(Figure(name, corral=value))
    return figures


def _csv(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def parse_args(argv: Sequence[str] | None = None) -> Options:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--parts", default="b,c,d", help="figures to run: b, c, d (default all)")
    p.add_argument("--tools", default="corral,torchrun", help="corral, torchrun (default both)")
    p.add_argument(
        "--store",
        default="embedded,etcd,etcd3",
        help="stores for corral: embedded (c10d), etcd (1 member), etcd3 (3 members)",
    )
    p.add_argument("--ks", default="2,8,16", help="agent counts for (b)")
    p.add_argument("--reps", type=int, default=3, help="repetitions per figure (median)")
    p.add_argument(
        "--budget",
        type=float,
        default=45.0,
        help="seconds per figure and tool; no further repetition once it would be exceeded",
    )
    p.add_argument(
        "--cap",
        type=float,
        default=30.0,
        help="seconds to wait in (c idle) and (d) before null (torchrun notices a lost peer "
        "after 15 s, then does nothing)",
    )
    p.add_argument(
        "--cap-allreduce",
        type=float,
        default=90.0,
        help="seconds to wait in (c allreduce) before null",
    )
    p.add_argument(
        "--last-call", type=float, default=1.0, help="last_call_timeout for (d), both tools"
    )
    p.add_argument(
        "--victim",
        choices=("node", "agent"),
        default="node",
        help="(c) kills the agent and its workers (node, as a lost host) or the agent only",
    )
    p.add_argument(
        "--etcd-conf",
        default="",
        help="extra --rdzv-conf for corral on etcd (default none: a lost node is seen when "
        "its lease expires, keep_alive_interval x keep_alive_max_attempt = 15 s)",
    )
    p.add_argument("--keep-logs", action="store_true", help="keep agent logs in the temp dir")
    a = p.parse_args(argv)
    opts = Options(
        parts=_csv(a.parts),
        tools=_csv(a.tools),
        stores=_csv(a.store),
        ks=[int(k) for k in _csv(a.ks)],
        reps=a.reps,
        budget=a.budget,
        cap=a.cap,
        cap_allreduce=a.cap_allreduce,
        last_call=a.last_call,
        victim=a.victim,
        etcd_conf=a.etcd_conf,
        keep_logs=a.keep_logs,
    )
    for bad, allowed, what in (
        (set(opts.parts) - {"b", "c", "d"}, "b, c, d", "--parts"),
        (set(opts.tools) - set(TOOLS), "corral, torchrun", "--tools"),
        (set(opts.stores) - {"embedded", "etcd", "etcd3"}, "embedded, etcd, etcd3", "--store"),
    ):
        if bad:
            p.error(f"{what}: unknown {', '.join(sorted(bad))}; expected {allowed}")
    if opts.reps < 1 or any(k < 1 or k > 254 for k in opts.ks):
        p.error("--reps must be >= 1 and --ks within 1..254")
    return opts


def _raise_interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_interrupt)  # so that the finally below kills everything
    started = time.monotonic()
    bench = Bench(opts)
    try:
        print(
            f"bench agents: tools {','.join(opts.tools)}; parts {','.join(opts.parts)}; "
            f"stores {','.join(opts.stores)}; up to {opts.reps} reps within {opts.budget:g} s "
            f"per figure; cap {opts.cap:g} s; (c) kills the {opts.victim}; "
            f"launchers in a private netns (pid {bench.ns.anchor.pid})",
            flush=True,
        )
        figures = measure(bench)
    except KeyboardInterrupt as exc:
        print(f"interrupted ({exc or 'SIGINT'}); killing every process started", flush=True)
        return 130
    finally:
        bench.close()
    print(f"total {time.monotonic() - started:.0f} s", flush=True)
    for fig in figures:
        j = fig.as_json()
        print(f"{j['name']}: corral {j['corral']}  torchrun {j['torchrun']}  ratio {j['ratio']}")
    print(json.dumps({"bench": "agents", "figures": [f.as_json() for f in figures]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
