"""Coordination stores: one contract (:class:`Store`), backends chosen by URL."""

from corral.store.api import (
    Characteristics,
    EventType,
    KeyValue,
    Store,
    WatchEvent,
    WriteResult,
)

__all__ = ["Characteristics", "EventType", "KeyValue", "Store", "WatchEvent", "WriteResult"]
