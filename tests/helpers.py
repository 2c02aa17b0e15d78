"""Shared test helpers: start real processes, and end every one of them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

CORRAL = [sys.executable, "-m", "corral"]
REPO = Path(__file__).resolve().parent.parent


def private_netns(cmd: Sequence[str]) -> list[str]:
    """Run ``cmd`` in a fresh network namespace holding only ``lo``.

    torch's TCPStore reverse-resolves peers; in a namespace with no resolver
    reachable that cannot stall (DESIGN.md, "Two traps").
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


def corral_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PET_", "TORCHELASTIC_"))}
    env.pop("CORRAL_TOKEN", None)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env
