"""The tcp store's messages: one frozen msgspec Struct per message of the wire protocol.

Their encoding, framing and the session's order are :mod:`corral.store.tcp.protocol`'s,
which re-exports every name here (callers write ``protocol.Get``).
"""

from __future__ import annotations

from msgspec import Struct

from corral.store.api import KeyValue, WatchEvent, WriteResult

__all__ = [
    "CancelWatch",
    "Challenge",
    "CompareAndSet",
    "CountReply",
    "Create",
    "Delete",
    "DoneReply",
    "ErrorReply",
    "Events",
    "Get",
    "Grant",
    "Hello",
    "KeepAlive",
    "KvReply",
    "LeaseReply",
    "Message",
    "Put",
    "Range",
    "RangeReply",
    "RevisionReply",
    "Revoke",
    "Watch",
    "WatchEnded",
    "Welcome",
    "WriteReply",
]


# --- session -------------------------------------------------------------------


class Challenge(Struct, frozen=True, gc=False):
    version: int
    nonce: str
    auth: bool


class Hello(Struct, frozen=True, gc=False):
    version: int
    mac: str


class Welcome(Struct, frozen=True, gc=False):
    version: int


# --- requests (client -> server) -------------------------------------------------


class Get(Struct, frozen=True, gc=False):
    id: int
    key: str


class Range(Struct, frozen=True, gc=False):
    id: int
    prefix: str


class Put(Struct, frozen=True, gc=False):
    id: int
    key: str
    value: bytes
    lease: int = 0


class Create(Struct, frozen=True, gc=False):
    id: int
    key: str
    value: bytes
    lease: int = 0


class CompareAndSet(Struct, frozen=True, gc=False):
    id: int
    key: str
    value: bytes
    expected_mod_revision: int
    lease: int = 0


class Delete(Struct, frozen=True, gc=False):
    id: int
    key: str
    prefix: bool = False


class Grant(Struct, frozen=True, gc=False):
    id: int
    ttl: float


class KeepAlive(Struct, frozen=True, gc=False):
    id: int
    lease: int


class Revoke(Struct, frozen=True, gc=False):
    id: int
    lease: int


class Watch(Struct, frozen=True, gc=False):
    id: int
    key: str
    prefix: bool = False
    start_revision: int = 0


class CancelWatch(Struct, frozen=True, gc=False):
    watch_id: int


# --- replies (server -> client) --------------------------------------------------


class KvReply(Struct, frozen=True, gc=False):
    id: int
    kv: KeyValue | None


class RangeReply(Struct, frozen=True, gc=False):
    id: int
    kvs: tuple[KeyValue, ...]
    revision: int


class RevisionReply(Struct, frozen=True, gc=False):
    id: int
    revision: int


class WriteReply(Struct, frozen=True, gc=False):
    id: int
    result: WriteResult


class CountReply(Struct, frozen=True, gc=False):
    id: int
    count: int


class LeaseReply(Struct, frozen=True, gc=False):
    id: int
    lease: int
    ttl: float


class DoneReply(Struct, frozen=True, gc=False):
    id: int


class ErrorReply(Struct, frozen=True, gc=False):
    """A failed request (``id`` > 0), or the connection's end (``id`` 0).

    Codes: ``lease_not_found``, ``compacted``, ``invalid``, ``limit``, ``auth``,
    ``version``, ``protocol``, ``internal``.
    """

    id: int
    code: str
    message: str


class Events(Struct, frozen=True, gc=False):
    watch_id: int
    events: tuple[WatchEvent, ...]


class WatchEnded(Struct, frozen=True, gc=False):
    watch_id: int
    code: str
    message: str


Message = (
    Challenge
    | Hello
    | Welcome
    | Get
    | Range
    | Put
    | Create
    | CompareAndSet
    | Delete
    | Grant
    | KeepAlive
    | Revoke
    | Watch
    | CancelWatch
    | KvReply
    | RangeReply
    | RevisionReply
    | WriteReply
    | CountReply
    | LeaseReply
    | DoneReply
    | ErrorReply
    | Events
    | WatchEnded
)
