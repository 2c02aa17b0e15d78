"""One standby, as the agent holds it: the agent's end of its socket, and the hand-off.

The standby's side is :mod:`corral.workers._standby_boot`; the pool that
starts, watches and reaps standbys is :class:`corral.workers.standby.StandbyPool`.
:meth:`Standby.assign` sends the worker's argv, environment and working
directory, and ``--numa-binding``'s CPUs (JSON, after a 4-byte length) with
its stdout/stderr descriptors (SCM_RIGHTS); the standby then becomes that worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from collections.abc import Mapping

from corral.workers.prestart import Proc

__all__ = ["Standby"]

log = logging.getLogger(__name__)


class Standby:
    """One standby (its pid once known) and the agent's end of its socket."""

    def __init__(self, sock: socket.socket, marker: str, proc: Proc | None = None) -> None:
        self.sock = sock
        self.marker = marker
        self.proc = proc
        self.ready = False
        self.dead = False
        self.pidfd: int | None = None
        self.known = asyncio.Event()  # the pid is known (a zygote's fork says it)
        self._buf = b""
        #: ``"<bytes> <packages>"``: what it printed while importing, shown only if
        #: the worker imports those packages (``_standby_boot._hold``)
        self.held = ""
        if proc is not None:
            self.known.set()

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc is not None else 0

    def assign(
        self,
        *,
        argv: list[str],
        orig_argv: list[str],
        env: Mapping[str, str],
        cwd: str,
        out_fd: int,
        err_fd: int,
        cpus: frozenset[int] | None = None,
        timeout: float = 5.0,
    ) -> bool:
        """Hand the standby its worker; False if it cannot take it (it died).

        ``cpus``: ``--numa-binding``'s CPUs, which every thread of the standby is
        bound to before the worker's code runs (None: left as they are).
        """
        if self.dead:
            return False
        body = json.dumps(
            {
                "argv": argv,
                "orig_argv": orig_argv,
                "env": dict(env),
                "cwd": cwd,
                "cpus": None if cpus is None else sorted(cpus),
            }
        ).encode()
        try:
            self.sock.settimeout(timeout)
            socket.send_fds(self.sock, [len(body).to_bytes(4, "little")], [out_fd, err_fd])
            self.sock.sendall(body)
        except OSError as exc:
            log.info("standby %d could not take its assignment: %s", self.pid, exc)
            return False
        finally:
            self.sock.close()
        return True

    def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(OSError):
                os.killpg(self.proc.pid, 9)  # unreaped: the group id is still the standby's
        self.sock.close()
