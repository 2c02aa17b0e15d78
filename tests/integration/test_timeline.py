"""``corral timeline``: the page as a person sees it, rendered by headless Chromium."""

from __future__ import annotations

import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest
from tests.helpers import CORRAL, corral_env

from corral.core import events as t
from corral.events.sinks import JsonlSink

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]  # a headless browser

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--hide-scrollbars",
]  # fmt: skip


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _write_job(path: Path) -> None:
    """Two nodes' events: a crash on b, a rejoin, b lost, b back (as the agents write them)."""
    sink = JsonlSink(str(path))
    w = 1_700_000_000.0

    def e(cls: type[t.Event], node: str, r: int, dt: float, **kw: object) -> None:
        sink(cls(node=node, round=r, mono=dt, wall=w + dt, **kw))

    def closed(node: str, r: int, dt: float, rank: int, n: int = 2) -> None:
        e(t.RoundClosed, node, r, dt, group_rank=rank, group_world_size=n, rank_offset=2 * rank,
          local_world_size=2, world_size=2 * n, restart_count=r, host=f"host-{node}")  # fmt: skip

    def started(node: str, r: int, dt: float, rank: int) -> None:
        for lr in (0, 1):
            e(t.WorkerStarted, node, r, dt, local_rank=lr, rank=2 * rank + lr, pid=100, attempt=r)

    def restart(node: str, r: int, dt: float, cause: str) -> None:
        e(t.WorkersStopped, node, r, dt, seconds=0.2)
        e(t.RestartDecided, node, r, dt, cause=cause, restart_count=r, max_restarts=3)

    for node, rank in (("a", 0), ("b", 1)):
        closed(node, 0, 0.0, rank)
        started(node, 0, 0.3, rank)
    e(t.WorkerFailed, "b", 0, 10.0, local_rank=1, rank=3, pid=100, exitcode=1,
      message="RuntimeError: CUDA error: an illegal memory access", exit_wall=w + 10.0)  # fmt: skip
    e(t.RoundEnded, "b", 0, 10.02, cause="failure", detail="rank 3 failed")
    e(t.RoundEnded, "a", 0, 10.1, cause="failure", detail="failure on b in round 0")
    restart("b", 0, 10.5, "failure")
    restart("a", 0, 10.8, "failure")
    for node, rank in (("a", 0), ("b", 1)):
        closed(node, 1, 11.5, rank)
        started(node, 1, 12.0, rank)
    e(t.NodeLost, "a", 1, 20.0, detail="node b lost")
    e(t.RoundEnded, "a", 1, 20.0, cause="member_lost", detail="node b lost")
    restart("a", 1, 20.4, "member_lost")
    closed("a", 2, 21.0, 0, 1)
    started("a", 2, 21.4, 0)
    e(t.NodeWaiting, "a", 2, 28.0, detail="node c waits")
    e(t.RoundEnded, "a", 2, 28.0, cause="node_waiting", detail="node c waits")
    restart("a", 2, 28.3, "node_waiting")
    closed("a", 3, 29.0, 0)
    closed("c", 3, 29.0, 1)
    started("a", 3, 29.5, 0)
    started("c", 3, 29.6, 1)
    for node in ("a", "c"):
        e(t.RoundEnded, node, 3, 40.0, cause="succeeded")
        e(t.JobEnded, node, 3, 40.1, outcome="succeeded", exit_code=0)
    sink.close()


def _png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of RGB(A) bytes) of an 8-bit PNG: enough to judge a screenshot."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width, height, ctype = 8, b"", 0, 0, 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, ctype = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and ctype in (2, 6)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    bpp = 3 if ctype == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows: list[bytes] = []
    prev = bytearray(stride)
    for y in range(height):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 0xFF
            elif f == 2:
                line[i] = (line[i] + b) & 0xFF
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
                line[i] = (line[i] + pred) & 0xFF
        rows.append(bytes(line))
        prev = line
    return width, height, [bytes(r[i : i + 3]) for r in rows for i in range(0, stride, bpp * 4)]


def test_timeline_renders_in_headless_chromium(tmp_path: Path) -> None:
    chromium = _chromium()
    if chromium is None:
        pytest.skip("chromium is not installed (scripts/test installs it with apt)")
    events = tmp_path / "events.jsonl"
    _write_job(events)
    page = tmp_path / "timeline.html"
    r = subprocess.run([*CORRAL, "timeline", str(events), "-o", str(page)], capture_output=True,
                       text=True, timeout=60, env=corral_env())  # fmt: skip
    assert r.returncode == 0, r.stderr
    text = page.read_text()
    assert "http://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "<script" not in text
    base = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*base, "--dump-dom", page.as_uri()], capture_output=True, text=True,
                         timeout=90)  # fmt: skip
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    # what a person reads: each incident's cause and root cause, the nodes, every phase
    assert html.count('class="incident"') == 3
    for words in ("r1 failure", "RuntimeError: CUDA error", "node_lost", "node_joining",
                  "host-a", "host-b", "host-c", "detection", "rendezvous", "spawning"):  # fmt: skip
        assert words in html, words
    assert html.count('class="attempt"') == 7
    assert html.count('data-kind="failure"') >= 2  # the mark and the legend
    assert 'data-kind="lost"' in html and 'data-kind="joining"' in html
    shot = tmp_path / "shot.png"
    subprocess.run([*base, f"--screenshot={shot}", "--window-size=1240,560", page.as_uri()],
                   capture_output=True, timeout=90, check=True)  # fmt: skip
    width, height, pixels = _png_pixels(shot.read_bytes())
    assert (width, height) == (1240, 560)
    colours = set(pixels)
    non_white = sum(p != b"\xff\xff\xff" for p in pixels)
    assert len(colours) > 20, "the screenshot is blank"
    assert non_white > len(pixels) // 20
