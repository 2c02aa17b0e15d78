"""Store throughput and watch fan-out: corral's tcp server beside torch's TCPStore.

    python bench/store.py                 # 1, 8 and 32 clients
    python bench/store.py --clients 32    # one client count (repeatable)

For each client count N: get, put and compare-and-set ops/s with N concurrent
clients, each with one request in flight, against

* corral: ``python -m corral.store.tcp.server`` (the ``corral store`` entry, as
  deployed; uvloop when importable), clients are :class:`TcpStore` connections;
* torch: ``torch.distributed.TCPStore`` (libuv server), clients are TCPStore
  objects driven by threads (its calls release the GIL). Its ``set`` is not
  answered, so a put run counts the time until a final ``get`` on each
  connection returns (every set applied); its ``get`` is a wait plus a get.

Both servers run in their own process; the N clients are spread over the same
number of client processes for both (min(N, 4)), started before the clock runs.
Then the watch fan-out: one put seen by 1,000 watchers (spread over processes),
latency from the put to each watcher's receipt (CLOCK_MONOTONIC, shared by all
processes of the machine); torch has no equivalent.

Human lines first; the last line is one JSON object (see the task's format).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from datetime import timedelta
from typing import Any

HOST = "127.0.0.1"
OPS = ("get", "put", "cas")


def _use_uvloop() -> bool:
    if os.environ.get("CORRAL_NO_UVLOOP"):
        return False
    try:
        import uvloop  # noqa: F401

        return True
    except ImportError:
        return False


def _run_async(coro: Coroutine[Any, Any, Any]) -> Any:
    if _use_uvloop():
        import uvloop

        return uvloop.run(coro)
    import asyncio

    return asyncio.run(coro)


def _loop_name() -> str:
    return "uvloop" if _use_uvloop() else "asyncio"


# --- corral ----------------------------------------------------------------------


def start_corral_server() -> tuple[subprocess.Popen[bytes], int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "corral.store.tcp.server", "--host", HOST, "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={k: v for k, v in os.environ.items() if k != "CORRAL_TOKEN"},  # no auth here
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().decode().strip()
    if not line.startswith("corral store listening on tcp://"):
        proc.kill()
        raise SystemExit(f"corral store did not start: {line!r}")
    return proc, int(line.rsplit(":", 1)[1])


def corral_clients(
    port: int, n: int, op: str, duration: float, barrier: Any, out: Any, tag: int
) -> None:
    async def main() -> None:
        import asyncio

        from corral.store.tcp.client import connect

        stores = [await connect(HOST, port, timeout=30) for _ in range(n)]
        revs = []
        for i, s in enumerate(stores):
            revs.append(await s.put(f"/bench/{tag}/{i}", b"v" * 32))
        await asyncio.to_thread(barrier.wait)
        start = time.perf_counter()
        stop = start + duration
        counts = [0] * n

        async def loop(i: int) -> None:
            s = stores[i]
            key = f"/bench/{tag}/{i}"
            c = 0
            if op == "get":
                while time.perf_counter() < stop:
                    await s.get(key)
                    c += 1
            elif op == "put":
                while time.perf_counter() < stop:
                    await s.put(key, b"w" * 32)
                    c += 1
            else:
                rev = revs[i]
                while time.perf_counter() < stop:
                    r = await s.compare_and_set(key, b"x" * 32, rev)
                    assert r.succeeded and r.kv is not None
                    rev = r.kv.mod_revision
                    c += 1
            counts[i] = c

        await asyncio.gather(*(loop(i) for i in range(n)))
        out.put((sum(counts), time.perf_counter() - start))
        for s in stores:
            await s.close()

    _run_async(main())


# --- torch -----------------------------------------------------------------------


def torch_server(q: Any, stop: Any) -> None:
    import torch.distributed as dist

    store = dist.TCPStore(HOST, 0, is_master=True, wait_for_workers=False, use_libuv=True)
    q.put(store.port)
    stop.wait()


def torch_clients(
    port: int, n: int, op: str, duration: float, barrier: Any, out: Any, tag: int
) -> None:
    import torch.distributed as dist

    stores = [
        dist.TCPStore(HOST, port, is_master=False, timeout=timedelta(seconds=30)) for _ in range(n)
    ]
    for i, s in enumerate(stores):
        s.set(f"/bench/{tag}/{i}", b"v" * 32)
    counts = [0] * n

    def loop(i: int, stop: float) -> None:
        s = stores[i]
        key = f"/bench/{tag}/{i}"
        c = 0
        if op == "get":
            while time.perf_counter() < stop:
                s.get(key)
                c += 1
        elif op == "put":
            while time.perf_counter() < stop:
                s.set(key, b"w" * 32)
                c += 1
            # TCPStore's set is not answered: count the time until the server has
            # applied them all (a get on the same connection queues behind them).
            s.get(key)
        else:
            cur, nxt = b"v" * 32, b"x" * 32
            while time.perf_counter() < stop:
                got = s.compare_set(key, cur, nxt)
                assert got == nxt
                cur, nxt = nxt, cur
                c += 1
        counts[i] = c

    barrier.wait()
    start = time.perf_counter()
    stop = start + duration
    threads = [threading.Thread(target=loop, args=(i, stop)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.put((sum(counts), time.perf_counter() - start))


# --- measurement -----------------------------------------------------------------


def measure(
    target: Callable[..., None], port: int, n: int, op: str, duration: float, tag: int
) -> float:
    ctx = mp.get_context("fork")
    nproc = min(n, 4)
    per = [n // nproc + (1 if i < n % nproc else 0) for i in range(nproc)]
    barrier = ctx.Barrier(nproc)
    out = ctx.Queue()
    procs = [
        ctx.Process(target=target, args=(port, k, op, duration, barrier, out, tag * 10 + i))
        for i, k in enumerate(per)
    ]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(60)
    # Every op counted, over the longest process's time (start to last answer).
    return sum(c for c, _ in results) / max(t for _, t in results)


def fanout_watchers(port: int, n: int, conns: int, ready: Any, rounds: int, out: Any) -> None:
    async def main() -> None:
        import asyncio
        from contextlib import AsyncExitStack

        from corral.store.tcp.client import connect

        stores = [await connect(HOST, port, timeout=30) for _ in range(conns)]
        lat: list[list[float]] = [[] for _ in range(rounds)]
        async with AsyncExitStack() as stack:
            iters = [
                await stack.enter_async_context(stores[i % conns].watch("/fan")) for i in range(n)
            ]

            async def watcher(events: Any) -> None:
                for r in range(rounds):
                    ev = await anext(events)
                    lat[r].append((time.monotonic_ns() - int(ev.kv.value)) / 1e6)

            tasks = [asyncio.ensure_future(watcher(it)) for it in iters]
            ready.put(n)
            await asyncio.gather(*tasks)
        out.put(lat)
        for s in stores:
            await s.close()

    _run_async(main())


def measure_fanout(port: int, watchers: int = 1000, rounds: int = 10) -> tuple[float, float]:
    ctx = mp.get_context("fork")
    nproc = 4
    ready, out = ctx.Queue(), ctx.Queue()
    procs = [
        ctx.Process(target=fanout_watchers, args=(port, watchers // nproc, 10, ready, rounds, out))
        for _ in range(nproc)
    ]
    for p in procs:
        p.start()
    assert sum(ready.get(timeout=120) for _ in procs) == watchers

    async def writer() -> None:
        import asyncio

        from corral.store.tcp.client import connect

        s = await connect(HOST, port, timeout=30)
        for _ in range(rounds):
            await asyncio.sleep(0.15)  # let every watcher drain the previous round
            await s.put("/fan", str(time.monotonic_ns()).encode())
        await s.close()

    _run_async(writer())
    per_round: list[list[float]] = [[] for _ in range(rounds)]
    for _ in procs:
        for r, lat in enumerate(out.get(timeout=120)):
            per_round[r].extend(lat)
    for p in procs:
        p.join(60)
    p50s = [statistics.median(r) for r in per_round]
    maxes = [max(r) for r in per_round]
    return statistics.median(p50s), statistics.median(maxes)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, action="append", help="client count (repeatable)")
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per run (default 2)")
    parser.add_argument(
        "--repeats", type=int, default=3, help="runs per figure (median; default 3)"
    )
    parser.add_argument(
        "--no-uvloop", action="store_true", help="plain asyncio for corral's server and clients"
    )
    parser.add_argument(
        "--watchers", type=int, default=1000, help="fan-out watchers (default 1000)"
    )
    args = parser.parse_args(argv)
    counts = args.clients or [1, 8, 32]
    if args.no_uvloop:
        os.environ["CORRAL_NO_UVLOOP"] = "1"  # inherited by the server and client processes

    print(f"corral event loop: {_loop_name()}; cpus: {os.cpu_count()}", flush=True)
    corral_proc, corral_port = start_corral_server()
    ctx = mp.get_context("fork")
    tq, tstop = ctx.Queue(), ctx.Event()
    tproc = ctx.Process(target=torch_server, args=(tq, tstop))
    tproc.start()
    torch_port = tq.get(timeout=120)

    figures: list[dict[str, Any]] = []
    tag = 0
    try:
        for n in counts:
            for op in OPS:
                c_runs, t_runs = [], []
                for _ in range(args.repeats):
                    tag += 1
                    c_runs.append(measure(corral_clients, corral_port, n, op, args.duration, tag))
                    tag += 1
                    t_runs.append(measure(torch_clients, torch_port, n, op, args.duration, tag))
                c, t = statistics.median(c_runs), statistics.median(t_runs)
                print(
                    f"{op:>4} x{n:<3} corral {c:>9.0f} ops/s   torch TCPStore {t:>9.0f} ops/s"
                    f"   ratio {c / t:.2f}",
                    flush=True,
                )
                figures.append(
                    {
                        "name": f"{op} ops/s, {n} clients",
                        "unit": "ops/s",
                        "corral": round(c, 1),
                        "torchrun": round(t, 1),
                        "ratio": round(c / t, 3),
                    }
                )
        p50, mx = measure_fanout(corral_port, args.watchers)
        print(f"watch fan-out to {args.watchers} watchers: p50 {p50:.1f} ms, max {mx:.1f} ms")
        for name, v in (("p50", p50), ("max", mx)):
            figures.append(
                {
                    "name": f"watch fan-out {name} latency, {args.watchers} watchers",
                    "unit": "ms",
                    "corral": round(v, 2),
                    "torchrun": None,
                    "ratio": None,
                }
            )
    finally:
        corral_proc.terminate()
        corral_proc.wait(30)
        if corral_proc.stdout is not None:
            corral_proc.stdout.close()
        tstop.set()
        tproc.join(30)
        if tproc.is_alive():
            tproc.kill()
    print(json.dumps({"bench": "store", "figures": figures}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
