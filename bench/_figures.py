"""The benchmarks' shared output: one figure, and the JSON line every bench prints last.

``{"bench": NAME, "figures": [{"name", "unit", "corral", "torchrun", "ratio"}]}``:
medians, null where a launcher has no figure; ``ratio`` is corral / torchrun.
"""

from __future__ import annotations

import json


def figure(name: str, unit: str, corral: float | None, torchrun: float | None) -> dict[str, object]:
    """One figure, rounded to 4 places, with its ratio where both launchers have a value."""
    ratio = corral / torchrun if corral is not None and torchrun else None
    return {
        "name": name,
        "unit": unit,
        "corral": None if corral is None else round(corral, 4),
        "torchrun": None if torchrun is None else round(torchrun, 4),
        "ratio": None if ratio is None else round(ratio, 3),
    }


def print_figures(bench: str, figures: list[dict[str, object]]) -> None:
    """The last line of a benchmark's output."""
    print(json.dumps({"bench": bench, "figures": figures}), flush=True)
