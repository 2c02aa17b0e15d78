"""Rendezvous: who runs the next round, with which ranks."""

from corral.rendezvous.api import (
    ChangeKind,
    Decision,
    NodeDesc,
    Rendezvous,
    RoundChange,
    RoundInfo,
)

__all__ = ["ChangeKind", "Decision", "NodeDesc", "Rendezvous", "RoundChange", "RoundInfo"]
