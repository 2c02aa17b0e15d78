"""Rendezvous at scale: K simulated nodes in one process until every node has its rank.

corral's DynamicRendezvous over the embedded tcp store (a ``corral store``
server in a subprocess, K nodes sharing a few client connections), beside
torch's DynamicRendezvousHandler (c10d backend over a TCPStore, one thread per
node, in a subprocess with a time limit per K).

    python bench/rendezvous.py [--nodes 16 64 ...] [--store tcp://H:P] [--reps 3]

Prints human lines, then last one JSON line, always (a K whose run fails is
recorded with ``"corral": null`` and its error, and the next K is tried):
``{"bench": "rendezvous", "figures": [{"name": "K=16", "unit": "s", "corral": s_or_null,
"torchrun": s_or_null, "ratio": corral/torchrun_or_null}]}``.

``--backends embedded,etcd,etcd3`` also runs corral over a real etcd (one member,
and a 3-member cluster) started here; those figures compare with the embedded
store (``ratio`` = etcd/embedded; torch has no etcd v3 rendezvous). The
stores' runs alternate, each after a pause of SETTLE seconds (see ``_run``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

from corral.config import RendezvousOptions, StoreOptions
from corral.core.aio import task_scope
from corral.core.model import NodeDesc
from corral.rendezvous.dynamic import DynamicRendezvous
from corral.store.api import Store
from corral.store.registry import open_store

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DEFAULT_K = [16, 64, 256, 1024, 4096]
NODES_PER_CONNECTION = 32  # each connection carries every watch event of its nodes
FREEZE_GC = True  # see _once; --no-gc-freeze
GC_OFF = False  # see _once; --gc-off
#: pause before each run: what the last run left to do (etcd revoking its
#: leases, committing, collecting) is done before the next one starts
SETTLE = 0.5


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 1 << 16
    if soft < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


_SERVER_CHILD = r"""
import asyncio, logging
logging.basicConfig(level=logging.WARNING)
from corral.store.tcp.server import StoreServer, ServerLimits
async def main():
    s = StoreServer(limits=ServerLimits(max_connections=4096))
    await s.start("127.0.0.1", 0)
    print("listening on tcp://%s:%d" % s.address, flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


@contextlib.contextmanager
def corral_server() -> Iterator[tuple[str, int]]:
    """A ``corral store`` server on a free loopback port, in a subprocess."""
    # The server runs on the default asyncio loop, as an embedded store in an agent does.
    proc = subprocess.Popen(
        [sys.executable, "-c", _SERVER_CHILD],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if "listening on" not in line:
            raise RuntimeError(f"store server did not start: {line!r}")
        addr = line.rsplit(" ", 1)[-1].strip().removeprefix("tcp://")
        host, _, port = addr.rpartition(":")
        yield host.strip("[]"), int(port)
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def corral_once(url: str, k: int) -> float:
    """K nodes over the store at ``url`` (``tcp://`` embedded store, or ``etcd://``)."""
    conns: list[Store] = []
    n_conns = max(1, -(-k // NODES_PER_CONNECTION))
    for _ in range(n_conns):
        conns.append(await open_store(url, timeout=30))
    run_id = f"bench-{uuid.uuid4().hex[:8]}"
    conf = RendezvousOptions(join_timeout=120)
    async with task_scope() as tasks:  # the nodes' keep-alives (as in an agent run's group)
        nodes = [
            DynamicRendezvous(
                conns[i % n_conns],
                run_id=run_id,
                node=NodeDesc(f"node{i}", "127.0.0.1", 8),
                min_nodes=k,
                max_nodes=k,
                max_restarts=0,
                conf=conf,
                store_conf=StoreOptions(read_timeout=60),
                tasks=tasks,
            )
            for i in range(k)
        ]
        t0 = time.perf_counter()
        infos = await asyncio.gather(*(n.join() for n in nodes))
        elapsed = time.perf_counter() - t0
        ranks = sorted(i.group_rank for i in infos)
        if ranks != list(range(k)):
            raise RuntimeError(f"K={k}: ranks are not 0..{k - 1}")
        await asyncio.gather(*(n.close() for n in nodes))
    for c in conns:
        await c.close()
    return elapsed


_TORCH_CHILD = r"""
import sys, threading, time, logging
logging.disable(logging.CRITICAL)
from datetime import timedelta
from torch.distributed import TCPStore
from torch.distributed.elastic.rendezvous.dynamic_rendezvous import (
    DynamicRendezvousHandler, RendezvousTimeout)
from torch.distributed.elastic.rendezvous.c10d_rendezvous_backend import C10dRendezvousBackend
k = int(sys.argv[1])
master = TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
port = master.port
handlers = []
for i in range(k):
    # one client per node, as with real agents
    st = TCPStore("127.0.0.1", port, is_master=False, timeout=timedelta(seconds=300))
    backend = C10dRendezvousBackend(st, "bench")
    handlers.append(DynamicRendezvousHandler.from_backend(
        "bench", st, backend, min_nodes=k, max_nodes=k, local_addr=f"127.0.0.{1 + i % 250}",
        timeout=RendezvousTimeout(join=timedelta(seconds=600))))
done = []
def run(h):
    h.next_rendezvous()
    done.append(1)
threads = [threading.Thread(target=run, args=(h,), daemon=True) for h in handlers]
t0 = time.perf_counter()
for t in threads:
    t.start()
for t in threads:
    t.join()
print("ELAPSED", time.perf_counter() - t0, len(done), flush=True)
import os
os._exit(0)
"""


def torch_once(k: int, limit: float) -> float | None:
    """torch's rendezvous of K nodes in a subprocess; None when it does not finish in time."""
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _TORCH_CHILD, str(k)],
            capture_output=True,
            text=True,
            timeout=limit,
            env={**os.environ, "TORCH_CPP_LOG_LEVEL": "ERROR"},
        )
    except subprocess.TimeoutExpired:
        return None
    for line in proc.stdout.splitlines():
        if line.startswith("ELAPSED"):
            _, secs, n = line.split()
            return float(secs) if int(n) == k else None
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, nargs="+", default=DEFAULT_K)
    ap.add_argument("--store", default="", help="tcp://host:port of a running corral store")
    ap.add_argument("--reps", type=int, default=3, help="repetitions per K (median reported)")
    ap.add_argument("--torch-limit", type=float, default=60.0, help="seconds per torch run")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument(
        "--backends",
        default="embedded",
        help="comma list of embedded, etcd (one member), etcd3 (3-member cluster): corral over "
        "each store; the etcd figures are named 'K=.. etcd' and compare with the embedded store",
    )
    ap.add_argument(
        "--no-gc-freeze",
        action="store_true",
        help="do not freeze the objects made before each run (see _once)",
    )
    ap.add_argument(
        "--gc-off",
        action="store_true",
        help="run each K with the garbage collector off: the protocol's own scaling (see _once)",
    )
    args = ap.parse_args(argv)
    global FREEZE_GC, GC_OFF
    FREEZE_GC = not args.no_gc_freeze
    GC_OFF = args.gc_off
    _raise_nofile()
    figures: list[dict[str, object]] = []
    try:
        _run(args, figures)
    finally:
        # Last line, whatever happened above.
        print(json.dumps({"bench": "rendezvous", "figures": figures}), flush=True)
    return 0


def _once(url: str, k: int) -> float:
    """One run of K nodes over ``url``, with the objects made so far frozen.

    The K simulated nodes share one interpreter. CPython runs a full garbage
    collection when the long-lived objects have grown by a quarter: K nodes'
    state does that several times per run, and each pass rescans every
    imported module (grpc and protobuf for etcd); one agent's state, alone in
    its process, never does. Each run therefore starts with the objects made
    so far frozen (``gc.freeze``; the collector still runs on everything the
    run allocates). Same for every store; ``--no-gc-freeze`` measures without.

    Even so, the collector's passes over what the K nodes allocate grow with K
    in this one process, and make the figures grow faster than K (K = 1024 to
    4096: about 6.5x). ``--gc-off`` runs with the collector off: what is left is
    the protocol's and the store's own work, about linear (about 3.9x), which
    is what a node alone in its process sees.
    """
    time.sleep(SETTLE)
    if FREEZE_GC:
        gc.collect()
        gc.freeze()
    if GC_OFF:
        gc.disable()
    try:
        return asyncio.run(corral_once(url, k))
    finally:
        gc.enable()
        gc.unfreeze()


@dataclass
class _Series:
    """The runs of one store at one K; a failed run ends the series with its error."""

    times: list[float] = field(default_factory=list)
    error: str = ""

    def run(self, url: str, k: int) -> None:
        if self.error:
            return
        try:
            self.times.append(_once(url, k))
        except Exception as exc:  # a failed K is recorded, the bench goes on
            self.error = f"{type(exc).__name__}: {exc}"[:300]

    @property
    def median(self) -> float | None:
        return statistics.median(self.times) if self.times and not self.error else None


@contextlib.contextmanager
def etcd_url(members: int) -> Iterator[str]:
    """A real etcd (1 or 3 members) on loopback ports, started and removed here."""
    sys.path.insert(0, REPO)
    from tests.etcd_fixtures import start_cluster

    cluster = start_cluster(members)
    try:
        yield cluster.url(prefix=f"/bench-{uuid.uuid4().hex[:6]}")
    finally:
        cluster.stop()


def _run(args: argparse.Namespace, figures: list[dict[str, object]]) -> None:
    """Every store is up for the whole bench, and their runs alternate (embedded,
    etcd, etcd3, embedded, ...): a machine that is slower for a while (a busy
    neighbour, a throttled core) slows every store alike, not the one measured
    then. The idle etcd clusters cost a few percent of one core meanwhile."""
    members_of = {"embedded": 0, "etcd": 1, "etcd3": 3}
    backends = ["embedded"]
    for b in (b.strip() for b in args.backends.split(",")):
        if b and b not in members_of:
            print(f"unknown backend {b!r} (embedded, etcd, etcd3)", flush=True)
        elif b and b not in backends:
            backends.append(b)
    with contextlib.ExitStack() as stack:
        urls: dict[str, str] = {}
        if args.store:
            urls["embedded"] = args.store
        else:
            host, port = stack.enter_context(corral_server())
            urls["embedded"] = f"tcp://{host}:{port}"
        down: dict[str, str] = {}  # a store that did not start: its error, for every K
        for b in backends[1:]:
            try:
                urls[b] = stack.enter_context(etcd_url(members_of[b]))
            except Exception as exc:
                down[b] = f"{b} did not start: {type(exc).__name__}: {exc}"[:300]
                print(down[b], flush=True)
        torch_gave_up = False
        for k in args.nodes:
            series = {b: _Series(error=down.get(b, "")) for b in backends}
            for _ in range(args.reps):
                for b in backends:
                    if b in urls:
                        series[b].run(urls[b], k)
            emb = series["embedded"]
            ours = emb.median
            theirs: float | None = None
            note = "skipped"
            if not args.no_torch and not torch_gave_up:
                theirs = torch_once(k, args.torch_limit)
                note = "timeout" if theirs is None else f"{theirs:.3f} s"
                torch_gave_up = theirs is None
            elif torch_gave_up:
                note = "skipped (timed out at a smaller K)"
            ratio = round(ours / theirs, 4) if theirs and ours is not None else None
            mine = f"{ours:.3f} s" if ours is not None else f"FAILED ({emb.error})"
            print(
                f"K={k}: corral {mine} (runs {', '.join(f'{t:.3f}' for t in emb.times)}); "
                f"torch {note}" + (f"; corral/torch {ratio}" if ratio else ""),
                flush=True,
            )
            fig: dict[str, object] = {
                "name": f"K={k}",
                "unit": "s",
                "corral": round(ours, 4) if ours is not None else None,
                "torchrun": round(theirs, 4) if theirs is not None else None,
                "ratio": ratio,
            }
            if emb.error:
                fig["error"] = emb.error
            figures.append(fig)
            for b in backends[1:]:
                s = series[b]
                med = s.median
                eratio = round(med / ours, 4) if med is not None and ours else None
                print(
                    f"K={k} on {b}: corral "
                    + (f"{med:.3f} s" if med is not None else f"FAILED ({s.error})")
                    + (f" (runs {', '.join(f'{t:.3f}' for t in s.times)})" if s.times else "")
                    + (f"; etcd/embedded {eratio}" if eratio else ""),
                    flush=True,
                )
                efig: dict[str, object] = {
                    # compares corral on etcd with corral on the embedded store (no torch here)
                    "name": f"K={k} {b} vs embedded",
                    "unit": "s",
                    "corral": round(med, 4) if med is not None else None,
                    "torchrun": None,
                    "ratio": eratio,
                    "embedded": round(ours, 4) if ours else None,
                }
                if s.error:
                    efig["error"] = s.error
                figures.append(efig)


if __name__ == "__main__":
    sys.exit(main())
