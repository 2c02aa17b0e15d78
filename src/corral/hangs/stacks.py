"""Every thread's Python stack of a running worker, with no cooperation from it: py-spy.

``py-spy dump --nonblocking`` reads the interpreter's memory from outside
(``process_vm_readv``), so it also works on a process frozen by SIGSTOP and,
in most cases, on one in uninterruptible sleep. It needs the right to trace
the worker (docs/hangs.md): the same user and ``kernel.yama.ptrace_scope`` at
most 1 (the agent is the worker's parent), or ``CAP_SYS_PTRACE`` (in a
container: ``--cap-add SYS_PTRACE``). Without py-spy or that right, the dump
is replaced by a note saying why, plus the kernel's view of the process
(its state and wait channel from ``/proc``), and detection goes on unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sys
import sysconfig

__all__ = ["dump", "find_py_spy", "proc_state", "wait_channel"]

_NO_PTRACE_HINT = (
    "py-spy needs to trace the worker: same user and kernel.yama.ptrace_scope <= 1, "
    "or CAP_SYS_PTRACE (containers: --cap-add SYS_PTRACE)"
)


def find_py_spy() -> str | None:
    """The py-spy executable: on PATH, else beside this interpreter (a virtual env's bin/)."""
    found = shutil.which("py-spy")
    if found:
        return found
    for d in (os.path.dirname(sys.executable), sysconfig.get_path("scripts")):
        path = os.path.join(d, "py-spy")
        if d and os.access(path, os.X_OK):
            return path
    return None


def proc_state(pid: int) -> str:
    """The kernel's state of ``pid``, e.g. ``"S (sleeping)"``; ``""`` if it cannot be read."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("State:"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def wait_channel(pid: int) -> str:
    """The kernel function ``pid`` sleeps in (``/proc/<pid>/wchan``); ``""`` if none or unreadable."""
    try:
        with open(f"/proc/{pid}/wchan", encoding="ascii", errors="replace") as f:
            text = f.read().strip()
    except OSError:
        return ""
    return "" if text in ("0", "") else text


async def dump(
    pid: int, *, timeout: float = 2.0, py_spy: str | None = None
) -> tuple[str | None, str]:
    """Every thread's Python stack of ``pid``: (``py-spy dump`` text or None, a note).

    The note says why the stack is missing (py-spy absent, no permission, the
    process gone, a timeout) and, for a process in uninterruptible sleep or
    without a stack, the kernel's wait channel. Never raises for these.
    """
    notes: list[str] = []
    stack: str | None = None
    exe = py_spy or find_py_spy()
    if exe is None:
        notes.append("py-spy not found (pip install py-spy)")
    else:
        stack, why = await _run_py_spy(exe, pid, timeout)
        if why:
            notes.append(why)
    state = proc_state(pid)
    if stack is None or state.startswith("D"):
        wchan = wait_channel(pid)
        if wchan:
            notes.append(f"kernel wait channel: {wchan}")
    return stack, "; ".join(notes)


async def _run_py_spy(exe: str, pid: int, timeout: float) -> tuple[str | None, str]:
    try:
        proc = await asyncio.create_subprocess_exec(
            exe,
            "dump",
            "--nonblocking",
            "--full-filenames",
            "--pid",
            str(pid),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as exc:
        return None, f"py-spy could not start: {exc}"
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        return None, f"py-spy did not answer within {timeout:.0f} s"
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    text = out.decode(errors="replace")
    if proc.returncode == 0 and "Thread " in text:
        return text[text.index("Thread ") :].rstrip("\n") + "\n", ""
    message = err.decode(errors="replace").strip() or text.strip()
    first = next((ln.strip() for ln in message.splitlines() if ln.strip()), "no output")
    if "ermission" in message or "ptrace" in message.lower():
        return None, f"py-spy: {first} ({_NO_PTRACE_HINT})"
    return None, f"py-spy failed (exit {proc.returncode}): {first}"
