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


def main() -> None:
    global _interrupted
    fd = int(sys.argv[1])
    conf = json.loads(sys.argv[2])
    sys.path[0] = conf["path0"]
    idle = bool(conf.get("idle")) and _probe_idle()
    if idle:
        _set_policy(os.SCHED_IDLE, all_threads=False)  # threads started by imports inherit it
        grouped = _autogroup_nice(19)
        watcher = _restore_on_assignment(fd, grouped)
    import importlib
    import importlib.util

    for name in conf["imports"]:
        try:
            if importlib.util.find_spec(name) is not None:
                importlib.import_module(name)
        except Exception:  # the worker meets the same error itself, in its own logs
            pass
    if conf.get("zygote"):
        fd = _zygote(fd, int(conf["agent_pid"]))  # returns in each fork: a standby
    try:
        os.write(fd, b"R%d\n" % os.getpid())
    except OSError:  # the assignment may be waiting already (the agent closed its end)
        pass
    got = _receive(fd)
    if got is None:  # the agent let the standby go (or died)
        os._exit(0)
    msg, fds = got
    if idle:
        watcher.join()  # it restored every thread's policy and ended
        _set_policy(os.SCHED_OTHER, all_threads=True)
    sys.stdout.flush()
    sys.stderr.flush()
    for std, new in zip((1, 2), fds, strict=True):
        early = _read_all(std)
        os.dup2(new, std)
        os.close(new)
        if early:
            _write_all(std, early)
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
    try:
        _run(str(conf["mode"]), str(conf["entry"]), str(conf.get("run_path_code", "")))
    except SystemExit:
        raise
    except BaseException as exc:
        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename == _BOOT_FILE:
            tb = tb.tb_next
        exc = exc.with_traceback(tb)
        _interrupted = isinstance(exc, KeyboardInterrupt)
        sys.excepthook(type(exc), exc, tb)
        del exc, tb
        sys.exit(1)


if __name__ == "__main__":
    main()
