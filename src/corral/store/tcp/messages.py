"""The tcp store's messages: one frozen dataclass per message of the wire protocol.

Their encoding, framing and the session's order are :mod:`corral.store.tcp.protocol`'s,
which re-exports every name here (callers write ``protocol.Get``).
"""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True, slots=True)
class Challenge:
    version: int
    nonce: str
    auth: bool


@dataclass(frozen=True, slots=True)
class Hello:
    version: int
    mac: str


@dataclass(frozen=True, slots=True)
class Welcome:
    version: int


# --- requests (client -> server) -------------------------------------------------


@dataclass(frozen=True, slots=True)
class Get:
    id: int
    key: str


@dataclass(frozen=True, slots=True)
class Range:
    id: int
    prefix: str


@dataclass(frozen=True, slots=True)
class Put:
    id: int
    key: str
    value: bytes
    lease: int = 0


@dataclass(frozen=True, slots=True)
class Create:
    id: int
    key: str
    value: bytes
    lease: int = 0


@dataclass(frozen=True, slots=True)
class CompareAndSet:
    id: int
    key: str
    value: bytes
    expected_mod_revision: int
    lease: int = 0


@dataclass(frozen=True, slots=True)
class Delete:
    id: int
    key: str
    prefix: bool = False


@dataclass(frozen=True, slots=True)
class Grant:
    id: int
    ttl: float


@dataclass(frozen=True, slots=True)
class KeepAlive:
    id: int
    lease: int


@dataclass(frozen=True, slots=True)
class Revoke:
    id: int
    lease: int


@dataclass(frozen=True, slots=True)
class Watch:
    id: int
    key: str
    prefix: bool = False
    start_revision: int = 0


@dataclass(frozen=True, slots=True)
class CancelWatch:
    watch_id: int


# --- replies (server -> client) --------------------------------------------------


@dataclass(frozen=True, slots=True)
class KvReply:
    id: int
    kv: KeyValue | None


@dataclass(frozen=True, slots=True)
class RangeReply:
    id: int
    kvs: tuple[KeyValue, ...]
    revision: int


@dataclass(frozen=True, slots=True)
class RevisionReply:
    id: int
    revision: int


@dataclass(frozen=True, slots=True)
class WriteReply:
    id: int
    result: WriteResult


@dataclass(frozen=True, slots=True)
class CountReply:
    id: int
    count: int


@dataclass(frozen=True, slots=True)
class LeaseReply:
    id: int
    lease: int
    ttl: float


@dataclass(frozen=True, slots=True)
class DoneReply:
    id: int


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """A failed request (``id`` > 0), or the connection's end (``id`` 0).

    Codes: ``lease_not_found``, ``compacted``, ``invalid``, ``limit``, ``auth``,
    ``version``, ``protocol``, ``internal``.
    """

    id: int
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class Events:
    watch_id: int
    events: tuple[WatchEvent, ...]


@dataclass(frozen=True, slots=True)
class WatchEnded:
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
