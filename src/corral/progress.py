"""``corral.progress``: progress marks, the worker side of hang detection (docs/hangs.md).

A worker that steps a ``torch.optim`` optimizer needs nothing: with
``--hang-timeout`` on, every optimizer step is a mark (torch's public global
hook ``torch.optim.optimizer.register_optimizer_step_post_hook``). Loops with no
optimizer (evaluation, inference, custom steps) mark progress themselves::

    import corral

    for n, batch in enumerate(loader):
        evaluate(batch)
        corral.progress()  # or corral.progress(step=n)

The module is callable (``corral.progress(...)``, or ``from corral import
progress; progress()``), imports only the standard library (never torch), and
a call costs about a microsecond. It is a no-op when the worker was not
launched by corral or hang detection is off: the agent sets
``CORRAL_PROGRESS_FILE`` only when ``--hang-timeout`` is on.

The progress file (:data:`FORMAT`, little-endian, written through a shared
mapping, read by the agent): ``marks`` (u64: marks so far, 0 = none yet),
``step`` (i64: the step of the last mark), ``time`` (f64: ``time.monotonic()``
of the last mark, the system-wide monotonic clock the agent also reads),
``pid`` (u32: the writer) and ``flags`` (u32: bit 0 set once the interpreter
has begun to exit, by an ``atexit`` handler: the teardown of a large program is
not a hang). A mark without a step counts one more than the previous step;
``step=N`` sets it.

This file must stay self-contained (standard library only): corral's injected
``sitecustomize`` loads it by path as ``corral.progress`` in interpreters that
cannot import corral itself.
"""

from __future__ import annotations

import atexit
import mmap
import os
import struct
import sys
import time
import types
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

__all__ = ["ENV", "FORMAT", "SITE_DIR", "Mark", "progress_env", "progress_file", "read_mark"]

#: The variable naming this worker's progress file (set by the agent only when detection is on).
ENV = "CORRAL_PROGRESS_FILE"
#: marks, step, monotonic time of the last mark, writer pid, flags.
FORMAT = struct.Struct("<QqdII")
EXITING = 1  # flags: the interpreter is exiting
_FILE_SIZE = 64
_TARGET = "torch.optim.optimizer"

#: The directory prepended to a worker's PYTHONPATH when detection is on: its
#: ``sitecustomize`` installs the optimizer hook (package data of corral.hangs).
SITE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hangs", "_site")


def progress_file(error_file: str) -> str:
    """A worker's progress file: ``progress`` beside its error file (its log directory)."""
    return os.path.join(os.path.dirname(error_file), "progress")


def progress_env(base_env: Mapping[str, str], error_file: str) -> dict[str, str]:
    """What hang detection adds to one worker's environment (only when it is on).

    ``CORRAL_PROGRESS_FILE`` (this worker's progress file) and ``PYTHONPATH``
    with :data:`SITE_DIR` first (the inherited value after it). The injected
    ``sitecustomize`` puts ``PYTHONPATH`` and ``sys.path`` back as they were
    before the script runs (see docs/contract.md).
    """
    inherited = base_env.get("PYTHONPATH")
    return {
        ENV: progress_file(error_file),
        "PYTHONPATH": SITE_DIR if inherited is None else SITE_DIR + os.pathsep + inherited,
    }


class Mark(NamedTuple):
    """A progress file's content (see the module docstring)."""

    marks: int
    step: int
    time: float
    pid: int
    exiting: bool


# --- the writer ---------------------------------------------------------------

_marks = 0
_step = 0
_buf: mmap.mmap | None = None
_pack = FORMAT.pack_into
_now = time.monotonic
_pid = 0


def _noop(step: int | None = None) -> None:
    return None


def _mark(step: int | None = None) -> None:
    global _marks, _step
    _step = _step + 1 if step is None else int(step)
    _marks += 1
    _pack(_buf, 0, _marks, _step, _now(), _pid, 0)  # type: ignore[arg-type]


def _first(step: int | None = None) -> None:
    """The first call: open the file named by the environment, then mark (or become a no-op)."""
    global _impl
    _impl = _mark if _open() else _noop
    _impl(step)


def _open() -> bool:
    """Map the progress file and claim it for this process; False: not ours to write.

    The worker claims its file at start-up (``_autoinstall``), so a process that
    merely inherited the variable (a data loader's spawned child, a subprocess)
    finds another live pid there and stays a no-op; forked children forget the
    mapping (``os.register_at_fork``). Progress is the worker's own.
    """
    global _buf, _pid
    path = os.environ.get(ENV)
    if not path:
        return False
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < _FILE_SIZE:
                os.ftruncate(fd, _FILE_SIZE)
            buf = mmap.mmap(fd, _FILE_SIZE)
        finally:
            os.close(fd)
        owner = FORMAT.unpack_from(buf, 0)[3]
        me = os.getpid()
        if owner not in (0, me) and _alive(owner):
            buf.close()
            return False
        if owner != me:
            _pack(buf, 0, 0, 0, 0.0, me, 0)  # claimed; no mark yet
    except (OSError, ValueError, struct.error):
        return False  # nothing is printed into the worker's output
    _buf, _pid = buf, me
    atexit.register(_at_exit)
    os.register_at_fork(after_in_child=_forget)
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _forget() -> None:
    """In a forked child: never mark (the parent's file is the parent's)."""
    global _impl, _buf
    _impl, _buf = _noop, None


def _claim() -> None:
    """Open and claim the progress file now, before the worker starts any child."""
    global _impl
    if _impl is _first:
        _impl = _mark if _open() else _noop


def _at_exit() -> None:
    global _impl
    _impl = _noop
    if _buf is not None and os.getpid() == _pid:
        try:
            _pack(_buf, 0, _marks, _step, _now(), _pid, EXITING)
        except (ValueError, OSError):
            pass


_impl: Callable[[int | None], None] = _first


def _on_optimizer_step(optimizer: Any, args: Any, kwargs: Any) -> None:
    _impl(None)


# --- installing the optimizer hook -----------------------------------------------

_hooked = False


def _register(module: types.ModuleType) -> None:
    global _hooked
    if _hooked:
        return
    register = getattr(module, "register_optimizer_step_post_hook", None)
    if register is not None:
        register(_on_optimizer_step)
        _hooked = True


class _AfterImport:
    """A meta-path finder that hooks ``torch.optim.optimizer`` right after it executes.

    It finds nothing itself: it asks the finders after it for the spec and wraps
    that loader's ``exec_module`` on its instance, so the module, its
    ``__loader__`` and its ``__spec__`` are what they would be without it. It
    removes itself once the hook is in.
    """

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != _TARGET:
            return None
        spec = None
        for finder in list(sys.meta_path):
            find = getattr(finder, "find_spec", None)
            if finder is self or find is None:
                continue
            spec = find(name, path, target)
            if spec is not None:
                break
        loader = getattr(spec, "loader", None)
        original = getattr(loader, "exec_module", None)
        if original is None:
            return spec
        _remove_finder()

        def exec_module(module: types.ModuleType) -> None:
            try:
                original(module)
            finally:
                try:
                    del loader.exec_module  # type: ignore[union-attr]
                except AttributeError:
                    pass
            if module.__name__ == _TARGET:
                try:
                    _register(module)
                except Exception:
                    pass

        try:
            loader.exec_module = exec_module  # type: ignore[union-attr]
        except (AttributeError, TypeError):
            pass
        return spec


_finder: _AfterImport | None = None


def _remove_finder() -> None:
    global _finder
    if _finder is not None:
        try:
            sys.meta_path.remove(_finder)
        except ValueError:
            pass
        _finder = None


def _autoinstall() -> None:
    """Install the optimizer-step hook when ``CORRAL_PROGRESS_FILE`` is set; never raises.

    Called by corral's injected ``sitecustomize`` (and by a pre-started worker's
    bootstrap). If ``torch.optim.optimizer`` is already imported the hook goes in
    now; otherwise a meta-path finder puts it in the moment torch imports it.
    torch itself is never imported here. Idempotent.
    """
    global _finder
    try:
        if not os.environ.get(ENV) or _hooked:
            return
        _claim()
        _allow_tracing_by_parent()
        module = sys.modules.get(_TARGET)
        if module is not None:
            _register(module)
        elif _finder is None:
            _finder = _AfterImport()
            sys.meta_path.insert(0, _finder)
    except Exception:
        pass


#: Yama's PR_SET_PTRACER (linux/prctl.h): name a process that may trace this one.
_PR_SET_PTRACER = 0x59616D61


def _allow_tracing_by_parent() -> None:
    """Under Yama's ``ptrace_scope`` 1, let the agent (the parent) and its children trace us.

    At scope 1 a process may trace only its descendants: py-spy, a child of
    the agent, could not read the worker (the agent's other child) for a stack
    dump. ``PR_SET_PTRACER`` with the agent's pid allows exactly the agent and
    its descendants. Nothing is done at any other scope (0: allowed already;
    2, 3: only CAP_SYS_PTRACE helps) or without Yama.
    """
    try:
        with open("/proc/sys/kernel/yama/ptrace_scope", "rb") as f:
            if f.read().strip() != b"1":
                return
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PTRACER, os.getppid(), 0, 0, 0)
    except (OSError, AttributeError, ValueError):
        pass


# --- the reader (the agent) ------------------------------------------------------


def read_mark(path: str) -> Mark | None:
    """The content of a progress file; None if there is no mark (and no exit) yet.

    Two equal reads in a row are taken (a mark written between them is read again),
    so a torn read is never returned.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        for _ in range(5):
            a = os.pread(fd, FORMAT.size, 0)
            b = os.pread(fd, FORMAT.size, 0)
            if a == b:
                break
        else:
            return None
    finally:
        os.close(fd)
    if len(a) < FORMAT.size:
        return None
    marks, step, when, pid, flags = FORMAT.unpack(a)
    exiting = bool(flags & EXITING)
    if marks == 0 and not exiting:
        return None
    return Mark(marks, step, when, pid, exiting)


# --- ``corral.progress(...)``: the module is callable --------------------------------


class _CallableModule(types.ModuleType):
    def __call__(self, step: int | None = None) -> None:
        """Mark progress: ``step`` (an int), or one more than the previous step."""
        _impl(step)


sys.modules[__name__].__class__ = _CallableModule
