"""Public path of the event types (docs/events.md); they live in :mod:`corral.core.events`."""

from corral.core.events import *  # noqa: F403
from corral.core.events import __all__ as __all__
