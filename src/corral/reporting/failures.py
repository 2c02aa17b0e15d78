"""Public path of :class:`FailureReport` (docs/api.md); it lives in :mod:`corral.core.failures`."""

from corral.core.failures import FailureReport

__all__ = ["FailureReport"]
