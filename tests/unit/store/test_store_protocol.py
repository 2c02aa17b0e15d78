"""The pure wire format: every message round-trips, in any split of the byte stream."""

from __future__ import annotations

import pytest

from corral.core.errors import ProtocolError
from corral.store.api import EventType, KeyValue, WatchEvent, WriteResult
from corral.store.tcp import protocol as p

KV = KeyValue("/k/é", b"\x00\xffv", 3, 7, 9)
EV = WatchEvent(EventType.DELETE, KeyValue("/k", b"", 0, 8, 0))

MESSAGES: list[p.Message] = [
    p.Challenge(1, "abcd", True),
    p.Hello(1, "00ff"),
    p.Welcome(1),
    p.Get(1, "k"),
    p.Range(2, "/p/"),
    p.Put(3, "k", b"v", 5),
    p.Create(4, "k", b"", 0),
    p.CompareAndSet(5, "k", b"x", 7, 0),
    p.Delete(6, "p/", True),
    p.Grant(7, 2.5),
    p.KeepAlive(8, 3),
    p.Revoke(9, 3),
    p.Watch(10, "p/", True, 4),
    p.CancelWatch(10),
    p.KvReply(1, KV),
    p.KvReply(1, None),
    p.RangeReply(2, (KV, KV), 12),
    p.RevisionReply(3, 13),
    p.WriteReply(4, WriteResult(False, KV, 14)),
    p.WriteReply(5, WriteResult(False, None, 14)),
    p.CountReply(6, 2),
    p.LeaseReply(7, 3, 2.5),
    p.DoneReply(9),
    p.ErrorReply(0, "auth", "no"),
    p.Events(10, (WatchEvent(EventType.PUT, KV), EV)),
    p.WatchEnded(10, "limit", "too many"),
]


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: type(m).__name__)
def test_round_trip(msg: p.Message) -> None:
    frame = p.encode(msg)
    assert int.from_bytes(frame[:4], "big") == len(frame) - 4
    assert p.Decoder().feed(frame) == [msg]


def test_any_split_of_a_pipelined_stream() -> None:
    stream = b"".join(p.encode(m) for m in MESSAGES)
    for step in (1, 3, 7, 64, len(stream)):
        d = p.Decoder()
        out: list[p.Message] = []
        for i in range(0, len(stream), step):
            out += d.feed(stream[i : i + step])
        assert out == MESSAGES and d.buffered == 0


def test_shared_events_fragment_matches_encode() -> None:
    msg = p.Events(42, (EV,))
    assert p.encode_events(42, p.events_fragment([EV])) == p.encode(msg)


def test_oversized_frame_rejected_before_its_body() -> None:
    d = p.Decoder(max_frame=100)
    with pytest.raises(ProtocolError, match="exceeds"):
        d.feed((101).to_bytes(4, "big"))


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"{}",
        b"[]",
        b"[1]",
        b'["zzz"]',
        b'["get", 1]',
        b'["get", "1", "k"]',
        b'["grant", 1, "x"]',
        b'["put", 1, "k", "@@", 0]',
        b'["delete", 1, "k", 1]',
    ],
)
def test_malformed_bodies(body: bytes) -> None:
    with pytest.raises(ProtocolError):
        p.Decoder().feed(len(body).to_bytes(4, "big") + body)
