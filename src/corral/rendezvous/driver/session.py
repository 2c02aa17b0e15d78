"""What one node's rendezvous driver knows between its steps: :class:`Session`.

The roles of the driver (joining, closing, running, ending) share one
:class:`Session`: the node, the run's store requests and keys, the job's
budget (a :class:`~corral.rendezvous.protocol.budget.Budget`, adopted from the
first pointer), the lease, and what this node has read of each round. Each
role is an object that holds the session; none reaches into another.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from msgspec import Struct

from corral.core.clock import Clock
from corral.core.errors import RendezvousError
from corral.core.events import Event, stamp
from corral.core.keys import Keys
from corral.core.model import NodeDesc
from corral.rendezvous.driver.lease import Lease
from corral.rendezvous.driver.store import RunStore, decode_closed
from corral.rendezvous.options import RendezvousOptions
from corral.rendezvous.protocol.budget import Budget
from corral.rendezvous.protocol.records import Assignment, ClosedRound, RoundPointer

__all__ = ["Membership", "Session"]


class Membership(Struct, frozen=True, gc=False):
    """This node's place in a closed round: the ``closed`` summary, its mod revision
    and this node's assignment (a Struct, untracked by the collector, as the
    reducers' values: docs/design.md)."""

    closed: ClosedRound
    revision: int
    assignment: Assignment


@dataclass(slots=True)
class Session:
    """The state one node's driver keeps (see the module docstring).

    Attributes:
        expect: the round this node expects to join next (a guess).
        pointers: per round seen, the pointer and its mod revision.
        memberships: per round this node is a member of, its place.
        members: full member lists read or written by this node (few).
        waiting: this node has a key under ``waiting/``.
        events: the agent's event sink (None: silent).
    """

    store: RunStore
    keys: Keys
    run_id: str
    node: NodeDesc
    min_nodes: int
    max_nodes: int
    conf: RendezvousOptions
    clock: Clock
    lease: Lease
    budget: Budget
    expect: int = 0
    pointers: dict[int, tuple[RoundPointer, int]] = field(default_factory=dict)
    memberships: dict[int, Membership] = field(default_factory=dict)
    members: dict[int, ClosedRound] = field(default_factory=dict)
    waiting: bool = False
    events: Callable[[Event], None] | None = None

    @property
    def node_id(self) -> str:
        return self.node.node_id

    def emit(self, cls: type[Event], round: int, **fields: object) -> None:
        if self.events:  # an empty Fanout is false: nothing is built
            self.events(stamp(cls, self.node.node_id, round, **fields))

    async def members_of(self, r: int, closed: ClosedRound) -> ClosedRound:
        """The full member list of round r (closed summary ``closed``): one read, cached.

        Only a few nodes need it: the closer of round r+1, rank 0 for scale-up and
        success, a waiting node, and a member whose predecessor left after success.
        """
        if closed.members:
            return closed
        have = self.members.get(r)
        if have is not None and have.tag == closed.tag:
            return have
        kv = await self.store.get(self.keys.members(r, closed.tag))
        if kv is None:
            raise RendezvousError(f"round {r} is closed but its member list is missing")
        full = decode_closed(kv)
        self.members[r] = full
        return full
