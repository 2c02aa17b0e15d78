"""``corral.record``: the worker-side error file, without torch.

Decorate a worker's entry function; if it raises, the exception is written to
``TORCHELASTIC_ERROR_FILE`` in the format of torch's
``torch.distributed.elastic.multiprocessing.errors.record`` and re-raised::

    {"message": {"message": "<Type>: <msg>",
                 "extraInfo": {"py_callstack": "<traceback>", "timestamp": "<unix s>"}}}

As in torch, ``SystemExit(0)`` is swallowed (the function returns None) and
other ``SystemExit`` codes propagate without an error file. Imports nothing heavy.
"""

from __future__ import annotations

import functools
import json
import os
import time
import traceback
from collections.abc import Callable
from typing import ParamSpec, TypeVar

__all__ = ["error_file_data", "record", "write_error_file"]

_P = ParamSpec("_P")
_R = TypeVar("_R")


def error_file_data(exc: BaseException) -> dict[str, object]:
    """The error-file document for ``exc`` (torch's ``ErrorHandler.record_exception`` shape)."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return {
        "message": {
            "message": f"{type(exc).__name__}: {exc}",
            "extraInfo": {"py_callstack": tb, "timestamp": str(int(time.time()))},
        }
    }


def write_error_file(exc: BaseException, path: str | None = None) -> str | None:
    """Write ``exc`` to ``path`` (default ``TORCHELASTIC_ERROR_FILE``); return the path or None.

    Never raises: a worker's own error must not be masked by a failed write.
    """
    path = path if path is not None else os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return None
    try:
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(error_file_data(exc), f)
        os.replace(tmp, path)  # the agent never reads half a file
    except Exception:
        return None
    return path


def record(fn: Callable[_P, _R]) -> Callable[_P, _R | None]:
    """Decorator: write the error file when ``fn`` raises, then re-raise."""

    @functools.wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R | None:
        try:
            return fn(*args, **kwargs)
        except SystemExit as se:
            if se.code == 0 or se.code is None:
                return None
            raise
        except Exception as exc:
            write_error_file(exc)
            raise

    return wrapper
