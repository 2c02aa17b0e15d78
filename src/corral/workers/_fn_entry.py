"""``python -m corral.workers._fn_entry <payload>``: run a pickled function as one worker.

What :func:`corral.launch` starts for a function entrypoint (``start_method``
``spawn``: a fresh interpreter per worker). The payload file, written by the
launching process on the same machine and readable only by its user, holds two
pickles: ``multiprocessing.spawn.get_preparation_data`` (so that a function
defined in the caller's ``__main__`` can be found, exactly as with
multiprocessing's spawn: the main module is re-imported as ``__mp_main__``,
hence the ``if __name__ == "__main__":`` guard) and then ``(fn, args)``.

The worker writes:

* on success, ``pickle.dumps(return value)`` to ``result.pkl`` beside its
  ``TORCHELASTIC_ERROR_FILE`` (written to a temporary name, then renamed, so
  the agent never reads half a file); the agent reads it after the group succeeded;
* on an exception, the error file in torch's ``@record`` format (with the
  traceback), the traceback on stderr, and exit code 1.

Pickle never crosses the network here: payload and results stay on this node.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Any

__all__ = ["RESULT_FILE", "main", "read_result", "write_payload"]

#: The result's file name, in the worker's log directory (beside error.json).
RESULT_FILE = "result.pkl"


def write_payload(path: str, fn: Any, args: tuple[Any, ...]) -> None:
    """Write the payload for ``fn(*args)`` to ``path`` (mode 0600).

    Raises:
        pickle.PicklingError, TypeError, AttributeError: ``fn`` or ``args`` cannot
            be pickled (a lambda, a local function, an open file ...).
    """
    import multiprocessing.spawn
    import pickle

    prep = multiprocessing.spawn.get_preparation_data("corral-worker")
    prep.pop("authkey", None)  # the workers never talk to a multiprocessing manager of ours
    data = pickle.dumps(prep) + pickle.dumps((fn, tuple(args)))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def read_result(rank_dir: str) -> Any:
    """The value a worker returned (None when it wrote no result: a command).

    Raises:
        LauncherError: the result file exists but cannot be unpickled here.
    """
    path = os.path.join(rank_dir, RESULT_FILE)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    import pickle  # here: an agent whose workers wrote no result never imports it

    try:
        return pickle.loads(data)
    except Exception as exc:
        from corral.core.errors import LauncherError

        raise LauncherError(f"cannot read the worker's result {path}: {exc!r}") from exc


def _result_path() -> str | None:
    error_file = os.environ.get("TORCHELASTIC_ERROR_FILE")
    return os.path.join(os.path.dirname(error_file), RESULT_FILE) if error_file else None


def _write_result(value: Any) -> None:
    import pickle

    path = _result_path()
    if path is None:
        return
    data = pickle.dumps(value)  # an unpicklable result fails the worker, with the reason
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def main(argv: list[str]) -> int:
    """Load the payload named by ``argv[0]``, call the function, write result or error."""
    import pickle

    from corral.core.record import write_error_file

    if len(argv) != 1:
        print("usage: python -m corral.workers._fn_entry <payload>", file=sys.stderr)
        return 2
    try:
        import multiprocessing.spawn

        with open(argv[0], "rb") as f:
            prep = pickle.load(f)
            multiprocessing.spawn.prepare(prep)
            fn, args = pickle.load(f)
        value = fn(*args)
        _write_result(value)
    except SystemExit as se:  # as torch's @record: exit(0) is a success with no result
        if se.code in (0, None):
            _write_result(None)
            return 0
        raise
    except BaseException as exc:
        write_error_file(exc)
        traceback.print_exc()
        sys.stderr.flush()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
