"""``corral health CHECK...``: the built-in node health checks (docs/health.md).

Usable on its own or as ``--health-check "corral health gpu disk:/ckpt:50G"``:

* ``gpu``: every GPU NVML lists answers, with no uncorrectable ECC error since
  the driver loaded, no row remapping pending or failed, no retired page
  pending and no recovery action the driver asks for. NVML comes from
  ``nvidia-ml-py`` (module ``pynvml``), imported here only; without the
  library or the driver, one line says so and the check passes.
* ``disk:PATH[:MIN_FREE]``: a file can be created, written, fsynced and removed
  in PATH, and PATH has at least MIN_FREE free (``50G``, ``500M``, ``4096``).
* ``tcp:HOST:PORT`` (``tcp:[::1]:PORT`` for IPv6): a connection is accepted.

Each check prints one line: the passing ones first, then the failing ones, so
that the last line printed (what ``--health-check`` shows as the reason) names
a failure. Every check is bounded by ``--timeout`` (default 10 s), even on a
hung file system: the disk I/O runs in a thread that is abandoned when it does
not answer in time. Exit 0 when every check passes, 1 otherwise, 2 on a
malformed check (one line).
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Check", "main", "parse_check", "parse_size", "run_checks"]

PROG = "corral health"
DEFAULT_TIMEOUT = 10.0
_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
USAGE = (
    f"usage: {PROG} [--timeout SECONDS] CHECK...  "
    "(CHECK: gpu | disk:PATH[:MIN_FREE] | tcp:HOST:PORT)"
)


@dataclass(frozen=True, slots=True)
class Check:
    """One parsed check: ``kind`` gpu, disk or tcp, and its arguments."""

    text: str  # as given, for the output line
    kind: str
    path: str = ""
    min_free: int = 0
    host: str = ""
    port: int = 0


class BadCheck(ValueError):
    """A malformed check: the message is the one line to print."""


def parse_size(text: str) -> int:
    """``50G``, ``500M``, ``4K``, ``1T`` (powers of 1024) or plain bytes -> bytes."""
    t = text.strip().upper()
    if t.endswith("IB"):
        t = t[:-2]
    elif t.endswith("B") and len(t) > 1 and t[-2] in _UNITS:
        t = t[:-1]
    unit = t[-1:] if t[-1:] in _UNITS and not t[-1:].isdigit() else ""
    number = t[: len(t) - len(unit)]
    try:
        value = float(number)
    except ValueError:
        raise BadCheck(f"size {text!r}: expected bytes or a number with K, M, G or T") from None
    if not value >= 0 or value == float("inf"):
        raise BadCheck(f"size {text!r}: expected bytes >= 0")
    return int(value * _UNITS[unit])


def parse_check(text: str) -> Check:
    """One ``CHECK`` argument -> :class:`Check`; raises :class:`BadCheck` with one line."""
    if text == "gpu":
        return Check(text, "gpu")
    kind, sep, rest = text.partition(":")
    if kind == "disk" and sep and rest:
        path, min_free = rest, 0
        head, sep2, tail = rest.rpartition(":")
        if sep2 and head and tail and tail[0].isdigit():  # PATH:MIN_FREE
            path, min_free = head, parse_size(tail)
        return Check(text, "disk", path=path, min_free=min_free)
    if kind == "tcp" and sep and rest:
        if rest.startswith("["):
            host, close, port_text = rest[1:].partition("]")
            if not close or not port_text.startswith(":"):
                raise BadCheck(f"check {text!r}: expected tcp:[IPV6]:PORT")
            port_text = port_text[1:]
        else:
            host, _, port_text = rest.rpartition(":")
        if not host or not port_text.isdigit() or not 0 < int(port_text) <= 65535:
            raise BadCheck(f"check {text!r}: expected tcp:HOST:PORT with a port in 1..65535")
        return Check(text, "tcp", host=host, port=int(port_text))
    raise BadCheck(f"check {text!r}: expected gpu, disk:PATH[:MIN_FREE] or tcp:HOST:PORT")


def _bounded(fn: Callable[[], str], timeout: float, what: str) -> str:
    """Run ``fn`` in a thread; raise OSError when it does not answer in ``timeout`` s.

    A thread stuck in a hung file system's system call cannot be stopped; it is
    abandoned (a daemon thread: this short-lived process exits without it).
    """
    out: list[str] = []
    err: list[BaseException] = []

    def target() -> None:
        try:
            out.append(fn())
        except BaseException as exc:  # handed to the caller
            err.append(exc)

    th = threading.Thread(target=target, name=f"health {what}", daemon=True)
    th.start()
    th.join(timeout)
    if th.is_alive():
        raise OSError(f"no answer within {timeout:g} s (a hung file system?)")
    if err:
        raise err[0]
    return out[0]


def _human(n: int) -> str:
    for unit in ("T", "G", "M", "K"):
        if n >= _UNITS[unit]:
            return f"{n / _UNITS[unit]:.1f}{unit}"
    return f"{n}B"


def check_disk(c: Check, timeout: float) -> tuple[bool, str]:
    def probe() -> str:
        if not os.path.isdir(c.path):
            raise OSError("no such directory" if not os.path.exists(c.path) else "not a directory")
        fd, name = tempfile.mkstemp(prefix=".corral-health-", dir=c.path)
        try:
            os.write(fd, b"corral health check\n")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(name)
        free = shutil.disk_usage(c.path).free
        if free < c.min_free:
            return f"only {_human(free)} free, below {_human(c.min_free)}"
        return ""

    try:
        short = _bounded(probe, timeout, c.text)
    except OSError as exc:
        return False, f"{c.text}: {exc.strerror or exc}"
    if short:
        return False, f"{c.text}: {short}"
    return True, f"{c.text}: writable, fsync ok"


def check_tcp(c: Check, timeout: float) -> tuple[bool, str]:
    try:
        with socket.create_connection((c.host, c.port), timeout=timeout):
            pass
    except TimeoutError:
        return False, f"{c.text}: no connection within {timeout:g} s"
    except OSError as exc:
        return False, f"{c.text}: {exc.strerror or exc}"
    return True, f"{c.text}: connection accepted"


def check_gpu(c: Check, timeout: float) -> tuple[bool, str]:
    try:
        import pynvml
    except ImportError:
        return True, "gpu: nvidia-ml-py is not installed: no NVIDIA GPU to check"
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:  # no library, no driver: not an NVIDIA node
        return True, f"gpu: no NVIDIA GPU here (NVML: {exc})"
    try:
        count = pynvml.nvmlDeviceGetCount()
        if count == 0:
            return True, "gpu: no NVIDIA GPU here (NVML lists none)"
        problems = [p for i in range(count) for p in _gpu_problems(i)]
    except pynvml.NVMLError as exc:
        return False, f"gpu: NVML failed: {exc}"
    finally:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            pass
    if problems:
        return False, "gpu: " + "; ".join(problems)
    return True, f"gpu: {count} GPU(s) answer; no ECC, row remapping, page or recovery issue"


def _gpu_problems(i: int) -> list[str]:
    """What is wrong with GPU ``i`` (empty: healthy); a query the GPU lacks is skipped."""
    import pynvml

    try:
        h = pynvml.nvmlDeviceGetHandleByIndex(i)
        pynvml.nvmlDeviceGetName(h)
    except pynvml.NVMLError as exc:
        return [f"GPU {i} does not answer ({exc})"]
    out: list[str] = []

    def ask(fn: Callable[[], object]) -> object:
        try:
            return fn()
        except pynvml.NVMLError_NotSupported:
            return None
        except pynvml.NVMLError as exc:
            out.append(f"GPU {i}: {exc}")
            return None

    ecc = ask(
        lambda: pynvml.nvmlDeviceGetTotalEccErrors(
            h, pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, pynvml.NVML_VOLATILE_ECC
        )
    )
    if isinstance(ecc, int) and ecc > 0:
        out.append(f"GPU {i}: {ecc} uncorrectable ECC error(s) since the driver loaded")
    rows = ask(lambda: pynvml.nvmlDeviceGetRemappedRows(h))
    if isinstance(rows, tuple) and len(rows) == 4:
        if rows[3]:
            out.append(f"GPU {i}: row remapping failed")
        elif rows[2]:
            out.append(f"GPU {i}: row remapping pending (reset the GPU)")
    pages = ask(lambda: pynvml.nvmlDeviceGetRetiredPagesPendingStatus(h))
    if pages == pynvml.NVML_FEATURE_ENABLED:
        out.append(f"GPU {i}: retired pages pending (reset the GPU)")
    field = getattr(pynvml, "NVML_FI_DEV_GET_GPU_RECOVERY_ACTION", None)
    if field is not None:
        values = ask(lambda: pynvml.nvmlDeviceGetFieldValues(h, [field]))
        if isinstance(values, list | tuple) and values and values[0].nvmlReturn == 0:
            action = int(values[0].value.uiVal)
            if action != 0:
                out.append(f"GPU {i}: the driver asks for recovery action {action}")
    return out


_RUNNERS: dict[str, Callable[[Check, float], tuple[bool, str]]] = {
    "gpu": check_gpu,
    "disk": check_disk,
    "tcp": check_tcp,
}


def run_checks(checks: list[Check], timeout: float) -> tuple[bool, list[str]]:
    """Run ``checks``; return (all passed, one line each: the passing ones first)."""
    results = [_RUNNERS[c.kind](c, timeout) for c in checks]
    lines = [line for ok, line in results if ok] + [line for ok, line in results if not ok]
    return all(ok for ok, _ in results), lines


def main(argv: list[str]) -> int:
    """``corral health [--timeout S] CHECK...``: 0 healthy, 1 unhealthy, 2 bad input."""
    args = list(argv)
    timeout = DEFAULT_TIMEOUT
    try:
        if args and args[0] in ("-h", "--help"):
            print(USAGE)
            return 0
        if args and args[0].startswith("--timeout"):
            opt = args.pop(0)
            value = opt.partition("=")[2] if "=" in opt else (args.pop(0) if args else "")
            try:
                timeout = float(value)
            except ValueError:
                timeout = -1.0
            if not 0 < timeout < float("inf"):
                raise BadCheck(f"--timeout {value!r}: expected seconds > 0")
        if not args:
            raise BadCheck(f"no check given; {USAGE}")
        checks = [parse_check(a) for a in args]
    except BadCheck as exc:
        sys.stderr.write(f"{PROG}: error: {exc}\n")
        return 2
    ok, lines = run_checks(checks, timeout)
    for line in lines:
        print(line, flush=True)
    return 0 if ok else 1
