"""Python 3.10 support: ``asyncio.timeout``, ``TaskGroup`` and ``Runner`` arrived in 3.11.

On 3.10 they come from the ``taskgroup`` backport (a dependency only there),
whose task factory is installed by its ``run``/``Runner``: corral's own entry
points (``corral``, ``corral.launch``, ``corral store``) use these. A caller of
``corral.launch_async`` on 3.10 runs its loop with ``taskgroup.run``.

``CORRAL_COMPAT_BACKPORTS=1`` forces the backport path on 3.11+, so the test
suite exercises it (tests/unit/test_compat.py).
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

__all__ = ["BACKPORTS", "Runner", "TaskGroup", "run", "timeout"]

BACKPORTS = sys.version_info < (3, 11) or os.environ.get("CORRAL_COMPAT_BACKPORTS") == "1"

if TYPE_CHECKING or not BACKPORTS:
    from asyncio import Runner, TaskGroup, run, timeout
else:  # pragma: no cover - Python 3.10, or forced by the test above
    from taskgroup import Runner, TaskGroup, run, timeout
