"""``corral status``: a running job at a glance, read from its rendezvous store.

    corral status --rdzv-endpoint 10.0.0.1:29400 --rdzv-id job1 [--rdzv-backend etcd]
                  [--rdzv-conf token_file=...] [--watch] [--json]

Shows the current round (its nodes with their group ranks, addresses, worker
ranks and whether each is live, done or lost), nodes waiting to join, the job's
restarts, the latest failures with their root cause, the outcome, and the
last incidents with the time each phase took and the job's goodput. Reads a
handful of keys (O(nodes of the current round)) and the job's journal
(O(rounds x nodes) small records, docs/events.md); ``--watch`` redraws on
every change of the job's keys, with no polling.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from corral.config import RdzvConf
from corral.core.compat import run as _compat_run
from corral.core.errors import ConfigError, LauncherError
from corral.core.failures import FailureReport
from corral.core.keys import Keys
from corral.core.model import NodeDesc
from corral.rendezvous.protocol.records import (
    ClosedRound,
    Outcome,
    Quarantine,
    RoundPointer,
    decode_node,
)
from corral.store.api import Store

__all__ = ["JobStatus", "main", "read_status", "render"]


@dataclass
class NodeRow:
    group_rank: int
    node: NodeDesc
    state: str  # live | done | lost


@dataclass
class JobStatus:
    """A snapshot of one job, as its store holds it."""

    run_id: str
    store: str
    revision: int
    round: int | None = None
    restart_count: int = 0
    max_restarts: int = -1  # the job's --max-restarts (-1: not recorded)
    reason: str = ""
    detail: str = ""
    closed: bool = False
    world_size: int = 0
    master: str = ""
    nodes: list[NodeRow] = field(default_factory=list)
    joining: list[NodeDesc] = field(default_factory=list)
    waiting: list[NodeDesc] = field(default_factory=list)
    quarantined: list[Quarantine] = field(default_factory=list)  # --quarantine-after
    failures: list[FailureReport] = field(default_factory=list)
    failures_round: int | None = None
    outcome: Outcome | None = None
    incidents: list[dict[str, Any]] = field(default_factory=list)  # docs/events.md
    goodput: float | None = None
    progress: list[tuple[int, int, float]] = field(default_factory=list)  # docs/hangs.md

    def to_json(self) -> str:
        d = asdict(self)
        d["outcome"] = json.loads(self.outcome.to_json()) if self.outcome else None
        d["failures"] = [json.loads(f.to_json()) for f in self.failures]
        d["quarantined"] = [json.loads(q.to_json()) for q in self.quarantined]
        return json.dumps(d)


async def read_status(store: Store, *, run_id: str, prefix: str, label: str) -> JobStatus:
    """Read the job's state: a few gets and ranges, no more than the current round's size."""
    k = Keys(prefix, run_id)
    _, rev = await store.range(k.round)  # the revision the snapshot starts at
    st = JobStatus(run_id=run_id, store=label, revision=rev)
    out = await store.get(k.outcome)
    if out is not None:
        st.outcome = Outcome.from_json(out.value)
    from corral.events.report import read_incidents

    st.incidents, st.goodput = await read_incidents(store, prefix=prefix, run_id=run_id)
    ptr_kv = await store.get(k.round)
    if ptr_kv is None:
        return st  # no agent has started this job (yet)
    ptr = RoundPointer.from_json(ptr_kv.value)
    st.round, st.restart_count, st.reason, st.detail = (
        ptr.round,
        ptr.restart_count,
        ptr.reason,
        ptr.detail,
    )
    st.max_restarts = ptr.max_restarts
    r = ptr.round
    live_kvs, _ = await store.range(k.nodes(r))
    live = {Keys.leaf(kv.key): decode_node(kv.value) for kv in live_kvs}
    done_kvs, _ = await store.range(k.done(r))
    done = {Keys.leaf(kv.key) for kv in done_kvs}
    closed_kv = await store.get(k.closed(r))
    if closed_kv is not None:
        st.closed = True
        summary = ClosedRound.from_json(closed_kv.value)
        st.world_size = summary.world_size
        st.master = f"{summary.master_addr}:{summary.master_port}"
        full_kv = await store.get(k.members(r, summary.tag)) if summary.tag else None
        full = ClosedRound.from_json(full_kv.value) if full_kv is not None else summary
        for rank, node in enumerate(full.members):
            state = "done" if node.node_id in done else "live" if node.node_id in live else "lost"
            st.nodes.append(NodeRow(rank, node, state))
        members = {n.node_id for n in full.members}
        st.joining = [n for nid, n in live.items() if nid not in members]
    else:
        st.joining = list(live.values())
    waiting_kvs, _ = await store.range(k.waiting)
    st.waiting = [decode_node(kv.value) for kv in waiting_kvs]
    q_kvs, _ = await store.range(k.quarantine)
    st.quarantined = [Quarantine.from_json(kv.value) for kv in q_kvs]
    from corral.hangs.view import read_progress

    st.progress = await read_progress(store, k.base, r)  # only with --hang-timeout
    for rr in (r, r - 1):  # the latest failures: this round's, else the previous one's
        if rr < 0:
            break
        kvs, _ = await store.range(k.failures(rr))
        if kvs:
            kvs.sort(key=lambda kv: kv.create_revision)  # the store's order: first = root cause
            st.failures = [FailureReport.from_json(kv.value) for kv in kvs]
            st.failures_round = rr
            break
    return st


def render(st: JobStatus) -> str:
    """One screen: job state, the round's nodes, waiting nodes, failures, outcome."""
    lines = [f"job {st.run_id!r} on {st.store} (store revision {st.revision})"]
    if st.outcome is not None:
        o = st.outcome
        if o.succeeded:
            lines.append(f"state: SUCCEEDED in round {o.round}")
        elif o.stopped:  # a handled signal (docs/schedulers.md)
            lines.append(
                f"state: STOPPED in round {o.round}, {o.stop_text} (exit code {o.exit_code})"
            )
        else:
            root = o.root_cause.line() if o.root_cause else "no report"
            lines.append(
                f"state: FAILED in round {o.round} (exit code {o.exit_code}); "
                f"restarts {_restarts(st)}"
            )
            lines.append(f"root cause: {root}")
    elif st.round is None:
        lines.append("state: no agent has joined this job")
        return "\n".join(lines)
    else:
        why = st.reason.replace("_", " ") + (f": {st.detail}" if st.detail else "")
        phase = "RUNNING" if st.closed else "RENDEZVOUS"
        lines.append(
            f"state: {phase} round {st.round} (started by {why}); restarts {_restarts(st)}"
        )
    if st.closed and st.nodes:
        lines.append(
            f"round {st.round}: {len(st.nodes)} node(s), world size {st.world_size}, "
            f"MASTER_ADDR:PORT {st.master}"
        )
        header = (
            f"  {'node':>4}  {'ranks':>9}  {'address':<15}  {'host':<12}  {'state':<5}  node id"
        )
        lines.append(header)
        offset = 0
        for row in st.nodes:
            n = row.node
            lo, hi = offset, offset + n.local_world_size - 1
            offset += n.local_world_size
            ranks = f"{lo}" if lo == hi else f"{lo}-{hi}"
            lines.append(
                f"  {row.group_rank:>4}  {ranks:>9}  {n.addr:<15}  {n.host[:12]:<12}  "
                f"{row.state:<5}  {n.node_id}"
            )
    if st.progress and st.outcome is None:
        import time

        from corral.hangs.view import progress_lines

        lines.extend(progress_lines(st.progress, time.time()))
    if st.joining:
        lines.append(f"joining round {st.round}: " + ", ".join(_who(n) for n in st.joining))
    if st.waiting:
        lines.append("waiting for the next round: " + ", ".join(_who(n) for n in st.waiting))
    lines.extend(f"quarantined: {q.line()}" for q in st.quarantined)
    if st.failures and st.outcome is None:
        lines.append(f"failures in round {st.failures_round} (first = root cause):")
        lines.extend(f"  {f.line()}" for f in st.failures[:5])
        if len(st.failures) > 5:
            lines.append(f"  ... and {len(st.failures) - 5} more")
    from corral.events.report import incident_lines

    lines.extend(incident_lines(st.incidents, st.goodput))
    return "\n".join(lines)


def _restarts(st: JobStatus) -> str:
    """``used/allowed``: every restart of the worker group counts, whatever its cause."""
    return f"{st.restart_count}/{st.max_restarts if st.max_restarts >= 0 else '?'}"


def _who(n: NodeDesc) -> str:
    return f"{n.node_id} ({n.addr}, {n.local_world_size} workers)"


#: What ``--rdzv-conf`` of ``corral status``/``corral timeline`` reads (RdzvConf.open_job_store).
RDZV_CONF_HELP = (
    "the job's --rdzv-conf: token/token_file, prefix, read_timeout, etcd TLS and auth keys"
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="corral status", description="Show a running job's state, read from its store."
    )
    for name, kw in (
        (
            "--rdzv-backend",
            {
                "default": "c10d",
                "choices": ["c10d", "etcd", "etcd-v3"],
                "help": "the job's --rdzv-backend (default c10d)",
            },
        ),
        ("--rdzv-endpoint", {"required": True, "help": "host:port of the job's store"}),
        ("--rdzv-id", {"required": True, "help": "the job's --rdzv-id"}),
        ("--rdzv-conf", {"default": "", "help": RDZV_CONF_HELP}),
    ):
        p.add_argument(name, name.replace("-", "_").replace("__", "--"), **kw)
    p.add_argument(
        "--watch", action="store_true", help="redraw on every change, until the job ends or Ctrl-C"
    )
    p.add_argument("--json", action="store_true", help="print the snapshot as JSON")
    return p


async def _run(args: argparse.Namespace) -> int:
    conf = RdzvConf.parse(args.rdzv_conf)
    if conf.unknown:
        print(f"corral status: warning: {conf.unknown_warning()}", file=sys.stderr)
    store, label = await conf.open_job_store(args.rdzv_backend, args.rdzv_endpoint)
    try:
        while True:
            st = await read_status(
                store, run_id=args.rdzv_id, prefix=conf.store.prefix, label=label
            )
            print(st.to_json() if args.json else render(st), flush=True)
            if not args.watch or st.outcome is not None:
                return 0
            base = Keys(conf.store.prefix, args.rdzv_id).base
            async with store.watch(base, prefix=True, start_revision=st.revision + 1) as events:
                async for _ in events:
                    break  # something changed: redraw
            print("", flush=True)
    finally:
        await store.close()


def main(argv: Sequence[str]) -> int:
    """``corral status ...``; returns the exit code (0, or 1 on a store error, 2 on bad input)."""
    try:
        args = _parser().parse_args(list(argv))
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        return _compat_run(_run(args))
    except ConfigError as exc:
        print(f"corral status: error: {exc}", file=sys.stderr)
        return 2
    except (LauncherError, OSError) as exc:
        print(f"corral status: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
