"""Coordination stores: one contract (:class:`Store`), backends chosen by URL."""

from corral.store.api import (
    Characteristics,
    EventType,
    KeyValue,
    Store,
    WatchEvent,
    WriteResult,
)
from corral.store.memory import MemoryStore
from corral.store.registry import open_store

__all__ = [
    "Characteristics",
    "EventType",
    "KeyValue",
    "MemoryStore",
    "Store",
    "WatchEvent",
    "WriteResult",
    "open_store",
]
