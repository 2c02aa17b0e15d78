"""Public path of corral's errors (docs/api.md); they live in :mod:`corral.core.errors`."""

from corral.core.errors import *  # noqa: F403
from corral.core.errors import __all__ as __all__
