"""The store contract: a small async key-value protocol with etcd v3's meaning.

Every backend (``memory://``, the embedded ``tcp://`` server, ``etcd://``)
satisfies :class:`Store` with the same semantics, so the rendezvous is written
once against it.

Data model
----------
* Keys are ``str`` (UTF-8, at most 1 KiB); values are ``bytes``.
* The store has one global **revision**, an int that starts at 0 for an empty
  store (etcd starts at 1; callers must only compare revisions, never assume a
  start) and grows by exactly one with every successful write (put, create,
  successful compare-and-set, delete of an existing key, lease end that removes
  at least one key: one revision per removed key or one for the whole batch,
  as the backend does; callers must not count revisions).
* Each key carries ``create_revision`` (the revision of the write that created
  it) and ``mod_revision`` (the revision of its last write). Create revisions
  give a total order of creation that every client agrees on: the store's
  order of events, never anyone's wall clock.
* **Leases**: :meth:`Store.grant` returns a lease id with a TTL; the owner keeps
  it alive with :meth:`Store.keep_alive`. Keys written with ``lease=id`` are
  deleted (with ordinary delete events) when the lease ends: on expiry of the
  TTL, on :meth:`Store.revoke`, and, on the embedded server, the moment the
  connection that granted it closes (a killed agent is seen at once).
* **Watches**: :meth:`Store.watch` streams put/delete events for a key or a
  prefix, from a start revision, in revision order, with no polling.

Errors (all in :mod:`corral.core.errors`)
------------------------------------
* ``StoreUnavailable``: the store cannot be reached, or the connection was lost
  mid-request (the request may or may not have been applied).
* ``StoreTimeout``: no answer within the request deadline.
* ``AuthenticationFailed``: the store refused our credentials.
* ``ProtocolError``: the peer violated the protocol.
* ``LeaseNotFound``: a write or keep-alive named a lease that no longer exists.
* ``StoreCompacted``: a watch's start revision is older than retained history.

Conflicts are not errors: ``create`` and ``compare_and_set`` return a result
that says whether they won, with the current value.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = [
    "Characteristics",
    "EventType",
    "KeyValue",
    "Store",
    "WatchEvent",
    "WriteResult",
    "check_distinct",
]


@dataclass(frozen=True, slots=True)
class KeyValue:
    """One key as stored.

    Attributes:
        key: the key.
        value: the value (``b""`` in a delete event).
        create_revision: revision of the write that created the key.
        mod_revision: revision of the key's last write (for a delete event: the
            revision of the delete).
        lease: the lease the key is attached to, 0 for none.
    """

    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int = 0


class EventType(enum.Enum):
    PUT = "put"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """A change seen by a watch. ``kv.mod_revision`` is the revision of the change."""

    type: EventType
    kv: KeyValue

    @property
    def revision(self) -> int:
        return self.kv.mod_revision


@dataclass(frozen=True, slots=True)
class WriteResult:
    """Outcome of a conditional write.

    Attributes:
        succeeded: True if this call's write was applied.
        kv: on success, the key as written; on conflict, the key's current
            state (``None`` if it does not exist).
        revision: the store revision after the call (the write's own revision
            on success).
    """

    succeeded: bool
    kv: KeyValue | None
    revision: int


@dataclass(frozen=True, slots=True)
class Characteristics:
    """Guarantees a backend declares; callers check these, not types.

    Attributes:
        linearizable: every read sees every write acknowledged before it.
        leases: leases with TTLs are supported.
        connection_leases: leases also end the moment their owning connection closes.
        replicated: the store survives the loss of a machine.
        bounded_requests: every call but ``watch`` ends within the
            ``timeout`` the store was opened with (with a StoreError if no
            member answered); callers then need no timer of their own per call.
    """

    linearizable: bool = True
    leases: bool = True
    connection_leases: bool = False
    replicated: bool = False
    bounded_requests: bool = False


def check_distinct(items: Sequence[tuple[str, bytes]] | Sequence[tuple[str, bytes, int]]) -> None:
    """For :meth:`Store.put_many` and :meth:`Store.create_and_read`: raise
    ValueError if a key appears twice."""
    keys = {item[0] for item in items}
    if len(keys) != len(items):
        raise ValueError("every key must be distinct")


@runtime_checkable
class Store(Protocol):
    """An async key-value store with revisions, leases and watches (etcd v3 semantics)."""

    @property
    def characteristics(self) -> Characteristics: ...

    async def get(self, key: str, *, min_revision: int = 0) -> KeyValue | None:
        """Return the key, or None if absent.

        ``min_revision``: the caller has seen this revision (a watch event's,
        say) and needs the key as of it or later, not necessarily the latest.
        etcd then reads from the member it is connected to without asking the
        leader (a serializable read) when that member has applied the
        revision (else, and for a revision not reached yet, it reads the
        latest); the other stores always read the latest.

        Raises: StoreUnavailable, StoreTimeout.
        """
        ...

    async def range(self, prefix: str) -> tuple[list[KeyValue], int]:
        """Return every key starting with ``prefix``, sorted by key, and the
        store revision the read was made at (start a watch at revision + 1 to
        miss nothing).

        Raises: StoreUnavailable, StoreTimeout.
        """
        ...

    async def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        """Write the key unconditionally; return the write's revision.

        Raises: LeaseNotFound if ``lease`` is not 0 and does not exist;
        StoreUnavailable, StoreTimeout.
        """
        ...

    async def put_many(self, items: Sequence[tuple[str, bytes]]) -> int:
        """Write several distinct keys unconditionally, without a lease; return
        the store revision after the last write (0 for no items).

        For bulk writes (the closer's member list and rank tables): a backend sends
        them in few requests (etcd: transactions of at most 128 puts; tcp:
        pipelined on one connection). Not atomic as a whole: on an error some
        keys may have been written, and readers may see a prefix of them
        before the call returns. Each key is written exactly as by ``put``.

        Raises: ValueError if a key repeats; StoreUnavailable, StoreTimeout.
        """
        ...

    async def create(self, key: str, value: bytes, *, lease: int = 0) -> WriteResult:
        """Write the key only if it does not exist.

        Returns: ``succeeded=True`` with the new key, or ``succeeded=False``
        with the existing key (first write wins).
        Raises: LeaseNotFound, StoreUnavailable, StoreTimeout.
        """
        ...

    async def create_and_read(
        self, creates: Sequence[tuple[str, bytes, int]], prefixes: Sequence[str]
    ) -> tuple[list[WriteResult], list[list[KeyValue]], int]:
        """Create several keys, each only if absent, then read several prefixes: one request.

        ``creates`` holds distinct ``(key, value, lease)``; each is written
        exactly as by :meth:`create` (each succeeds or fails on its own). The
        reads come after the creates and see them. Returns a WriteResult per
        create, in order; for each prefix its keys, sorted by key; and a
        revision at or before every read, and at or after every create.

        For a node's join (its own key, the closer's key, then the round's
        state) in one round trip and, on etcd, one transaction (one raft
        entry). etcd and the memory store do it all atomically; the tcp store
        pipelines the requests on one connection, in order.

        Raises: ValueError if a key repeats; LeaseNotFound; StoreUnavailable,
        StoreTimeout.
        """
        ...

    async def compare_and_set(
        self, key: str, value: bytes, expected_mod_revision: int, *, lease: int = 0
    ) -> WriteResult:
        """Write the key only if its mod revision equals ``expected_mod_revision``
        (0 means: only if the key is absent).

        Returns: ``succeeded=True`` with the new key, or ``succeeded=False``
        with the key's current state (None if absent).
        Raises: LeaseNotFound, StoreUnavailable, StoreTimeout.
        """
        ...

    async def delete(self, key: str, *, prefix: bool = False) -> int:
        """Delete the key (or every key under the prefix); return how many were deleted.

        Raises: StoreUnavailable, StoreTimeout.
        """
        ...

    async def grant(self, ttl: float) -> int:
        """Create a lease that ends ``ttl`` seconds after its last keep-alive; return its id (> 0).

        Raises: StoreUnavailable, StoreTimeout.
        """
        ...

    async def keep_alive(self, lease: int) -> float:
        """Refresh the lease; return its TTL in seconds.

        Raises: LeaseNotFound if it has ended; StoreUnavailable, StoreTimeout.
        """
        ...

    async def revoke(self, lease: int) -> None:
        """End the lease now, deleting its keys. Revoking an ended lease is not an error.

        Raises: StoreUnavailable, StoreTimeout.
        """
        ...

    def watch(
        self, key: str, *, prefix: bool = False, start_revision: int = 0
    ) -> AbstractAsyncContextManager[AsyncIterator[WatchEvent]]:
        """Watch a key (or a prefix) for changes.

        ``async with store.watch(k, start_revision=r) as events: async for ev in events: ...``
        yields every put/delete with revision >= ``start_revision`` (0: every
        change after the block is entered: the watch is in place on entry, so
        a read made then misses nothing between its revision and the events),
        in revision order, without polling. Leaving the block cancels the watch.

        Raises (on entry or while iterating): StoreCompacted if
        ``start_revision`` is older than retained history; StoreUnavailable if
        the connection is lost (the iterator ends with that error; the caller
        re-reads state and watches again).
        """
        ...

    async def close(self) -> None:
        """Close the client. Leases granted through a connection-owned backend end."""
        ...
