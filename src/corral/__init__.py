"""corral: a fault-tolerant, elastic launcher for distributed training (a drop-in for torchrun)."""

from corral.reporting.record import record

__version__ = "0.1.0"

__all__ = ["__version__", "record"]
