"""A pre-started worker (``--prestart``): the standby's own program, run by path.

    <python> -u <this file> <socket fd> <json: mode, entry, path0, imports, idle>

Self-contained (standard library only, no corral import), so that any worker
interpreter can run it. The standby:

1. sets ``sys.path[0]`` to what the worker will have (the script's directory,
   the working directory for ``-m``, ``''`` for ``--run-path``);
2. imports the ``--prestart-import`` modules that are installed (torch, ...),
   at idle CPU priority when it can come back from it (``SCHED_IDLE``), so a
   running training does not feel it; nothing rank-dependent happens;
3. writes ``R`` on the socket, then blocks until the agent's assignment: a
   JSON body (argv, orig_argv, env, cwd) and two descriptors (the attempt's
   stdout and stderr) passed with ``SCM_RIGHTS``. EOF instead: it exits 0;
4. becomes the worker exactly as ``<python> -u [-m] script args`` would start:
   its stdout/stderr ``dup2``'ed onto the attempt's (what it printed while
   importing is copied there first), the working directory, ``os.environ``
   replaced by the worker's environment, every thread bound to the assignment's
   ``cpus`` (``--numa-binding``), ``sys.argv``/``sys.orig_argv``, a fresh
   ``__main__`` module run like the interpreter runs a script (``__file__``,
   ``__loader__``, ``__spec__`` None; ``-m`` through ``runpy._run_module_as_main``;
   ``--run-path`` through torchrun's ``runpy.run_path`` bootstrap), and
   hang detection's progress hook installed when ``CORRAL_PROGRESS_FILE`` is set.
   An uncaught exception is printed without this file's frames and exits 1
   (``KeyboardInterrupt``: by SIGINT), as the interpreter does.
"""

from __future__ import annotations

import json
import os
import sys
import types
from typing import Any

_BOOT_FILE = os.path.abspath(__file__)
_SITE_DIR = os.path.join(os.path.dirname(os.path.dirname(_BOOT_FILE)), "hangs", "_site")
_PROGRESS = os.path.join(os.path.dirname(os.path.dirname(_BOOT_FILE)), "progress.py")
_interrupted = False


def _probe_idle() -> bool:
    """True when this process may go to SCHED_IDLE and come back (tried on a spare thread)."""
    if not hasattr(os, "sched_setscheduler") or not hasattr(os, "SCHED_IDLE"):
        return False
    import threading

    ok: list[bool] = []

    def probe() -> None:
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
            ok.append(True)
        except OSError:
            pass

    t = threading.Thread(target=probe)
    t.start()
    t.join()
    return bool(ok)


def _autogroup_nice(nice: int) -> bool:
    """Set this session's autogroup nice value (Linux with autogroup; False elsewhere).

    The standby leads its own session, hence its own autogroup, and the kernel
    shares CPU fairly *between* autogroups whatever the policy of the threads
    inside: SCHED_IDLE alone does not yield to the workers' sessions. Raising
    the value needs no privilege, nor does lowering it back to 0 (only values
    below 0 do); unprivileged writes are limited to one every 100 ms machine
    wide, so EAGAIN is retried.
    """
    import time

    for _ in range(300):
        try:
            with open("/proc/self/autogroup", "w") as f:
                f.write(str(nice))
            return True
        except BlockingIOError:  # EAGAIN: another write within 100 ms
            time.sleep(0.01)
        except OSError:
            return False
    return False


def _set_policy(policy: int, all_threads: bool) -> None:
    tids = [0]
    if all_threads:
        try:
            tids = [int(t) for t in os.listdir("/proc/self/task")]
        except OSError:
            pass
    for tid in tids:
        try:
            os.sched_setscheduler(tid, policy, os.sched_param(0))
        except OSError:
            pass


def _restore_on_assignment(fd: int, grouped: bool) -> Any:
    """A helper thread: once the assignment arrives, every thread leaves SCHED_IDLE.

    The main thread may still be importing (an assignment that came early): it
    must not go on at idle priority. The thread ends there (or at EOF).
    """
    import select
    import threading

    def watch() -> None:
        try:
            select.select([fd], [], [])
        except (OSError, ValueError):
            pass
        _set_policy(os.SCHED_OTHER, all_threads=True)
        if grouped:
            _autogroup_nice(0)

    t = threading.Thread(target=watch, name="corral-standby", daemon=True)
    t.start()
    return t


def _read_all(fd: int) -> bytes:
    """The file behind ``fd`` from its start (pread: a zygote's forks share the offset)."""
    chunks = []
    offset = 0
    while True:
        try:
            chunk = os.pread(fd, 1 << 16, offset)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _zygote(ctrl_fd: int, agent_pid: int) -> int:
    """Fork a standby for each request of the agent; returns (in a fork) the fork's socket.

    A request is one byte with a socket descriptor (``SCM_RIGHTS``). The fork
    forks again and its middle process exits, so the standby is re-parented
    to the agent (a child subreaper): it leads its own session, arms
    PDEATHSIG once the agent is its parent, and reseeds the random generators
    that would otherwise repeat the zygote's. EOF on the control socket: exit.
    """
    import socket

    ctrl = socket.socket(fileno=ctrl_fd)
    _write_all(ctrl_fd, b"R%d\n" % os.getpid())
    while True:
        try:
            _msg, fds, _flags, _addr = socket.recv_fds(ctrl, 1, 1)
        except InterruptedError:
            continue
        except OSError:
            os._exit(0)
        if not _msg:
            os._exit(0)
        if not fds:
            continue
        middle = os.fork()
        if middle == 0:
            try:
                if os.fork() != 0:
                    os._exit(0)
                ctrl.close()
                os.setsid()
                if _adopted(agent_pid):
                    _reseed()
                    return fds[0]
            except BaseException:
                pass
            os._exit(70)
        os.close(fds[0])
        try:
            os.waitpid(middle, 0)
        except ChildProcessError:
            pass


def _adopted(agent_pid: int) -> bool:
    """Wait to be re-parented to the agent, then die with it (PDEATHSIG)."""
    import ctypes
    import time

    deadline = time.monotonic() + 5.0
    while os.getppid() != agent_pid:
        if time.monotonic() > deadline or os.getppid() == 1:
            return False  # the agent is not a subreaper, or is gone
        time.sleep(0.001)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, 9, 0, 0, 0)  # PR_SET_PDEATHSIG, SIGKILL
    return os.getppid() == agent_pid


def _reseed() -> None:
    """Fresh random state, as a freshly started interpreter would have (``random`` reseeds itself)."""
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            torch.seed()
        except Exception:
            pass
    np_random = sys.modules.get("numpy.random")
    if np_random is not None:
        try:
            np_random.seed()
        except Exception:
            pass


def _write_all(fd: int, data: bytes) -> None:
    while data:
        try:
            n = os.write(fd, data)
        except InterruptedError:
            continue
        except OSError:
            return
        data = data[n:]


def _receive(fd: int) -> tuple[dict[str, Any], list[int]] | None:
    import socket

    sock = socket.socket(fileno=fd)
    try:
        head, fds, _flags, _addr = socket.recv_fds(sock, 4, 2)
        while head and len(head) < 4:
            more = sock.recv(4 - len(head))
            if not more:
                return None
            head += more
        if len(head) < 4 or len(fds) != 2:
            return None
        size = int.from_bytes(head, "little")
        body = b""
        while len(body) < size:
            chunk = sock.recv(size - len(body))
            if not chunk:
                return None
            body += chunk
    except OSError:
        return None
    finally:
        sock.close()
    return json.loads(body), list(fds)


def _progress_hook() -> None:
    """What hang detection's sitecustomize does in a fresh worker (docs/hangs.md)."""
    pythonpath = os.environ.get("PYTHONPATH")
    if pythonpath == _SITE_DIR:
        del os.environ["PYTHONPATH"]
    elif pythonpath is not None and pythonpath.startswith(_SITE_DIR + os.pathsep):
        os.environ["PYTHONPATH"] = pythonpath[len(_SITE_DIR) + 1 :]
    if not os.environ.get("CORRAL_PROGRESS_FILE"):
        return
    try:
        module = sys.modules.get("corral.progress")
        if module is None:
            import importlib.util

            spec = importlib.util.spec_from_file_location("corral.progress", _PROGRESS)
            if spec is None or spec.loader is None:
                return
            module = importlib.util.module_from_spec(spec)
            sys.modules["corral.progress"] = module
            try:
                spec.loader.exec_module(module)
            except BaseException:
                sys.modules.pop("corral.progress", None)
                raise
        module._autoinstall()
    except (ImportError, AttributeError, OSError):
        pass


def _fresh_main(loader: object) -> types.ModuleType:
    import builtins

    main = types.ModuleType("__main__")
    main.__dict__.update(
        {"__builtins__": builtins, "__annotations__": {}, "__loader__": loader, "__spec__": None}
    )
    sys.modules["__main__"] = main
    return main


def _run(mode: str, entry: str, run_path_code: str) -> None:
    if mode == "module":
        import runpy

        _fresh_main(None)
        runpy._run_module_as_main(entry, alter_argv=True)  # type: ignore[attr-defined]
    elif mode == "run_path":
        import _frozen_importlib

        main = _fresh_main(_frozen_importlib.BuiltinImporter)
        exec(compile(run_path_code, "<string>", "exec"), main.__dict__)
    else:
        import io
        from importlib.machinery import SourceFileLoader

        path = os.path.abspath(entry)
        main = _fresh_main(SourceFileLoader("__main__", path))
        main.__dict__.update({"__file__": path, "__cached__": None})
        with io.open_code(path) as f:
            source = f.read()
        code = compile(source, path, "exec", dont_inherit=True)
        exec(code, main.__dict__)


def _bind_cpus(cpus: list[int] | None) -> None:
    """``--numa-binding``: bind every thread of this process to ``cpus``, as torch's
    ``_bind_all_threads_in_current_process_to_logical_cpus`` does: the main thread,
    then each thread whose affinity was the main thread's (one set elsewhere is kept).
    """
    if cpus is None:
        return
    before = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, cpus)
    except OSError as exc:
        sys.stderr.write(f"corral: --numa-binding: cannot bind to CPUs {cpus}: {exc}\n")
        sys.stderr.flush()
        os._exit(1)
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return
    for tid in tids:
        try:
            if os.sched_getaffinity(int(tid)) == before:
                os.sched_setaffinity(int(tid), cpus)
        except (ValueError, OSError):  # the thread ended meanwhile
            pass


def _at_exit() -> None:  # registered first, so it runs last (as the interpreter's own exit)
    if _interrupted:
        import signal

        sys.stdout.flush()
        sys.stderr.flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)


def _sizes() -> tuple[int, int]:
    """How much this process has written to stdout and stderr so far (files before the assignment)."""
    sys.stdout.flush()
    sys.stderr.flush()
    sizes = []
    for std in (1, 2):
        try:
            sizes.append(os.fstat(std).st_size)
        except OSError:
            sizes.append(0)
    return sizes[0], sizes[1]


#: Device nodes of GPU runtimes: one open means a device context exists.
_DEVICE_NODES = ("/dev/nvidia", "/dev/kfd", "/dev/dri/", "/dev/accel", "/dev/neuron")


def _device_runtime() -> str:
    """Why this process already holds a device runtime (CUDA, NCCL, ...); empty if it does not.

    A standby must never hold a GPU context before its assignment: it would pin
    memory on a device that is not yet its own, and CUDA does not survive a fork.
    """
    torch = sys.modules.get("torch")
    cuda = getattr(torch, "cuda", None) if torch is not None else None
    if cuda is not None:
        try:
            if cuda.is_initialized():
                return "torch.cuda is initialized"
        except Exception:
            pass
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return ""
    for name in fds:
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if target.startswith(_DEVICE_NODES):
            return f"{target} is open"
    return ""


def _split_held(
    early: bytes, index: int, marks: list[tuple[str, tuple[int, int], tuple[int, int]]]
) -> tuple[bytes, dict[str, bytes]]:
    """``early`` (stream ``index``: 0 stdout, 1 stderr) cut into what is shown at once
    (printed outside any import) and what each pre-imported package printed."""
    held: dict[str, bytes] = {}
    shown: list[bytes] = []
    pos = 0
    for top, before, after in marks:
        start, end = before[index], after[index]
        if end <= start:
            continue
        shown.append(early[pos:start])
        held[top] = held.get(top, b"") + early[start:end]
        pos = end
    shown.append(early[pos:])
    return b"".join(shown), held


def _hold(held: dict[str, list[bytes]]) -> None:
    """Show what a pre-imported package printed only when the worker imports it.

    A fresh worker prints a package's import-time output (torch's warnings) at
    its ``import``: the held text is written at the worker's first ``import``
    of that package (or of anything under it), and never for a worker that
    does not import it. The hook on ``__import__`` is removed once nothing is
    held.
    """
    pending = {top: parts for top, parts in held.items() if any(parts)}
    if not pending:
        return
    import builtins

    original = builtins.__import__

    def hooked(
        name: str,
        globals: Any = None,
        locals: Any = None,
        fromlist: Any = (),
        level: int = 0,
    ) -> Any:
        if level == 0:
            parts = pending.pop(name.partition(".")[0], None)
            if parts is not None:
                sys.stdout.flush()
                sys.stderr.flush()
                for std, data in zip((1, 2), parts, strict=True):
                    if data:
                        _write_all(std, data)
                if not pending and builtins.__import__ is hooked:
                    builtins.__import__ = original
        return original(name, globals, locals, fromlist, level)

    builtins.__import__ = hooked


def _early_error_file(exc: BaseException, tb: Any) -> None:
    """The worker's error file, written the moment an uncaught exception reaches the top.

    torch's ``record`` format, so the agent knows the failure (and its root
    cause text) before the interpreter's and the libraries' teardown, which
    can take a second (gloo). A file ``record`` already wrote is kept.
    """
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path or os.path.exists(path):
        return
    try:
        import time
        import traceback

        data = {
            "message": {
                "message": f"{type(exc).__name__}: {exc}",
                "extraInfo": {
                    "py_callstack": "".join(traceback.format_exception(type(exc), exc, tb)),
                    "timestamp": str(int(time.time())),
                },
            }
        }
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(data, f)
        os.replace(tmp, path)  # the agent never reads half a file
    except Exception as exc:  # the agent still sees the exit, later: say why it waited
        sys.stderr.write(f"corral: the error file {path} could not be written: {exc!r}\n")


def main() -> None:
    global _interrupted
    fd = int(sys.argv[1])
    conf = json.loads(sys.argv[2])
    zygote = bool(conf.get("zygote"))
    sys.path[0] = conf["path0"]
    idle = bool(conf.get("idle")) and _probe_idle()
    grouped = False
    watcher = None
    if idle:
        _set_policy(os.SCHED_IDLE, all_threads=False)  # threads started by imports inherit it
        grouped = _autogroup_nice(19)
        if not zygote:
            watcher = _restore_on_assignment(fd, grouped)
    import importlib
    import importlib.util

    # (package, (stdout, stderr) sizes before, after): what each import printed
    marks: list[tuple[str, tuple[int, int], tuple[int, int]]] = []
    for name in conf["imports"]:
        before = _sizes()
        try:
            if importlib.util.find_spec(name) is not None:
                importlib.import_module(name)
        except Exception:  # the worker meets the same error itself, in its own logs
            pass
        marks.append((name.partition(".")[0], before, _sizes()))
    problem = _device_runtime()
    if problem:  # the agent turns pre-starting off and spawns workers fresh
        _write_all(fd, b"X%s\n" % " ".join(problem.split()).encode(errors="replace"))
        os._exit(3)
    if zygote:
        if idle:  # done importing: its forks start at normal priority
            _set_policy(os.SCHED_OTHER, all_threads=True)
            if grouped:
                _autogroup_nice(0)
        fd = _zygote(fd, int(conf["agent_pid"]))  # returns in each fork: a standby
    held_bytes = sum(a[0] - b[0] + a[1] - b[1] for _, b, a in marks)
    try:
        if held_bytes:  # counted in the agent's debug log
            tops = ",".join(sorted({m[0] for m in marks if m[2] != m[1]}))
            os.write(fd, b"H%d %s\n" % (held_bytes, tops.encode()))
        os.write(fd, b"R%d\n" % os.getpid())
    except OSError:  # the assignment may be waiting already (the agent closed its end)
        pass
    got = _receive(fd)
    if got is None:  # the agent let the standby go (or died)
        os._exit(0)
    msg, fds = got
    if watcher is not None:
        watcher.join()  # it restored every thread's policy and ended
        _set_policy(os.SCHED_OTHER, all_threads=True)
    sys.stdout.flush()
    sys.stderr.flush()
    held: dict[str, list[bytes]] = {}
    for index, (std, new) in enumerate(zip((1, 2), fds, strict=True)):
        shown, by_package = _split_held(_read_all(std), index, marks)
        for top, data in by_package.items():
            held.setdefault(top, [b"", b""])[index] += data
        os.dup2(new, std)
        os.close(new)
        if shown:
            _write_all(std, shown)
    os.chdir(str(msg["cwd"]))
    os.environ.clear()
    os.environ.update(msg["env"])
    _bind_cpus(msg.get("cpus"))
    sys.argv[:] = msg["argv"]
    if hasattr(sys, "orig_argv"):
        sys.orig_argv[:] = msg["orig_argv"]
    _progress_hook()
    import atexit

    atexit.register(_at_exit)
    _hold(held)
    try:
        _run(str(conf["mode"]), str(conf["entry"]), str(conf.get("run_path_code", "")))
    except SystemExit:
        raise
    except BaseException as exc:
        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename == _BOOT_FILE:
            tb = tb.tb_next
        exc = exc.with_traceback(tb)
        if isinstance(exc, Exception):  # what torch's record writes (not KeyboardInterrupt)
            _early_error_file(exc, tb)
        _interrupted = isinstance(exc, KeyboardInterrupt)
        sys.excepthook(type(exc), exc, tb)
        del exc, tb
        sys.exit(1)


if __name__ == "__main__":
    main()
