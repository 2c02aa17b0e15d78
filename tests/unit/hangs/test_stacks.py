"""Stacks of a real process from outside (py-spy), and the notes when there are none."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.hangs.report import main_frames
from corral.hangs.stacks import dump, find_py_spy, proc_state

pytestmark = pytest.mark.timeout(60)

SLEEPER = """
import sys, threading, time
def loader_thread():
    time.sleep(60)
def stuck_here():
    print("ready", flush=True)
    time.sleep(60)
threading.Thread(target=loader_thread, name="loader", daemon=True).start()
stuck_here()
"""


@pytest.fixture
def sleeper(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    script = tmp_path / "sleeper.py"
    script.write_text(SLEEPER)
    p = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        yield p
    finally:
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        assert p.stdout is not None
        p.stdout.close()


@pytest.mark.skipif(find_py_spy() is None, reason="py-spy is not installed")
async def test_every_thread_of_a_running_and_of_a_stopped_process(
    sleeper: subprocess.Popen[str],
) -> None:
    stack, note = await dump(sleeper.pid)
    assert note == "" and stack is not None
    assert [f for f, _ in main_frames(stack, sleeper.pid)][:2] == ["stuck_here", "<module>"]
    assert '"loader"' in stack and "loader_thread (" in stack
    os.kill(sleeper.pid, signal.SIGSTOP)  # frozen: still readable from outside
    deadline = time.monotonic() + 10  # the stop is delivered asynchronously: poll, bounded
    while not proc_state(sleeper.pid).startswith("T") and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert proc_state(sleeper.pid).startswith("T")
    stack, note = await dump(sleeper.pid)
    assert stack is not None and "stuck_here (" in stack


async def test_without_py_spy_a_note_says_why(sleeper: subprocess.Popen[str]) -> None:
    stack, note = await dump(sleeper.pid, py_spy="/nonexistent/py-spy")
    assert stack is None and note.startswith("py-spy could not start")
    stack, note = await dump(2**22 + 12345, py_spy=find_py_spy() or "/nonexistent/py-spy")
    assert stack is None and note  # a process that is gone: a note, no exception
