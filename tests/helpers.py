"""Shared test helpers: start real processes, and end every one of them."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from corral.store.api import Store

CORRAL = [sys.executable, "-m", "corral"]
# the DDP training of the README's main job (real torch, gloo, checkpoints, injected faults)
EXAMPLE = str(Path(__file__).resolve().parents[1] / "examples" / "train_ddp.py")
REPO = Path(__file__).resolve().parent.parent


def private_netns(cmd: Sequence[str]) -> list[str]:
    """Run ``cmd`` in a fresh network namespace holding only ``lo``.

    torch's TCPStore reverse-resolves its peers' addresses; on a host whose
    resolver is configured but unreachable each lookup waits for the resolver's
    timeout. In a namespace with no resolver reachable that cannot stall.
    """
    return ["unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *cmd]


class Procs:
    """Starts processes in their own session and kills every one of them at teardown."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, cmd: Sequence[str], **kw: object) -> subprocess.Popen[bytes]:
        kw.setdefault("start_new_session", True)
        p: subprocess.Popen[bytes] = subprocess.Popen(list(cmd), **kw)  # type: ignore[call-overload]
        self.started.append(p)
        return p

    def cleanup(self) -> None:
        for p in self.started:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                p.kill()
            except ProcessLookupError:
                pass
        for p in self.started:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            for stream in (p.stdout, p.stderr, p.stdin):
                if stream is not None:
                    stream.close()


def gone(pid: int) -> bool:
    """``pid`` has exited (gone, or a zombie waiting for its reaper)."""
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def corral_env(**extra: str) -> dict[str, str]:
    # the tests' own environment, not the scheduler's that may run them (docs/schedulers.md)
    drop = ("PET_", "TORCHELASTIC_", "SLURM_", "SKYPILOT_", "JOB_COMPLETION_INDEX")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.pop("CORRAL_TOKEN", None)
    env.pop("KUBERNETES_SERVICE_HOST", None)
    env["PYTHONUNBUFFERED"] = "1"
    # Pre-started workers are the default; the contract runs once more without them
    # (tests/integration/workers/test_no_prestart_contract.py sets CORRAL_TEST_NO_PRESTART).
    if os.environ.get("CORRAL_TEST_NO_PRESTART"):
        env["PET_PRESTART"] = "0"
    env.update(extra)
    return env


class Hub:
    """A Unix-socket hub that workers report to, so tests await events instead of sleeping.

    A worker connects, sends one JSON line, then blocks reading: the test can
    release it with :meth:`Worker.release` (it then exits with that code) or
    leave it running until its agent stops it.
    """

    WORKER = r"""
import json, os, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(os.environ["HUB"])
keys = ("RANK", "LOCAL_RANK", "GROUP_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_WORLD_SIZE",
        "TORCHELASTIC_RESTART_COUNT", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID")
s.sendall((json.dumps({k: os.environ.get(k) for k in keys} | {"pid": os.getpid(), "argv": sys.argv[1:]}) + "\n").encode())
fail = [a for a in sys.argv[1:] if a.startswith("--fail-rank=")]
if fail and os.environ["RANK"] == fail[0].split("=")[1]:
    print(f"rank {os.environ['RANK']} fails on purpose", file=sys.stderr, flush=True)
    sys.exit(3)
data = s.recv(16)
sys.exit(int(data) if data.strip().isdigit() else 1)
"""

    def __init__(self, directory: Path) -> None:
        import socket

        self.path = str(directory / "hub.sock")
        self.script = directory / "hub_worker.py"
        self.script.write_text(self.WORKER)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(256)
        self.workers: list[HubWorker] = []

    def next(self, timeout: float = 30.0) -> HubWorker:
        """Block until the next worker reports (bounded by ``timeout``)."""
        import json

        self.sock.settimeout(timeout)
        conn, _ = self.sock.accept()
        conn.settimeout(timeout)
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = conn.recv(4096)
            if not chunk:
                break
            buf += chunk
        w = HubWorker(conn, json.loads(buf))
        self.workers.append(w)
        return w

    def collect(
        self, n: int, timeout: float = 30.0, where: Callable[[HubWorker], bool] | None = None
    ) -> list[HubWorker]:
        """The next ``n`` workers that satisfy ``where`` (others are recorded and skipped)."""
        got: list[HubWorker] = []
        while len(got) < n:
            w = self.next(timeout)
            if where is None or where(w):
                got.append(w)
        return got

    def close(self) -> None:
        for w in self.workers:
            w.conn.close()
        self.sock.close()


class HubWorker:
    def __init__(self, conn: Any, info: dict[str, Any]) -> None:
        self.conn = conn
        self.info = info

    def __getitem__(self, key: str) -> Any:
        return self.info[key]

    def release(self, code: int = 0) -> None:
        try:
            self.conn.sendall(str(code).encode())
        except OSError:
            pass


class NetNS:
    """A private network namespace holding only ``lo`` (127.0.0.0/8), made and removed by a test.

    An anchor process keeps it alive; :meth:`wrap` runs a command inside it.
    torch's TCPStore reverse-resolves peers, which cannot stall in here.
    """

    def __init__(self, procs: Procs) -> None:
        self.anchor = procs.start(
            ["unshare", "--net", "sh", "-c", "ip link set lo up && echo ready && exec sleep 3600"],
            stdout=subprocess.PIPE,
        )
        assert self.anchor.stdout is not None
        line = self.anchor.stdout.readline()
        if line.strip() != b"ready":
            raise RuntimeError("could not make a network namespace (unshare --net)")

    def wrap(self, cmd: Sequence[str]) -> list[str]:
        return ["nsenter", f"--net=/proc/{self.anchor.pid}/ns/net", "--", *cmd]


async def cancel_watch_opens(store: Store, key: str, count: int = 30) -> None:
    """Open ``count`` watches of ``key``, cancelling each after 0..5 turns of the
    event loop, so that the cancels land at every point of a watch's creation."""

    async def watch_forever() -> None:
        async with store.watch(key):
            await asyncio.Event().wait()

    for i in range(count):
        task = asyncio.create_task(watch_forever())
        for _ in range(i % 6):
            await asyncio.sleep(0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
