"""``corral timeline``: a job's attempts and incidents drawn as one self-contained SVG.

    corral timeline EVENTS.jsonl [MORE.jsonl ...] [-o timeline.html]
    corral timeline --rdzv-endpoint HOST:PORT --rdzv-id ID [--rdzv-backend etcd] [-o x.svg]

Time runs across; each node is a band with one lane per local rank; each
attempt is a bar; failures, signals, hangs, lost and joining nodes are
marked; each incident's down time is shaded across every node, split into
its phases, labelled with its cause and, on hover, its root cause. The page
fetches nothing (no scripts, fonts or styles from the network). See
docs/events.md.
"""

from __future__ import annotations

import argparse
import html
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from corral.events.journal import PHASES, AttemptRecord, JobIncident, job_incidents

__all__ = ["main", "render_html", "render_svg"]

PHASE_COLORS = {
    "detection": "#e8837e",
    "stopping": "#f2b36b",
    "rendezvous": "#efd966",
    "spawning": "#8fbde6",
    "first_step": "#9fd39a",
}
MARK_COLORS = {
    "failure": "#c62828",
    "signal": "#7b1fa2",
    "hang": "#ef6c00",
    "lost": "#616161",
    "joining": "#2e7d32",
}
_W, _LEFT, _RIGHT, _TOP = 1200, 230, 30, 78
_NODE_H, _LANE_H, _GAP = 22, 14, 14


@dataclass
class _Band:
    """One machine's rows: every agent that ran at one address (a rejoin shares the band)."""

    node: str  # the first agent's node id
    host: str
    lanes: int
    addr: str = ""
    nodes: set[str] = field(default_factory=set)  # every agent drawn in it
    end: float = 0.0  # when the last of their attempts ended (so far)
    y: float = 0.0


def _bands(records: Sequence[AttemptRecord], t0: float) -> dict[int, _Band]:
    """The band of each record (by ``id``): an agent that comes back at the same address
    after the one before it ended (a rejoin) shares that band; two agents there at once
    get a band each."""
    by_key: dict[str, list[_Band]] = {}
    by_node: dict[str, _Band] = {}
    out: dict[int, _Band] = {}
    for rec in sorted(records, key=lambda r: (r.closed or t0, r.group_rank)):
        band = by_node.get(rec.node)
        if band is None:
            start = rec.closed or t0
            same = by_key.setdefault(f"{rec.host}|{rec.addr}" if rec.addr else rec.node, [])
            band = next((b for b in same if b.end <= start), None)
            if band is None:
                band = _Band(rec.node, rec.host, 0, rec.addr)
                same.append(band)
            by_node[rec.node] = band
            band.nodes.add(rec.node)
        band.lanes = max(band.lanes, rec.local_world_size)
        band.end = max(band.end, rec.end or rec.closed or t0)
        out[id(rec)] = band
    return out


def _esc(text: str) -> str:
    return html.escape(text, quote=True)


def _nice_step(span: float) -> float:
    for step in (0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200):
        if span / step <= 12:
            return float(step)
    return span / 10


def render_svg(records: Sequence[AttemptRecord], title: str = "corral job timeline") -> str:
    """The timeline of ``records`` (every node's attempts) as an SVG document (a string)."""
    incidents = job_incidents(records)
    times = [v for r in records for v in (r.closed, r.spawned, r.first_step, r.end) if v]
    times += [m.wall for r in records for m in r.marks]
    times += [v for i in incidents for v in (i.start, i.end)]
    t0 = min(times, default=0.0)
    t1 = max(times, default=1.0)
    span = max(t1 - t0, 1e-3)
    plot_w = _W - _LEFT - _RIGHT

    def x(t: float) -> float:
        return _LEFT + (t - t0) / span * plot_w

    of = _bands(records, t0)
    bands = list({id(b): b for b in of.values()}.values())  # in order of appearance
    y = float(_TOP)
    for band in bands:
        band.y = y
        y += _NODE_H + band.lanes * _LANE_H + _GAP
    height = int(y + 70)
    out: list[str] = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{height}" '
        f'viewBox="0 0 {_W} {height}" font-family="sans-serif" font-size="11">',
        f"<title>{_esc(title)}</title>",
        f'<rect x="0" y="0" width="{_W}" height="{height}" fill="#ffffff"/>',
        f'<text x="12" y="22" font-size="16" font-weight="bold">{_esc(title)}</text>',
    ]
    # the time axis
    step = _nice_step(span)
    n = 0
    while n * step <= span + 1e-9:
        tx = x(t0 + n * step)
        out.append(
            f'<line x1="{tx:.1f}" y1="{_TOP - 6}" x2="{tx:.1f}" y2="{y:.1f}" stroke="#e6e6e6"/>'
            f'<text x="{tx:.1f}" y="{y + 14:.1f}" text-anchor="middle" fill="#555">'
            f"{n * step:g}s</text>"
        )
        n += 1
    # incidents: shaded phases across every band, a label above
    for k, inc in enumerate(incidents):
        out.append(_incident(inc, k, x, y))
    # node bands
    for band in bands:
        label = f"{band.host} {band.addr}".strip() or band.node
        agents = len(band.nodes)
        sub = band.node if agents == 1 else f"{agents} agents (rejoined)"
        out.append(
            f'<g class="node" data-node="{_esc(band.node)}">'
            f'<text x="12" y="{band.y + 15:.1f}" font-weight="bold">{_esc(label)}</text>'
            f'<text x="12" y="{band.y + 28:.1f}" fill="#777" font-size="9">{_esc(sub)}</text>'
        )
        for lane in range(band.lanes):
            ly = band.y + _NODE_H + lane * _LANE_H
            out.append(
                f'<text x="{_LEFT - 8}" y="{ly + 10:.1f}" text-anchor="end" fill="#555" '
                f'font-size="9">local {lane}</text>'
            )
        out.append("</g>")
    for rec in records:
        out.append(_attempt(rec, of[id(rec)], incidents, x, t1))
    # legend
    ly = y + 34
    lx = 12.0
    for phase in PHASES:
        out.append(
            f'<rect x="{lx}" y="{ly - 9}" width="12" height="12" fill="{PHASE_COLORS[phase]}"/>'
            f'<text x="{lx + 16}" y="{ly + 1}">{phase.replace("_", " ")}</text>'
        )
        lx += 110
    for kind, color in MARK_COLORS.items():
        out.append(_mark_shape(kind, lx + 6, ly - 3, color) + f'<text x="{lx + 16}" y="{ly + 1}">'
                   f"{kind}</text>")  # fmt: skip
        lx += 80
    out.append("</svg>")
    return "\n".join(out)


def _incident(inc: JobIncident, k: int, xf: Callable[[float], float], bottom: float) -> str:
    """``xf``: wall time -> x."""
    parts = [f'<g class="incident" data-round="{inc.round}" data-cause="{_esc(inc.cause)}">']
    hover = [f"round {inc.round}: {inc.cause} (down {inc.downtime:.2f}s)"]
    if inc.root_cause or inc.detail:
        hover.append(inc.root_cause or inc.detail)
    hover += [f"{p}: {'-' if inc.phases[p] is None else f'{inc.phases[p]:.2f}s'}" for p in PHASES]
    parts.append(f"<title>{_esc(chr(10).join(hover))}</title>")
    b = inc.bounds
    edges = [b["failed"] if b["failed"] is not None else b["known"]]
    for phase, name in zip(
        PHASES, ("known", "stopped", "closed", "spawned", "first_step"), strict=True
    ):
        lo, hi = edges[-1], b[name]
        if lo is not None and hi is not None and hi > lo:
            parts.append(
                f'<rect class="phase" data-phase="{phase}" x="{xf(lo):.1f}" y="{_TOP - 6}" '
                f'width="{max(xf(hi) - xf(lo), 1.0):.1f}" height="{bottom - _TOP + 6:.1f}" '
                f'fill="{PHASE_COLORS[phase]}" fill-opacity="0.55"/>'
            )
        if hi is not None:
            edges.append(hi)
    ly = 40 + (k % 2) * 14
    label = f"r{inc.round} {inc.cause} {inc.downtime:.2f}s"
    if inc.root_cause:
        label += f": {inc.root_cause}"
    if len(label) > 70:
        label = label[:67] + "..."
    parts.append(
        f'<line x1="{xf(inc.start):.1f}" y1="{ly + 3}" x2="{xf(inc.start):.1f}" y2="{_TOP - 6}" '
        f'stroke="#999" stroke-dasharray="2,2"/>'
        f'<text class="incident-label" x="{xf(inc.start):.1f}" y="{ly}" fill="#333">'
        f"{_esc(label)}</text></g>"
    )
    return "".join(parts)


def _attempt(
    rec: AttemptRecord,
    band: _Band,
    incidents: Sequence[JobIncident],
    xf: Callable[[float], float],
    t_last: float,
) -> str:
    start = rec.spawned or rec.closed
    if start is None:
        return ""
    end = rec.end
    lost = False
    if end is None:  # never ended: killed, or still running
        later = [i.bounds["known"] for i in incidents if i.round > rec.round and i.bounds["known"]]
        end = min(later) if later else t_last
        lost = bool(later)
    bad = {m.local_rank for m in rec.marks if m.kind in ("failure", "signal", "hang")}
    if rec.outcome == "succeeded":
        color = "#4caf50"
    elif bad:
        color = "#e57373"  # this node's workers failed
    elif rec.outcome or lost:
        color = "#78909c"  # stopped for a restart, or lost
    else:
        color = "#64b5f6"  # still running
    w = max(xf(end) - xf(start), 2.0)
    tip = (
        f"round {rec.round} on {rec.host or rec.node}: node {rec.group_rank}, ranks "
        f"{rec.rank_offset}-{rec.rank_offset + rec.local_world_size - 1} of {rec.world_size}, "
        f"restarts {rec.restart_count}; {rec.outcome or ('lost' if lost else 'running')}"
        + (f" ({rec.detail})" if rec.detail else "")
    )
    parts = [
        f'<g class="attempt" data-round="{rec.round}"><title>{_esc(tip)}</title>'
        f'<rect class="attempt-bar" x="{xf(start):.1f}" y="{band.y + 3:.1f}" width="{w:.1f}" '
        f'height="{_NODE_H - 6}" rx="3" fill="{color}"/>'
        f'<text x="{xf(start) + 4:.1f}" y="{band.y + 15:.1f}" fill="#fff" font-size="10" '
        f'font-weight="bold">r{rec.round}</text>'
    ]
    for lane in range(rec.local_world_size):
        ly = band.y + _NODE_H + lane * _LANE_H
        parts.append(
            f'<rect class="rank-bar" x="{xf(start):.1f}" y="{ly + 2:.1f}" width="{w:.1f}" '
            f'height="{_LANE_H - 4}" fill="{"#e53935" if lane in bad else color}" '
            'fill-opacity="0.45"/>'
        )
    marks = list(rec.marks)
    if lost:
        parts.append(
            _mark_shape("lost", xf(end), band.y + _NODE_H / 2, MARK_COLORS["lost"], "node lost")
        )
    for m in marks:
        if m.kind not in MARK_COLORS:
            continue
        my = (
            band.y + _NODE_H + m.local_rank * _LANE_H + _LANE_H / 2
            if m.local_rank >= 0
            else band.y + _NODE_H / 2
        )
        parts.append(_mark_shape(m.kind, xf(m.wall), my, MARK_COLORS[m.kind], m.text))
    parts.append("</g>")
    return "".join(parts)


def _mark_shape(kind: str, cx: float, cy: float, color: str, tip: str = "") -> str:
    title = f"<title>{_esc(tip)}</title>" if tip else ""
    if kind in ("failure", "signal"):
        d = f"M{cx - 5:.1f},{cy - 5:.1f}L{cx + 5:.1f},{cy + 5:.1f}M{cx + 5:.1f},{cy - 5:.1f}L{cx - 5:.1f},{cy + 5:.1f}"
        shape = f'<path d="{d}" stroke="{color}" stroke-width="3"/>'
    elif kind == "hang":
        shape = f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="5" fill="{color}"/>'
    elif kind == "lost":
        shape = f'<rect x="{cx - 5:.1f}" y="{cy - 5:.1f}" width="10" height="10" fill="{color}"/>'
    else:  # joining
        pts = f"{cx - 6:.1f},{cy + 5:.1f} {cx + 6:.1f},{cy + 5:.1f} {cx:.1f},{cy - 6:.1f}"
        shape = f'<polygon points="{pts}" fill="{color}"/>'
    return f'<g class="mark" data-kind="{kind}">{title}{shape}</g>'


def render_html(records: Sequence[AttemptRecord], title: str = "corral job timeline") -> str:
    """A self-contained HTML page holding :func:`render_svg` inline (nothing fetched)."""
    svg = render_svg(records, title)
    rows = "".join(
        f"<tr><td>{i.round}</td><td>{_esc(i.cause)}</td><td>{i.downtime:.2f}s</td>"
        + "".join(
            f"<td>{'-' if i.phases[p] is None else f'{i.phases[p]:.2f}s'}</td>" for p in PHASES
        )
        + f"<td>{_esc(i.root_cause or i.detail)}</td></tr>"
        for i in job_incidents(records)
    )
    head = "".join(f"<th>{p.replace('_', ' ')}</th>" for p in PHASES)
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        f"<title>{_esc(title)}</title>"
        "<style>body{font-family:sans-serif;margin:16px}table{border-collapse:collapse;"
        "margin-top:12px;font-size:12px}td,th{border:1px solid #ccc;padding:3px 8px}</style>"
        f"</head><body>\n{svg}\n<table><tr><th>round</th><th>cause</th><th>down</th>{head}"
        f"<th>root cause</th></tr>{rows}</table></body></html>\n"
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="corral timeline",
        description="Draw a job's attempts and incidents (from events files or its store).",
    )
    p.add_argument("events", nargs="*", help="JSON Lines files written by --events-file/--log-dir")
    p.add_argument(
        "-o",
        "--output",
        default="timeline.html",
        help="the file to write: an HTML page, or the SVG picture alone if it ends in .svg "
        "(default timeline.html)",
    )
    p.add_argument(
        "--rdzv-endpoint", "--rdzv_endpoint", default="", help="host:port of the job's store"
    )
    p.add_argument("--rdzv-id", "--rdzv_id", default="", help="the job's --rdzv-id")
    p.add_argument(
        "--rdzv-backend",
        "--rdzv_backend",
        default="c10d",
        choices=["c10d", "etcd", "etcd-v3"],
        help="the job's --rdzv-backend (default c10d)",
    )
    p.add_argument(
        "--rdzv-conf",
        "--rdzv_conf",
        default="",
        help="the job's --rdzv-conf: token/token_file, prefix, read_timeout, etcd TLS and auth "
        "keys",
    )
    p.add_argument("--title", default="", help="the picture's title")
    return p


async def _from_store(args: argparse.Namespace) -> list[AttemptRecord]:
    from corral.config import RdzvConf
    from corral.events.journal_writer import read_records

    conf = RdzvConf.parse(args.rdzv_conf)
    store, _ = await conf.open_job_store(args.rdzv_backend, args.rdzv_endpoint)
    try:
        return await read_records(store, prefix=conf.store.prefix, run_id=args.rdzv_id)
    finally:
        await store.close()


def main(argv: Sequence[str]) -> int:
    """``corral timeline ...``; 0, or 2 on bad input, 1 when the store cannot be read."""
    from corral.core.errors import ConfigError, LauncherError

    parser = _parser()
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as exc:
        return int(exc.code or 0)
    if bool(args.events) == bool(args.rdzv_endpoint):
        print("corral timeline: error: give events files, or --rdzv-endpoint and --rdzv-id",
              file=sys.stderr)  # fmt: skip
        return 2
    try:
        if args.events:
            from corral.events.journal import records_from_events
            from corral.events.sinks import read_jsonl

            events = [e for path in args.events for e in read_jsonl(path)]
            records = records_from_events(events)
            title = args.title or f"corral job timeline ({len(events)} events)"
        else:
            if not args.rdzv_id:
                print("corral timeline: error: --rdzv-id is required with --rdzv-endpoint",
                      file=sys.stderr)  # fmt: skip
                return 2
            from corral.core.compat import run

            records = run(_from_store(args))
            title = args.title or f"corral job {args.rdzv_id}"
        if not records:
            print("corral timeline: error: no attempts found (no round closed yet?)",
                  file=sys.stderr)  # fmt: skip
            return 1
        title += time.strftime(" - %Y-%m-%d %H:%M:%S", time.localtime(min(
            (r.closed for r in records if r.closed), default=time.time())))  # fmt: skip
        doc = render_svg(records, title) if args.output.endswith(".svg") else render_html(
            records, title)  # fmt: skip
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(doc)
    except ConfigError as exc:
        print(f"corral timeline: error: {exc}", file=sys.stderr)
        return 2
    except (LauncherError, OSError) as exc:
        print(f"corral timeline: error: {exc}", file=sys.stderr)
        return 1
    print(f"corral timeline: wrote {args.output}")
    return 0
