"""Rendezvous: who runs the next round, with which ranks."""

from corral.core.model import ChangeKind, Decision, NodeDesc, RoundChange, RoundInfo
from corral.rendezvous.api import Rendezvous

__all__ = ["ChangeKind", "Decision", "NodeDesc", "Rendezvous", "RoundChange", "RoundInfo"]
