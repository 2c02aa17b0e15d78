"""The whole rendezvous protocol as a hypothesis state machine: K nodes run every
role's reducer (the joiner, the closer, the running member, the failure report and
its budget) over a simulated store of plain dicts, with random joins, losses (a
node's lease ends), worker failures and timeouts (the fake time moves).

The simulated store: keys with create and mod revisions and a lease, create-only
writes, the round pointer moved by compare-and-set on its mod revision. Each node
performs its reducers' effects on it, as the driver does on a real store; an
effect that waits (follow a closer, a closer's wait, a wait for the next round)
is answered when a later step finds what it waits for.

Invariants: no two different closed rounds share a number; the ranks of a
closed round are 0..N-1 (N <= MAX), and every node placed in it holds the rank
the record gives it; the restart count never exceeds max_restarts; a node is in
at most one closed round at a time, and in the member list of the round it runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from corral.core.model import Decision, NodeDesc, RoundInfo
from corral.rendezvous.protocol import budget, closer, failing, member, ranks
from corral.rendezvous.protocol import joiner as j
from corral.rendezvous.protocol.records import (
    REASON_JOB_ENDED,
    REASON_MEMBER_LOST,
    ClosedRound,
    Outcome,
    RoundPointer,
)

K = 4
MAX_RESTARTS = 2
P = closer.CloseParams(
    min_nodes=2, max_nodes=3, last_call_timeout=10.0, settle_time=0.0, settle_cap=0.0
)


@dataclass
class KV:
    value: object
    create: int
    mod: int
    lease: int


class LeaseGone(Exception):
    """A write under a lease that ended (the store's LeaseNotFound)."""


class Store:
    """A dict store: revisions, create-only writes, leases, compare-and-set."""

    def __init__(self) -> None:
        self.rev = 0
        self.kv: dict[str, KV] = {}
        self.deleted: dict[str, int] = {}  # key -> revision of its last delete
        self.leases = 0
        self.live: set[int] = set()

    def create(self, key: str, value: object, lease: int = 0) -> bool:
        if lease and lease not in self.live:
            raise LeaseGone
        if key in self.kv:
            return False
        self.put(key, value, lease)
        return True

    def put(self, key: str, value: object, lease: int = 0) -> None:
        if lease and lease not in self.live:
            raise LeaseGone
        self.rev += 1
        old = self.kv.get(key)
        self.kv[key] = KV(value, old.create if old else self.rev, self.rev, lease)

    def delete(self, key: str) -> None:
        if self.kv.pop(key, None) is not None:
            self.rev += 1
            self.deleted[key] = self.rev

    def range(self, prefix: str) -> dict[str, KV]:
        return {k[len(prefix) :]: v for k, v in self.kv.items() if k.startswith(prefix)}

    def grant(self) -> int:
        self.leases += 1
        self.live.add(self.leases)
        return self.leases

    def revoke(self, lease: int) -> None:
        self.live.discard(lease)
        for key in [k for k, v in self.kv.items() if v.lease == lease]:
            self.delete(key)

    def pointer(self) -> tuple[RoundPointer, int]:
        kv = self.kv["round"]
        assert isinstance(kv.value, RoundPointer)
        return kv.value, kv.mod

    def cas_pointer(self, new: RoundPointer, rev: int) -> bool:
        if self.kv["round"].mod != rev:
            return False
        self.put("round", new)
        return True


def desc(i: int) -> NodeDesc:
    return NodeDesc(node_id=f"n{i}", addr=f"10.0.0.{i}", local_world_size=1, master_port=1)


@dataclass
class Node:
    i: int
    nid: str
    lease: int = 0
    mode: str = "idle"  # idle (no agent), joining, running, done (the job ended)
    js: j.JoinerState | None = None
    ask: j.Effect | None = None  # the effect it waits on
    cs: closer.CloserState | None = None  # when it closes a round
    closing: ClosedRound | None = None  # the record its closer decided on, to be written
    wait_from: int = 0  # a wait for the next round: the pointer revision it watches after
    ms: member.MemberState | None = None
    info: RoundInfo | None = None
    pred_seen: set[str] = field(default_factory=set)


class Protocol(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.s = Store()
        self.now = 0.0
        self.nodes = [Node(i, f"n{i}") for i in range(K)]
        self.closed_history: dict[int, list[ClosedRound]] = {}  # every record written as closed
        self.placed: dict[int, dict[str, int]] = {}  # round -> node id -> group rank

    # --- the joiner's driver -------------------------------------------------------------

    def _start(self, n: Node, expect: int) -> None:
        n.mode, n.ask, n.cs, n.ms, n.info = "joining", None, None, None, None
        n.js, effects = j.start_join(
            node_id=n.nid, run_id="job", max_nodes=P.max_nodes, budget=budget.Budget(MAX_RESTARTS),
            retry_delay=1.0, expect=expect, waiting=f"waiting/{n.nid}" in self.s.kv,
        )  # fmt: skip
        self._run(n, effects)

    def _run(self, n: Node, effects: list[j.Effect]) -> None:
        """Perform effects and feed events back until one waits or the join ends."""
        while True:
            event: j.Event | None = None
            try:
                for e in effects:
                    if n.mode != "joining":
                        return
                    ev = self._perform(n, e)
                    if ev is not None:
                        event = ev
            except LeaseGone:
                event = j.LeaseLost()
            if n.mode != "joining":
                return
            if event is None:  # the last effect waits
                n.ask = effects[-1]
                return
            n.ask = None
            assert n.js is not None
            n.js, effects = j.joiner_step(n.js, event)

    def _perform(self, n: Node, e: j.Effect) -> j.Event | None:
        s = self.s
        match e:
            case j.EnsureLease():
                if n.lease not in s.live:  # Lease.ensure: a new one if it ended
                    n.lease = s.grant()
                return j.LeaseReady(n.lease)
            case j.CheckQuarantine():
                return j.QuarantineChecked(None)
            case j.RequestJoin(round=r, lease=lease):
                s.create("round", RoundPointer(0, max_restarts=MAX_RESTARTS, no_restart_code=0))
                key = f"n/{r}/{n.nid}"
                created = s.create(key, desc(n.i), lease)
                existing = s.kv[key].lease if not created else None
                closer_created = s.create(f"closer/{r}", n.nid, lease)
                ptr, rev = s.pointer()
                return j.JoinRead(
                    r, created, existing, closer_created, ptr, rev, self._closed(r), s.rev
                )
            case j.Follow(round=r, seen=seen):
                ref = self._closed(r)
                if ref is not None:
                    return j.CloseSeen(ref, ref.revision)
                if f"closer/{r}" not in s.kv and s.deleted.get(f"closer/{r}", 0) > seen:
                    return j.CloserLeft(s.deleted[f"closer/{r}"])
                return None
            case j.TakeOver(round=r, lease=lease):
                return j.TakeOverResult(s.create(f"closer/{r}", n.nid, lease))
            case j.Close(pointer=ptr):
                if n.cs is None or n.ask is not e:  # a new close (not its wait again)
                    n.cs, n.closing = self._start_closing(n, ptr), None
                return self._close_step(n)
            case j.ReadRankTable(round=r, tag=tag):
                full = self._full(r, tag)
                idx = full.rank_of(n.nid)
                return j.RankTableRead(
                    ranks.assignments(full.members)[idx] if idx is not None else None
                )
            case j.ReadMembers(round=r, closed=closed):
                return j.MembersRead(self._full(r, closed.tag))
            case j.ReadLive(round=r):
                live = sorted(s.range(f"n/{r}/").items(), key=lambda kv: kv[1].create)
                return j.LiveRead([nid for nid, _ in live], s.rev)
            case j.WatchMember(round=r, node_id=target):
                if s.pointer()[1] > n.wait_from:
                    return j.PointerMoved()
                if f"n/{r}/{target}" not in s.kv:
                    return j.MemberLeft()
                return None
            case j.WakeAt():
                return j.Timer(self.now)
            case j.EvictLease():
                n.lease = 0
            case j.Retract(round=r, node=mine, closer=closer_key):
                if mine:
                    s.delete(f"n/{r}/{n.nid}")
                if closer_key:
                    s.delete(f"closer/{r}")
            case j.DeleteWaiting():
                s.delete(f"waiting/{n.nid}")
            case j.PutWaiting(lease=lease, pointer_revision=prev):
                s.put(f"waiting/{n.nid}", desc(n.i), lease)
                n.wait_from = prev
            case j.EndLost(round=r, first=first):
                self._lost(r, first)
            case j.Placed(info=info):
                self._placed(n, info)
            case j.Spare():
                assert n.js is not None and n.js.pointer is not None
                n.js, effects = j.start_waiting(
                    node_id=n.nid, run_id="job", max_nodes=P.max_nodes, budget=n.js.budget,
                    retry_delay=1.0, spare=e, pointer=n.js.pointer,
                )  # fmt: skip
                self._run(n, effects)
            case j.RaiseOutcome():
                n.mode = "done"
            case j.Rejoin():
                assert n.js is not None
                self._start(n, n.js.round)
            case j.Refuse(message=message) | j.Warn(line=message):
                raise AssertionError(message)
            case j.Quarantined():
                raise AssertionError("no quarantine here")
        return None

    def _closed(self, r: int) -> j.ClosedRef | None:
        kv = self.s.kv.get(f"closed/{r}")
        if kv is None:
            return None
        assert isinstance(kv.value, ClosedRound)
        return j.ClosedRef(kv.value, kv.mod)

    def _full(self, r: int, tag: str) -> ClosedRound:
        full = self.s.kv[f"members/{r}/{tag}"].value
        assert isinstance(full, ClosedRound)
        return full

    # --- the closer's driver ---------------------------------------------------------------

    def _joiners(self, r: int) -> dict[str, ranks.Joiner]:
        out = {}
        for nid, kv in self.s.range(f"n/{r}/").items():
            assert isinstance(kv.value, NodeDesc)
            out[nid] = ranks.Joiner(kv.value, kv.create)
        return out

    def _start_closing(self, n: Node, ptr: RoundPointer) -> closer.CloserState:
        r = ptr.round
        prev_ref = self._closed(r - 1) if r > 0 else None
        prev = self._full(r - 1, prev_ref.record.tag) if prev_ref is not None else None
        return closer.start_closing(
            round=r, restart_count=ptr.restart_count, tag=f"{n.nid}.{n.lease}", params=P,
            joined=self._joiners(r).values(), now=self.now, previous=prev,
            live_previous=list(self.s.range(f"n/{r - 1}/")), waiting=list(self.s.range("waiting/")),
        )  # fmt: skip

    def _close_step(self, n: Node) -> j.Event | None:
        cs = n.cs
        assert cs is not None
        r = cs.round
        if n.closing is not None:  # its writes, a step after its decision (another may write too)
            rec, n.closing = n.closing, None
            self.s.put(f"members/{r}/{rec.tag}", rec)
            won = self.s.create(f"closed/{r}", rec.summary())
            if won:
                self.closed_history.setdefault(r, []).append(rec)
            ref = self._closed(r)
            assert ref is not None
            return j.RoundClosed(ref, rec if won else None)
        ptr, _ = self.s.pointer()
        if ptr.reason == REASON_JOB_ENDED:  # the job ended meanwhile: the join ends with it
            n.mode = "done"
            return None
        done = self._closed(r)
        if done is not None:
            return j.RoundClosed(done, None)
        joined = self._joiners(r)
        items: list[closer.Change] = [
            closer.Arrived(x) for x in joined.values() if x.desc.node_id not in cs.joined
        ]
        items += [closer.Departed(nid) for nid in cs.joined if nid not in joined]
        prev, waiting = self.s.range(f"n/{r - 1}/"), self.s.range("waiting/")
        for nid in cs.expected | cs.holders:
            if cs.previous is not None and cs.previous.rank_of(nid) is not None:
                if nid not in prev:
                    items.append(closer.ExpectedGone(nid))
            elif nid not in waiting:
                items.append(closer.WaitingGone(nid))
        n.cs, effects = closer.close_step(cs, closer.Changes(self.now, items))
        for e in effects:
            if isinstance(e, closer.CloseRound):
                n.closing = e.record
        return None

    # --- a running member's driver, and the budget ----------------------------------------

    def _placed(self, n: Node, info: RoundInfo) -> None:
        r = info.round
        ranks_of = self.placed.setdefault(r, {})
        assert n.nid not in ranks_of or ranks_of[n.nid] == info.group_rank
        ranks_of[n.nid] = info.group_rank
        ref = self._closed(r)
        assert ref is not None
        full = self._full(r, ref.record.tag)
        assignment = ranks.assignments(full.members)[info.group_rank]
        n.ms, _ = member.start_member(
            r, info.group_rank, assignment.pred, full.node_count, done=False,
            max_nodes=P.max_nodes, max_restarts=MAX_RESTARTS,
        )  # fmt: skip
        n.mode, n.info, n.ask, n.cs = "running", info, None, None

    def _lost(self, r: int, gone: str) -> None:
        """A member of round r was lost: restart without it, or end the job (Running.lost)."""
        ptr, rev = self.s.pointer()
        if ptr.round != r:
            return  # the job moved on: the compare-and-set would fail
        if budget.budget_left(ptr, MAX_RESTARTS):
            self.s.cas_pointer(budget.next_pointer(ptr, REASON_MEMBER_LOST, f"lost {gone}"), rev)
        else:
            self.s.cas_pointer(budget.end_pointer(ptr, "failed"), rev)

    def _step_member(self, n: Node) -> None:
        ms, info = n.ms, n.info
        assert ms is not None and info is not None
        r = info.round
        ptr, rev = self.s.pointer()
        if n.lease not in self.s.live:  # evicted: MEMBER_LOST, the agent joins again
            self._start(n, ptr.round)
            return
        _, effects = member.member_step(ms, member.PointerMoved(ptr))
        if effects:  # superseded
            if ptr.reason == REASON_JOB_ENDED:
                n.mode = "done"
            else:
                self._start(n, ptr.round)
            return
        if ms.pred is not None and f"n/{r}/{ms.pred}" not in self.s.kv:
            _, effects = member.member_step(ms, member.PredecessorLeft(ms.pred, False))
            (lost,) = effects
            assert isinstance(lost, member.MemberLost)
            self._lost(r, lost.node_id)
            return
        if ms.rank == 0 and info.group_world_size < P.max_nodes:
            ref = self._closed(r)
            assert ref is not None
            members = self._full(r, ref.record.tag).members
            for nid in self.s.range("waiting/"):
                _, effects = member.member_step(ms, member.NodeWaits(nid, members, ptr))
                for e in effects:
                    if isinstance(e, member.Bump):
                        self.s.cas_pointer(budget.next_pointer(ptr, e.reason, e.detail), rev)
                        return

    # --- rules ------------------------------------------------------------------------------

    @rule(i=st.integers(0, K - 1))
    def join(self, i: int) -> None:
        """An agent starts on node i (again, after a loss: a new lease)."""
        n = self.nodes[i]
        if n.mode == "idle":
            self._start(n, 0)

    @rule(i=st.integers(0, K - 1))
    def step(self, i: int) -> None:
        """Node i gets what it waits for, if it is there (a store event, a timer)."""
        n = self.nodes[i]
        if n.mode == "joining" and n.ask is not None:
            self._run(n, [n.ask])
        elif n.mode == "running":
            self._step_member(n)

    @rule()
    def step_all(self) -> None:
        for i in range(K):
            self.step(i)

    @rule(i=st.integers(0, K - 1))
    def lose(self, i: int) -> None:
        """Node i's agent is gone: its lease ends, its keys go."""
        n = self.nodes[i]
        if n.lease:
            self.s.revoke(n.lease)
        if n.mode != "done":
            self.nodes[i] = Node(i, n.nid)

    @rule(i=st.integers(0, K - 1))
    def expire(self, i: int) -> None:
        """Node i's lease ends but its agent goes on (a partition): a zombie until it
        notices (a write under the lease fails, its keep-alive tells it)."""
        n = self.nodes[i]
        if n.lease:
            self.s.revoke(n.lease)

    @precondition(lambda self: any(n.mode == "running" for n in self.nodes))
    @rule(data=st.data())
    def fail(self, data: st.DataObject) -> None:
        """A worker of a running node fails: it reports, and the budget decides."""
        running = [n for n in self.nodes if n.mode == "running"]
        n = data.draw(st.sampled_from(running))
        assert n.info is not None
        r, s = n.info.round, self.s
        state, effects = failing.start_failing(r, n.nid, MAX_RESTARTS, 0, final=False)
        while True:
            event: failing.Event | None = None
            for e in effects:
                match e:
                    case failing.CheckMember():
                        event = failing.MemberChecked(n.lease in s.live)
                    case failing.Publish():
                        s.create(f"failures/{r}/{n.nid}", n.nid)
                    case failing.ReadPointer():
                        event = failing.PointerRead(*s.pointer())
                    case failing.FixOutcome():
                        s.create("outcome", Outcome("failed", r, None, 1))
                    case failing.ReadEnded(pointer=ptr):
                        s.create("outcome", Outcome("failed", ptr.round - 1, None, 1))
                        out = s.kv["outcome"].value
                        assert isinstance(out, Outcome)
                        event = failing.EndedRead(out)
                    case failing.Judge():
                        event = failing.Judged()
                    case failing.CasPointer(new=new, revision=rev):
                        event = failing.CasResult(s.cas_pointer(new, rev))
                    case failing.Decided(decision=decision):
                        if decision is Decision.FAIL:
                            n.mode = "done"
                        else:
                            self._start(n, s.pointer()[0].round)
                        return
                    case failing.Stopped() | failing.GiveUp() | failing.ReadRoot():
                        raise AssertionError(f"not in this job: {e}")
            assert event is not None
            state, effects = failing.failing_step(state, event)

    @rule(seconds=st.sampled_from([1.0, 10.0, 31.0]))
    def time_passes(self, seconds: float) -> None:
        """Timeouts: the clock moves (a closer's last call)."""
        self.now += seconds

    # --- invariants --------------------------------------------------------------------------

    @invariant()
    def one_closed_round_per_number(self) -> None:
        for r, records in self.closed_history.items():
            assert len(records) == 1, f"round {r} closed twice: {records}"

    @invariant()
    def ranks_are_dense_and_held_as_recorded(self) -> None:
        for r, (rec,) in self.closed_history.items():
            ids = [m.node_id for m in rec.members]
            assert 1 <= len(ids) <= P.max_nodes and len(set(ids)) == len(ids)
            table = ranks.assignments(rec.members)
            assert [a.group_rank for a in table] == list(range(len(ids)))
            for nid, rank in self.placed.get(r, {}).items():
                assert ids[rank] == nid, f"round {r}: {nid} placed at rank {rank} of {ids}"

    @invariant()
    def restarts_within_budget(self) -> None:
        if "round" in self.s.kv:
            assert self.s.pointer()[0].restart_count <= MAX_RESTARTS

    @invariant()
    def one_round_per_node(self) -> None:
        for n in self.nodes:
            if n.mode == "running":
                assert n.info is not None
                rec = self.closed_history[n.info.round][0]
                assert rec.rank_of(n.nid) == n.info.group_rank


Protocol.TestCase.settings = settings(max_examples=150, stateful_step_count=80, deadline=None)
TestProtocol = Protocol.TestCase
